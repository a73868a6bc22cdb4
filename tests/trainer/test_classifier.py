"""task.head classifier: the pure translators, the label order saved with the adapter and
checked on load, the config rules, and train_main/evaluate_main end to end on a tiny random
model (seconds; what the head learns is test_classifier_slow.py's business)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from test_train_tiny import run, tiny_model  # noqa: F401 - the tiny model fixture
from tuneforge_trainer.classifier import (
    LabelMismatch,
    adapter_labels,
    check_adapter_labels,
    classifier_text,
    label_maps,
)
from tuneforge_trainer.config import ConfigError, parse_config
from tuneforge_trainer.data import DataError, Example
from tuneforge_trainer.modeling import get_lora_config

BASE: dict[str, Any] = {
    "model": {"source": "/m"}, "dataset": {"source": "/d.csv"}, "output": {"dir": "/o"},
    "task": {"head": "classifier"},
}


def cfg_with(**sections: Any) -> Any:
    raw = json.loads(json.dumps(BASE))
    for name, value in sections.items():
        raw.setdefault(name, {}).update(value)
    return parse_config(raw)


# --- pure translators ---

def test_lora_config_is_the_lm_heads_lora_plus_the_score_layer() -> None:
    lora = {"r": 8, "alpha": 16, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]}
    lc = get_lora_config(cfg_with(lora=lora))
    lm = get_lora_config(cfg_with(task={"head": "lm"}, lora=lora))
    assert str(lc.task_type).endswith("SEQ_CLS") and str(lm.task_type).endswith("CAUSAL_LM")
    assert "score" in lc.modules_to_save and not lm.modules_to_save
    for field in ("r", "lora_alpha", "lora_dropout", "target_modules", "bias"):
        assert getattr(lc, field) == getattr(lm, field), field


def test_label_maps_number_the_classes_in_label_order() -> None:
    id2label, label2id = label_maps(["b", "a", "c"])
    assert id2label == {0: "b", 1: "a", 2: "c"} and label2id == {"b": 0, "a": 1, "c": 2}
    with pytest.raises(LabelMismatch, match="unique"):
        label_maps(["a", "a"])


@pytest.mark.parametrize(
    ("ex", "text"),
    [
        (Example(text="my card is lost", target="card", row=1), "my card is lost"),
        (Example(text="hello", target="x", row=1, instruction="Classify"), "Classify\n\nhello"),
        (Example(text="Classify", target="x", row=1, instruction="Classify"), "Classify"),
        (Example(text="t", target="x", row=1, messages=[
            {"role": "system", "content": "s"}, {"role": "user", "content": "u1"},
            {"role": "assistant", "content": "a"}, {"role": "user", "content": "u2"}]), "u2"),
    ],
)
def test_classifier_reads_the_bare_text(ex: Example, text: str) -> None:
    """No prompt template, no label list: a row's cost does not grow with the labels."""
    assert classifier_text(ex) == text


# --- the label order travels with the adapter ---

def write_adapter(folder: Path, config_labels: list[str] | None, manifest_labels: list[str] | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if config_labels is not None:
        (folder / "config.json").write_text(json.dumps({"id2label": {str(i): x for i, x in enumerate(config_labels)}}))
    if manifest_labels is not None:
        (folder / "tuneforge.json").write_text(json.dumps({"lineage": {"labels": manifest_labels}}))
    return folder


def test_adapter_labels_are_read_and_checked(tmp_path: Path) -> None:
    a = write_adapter(tmp_path / "a", ["fx", "card", "pin"], ["fx", "card", "pin"])
    assert adapter_labels(str(a)) == ["fx", "card", "pin"]
    assert check_adapter_labels(str(a), ["fx", "card", "pin"]) == ["fx", "card", "pin"]
    assert adapter_labels(str(write_adapter(tmp_path / "b", ["x", "y"], None))) == ["x", "y"]


@pytest.mark.parametrize(
    ("config_labels", "manifest_labels", "expected", "message"),
    [
        (["card", "fx"], ["card", "fx"], ["fx", "card"], r"class 0 is 'card' in the adapter, 'fx' expected"),
        (["card", "fx"], ["card", "fx"], ["card", "pin"], r"missing from it \['pin'\], labels only it has \['fx'\]"),
        (["card", "fx"], ["fx", "card"], ["card", "fx"], r"config.json id2label \['card', 'fx'\] differs from tuneforge.json"),
        (None, None, ["card", "fx"], "has no label order"),
    ],
)
def test_a_label_mismatch_is_refused_with_a_clear_message(
    tmp_path: Path, config_labels: list[str] | None, manifest_labels: list[str] | None, expected: list[str], message: str
) -> None:
    a = write_adapter(tmp_path / "a", config_labels, manifest_labels)
    with pytest.raises(LabelMismatch, match=message) as e:
        check_adapter_labels(str(a), expected)
    assert isinstance(e.value, DataError)  # the CLI exits with its data-error code


# --- config rules ---

def test_learning_rate_default_is_chosen_by_head() -> None:
    assert cfg_with().training.learning_rate == 1e-3
    assert cfg_with(task={"head": "lm"}).training.learning_rate == 2e-4
    assert cfg_with(training={"learning_rate": 5e-4}).training.learning_rate == 5e-4
    assert cfg_with().learning_rate() == 1e-3


def test_classifier_turns_the_base_model_baseline_off_by_default() -> None:
    c = cfg_with()
    assert not c.eval.baselines.zero_shot and c.eval.baselines.tfidf_lr
    assert cfg_with(task={"head": "lm"}).eval.baselines.zero_shot
    # Asked for, it stays on: the base model answers through its language-model head.
    asked = cfg_with(eval={"baselines": {"zero_shot": True, "few_shot": 2}}).eval.baselines
    assert asked.zero_shot and asked.few_shot == 2


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"task": {"head": "classifier", "type": "generation"}}, "task.head 'classifier' needs task.type: classification"),
        ({"lora": {"enabled": False}}, "task.head 'classifier' needs lora.enabled: true"),
        ({"eval": {"method": "loglik"}}, "eval.method 'loglik' scores a language-model head"),
        ({"task": {"head": "mlp"}}, "task.head"),
    ],
)
def test_classifier_config_rules(sections: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        cfg_with(**sections)


# --- end to end on the tiny random model ---

def test_train_main_classifier_end_to_end(tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    from tuneforge_trainer.summary import parse_summary

    rc, events = run(tiny_model, tmp_path, capsys, task={"head": "classifier"})
    assert rc == 0
    assert [e["name"] for e in events if e["event"] == "baseline"] == ["tfidf_lr"]
    out = tmp_path / "out"
    adapter = out / "adapter"
    ac = json.loads((adapter / "adapter_config.json").read_text())
    assert ac["task_type"] == "SEQ_CLS" and "score" in ac["modules_to_save"]
    config = json.loads((adapter / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    assert adapter_labels(str(adapter)) == ["card", "fx"]  # config.json and tuneforge.json agree
    manifest = json.loads((adapter / "tuneforge.json").read_text())
    assert manifest["lineage"]["head"] == "classifier"
    assert "config.json" in {f["path"] for f in manifest["files"]}  # the label order is in the digest
    saved = parse_summary((out / "summary.json").read_text())
    assert saved.status == "succeeded" and saved.n_eval == 6 and saved.accuracy is not None
    assert saved.adapter is not None and saved.adapter.digest == manifest["digest"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval"]["method"] == "classifier"
    assert set(metrics["eval"]["per_class"]) == {"card", "fx"} and metrics["eval"]["confusion_matrix"]
    assert metrics["config"]["training"]["learning_rate"] == 1e-3
    lat = metrics["eval"]["latency"]  # one forward pass per batch, timed
    assert 1 <= lat["rows_per_request"] <= 6 and 0 < lat["p50_ms"] <= lat["p99_ms"]
    val = metrics["validation"]  # the classifier scores its validation rows too (one pass per batch)
    assert val["n"] == sum(metrics["data"]["validation_counts"].values()) > 0 and 0 <= val["accuracy"] <= 1
    card = (out / "README.md").read_text()
    assert "head: classifier" in card and "**The gate uses this accuracy.**" in card
    assert f"Validation rows ({val['n']}," in card
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert predictions[0]["text"].startswith(("my card is lost", "euro exchange rate")) and "messages" not in predictions[0]


def test_classifier_zero_shot_baseline_is_the_base_models_lm_head(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    # The classifier with its adapter off has an untrained score layer; the zero-shot baseline is
    # the base model's language-model head, scored by label log-likelihood on the same rows.
    rc, events = run(tiny_model, tmp_path, capsys, task={"head": "classifier"},
                     eval={"baselines": {"zero_shot": True, "tfidf_lr": True}})
    assert rc == 0
    assert [e["name"] for e in events if e["event"] == "baseline"] == ["zero_shot", "tfidf_lr"]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    zs = metrics["baselines"]["zero_shot"]
    assert "error" not in zs and zs["method"] == "loglik" and zs["n"] == metrics["eval"]["n"] == 6
    assert metrics["eval"]["method"] == "classifier"


def test_evaluate_main_refuses_an_adapter_with_another_label_order(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    from tuneforge_trainer.train import evaluate_main

    rc, _ = run(tiny_model, tmp_path, capsys, task={"head": "classifier"})
    assert rc == 0
    raw = {
        "model": {"source": str(tiny_model)}, "dataset": {"source": str(tmp_path / "train.csv")},
        "task": {"head": "classifier"},
        "data": {"eval_fraction": 0.25, "validation_fraction": 0.25},
        "output": {"dir": str(tmp_path / "out"), "termination_message_path": str(tmp_path / "term-eval")},
    }
    assert evaluate_main(parse_config(raw)) == 0  # the adapter reloads with its score layer
    s = json.loads((tmp_path / "out" / "evaluation" / "metrics.json").read_text())
    assert s["eval"]["method"] == "classifier" and s["eval"]["n"] == 6
    raw["task"]["labels"] = ["fx", "card"]  # the same labels, another order
    with pytest.raises(LabelMismatch, match="class 0 is 'card' in the adapter, 'fx' expected"):
        evaluate_main(parse_config(raw))
