"""Live training progress, parsed from the trainer's JSON-line log.

Route (least privilege): the trainer pod gets no Kubernetes credentials at all
(automountServiceAccountToken: false); it prints one JSON object per line on stdout. The
operator, which already watches the pod, reads the last few lines through the pods/log
subresource (``get pods/log`` — read-only) every ``progress_interval`` seconds for running
trainers only. The alternative — the trainer patching an annotation on its own Pod — would give
every training pod a token able to write Pods in the user's namespace. The termination message
carries the final summary; the log carries progress.

The stage each event means comes from the trainer's own event definitions
(``tuneforge_trainer.events``, standard library only). The operator carries that one file as
``tuneforge.finetune.trainer_events`` — a symlink in the source tree, a plain copy in the image (the image
build copies its context with symlinks followed) — so the two sides cannot name events apart.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from .trainer_events import STAGE_BY_EVENT


@dataclasses.dataclass(frozen=True)
class Progress:
    stage: str
    step: int | None = None
    total_steps: int | None = None
    epoch: float | None = None
    train_loss: float | None = None
    eval_loss: float | None = None
    eta_seconds: int | None = None

    @property
    def percent(self) -> float | None:
        if self.step is None or not self.total_steps:
            return None
        return round(min(100.0, 100.0 * self.step / self.total_steps), 1)


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def parse_progress(log_tail: str, previous: Progress | None = None) -> Progress | None:
    """Fold the JSON lines of a log tail (oldest first) into the latest progress.

    Non-JSON lines (warnings, tracebacks) are skipped; fields missing from the newest event keep
    their earlier value so an ``eval`` event does not erase the step count.
    """
    current = previous
    for line in log_tail.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(rec, dict) or "event" not in rec:
            continue
        stage = str(rec.get("stage") or STAGE_BY_EVENT.get(str(rec["event"]), str(rec["event"])))
        base = current or Progress(stage=stage)
        step = rec.get("step") if isinstance(rec.get("step"), int) else base.step
        total = rec.get("max_steps", rec.get("total_steps"))
        total = total if isinstance(total, int) else base.total_steps
        eta = _num(rec.get("eta_seconds"))
        if stage == "train" and step is not None and total and step >= total:
            stage = "evaluate"  # the trainer evaluates right after the last optimiser step
        current = Progress(
            stage=stage,
            step=step,
            total_steps=total,
            epoch=_num(rec.get("epoch")) if _num(rec.get("epoch")) is not None else base.epoch,
            train_loss=_num(rec.get("loss")) if _num(rec.get("loss")) is not None else base.train_loss,
            eval_loss=_num(rec.get("eval_loss")) if _num(rec.get("eval_loss")) is not None else base.eval_loss,
            eta_seconds=int(eta) if eta is not None else (None if stage != "train" else base.eta_seconds),
        )
    return current
