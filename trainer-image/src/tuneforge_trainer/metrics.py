"""Scores: classification (accuracy, macro-F1, per-class, confusion matrix), generation (exact
match, field-level F1 for JSON outputs) and latency per row. Pure functions over lists of strings
and timings; scikit-learn and numpy are imported inside.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

__all__ = [
    "Timings", "classification_metrics", "exact_match", "field_f1", "generation_metrics", "latency_summary",
    "normalize_answer", "worst_classes",
]

# (rows, seconds) per request: a batch of rows scored together, or one row sent alone.
Timings = list[tuple[int, float]]


def latency_summary(timings: Timings) -> dict[str, Any] | None:
    """p50/p99 latency per row from per-request timings: every row of a batch waited for the
    whole batch (what a caller sending that batch sees), so a row's latency is its request's.
    ``rows_per_request`` is the largest batch (1 for a model asked row by row)."""
    import numpy as np

    per_row = [seconds for rows, seconds in timings for _ in range(rows)]
    if not per_row:
        return None
    p50, p99 = np.percentile(np.asarray(per_row) * 1000.0, [50, 99])
    return {"p50_ms": round(float(p50), 2), "p99_ms": round(float(p99), 2),
            "rows_per_request": max(rows for rows, _ in timings)}


def normalize_answer(text: str) -> str:
    """Trim whitespace, surrounding quotes and a trailing period (how answers are compared)."""
    t = text.strip()
    t = t.split("\n")[0].strip() if "\n" in t and not t.lstrip().startswith(("{", "[")) else t
    return t.strip().strip("\"'`").rstrip(".").strip()


def classification_metrics(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix.

    Predictions outside ``labels`` count as wrong (they appear as an extra ``<other>`` column).
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    if len(y_true) != len(y_pred):
        raise ValueError("y_true and y_pred differ in length")
    if not y_true:
        return {"accuracy": None, "macro_f1": None, "per_class": {}, "confusion_matrix": [], "labels": list(labels), "n": 0}
    known = set(labels)
    other = "<other>"
    pred = [p if p in known else other for p in y_pred]
    cm_labels = list(labels) + ([other] if other in pred else [])
    p, r, f, s = precision_recall_fscore_support(y_true, pred, labels=list(labels), zero_division=0)
    per_class = {
        lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, lab in enumerate(labels)
    }
    present = [lab for lab in labels if per_class[lab]["support"] > 0]
    return {
        "accuracy": float(accuracy_score(y_true, pred)),
        "macro_f1": float(f1_score(y_true, pred, labels=present, average="macro", zero_division=0)),
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(y_true, pred, labels=cm_labels).tolist(),
        "labels": cm_labels,
        "n": len(y_true),
    }


def worst_classes(per_class: dict[str, dict[str, float]], k: int) -> list[dict[str, Any]]:
    """The ``k`` classes with the lowest F1 (ties by label), only those with held-out rows."""
    rows = [dict(label=lab, **v) for lab, v in per_class.items() if v.get("support", 0) > 0]
    rows.sort(key=lambda r: (r["f1"], r["label"]))
    return rows[:k]


def exact_match(y_true: Sequence[str], y_pred: Sequence[str]) -> float | None:
    if not y_true:
        return None
    return sum(normalize_answer(a) == normalize_answer(b) for a, b in zip(y_true, y_pred)) / len(y_true)


def _flatten(obj: Any, prefix: str = "") -> set[tuple[str, str]]:
    if isinstance(obj, dict):
        out: set[tuple[str, str]] = set()
        for k, v in obj.items():
            out |= _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(obj, list):
        out = set()
        for i, v in enumerate(obj):
            out |= _flatten(v, f"{prefix}[{i}]")
        return out
    return {(prefix, json.dumps(obj, sort_keys=True))}


def field_f1(true_json: str, pred_json: str) -> float | None:
    """F1 over (field path, value) pairs of two JSON documents; None if ``true_json`` is not JSON.

    An unparsable prediction scores 0.
    """
    try:
        t = _flatten(json.loads(true_json))
    except (json.JSONDecodeError, TypeError):
        return None
    try:
        p = _flatten(json.loads(pred_json))
    except (json.JSONDecodeError, TypeError):
        return 0.0
    if not t and not p:
        return 1.0
    tp = len(t & p)
    if tp == 0:
        return 0.0
    prec, rec = tp / len(p), tp / len(t)
    return 2 * prec * rec / (prec + rec)


def generation_metrics(y_true: Sequence[str], y_pred: Sequence[str]) -> dict[str, Any]:
    """Exact match, and mean field F1 over rows whose target is JSON (None when none is)."""
    scores = [s for a, b in zip(y_true, y_pred) if (s := field_f1(a.strip(), normalize_answer(b))) is not None]
    em = exact_match(y_true, y_pred)
    return {
        "accuracy": em,
        "exact_match": em,
        "field_f1": sum(scores) / len(scores) if scores else None,
        "json_rows": len(scores),
        "n": len(y_true),
    }
