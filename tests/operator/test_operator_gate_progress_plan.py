"""The gate, progress parsing, summary parsing and the reconcile plan: small tables."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from ftj_helpers import MINIMAL_SPEC, defaulted_spec
from k8s_objects import job, summary
from tuneforge.finetune.gate import evaluate_gate
from tuneforge.finetune.plan import Action, CreateConfigMap, CreateSummaryJob, CreateTrainJob, CreateValidateJob, DeleteJob, SetSuspend, plan
from tuneforge.finetune.progress import Progress, parse_progress
from tuneforge.finetune.results import parse_summary
from tuneforge.settings import Settings
from tuneforge.finetune.spec import Gate, parse_spec

S = parse_summary(summary())
assert S is not None


@pytest.mark.parametrize("gate,passed,fragment", [
    (Gate(), True, "no thresholds set"),
    (Gate(min_accuracy=0.9), True, "accuracy 0.9300 >= minAccuracy"),
    (Gate(min_accuracy=0.95), False, "minAccuracy: accuracy 0.9300 < 0.9500"),
    (Gate(min_class_f1=0.8), True, "every class F1"),
    (Gate(min_class_f1=0.85), False, "'card_arrival' 0.8100"),
    (Gate(must_beat_baseline="zero-shot"), True, "beats zero-shot"),
    (Gate(must_beat_baseline="tfidf-logreg"), False, "does not beat tfidf-logreg 0.9600"),
    (Gate(must_beat_baseline="zero-shot", baseline_margin=0.95), False, "by 0.9500"),
    (Gate(must_beat_baseline="few-shot"), False, "few-shot was not scored"),
    (Gate(min_accuracy=0.9, min_class_f1=0.9, must_beat_baseline="zero-shot"), False, "minClassF1"),
])
def test_gate(gate: Gate, passed: bool, fragment: str) -> None:
    out = evaluate_gate(gate, S)
    assert out.passed is passed
    assert any(fragment in r for r in out.reasons), out.reasons


def test_gate_without_accuracy() -> None:
    s = parse_summary(json.dumps({"status": "succeeded", "command": "train"}))
    assert s is not None
    assert not evaluate_gate(Gate(min_accuracy=0.5), s).passed


def test_parse_summary_tolerates_noise() -> None:
    assert parse_summary(None) is None
    assert parse_summary("Traceback (most recent call last):") is None
    assert parse_summary("{not json") is None
    s = parse_summary(summary(new_field_from_newer_trainer=1, baselines=[{"name": "few_shot_8", "accuracy": 0.3}]))
    assert s is not None and (s.baselines[0].name, s.baselines[0].shots) == ("few-shot", 8)


def test_summary_translated_to_the_apis_spelling() -> None:
    """One name per thing: baselines by the spec's type, artifact keys in camelCase."""
    s = parse_summary(summary(
        baselines=[{"name": "zero_shot", "accuracy": 0.1}, {"name": "tfidf_lr", "accuracy": 0.8},
                   {"name": "few_shot_4", "accuracy": 0.3}, {"name": "openai:gpt-4o-mini", "accuracy": 0.7}],
        artifacts={"adapter": "/o/adapter", "model_card": "/o/README.md", "confusion_plot": "/o/c.png",
                   "loss_plot": "/o/l.png", "metrics": "/o/metrics.json"}))
    assert s is not None
    assert [(b.name, b.shots, b.model) for b in s.baselines] == [
        ("zero-shot", None, None), ("tfidf-logreg", None, None), ("few-shot", 4, None), ("openai", None, "gpt-4o-mini")]
    assert set(s.artifacts) == {"adapter", "modelCard", "confusionPlot", "lossPlot", "metrics"}
    gate = Gate(must_beat_baseline="tfidf-logreg")
    outcome = evaluate_gate(gate, s)  # the gate finds the baseline by the spec's type
    assert outcome.passed and outcome.reasons == ("accuracy 0.9300 beats tfidf-logreg 0.8000",)


def test_parse_summary_of_the_trainers_own_writer() -> None:
    import tuneforge_trainer.summary as trainer_summary
    text = trainer_summary.TrainerSummary(
        status="succeeded", command="train", accuracy=0.91, macro_f1=0.9,
        worst_classes=[trainer_summary.ClassScore(label="a", f1=0.5)],
        baselines=[trainer_summary.BaselineScore(name="tfidf_lr", accuracy=0.98)],
        artifacts={"adapter": "/out/adapter", "model_card": "/out/README.md"},
    ).to_json()
    s = parse_summary(text)
    assert s is not None and s.accuracy == 0.91 and s.worst_classes[0].f1 == 0.5
    assert s.baselines[0].accuracy == 0.98 and s.baselines[0].name == "tfidf-logreg"
    assert s.artifacts == {"adapter": "/out/adapter", "modelCard": "/out/README.md"}


LOG = "\n".join([
    "Some warning from transformers",
    json.dumps({"event": "start", "ts": 1}),
    json.dumps({"event": "progress", "ts": 2, "step": 5, "max_steps": 50, "epoch": 0.1, "loss": 2.5, "eta_seconds": 90.5}),
    '{"torn line',
    json.dumps({"event": "progress", "ts": 3, "step": 10, "max_steps": 50, "epoch": 0.2, "loss": 1.5, "eta_seconds": 80}),
    json.dumps({"event": "eval", "ts": 4, "eval_loss": 1.7, "step": 10}),
    json.dumps({"event": "progress", "ts": 5, "step": 15, "max_steps": 50, "loss": 1.2, "eta_seconds": 70}),
])


def test_parse_progress_folds_lines() -> None:
    p = parse_progress(LOG)
    assert p == Progress(stage="train", step=15, total_steps=50, epoch=0.2, train_loss=1.2, eval_loss=1.7, eta_seconds=70)
    assert p is not None and p.percent == 30.0


@pytest.mark.parametrize("lines,stage", [
    ([{"event": "progress", "step": 50, "max_steps": 50}], "evaluate"),
    ([{"event": "eval_start"}], "evaluate"),
    ([{"event": "progress", "step": 1, "max_steps": 5, "stage": "evaluate"}], "evaluate"),
    ([{"event": "data", "n_train": 400}], "data"),
])
def test_parse_progress_stage(lines: list[dict[str, Any]], stage: str) -> None:
    p = parse_progress("\n".join(json.dumps(x) for x in lines))
    assert p is not None and p.stage == stage


def test_progress_stages_are_the_trainers_event_definitions() -> None:
    """The operator's side: one definition of the events, the trainer's file (no copy of the map)."""
    import pathlib

    import tuneforge.finetune.progress as progress_module
    import tuneforge.finetune.trainer_events as operator_events
    from tuneforge_trainer import events as trainer_events

    root = pathlib.Path(__file__).resolve().parents[2]
    assert pathlib.Path(operator_events.__file__).resolve() == root / "trainer-image/src/tuneforge_trainer/events.py"
    assert progress_module.STAGE_BY_EVENT is operator_events.STAGE_BY_EVENT
    assert dict(operator_events.STAGE_BY_EVENT) == dict(trainer_events.STAGE_BY_EVENT)
    for name, stage in trainer_events.STAGE_BY_EVENT.items():
        p = parse_progress(json.dumps({"event": name, "ts": 1.0}))
        assert p is not None and p.stage == stage, name
    # Names the old operator-only map invented, which no trainer emits, are no stages of their own.
    assert not {"evaluating", "baselines", "evaluate"} & set(trainer_events.EVENTS)


def test_operator_image_context_carries_the_event_definitions(tmp_path: Any) -> None:
    """The operator image copies src/tuneforge with symlinks followed (localcluster images.build):
    from that copy alone, without the trainer's sources, the progress parser imports."""
    import pathlib
    import shutil
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[2]
    ctx = tmp_path / "ctx"
    shutil.copytree(root / "operator", ctx, ignore=shutil.ignore_patterns("__pycache__"))
    copied = ctx / "src/tuneforge/finetune/trainer_events.py"
    assert copied.is_file() and not copied.is_symlink()
    code = ("import tuneforge.finetune.progress as p, tuneforge.finetune.trainer_events as e; "
            "assert p.STAGE_BY_EVENT['eval_start'] == 'evaluate'; print(e.__file__)")
    out = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(ctx / "src")},
                         capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.strip().startswith(str(ctx))


def test_parse_progress_empty() -> None:
    assert parse_progress("") is None
    prev = Progress("train", 3, 10)
    assert parse_progress("plain text only", prev) == prev


def spec_of(**overrides: Any) -> Any:
    raw = copy.deepcopy(MINIMAL_SPEC)
    raw.update(overrides)
    return parse_spec(defaulted_spec(raw))


V, T = "x-validate-2", "x-train-2"


@pytest.mark.parametrize("name,overrides,phase,vjob,tjob,stale,pre,expected", [
    ("start", {}, "Pending", None, None, [], False, [CreateConfigMap(), CreateValidateJob()]),
    ("preflight failed", {}, "Failed", None, None, [], True, []),
    ("validating", {}, "Validating", job(V), None, [], False, []),
    ("validated", {}, "Pending", job(V, complete=True), None, [], False, [CreateTrainJob()]),
    ("running", {}, "Running", job(V, complete=True), job(T), [], False, []),
    ("result gone: read summary.json", {}, "Evaluating", job(V, complete=True), job(T, complete=True), [], "read", [CreateSummaryJob()]),
    ("user suspends", {"suspend": True}, "Running", job(V, complete=True), job(T), [], False, [SetSuspend(T, True)]),
    ("user resumes", {}, "Suspended", job(V, complete=True), job(T, suspend=True), [], False, [SetSuspend(T, False)]),
    ("kueue holds", {"scheduling": {"queueName": "q"}}, "Queued", job(V, complete=True), job(T, suspend=True), [], False, []),
    ("kueue + user suspend", {"scheduling": {"queueName": "q"}, "suspend": True}, "Running", job(V, complete=True), job(T),
     [], False, [SetSuspend(T, True)]),
    ("stale revision running", {}, "Pending", None, None, [job("x-train-1", revision=1)], False,
     [DeleteJob("x-train-1"), CreateConfigMap(), CreateValidateJob()]),
    ("stale revision finished", {}, "Pending", None, None, [job("x-train-1", complete=True, revision=1)], False,
     [CreateConfigMap(), CreateValidateJob()]),
    ("failed releases stuck pod", {}, "Failed", job(V), None, [], False, [DeleteJob(V)]),
    ("succeeded does nothing", {}, "Succeeded", job(V, complete=True), job(T, complete=True), [], False, []),
])
def test_plan(name: str, overrides: dict[str, Any], phase: str, vjob: Any, tjob: Any, stale: list[Any], pre: bool | str,
              expected: list[Action]) -> None:
    # pre == "read": the training result must be read from summary.json (no preflight error).
    assert plan(spec_of(**overrides), phase, vjob, tjob, stale, pre is True, pre == "read") == expected


def test_settings_from_env() -> None:
    s = Settings.from_env({"TUNEFORGE_TRAINER_IMAGE": "img:2", "TUNEFORGE_PROGRESS_INTERVAL": "5",
                           "TUNEFORGE_WORKER_LIMIT": "8", "TUNEFORGE_NAMESPACES": "a, b"})
    assert (s.trainer_image, s.progress_interval, s.worker_limit) == ("img:2", 5.0, 8)
    assert s.namespace_list() == ["a", "b"]
    with pytest.raises(ValueError, match="TUNEFORGE_WORKER_LIMIT"):
        Settings.from_env({"TUNEFORGE_WORKER_LIMIT": "many"})
    with pytest.raises(ValueError):
        Settings.from_env({"TUNEFORGE_POD_ANNOTATIONS": "[1]"})
