"""One definition of the progress events (tuneforge_trainer.events), checked on every side that
speaks it: the trainer's reporter and emit calls, and the operator-test stand-in's output."""

from __future__ import annotations

import ast
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tuneforge_trainer import events
from tuneforge_trainer.data import DataReport, DroppedRow, Example, PreparedData
from tuneforge_trainer.events import EVENTS, FIELDS, STAGE_BY_EVENT, check_event
from tuneforge_trainer.progress import ProgressReporter

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "trainer-image" / "src" / "tuneforge_trainer"
STANDIN = ROOT / "tests" / "images" / "trainer-standin"


def emit_calls() -> list[tuple[str, str, set[str], bool]]:
    """(file, event name, keyword names, has **kwargs) of every ``*.emit(...)`` call in the trainer."""
    out = []
    for path in sorted(PKG.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "emit":
                first = node.args[0] if node.args else None
                assert isinstance(first, ast.Constant) and isinstance(first.value, str), (
                    f"{path.name}:{node.lineno}: emit's event name must be a literal"
                )
                kws = {k.arg for k in node.keywords if k.arg}
                out.append((path.name, first.value, kws, any(k.arg is None for k in node.keywords)))
    return out


def test_the_trainer_emits_exactly_the_defined_events() -> None:
    calls = emit_calls()
    for file, name, kws, _ in calls:
        assert name in EVENTS, f"{file}: emits {name!r}, not defined in events.py"
        assert kws <= FIELDS[name], f"{file}: {name} carries {sorted(kws - FIELDS[name])}, not in events.FIELDS"
    # and nothing defined is dead (the operator's old eval_start/evaluating/baselines were never emitted)
    assert {name for _, name, _, _ in calls} == set(EVENTS)


def test_every_event_has_a_stage_and_fields() -> None:
    assert set(STAGE_BY_EVENT) == set(FIELDS) == set(EVENTS)
    assert set(STAGE_BY_EVENT.values()) == {"start", "data", "train", "evaluate", "done", "error", "preempted"}
    assert events.stage_of("eval_start") == "evaluate" and events.stage_of("evaluating") is None


def test_events_module_is_standard_library_only() -> None:
    # The operator image and the stand-in image copy this one file; it cannot import the package.
    tree = ast.parse((PKG / "events.py").read_text())
    mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    mods |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert mods <= {"__future__", "collections.abc", "typing"}


def test_reporter_refuses_undefined_events(tmp_path: Path) -> None:
    rep = ProgressReporter(str(tmp_path / "p.jsonl"), stream=io.StringIO(), enabled=True)
    with pytest.raises(ValueError, match="evaluating"):
        rep.emit("evaluating")
    assert check_event(rep.emit("eval_start", rows=3)) == []


def test_the_data_event_fields(tmp_path: Path) -> None:
    # report_data spreads the data report into the event: its keys must all be defined fields.
    from tuneforge_trainer.pipeline import report_data

    stream = io.StringIO()
    rep = DataReport(format="csv", loaded=3, dropped=[DroppedRow("train", 2, "empty input")], warnings=["w"])
    ex = [Example(text="t", target="a", row=1)]
    report_data(PreparedData(train=ex, eval=ex, labels=["a"], report=rep), ProgressReporter(None, stream=stream, enabled=True))
    record = json.loads(stream.getvalue())
    assert record["event"] == "data" and check_event(record) == []


def test_check_event() -> None:
    assert check_event({"event": "progress", "ts": 1.0, "step": 1}) == []
    assert check_event({"event": "baselines", "ts": 1.0}) == ["unknown event 'baselines'"]
    assert check_event({"event": "eval", "ts": 1.0, "eval_loss": 0.2}) == ["eval: unknown fields ['eval_loss']"]


def run_standin(tmp_path: Path, command: str, knobs: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path / "out"
    cfg = tmp_path / f"{command}.yaml"
    cfg.write_text(f"dataset:\n  source: /standin/{knobs}/train.jsonl\noutput:\n  dir: {out}\n")
    proc = subprocess.run(
        [sys.executable, str(STANDIN / "tuneforge-train"), command, "--config", str(cfg)],
        capture_output=True, text=True, timeout=60,
    )
    return proc, out


@pytest.mark.parametrize(
    ("command", "knobs", "code", "last"),
    [
        ("validate", "ok=1", 0, "data"),
        ("validate", "invalid=1", 3, "error"),
        ("train", "steps=3/step_s=0/eval_s=0", 0, "done"),
        ("train", "steps=4/step_s=0/fail=1", 1, "error"),
    ],
)
def test_the_standin_speaks_the_trainers_events(tmp_path: Path, command: str, knobs: str, code: int, last: str) -> None:
    assert (STANDIN / "tuneforge_events.py").resolve() == (PKG / "events.py").resolve()
    proc, out = run_standin(tmp_path, command, knobs)
    assert proc.returncode == code, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert records and records[-1]["event"] == last
    for r in records:
        assert check_event(r) == [], r
    if command == "train":
        saved = json.loads((out / "summary.json").read_text())
        assert saved["status"] == ("succeeded" if code == 0 else "failed")


def test_the_operator_reads_every_emitted_event_as_its_stage() -> None:
    """The trainer's side of the contract: each line its reporter writes is folded by the
    operator's progress parser into the stage events.py gives it."""
    from tuneforge.finetune.progress import parse_progress

    for name in sorted(EVENTS):
        stream = io.StringIO()
        ProgressReporter(None, stream=stream, enabled=True).emit(name)
        progress = parse_progress(stream.getvalue())
        assert progress is not None and progress.stage == STAGE_BY_EVENT[name], name
