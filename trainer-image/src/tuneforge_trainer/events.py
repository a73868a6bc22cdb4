"""The trainer's progress events: the one definition the trainer, the operator and the stand-in share.

The trainer prints one JSON object per line (``{"event": NAME, "ts": unix seconds, ...fields}``)
on stdout and in its progress file; the operator folds the lines it reads through ``pods/log``
into ``status.progress``. This module names every event, the fields each may carry and the stage
it means to a user, so the three sides cannot drift apart: the trainer's reporter refuses other
names, and tests check the trainer's emit calls and the stand-in's output against it.

Python standard library only, no imports from the package: the operator image and the test
stand-in image copy this one file (the stand-in's build context holds a symlink to it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "BASELINE",
    "CHECKPOINT",
    "DATA",
    "DONE",
    "ERROR",
    "EVAL",
    "EVAL_START",
    "EVENTS",
    "FIELDS",
    "PREEMPTED",
    "PROGRESS",
    "RESUME",
    "STAGE_BY_EVENT",
    "START",
    "check_event",
    "stage_of",
]

START = "start"  # a subcommand began
DATA = "data"  # data preparation finished (row counts, drops)
RESUME = "resume"  # training resumes from a checkpoint
PROGRESS = "progress"  # a logged optimiser step (losses, rate, ETA)
CHECKPOINT = "checkpoint"  # a checkpoint was saved
PREEMPTED = "preempted"  # SIGTERM: checkpoint saved, exiting 143
EVAL_START = "eval_start"  # held-out scoring of the trained model begins
EVAL = "eval"  # the trained model's held-out scores
BASELINE = "baseline"  # one baseline scored on the same rows
DONE = "done"  # the subcommand finished; the summary is written
ERROR = "error"  # the subcommand failed; the message is the summary's

# The stage each event puts the run in, as status.progress.stage shows it.
STAGE_BY_EVENT: Mapping[str, str] = {
    START: "start",
    DATA: "data",
    RESUME: "train",
    PROGRESS: "train",
    CHECKPOINT: "train",
    PREEMPTED: "preempted",
    EVAL_START: "evaluate",
    EVAL: "evaluate",
    BASELINE: "evaluate",
    DONE: "done",
    ERROR: "error",
}

EVENTS = frozenset(STAGE_BY_EVENT)

# The fields each event may carry besides "event" and "ts" (any of them may be absent).
FIELDS: Mapping[str, frozenset[str]] = {
    START: frozenset({"command", "run_name"}),
    DATA: frozenset({
        "train_rows", "validation_rows", "eval_rows", "labels", "format", "loaded", "loaded_eval", "dropped",
        "dropped_by_reason", "leaked", "warnings",
    }),
    RESUME: frozenset({"checkpoint", "step"}),
    PROGRESS: frozenset({
        "step", "max_steps", "epoch", "loss", "eval_loss", "learning_rate", "tokens_per_second",
        "eta_seconds",
    }),
    CHECKPOINT: frozenset({"step"}),
    PREEMPTED: frozenset({"step"}),
    EVAL_START: frozenset({"rows"}),
    EVAL: frozenset({"accuracy", "macro_f1", "accuracy_norm", "rows", "seconds"}),
    BASELINE: frozenset({"name", "accuracy", "accuracy_norm", "error", "seconds"}),
    DONE: frozenset({"accuracy", "macro_f1", "eval_loss", "steps", "train_seconds", "wall_seconds", "adapter_digest"}),
    ERROR: frozenset({"message"}),
}


def stage_of(event: str) -> str | None:
    """The stage an event name means, or None for a name that is not a trainer event."""
    return STAGE_BY_EVENT.get(event)


def check_event(record: Mapping[str, Any]) -> list[str]:
    """What is wrong with one progress record (empty when it is a well-formed trainer event)."""
    name = record.get("event")
    if name not in EVENTS:
        return [f"unknown event {name!r}"]
    problems = []
    if not isinstance(record.get("ts"), (int, float)):
        problems.append(f"{name}: ts missing")
    extra = sorted(set(record) - {"event", "ts"} - FIELDS[str(name)])
    if extra:
        problems.append(f"{name}: unknown fields {extra}")
    return problems
