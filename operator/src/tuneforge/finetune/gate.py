"""The quality gate: does an evaluated adapter meet the FineTuneJob's thresholds?"""

from __future__ import annotations

import dataclasses

from .results import Summary, find_baseline
from .spec import Gate


@dataclasses.dataclass(frozen=True)
class GateOutcome:
    passed: bool
    reasons: tuple[str, ...]

    @property
    def outcome(self) -> str:
        return "Passed" if self.passed else "Failed"


def evaluate_gate(gate: Gate, summary: Summary) -> GateOutcome:
    """Check every threshold that is set; the reasons name the field and both numbers."""
    failed: list[str] = []
    met: list[str] = []
    acc = summary.accuracy
    if gate.min_accuracy is not None:
        if acc is None:
            failed.append("evaluation.gate.minAccuracy: the summary has no accuracy")
        elif acc < gate.min_accuracy:
            failed.append(f"evaluation.gate.minAccuracy: accuracy {acc:.4f} < {gate.min_accuracy:.4f}")
        else:
            met.append(f"accuracy {acc:.4f} >= minAccuracy {gate.min_accuracy:.4f}")
    if gate.min_class_f1 is not None:
        if not summary.worst_classes:
            failed.append("evaluation.gate.minClassF1: the summary has no per-class scores")
        else:
            below = [c for c in summary.worst_classes if c.f1 < gate.min_class_f1]
            if below:
                names = ", ".join(f"{c.label!r} {c.f1:.4f}" for c in below)
                failed.append(f"evaluation.gate.minClassF1: F1 below {gate.min_class_f1:.4f} for {names}")
            else:
                met.append(f"every class F1 >= minClassF1 {gate.min_class_f1:.4f}")
    if gate.must_beat_baseline is not None:
        base = find_baseline(summary, gate.must_beat_baseline)
        need = None if base is None or base.accuracy is None else base.accuracy + gate.baseline_margin
        if base is None or base.accuracy is None:
            why = f" ({base.error})" if base is not None and base.error else ""
            failed.append(f"evaluation.gate.mustBeatBaseline: baseline {gate.must_beat_baseline} was not scored{why}")
        elif acc is None:
            failed.append("evaluation.gate.mustBeatBaseline: the summary has no accuracy")
        elif need is not None and not (acc > base.accuracy and acc >= need):
            failed.append(
                f"evaluation.gate.mustBeatBaseline: accuracy {acc:.4f} does not beat "
                f"{gate.must_beat_baseline} {base.accuracy:.4f}"
                + (f" by {gate.baseline_margin:.4f}" if gate.baseline_margin else "")
            )
        else:
            met.append(f"accuracy {acc:.4f} beats {gate.must_beat_baseline} {base.accuracy:.4f}")
    if failed:
        return GateOutcome(False, tuple(failed))
    return GateOutcome(True, tuple(met) or ("no thresholds set",))
