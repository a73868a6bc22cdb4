"""The operator's rendered config goes through the trainer's own parser (the contract)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from ftj_helpers import MINIMAL_SPEC, defaulted_spec
from tuneforge.resources.configmap import build_config_map
from tuneforge.resources.names import Owner
from tuneforge.spec import parse_spec
from tuneforge.trainer_config import render_trainer_config, resolve_uri

import tuneforge_trainer.config as trainer_config  # noqa: E402


def _with(**changes: Any) -> dict[str, Any]:
    spec = copy.deepcopy(MINIMAL_SPEC)
    for path, value in changes.items():
        node = spec
        parts = path.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return spec


CASES = {
    "minimal": MINIMAL_SPEC,
    "banking77-8": _with(
        dataset__includeLabels=["card_arrival", "lost_or_stolen_card"], dataset__maxRowsPerLabel=50,
        dataset__promptTemplate="Classify: {text}\nLabels: {labels}\nCategory:",
        training__maxSteps=50, training__learningRate=0.001,
        evaluation__baselines=[{"type": "zero-shot"}, {"type": "tfidf-logreg"}, {"type": "few-shot", "shots": 4}],
        evaluation__gate={"minAccuracy": 0.9, "mustBeatBaseline": "zero-shot"},
    ),
    "qlora-all-linear": _with(quantization="4bit", lora__targetModules=["all-linear"], output__mergeAdapter=True),
    "generation-chat-s3": _with(
        task={"type": "generation"}, dataset={"uri": "s3://data-bucket/chat.jsonl", "format": "chat"},
        output={"uri": "s3://artifacts/runs"},
        s3={"endpoint": "http://10.0.0.1:9000", "accessKeyIdSecretRef": {"name": "s3", "key": "id"},
            "secretAccessKeySecretRef": {"name": "s3", "key": "secret"}},
        evaluation__baselines=[{"type": "openai", "url": "https://api.example.com/v1", "model": "m",
                                "apiKeySecretRef": {"name": "oa", "key": "k"}}],
    ),
    "best-model": _with(training__evalSteps=10, training__saveSteps=20, training__loadBestModel=True,
                        training__earlyStoppingPatience=3),
    "full-finetune": _with(lora__enabled=False, quantization="none", resources__gpus=0),
    "hf-pinned": _with(baseModel={"uri": "hf://org/model", "revision": "abc123", "tokenSecretRef": {"name": "hf", "key": "token"}}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_trainer_parser_accepts_rendered_config(case: str) -> None:
    spec = parse_spec(defaulted_spec(CASES[case]))
    rendered = render_trainer_config(spec, "team-a", "intent", "uid-1", 3)
    cfg = trainer_config.parse_config(rendered)
    assert cfg.output.dir.endswith("/team-a/intent/uid-1/r3")  # the uid: a namesake never resumes it
    assert cfg.output.termination_message_path == "/dev/termination-log"


def test_config_map_round_trips_through_trainer_loader(tmp_path: Any) -> None:
    spec = parse_spec(defaulted_spec(CASES["banking77-8"]))
    cm = build_config_map(Owner("intent", "team-a", "u1"), spec, 2)
    path = tmp_path / "config.yaml"
    path.write_text(cm["data"]["config.yaml"])
    cfg = trainer_config.load_config(path)
    assert cfg.dataset.source == "/mnt/pvc/data/banking77/train.csv"
    assert cfg.dataset.format == "csv" and cfg.dataset.label_column == "category"
    assert cfg.dataset.include_labels == ["card_arrival", "lost_or_stolen_card"]
    assert cfg.training.max_steps == 50 and cfg.training.learning_rate == 0.001
    assert cfg.eval.baselines.zero_shot and cfg.eval.baselines.tfidf_lr and cfg.eval.baselines.few_shot == 4
    assert cfg.output.dir == "/mnt/pvc/artifacts/runs/team-a/intent/u1/r2"
    assert cm["immutable"] is True


def test_mapping_details() -> None:
    spec = parse_spec(defaulted_spec(CASES["generation-chat-s3"]))
    out = render_trainer_config(spec, "ns", "gen", "uid-1", 1)
    assert out["dataset"]["format"] == "chat_jsonl"
    assert out["output"]["dir"] == "s3://artifacts/runs/ns/gen/uid-1/r1"
    assert out["eval"]["baselines"] == {
        "zero_shot": False, "few_shot": 0, "tfidf_lr": False,
        "openai": {"base_url": "https://api.example.com/v1", "model": "m", "api_key_env": "OPENAI_API_KEY"},
    }
    # Unset baselines leave the trainer's defaults in force.
    assert "baselines" not in render_trainer_config(parse_spec(defaulted_spec(MINIMAL_SPEC)), "n", "m", "uid-1", 1)["eval"]
    assert yaml.safe_load(yaml.safe_dump(out)) == out


@pytest.mark.parametrize("uri,expected", [
    ("pvc://data/x/y.csv", "/mnt/pvc/data/x/y.csv"),
    ("pvc://data", "/mnt/pvc/data"),
    ("pvc://data/", "/mnt/pvc/data"),
    ("s3://b/k", "s3://b/k"),
    ("hf://o/n", "hf://o/n"),
    ("/models/m", "/models/m"),
])
def test_resolve_uri(uri: str, expected: str) -> None:
    assert resolve_uri(uri) == expected
