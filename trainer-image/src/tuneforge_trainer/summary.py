"""The compact result summary the trainer hands to the operator.

The trainer writes one JSON object (at most 4 KiB, the Kubernetes termination-message limit) to
the container's termination-message path; the operator reads it from the Pod status
(``state.terminated.message``) with :func:`parse_summary`. The whole summary is also saved as
``summary.json`` beside the artifacts (:func:`save_summary`), for when the pod is gone. No torch import: the operator imports
this module. The full report (``metrics.json``) lives beside the artifacts.
"""

from __future__ import annotations

import json
import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "MAX_SUMMARY_BYTES",
    "SUMMARY_FILE",
    "SUMMARY_VERSION",
    "AdapterVersion",
    "BaselineScore",
    "ClassScore",
    "SourceRef",
    "TrainerSummary",
    "parse_summary",
    "remove_saved_summary",
    "save_summary",
    "write_summary",
]

MAX_SUMMARY_BYTES = 4096
SUMMARY_VERSION = "tuneforge.dev/trainer-summary/v1"
# The summary's name inside the output location (``<output.dir>/summary.json`` after train,
# ``<output.dir>/evaluation/summary.json`` after evaluate).
SUMMARY_FILE = "summary.json"


class ClassScore(BaseModel):
    """One class's held-out scores (the worst classes are listed)."""

    model_config = ConfigDict(extra="ignore")

    label: str = Field(description="Class label.")
    f1: float = Field(description="F1 on the held-out rows.")
    precision: float | None = Field(default=None, description="Precision.")
    recall: float | None = Field(default=None, description="Recall.")
    support: int = Field(default=0, description="Held-out rows of this class.")


class BaselineScore(BaseModel):
    """A baseline scored on the same held-out rows as the adapter."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(description="zero_shot, few_shot_<k>, tfidf_lr or openai:<model>.")
    accuracy: float | None = Field(
        default=None,
        description="Accuracy (or exact match) 0..1; for log-likelihood scoring, by summed label log-likelihood (what the gate compares).",
    )
    macro_f1: float | None = Field(default=None, description="Macro-F1 0..1 (classification).")
    accuracy_norm: float | None = Field(
        default=None,
        description="Log-likelihood scoring only: accuracy by log-likelihood per label character (lm-eval-harness acc_norm); reported, not gated.",
    )
    error: str | None = Field(default=None, description="Why the baseline could not be scored.")


class SourceRef(BaseModel):
    """A model or dataset the adapter came from, with the digest of what was used."""

    model_config = ConfigDict(extra="ignore")

    uri: str = Field(description="Where it came from, as configured.")
    digest: str | None = Field(default=None, description="sha256:<hex> content digest of what was used.")


class AdapterVersion(BaseModel):
    """Which bytes a run produced: the adapter's URI and content digest, and its base."""

    model_config = ConfigDict(extra="ignore")

    uri: str = Field(description="Where the adapter folder was written.")
    digest: str = Field(description="sha256:<hex> content digest of the adapter's files (tuneforge.json).")
    base_model: SourceRef = Field(description="The base model it was trained on.")
    dataset: SourceRef | None = Field(default=None, description="The training data (digest of the prepared rows).")


class TrainerSummary(BaseModel):
    """What the operator needs to know about a finished (or failed) trainer run."""

    # Unknown keys are ignored so that an older operator can read a newer trainer's summary.
    model_config = ConfigDict(extra="ignore")

    version: str = Field(default=SUMMARY_VERSION, description="Summary schema version.")
    status: Literal["succeeded", "failed", "preempted", "validated"] = Field(
        description="succeeded, failed, preempted (SIGTERM: checkpoint saved, resumable) or validated."
    )
    command: Literal["validate", "train", "evaluate"] = Field(description="The CLI subcommand.")
    message: str = Field(default="", description="One line for a human (the error when failed).")
    task: Literal["classification", "generation"] | None = Field(default=None, description="Task type.")
    accuracy: float | None = Field(default=None, description="Held-out accuracy (or exact match) 0..1.")
    macro_f1: float | None = Field(default=None, description="Held-out macro-F1 0..1.")
    accuracy_norm: float | None = Field(
        default=None,
        description="Log-likelihood scoring only: length-normalised accuracy (acc_norm); reported beside accuracy, which the gate uses.",
    )
    exact_match: float | None = Field(default=None, description="Generation: exact match 0..1.")
    field_f1: float | None = Field(default=None, description="Generation with JSON outputs: field F1.")
    eval_loss: float | None = Field(
        default=None, description="Final eval loss on the validation rows (train); label NLL on the test rows (evaluate)."
    )
    train_loss: float | None = Field(default=None, description="Final training loss.")
    worst_classes: list[ClassScore] = Field(default_factory=list, description="Lowest-F1 classes.")
    baselines: list[BaselineScore] = Field(default_factory=list, description="Baseline scores.")
    n_train: int | None = Field(default=None, description="Training rows after preparation.")
    n_validation: int | None = Field(
        default=None, description="Validation rows: eval loss and model selection, never scored for the gate."
    )
    n_eval: int | None = Field(default=None, description="Test rows scored (reported and gated).")
    n_dropped: int | None = Field(default=None, description="Rows dropped by data preparation.")
    steps: int | None = Field(default=None, description="Optimiser steps completed.")
    resumed_from_step: int | None = Field(default=None, description="Checkpoint step resumed from.")
    train_seconds: float | None = Field(default=None, description="Wall time of training.")
    eval_seconds: float | None = Field(default=None, description="Wall time of evaluation.")
    tokens_per_second: float | None = Field(default=None, description="Training throughput.")
    device: str | None = Field(default=None, description="cpu or cuda:<name>.")
    quantization: str | None = Field(default=None, description="Quantization used: 4bit, 8bit, none.")
    adapter: AdapterVersion | None = Field(default=None, description="The adapter version this run wrote.")
    artifacts: dict[str, str] = Field(
        default_factory=dict,
        description="URIs: adapter, merged, metrics, model_card, plots, checkpoint.",
    )

    def to_json(self, limit: int = MAX_SUMMARY_BYTES) -> str:
        """Compact JSON no larger than ``limit`` bytes, trimming the least important parts first."""
        data = self.model_dump(exclude_none=True)
        text = _dump(data)
        # Trim order: worst classes one by one, artifacts but the adapter, the message.
        while len(text.encode()) > limit and data.get("worst_classes"):
            data["worst_classes"] = data["worst_classes"][:-1]
            text = _dump(data)
        if len(text.encode()) > limit:
            arts = data.get("artifacts", {})
            data["artifacts"] = {k: v for k, v in arts.items() if k == "adapter"}
            text = _dump(data)
        if len(text.encode()) > limit:
            for b in data.get("baselines", []):
                b.pop("error", None)
            text = _dump(data)
        if len(text.encode()) > limit:
            over = len(text.encode()) - limit
            msg = data.get("message", "")
            data["message"] = msg[: max(0, len(msg) - over - 3)] + "..."
            text = _dump(data)
        if len(text.encode()) > limit:
            keep = ("version", "status", "command", "message", "accuracy", "macro_f1", "adapter")
            text = _dump({k: data[k] for k in keep if k in data})
        return text


def _dump(data: dict[str, object]) -> str:
    return json.dumps(data, separators=(",", ":"), sort_keys=False, ensure_ascii=False)


def write_summary(summary: TrainerSummary, path: str | None) -> None:
    """Write the summary to ``path`` (the termination-message file); silently skip when None.

    A missing parent folder, or a missing file under /dev (outside Kubernetes), is not an error.
    """
    if not path:
        return
    parent = os.path.dirname(path)
    if parent and not os.path.isdir(parent):
        return
    # Outside Kubernetes /dev/termination-log does not exist; do not create files under /dev.
    if path.startswith("/dev/") and not os.path.exists(path):
        return
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(summary.to_json())
    except OSError:
        pass


def save_summary(summary: TrainerSummary, folder: str) -> str:
    """Write the whole summary (not trimmed to 4 KiB) as ``folder/summary.json``; returns the path.

    The copy that outlives the pod: the trainer writes it into the artifact folder (uploaded with
    the artifacts for s3:// outputs), so the operator can read the result when the pod and its
    termination message are gone.
    """
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, SUMMARY_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(summary.model_dump_json(exclude_none=True))
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)  # readers never see half a file
    return path


def remove_saved_summary(folder: str) -> None:
    """Remove ``folder/summary.json`` if present (a new run starts in a used output folder)."""
    try:
        os.remove(os.path.join(folder, SUMMARY_FILE))
    except FileNotFoundError:
        pass


def parse_summary(text: str) -> TrainerSummary:
    """Parse a termination message written by the trainer (raises ``ValueError`` if not one)."""
    return TrainerSummary.model_validate_json(text.strip())
