"""The one-standard-error rule (Breiman et al., CART): the cheapest candidate whose validation
accuracy is within one standard error of the best.

A few dozen validation rows cannot tell 0.95 from 0.97 apart, so the cheaper of two settings the
rows cannot separate is preferred. The standard error is the binomial one of the best accuracy on
its own number of validation rows, ``sqrt(p (1 - p) / n)``. Pure and dependency-free: the operator's
search (``finetune.search``) and ``bench/hparam_sweep.py`` both choose with it, each saying what
"cheapest" means for it by the ``cost`` it passes (the search: measured GPU-seconds).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Generic, Sequence, TypeVar

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Candidate(Generic[T]):
    """One scored setting: ``cost`` is compared as a tuple, lower is cheaper."""

    key: T
    accuracy: float
    rows: int
    cost: tuple[float, ...]
    loss: float | None = None


@dataclasses.dataclass(frozen=True)
class Choice(Generic[T]):
    """The chosen candidate, the best accuracy, its standard error and the accuracy threshold."""

    key: T
    best_accuracy: float
    standard_error: float
    threshold: float


def standard_error(accuracy: float, rows: int) -> float:
    """The binomial standard error of an accuracy measured on ``rows`` rows."""
    p = min(max(accuracy, 0.0), 1.0)
    return math.sqrt(p * (1.0 - p) / max(rows, 1))


def one_standard_error(candidates: Sequence[Candidate[T]]) -> Choice[T] | None:
    """The cheapest candidate within one standard error of the best accuracy; ties go to the
    higher accuracy, then the lower validation loss, then the earlier candidate. None when there
    are no candidates."""
    if not candidates:
        return None
    # max() keeps the first of equal accuracies: the earlier candidate is the reference.
    top = max(candidates, key=lambda c: c.accuracy)
    se = standard_error(top.accuracy, top.rows)
    # A hair of slack: an accuracy exactly one SE below the best (k/n arithmetic) is within it.
    threshold = top.accuracy - se - 1e-12
    close = [(i, c) for i, c in enumerate(candidates) if c.accuracy >= threshold]
    inf = float("inf")
    _, chosen = min(close, key=lambda ic: (ic[1].cost, -ic[1].accuracy,
                                           ic[1].loss if ic[1].loss is not None else inf, ic[0]))
    return Choice(chosen.key, top.accuracy, se, top.accuracy - se)
