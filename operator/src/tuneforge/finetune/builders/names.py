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


def train_job_name(ftj: str, revision: int) -> str:
    return f"{ftj}-train-{revision}"


def workers_service_name(ftj: str, revision: int) -> str:
    """The headless Service of a multi-node training Job: the Job's own name, so pod i resolves
    as ``<job>-<i>.<job>`` (the Indexed Job's hostname under this subdomain)."""
    return train_job_name(ftj, revision)


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
