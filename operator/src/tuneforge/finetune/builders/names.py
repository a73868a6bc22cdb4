"""Deterministic child names and the labels that tie children to their FineTuneJob."""

from __future__ import annotations

import dataclasses
from typing import Any

from ... import GROUP, VERSION
from ...labels import child_labels as _labels
from .. import LABEL_FTJ, LABEL_REVISION

ROLE_VALIDATE = "validate"
ROLE_TRAIN = "train"
ROLE_SUMMARY = "summary"
ROLE_TRIAL = "trial"


@dataclasses.dataclass(frozen=True)
class Owner:
    """The FineTuneJob a child belongs to."""

    name: str
    namespace: str
    uid: str

    @classmethod
    def of(cls, body: Any) -> "Owner":
        meta = body["metadata"]
        return cls(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])


def config_map_name(ftj: str, revision: int) -> str:
    return f"{ftj}-config-{revision}"


def validate_job_name(ftj: str, revision: int) -> str:
    return f"{ftj}-validate-{revision}"


def train_job_name(ftj: str, revision: int, attempt: int = 0) -> str:
    """The training Job of a revision; a gang restarted after a disruption gets ``-<attempt>``
    (a new name, so the new gang never waits for the old one's pods to go, nor meets their
    hostnames). 40 + len("-train-99999-64-63") stays within a pod hostname's 63 characters."""
    return f"{ftj}-train-{revision}" + (f"-{attempt}" if attempt else "")


def train_attempt(ftj: str, revision: int, job: str) -> int | None:
    """Which attempt of the revision's training Job ``job`` is (None: not one of them)."""
    base = train_job_name(ftj, revision)
    if job == base:
        return 0
    head, _, tail = job.rpartition("-")
    return int(tail) if head == base and tail.isdigit() and not tail.startswith("0") else None


def workers_service_name(ftj: str, revision: int) -> str:
    """The headless Service of a revision's multi-node training Jobs (one for all its attempts),
    named as the first attempt's Job: pod i of attempt a resolves as ``<job-a>-<i>.<service>``
    (the Indexed Job's hostname under this subdomain)."""
    return train_job_name(ftj, revision)


def trial_job_name(ftj: str, revision: int, index: int) -> str:
    """A search trial's Job, and the ConfigMap of its config. 40 + len("-trial-99999-31") stays
    within 63 (the job-name label)."""
    return f"{ftj}-trial-{revision}-{index}"


def trial_summary_job_name(ftj: str, revision: int, index: int) -> str:
    """The reader of a trial's summary.json (its pod was gone when its Job had finished).
    40 + len("-trial-99999-31-summary") stays within 63."""
    return f"{trial_job_name(ftj, revision, index)}-summary"


def winner_config_map_name(ftj: str, revision: int) -> str:
    """The config of a searched revision's training Job: the winner's settings, known only once
    every trial has ended (the revision's own ConfigMap, made before, holds the spec as written)."""
    return f"{ftj}-config-{revision}-winner"


def summary_job_name(ftj: str, revision: int) -> str:
    return f"{ftj}-summary-{revision}"


def child_labels(owner: Owner, revision: int, role: str | None = None) -> dict[str, str]:
    return _labels("tuneforge-trainer", {LABEL_FTJ: owner.name, LABEL_REVISION: str(revision)}, role)


def owner_references(owner: Owner) -> list[dict[str, Any]]:
    """Owner reference to the FineTuneJob: garbage collection deletes children with it."""
    return [{
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }]
