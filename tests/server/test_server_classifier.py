"""Serving a classifier adapter (head classifier), the pure parts: the config's rules, the vLLM
arguments (pooling runner), and pre-flight of the label order and the head the adapter was
trained with. The real model is served in test_server_classifier_slow.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tuneforge_server.args import ServedAdapter, build_vllm_args
from tuneforge_server.config import ConfigError, parse_config
from tuneforge_server.preflight import PreflightError, preflight
from tuneforge_trainer.lineage import write_manifest

from server_helpers import make_adapter, make_base

LABELS = ["card_arrival", "exchange_rate", "pin_blocked"]


def classifier_adapter(folder: Path, base: Path, labels: list[str] | None = LABELS, lineage_labels: list[str] | None = LABELS,
                       head: str | None = "classifier", id2label: dict[str, str] | None = None) -> str:
    """A PEFT-shaped classifier adapter: config.json with id2label (unless ``labels`` is None),
    the lineage's head and labels; returns its digest."""
    make_adapter(folder, base)
    if labels is not None or id2label is not None:
        (folder / "config.json").write_text(json.dumps({
            "architectures": ["LlamaForSequenceClassification"],
            "id2label": id2label if id2label is not None else {str(i): lab for i, lab in enumerate(labels or [])}}))
    from tuneforge_trainer.lineage import base_model_digest

    lineage: dict[str, Any] = {"baseModel": {"uri": "s3://models/base", "digest": base_model_digest(str(base))}}
    if head is not None:
        lineage["head"] = head
    if lineage_labels is not None:
        lineage["labels"] = lineage_labels
    return write_manifest(str(folder), lineage)


def cfg_for(tmp_path: Path, folder: Path, digest: str, **over: Any) -> Any:
    return parse_config({"cache_dir": str(tmp_path / "cache"), "model": {"uri": str(tmp_path / "base"), "name": "smollm2"},
                         "adapters": [{"name": "intents", "uri": str(folder), "digest": digest}], **over})


@pytest.mark.parametrize(("over", "message"), [
    ({"head": "classifier", "adapters": []}, "head 'classifier' needs an adapter"),
    ({"head": "classifier", "runtime_lora_updating": True}, "runtime_lora_updating is not supported with head 'classifier'"),
    ({"head": "regression"}, "head: Input should be 'lm' or 'classifier'"),
])
def test_classifier_config_rules_name_the_field(over: dict[str, Any], message: str) -> None:
    raw = {"model": {"uri": "s3://m/base", "name": "base"}, "adapters": [{"name": "a", "uri": "s3://r/a"}], **over}
    with pytest.raises(ConfigError, match=message):
        parse_config(raw)


@pytest.mark.parametrize(("head", "mode", "present", "absent"), [
    # classifier, merged: the pooling runner on the merged folder, no LoRA
    ("classifier", "merged", {"--runner": ["pooling"], "--served-model-name": ["a"]}, ["--enable-lora"]),
    # classifier, lora: the pooling runner with the adapter as a LoRA module (the classifier base as the model)
    ("classifier", "lora", {"--runner": ["pooling"], "--lora-modules": ["a=/w/a"], "--max-lora-rank": ["16"]}, []),
    # lm: no runner flag (vLLM's default generate runner), unchanged
    ("lm", "merged", {"--served-model-name": ["a"]}, ["--runner"]),
])
def test_classifier_vllm_args(head: str, mode: str, present: dict[str, list[str]], absent: list[str]) -> None:
    cfg = parse_config({"model": {"uri": "s3://m/base", "name": "base"}, "adapters": [{"name": "a", "uri": "s3://r/a"}],
                        "head": head, "mode": mode})
    args = build_vllm_args(cfg, Path("/w/model"), [ServedAdapter("a", Path("/w/a"), 16)], "cpu", mode)
    for flag, values in present.items():
        assert [args[i + 1] for i, a in enumerate(args) if a == flag] == values, (flag, args)
    for flag in absent:
        assert flag not in args


def test_a_classifier_adapter_passes_with_its_label_order(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base")
    digest = classifier_adapter(tmp_path / "a", base)
    [checked] = preflight(cfg_for(tmp_path, tmp_path / "a", digest, head="classifier"), base, [tmp_path / "a"])
    assert checked.labels == tuple(LABELS)


@pytest.mark.parametrize(("kw", "head", "message"), [
    # the label order is the adapter's: no id2label means class indices without names
    ({"labels": None}, "classifier", "config.json with id2label is missing"),
    # config.json and the lineage disagree on the order
    ({"lineage_labels": ["exchange_rate", "card_arrival", "pin_blocked"]}, "classifier", "differs from tuneforge.json lineage.labels"),
    # class indices with a gap
    ({"id2label": {"0": "a", "2": "b"}, "lineage_labels": None}, "classifier", r"must number the classes 0..n-1, got \[0, 2\]"),
    # a generative adapter served as a classifier
    ({"head": "lm", "labels": None}, "classifier", "was trained with task.head lm: head classifier serves only classifier adapters"),
    # a classifier adapter served as a chat model
    ({}, "lm", "was trained with task.head classifier: serve it with head classifier"),
])
def test_a_wrong_classifier_adapter_is_refused_naming_it(tmp_path: Path, kw: dict[str, Any], head: str, message: str) -> None:
    base = make_base(tmp_path / "base")
    digest = classifier_adapter(tmp_path / "a", base, **kw)
    with pytest.raises(PreflightError, match=f"adapter intents .*{message}"):
        preflight(cfg_for(tmp_path, tmp_path / "a", digest, head=head), base, [tmp_path / "a"])


def test_classifier_adapters_served_together_share_one_label_order(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base")
    d1 = classifier_adapter(tmp_path / "a", base)
    d2 = classifier_adapter(tmp_path / "b", base, labels=LABELS[::-1], lineage_labels=LABELS[::-1])
    cfg = parse_config({"cache_dir": str(tmp_path / "cache"), "model": {"uri": str(base), "name": "smollm2"}, "head": "classifier",
                        "mode": "lora", "adapters": [{"name": "a", "uri": str(tmp_path / "a"), "digest": d1},
                                                     {"name": "b", "uri": str(tmp_path / "b"), "digest": d2}]})
    with pytest.raises(PreflightError, match="must share one label order"):
        preflight(cfg, base, [tmp_path / "a", tmp_path / "b"])
