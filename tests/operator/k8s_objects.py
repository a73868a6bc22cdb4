"""Projections of Jobs and Pods as the operator's indexes hold them, for table-driven tests."""

from __future__ import annotations

import json
from typing import Any


def job(name: str, *, complete: bool = False, failed: str | None = None, suspend: bool = False,
        failed_count: int = 0, revision: int = 1) -> dict[str, Any]:
    conditions = []
    if complete:
        conditions.append({"type": "Complete", "status": "True"})
    if failed:
        conditions.append({"type": "Failed", "status": "True", "reason": failed, "message": f"Job has reached {failed}"})
    return {"metadata": {"name": name, "labels": {"tuneforge.dev/revision": str(revision)}},
            "spec": {"suspend": suspend}, "status": {"conditions": conditions, "failed": failed_count}}


def pod(job_name: str, *, phase: str = "Pending", unscheduled: str | None = None, waiting: str | None = None,
        running_since: str | None = None, terminated: dict[str, Any] | None = None, scheduled: bool = True) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "conditions": []}
    if unscheduled:
        status["conditions"].append({"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": unscheduled})
    elif scheduled:
        status["conditions"].append({"type": "PodScheduled", "status": "True"})
    state: dict[str, Any] = {}
    if waiting:
        state["waiting"] = {"reason": waiting, "message": f'secret "hf" not found' if waiting == "CreateContainerConfigError" else ""}
    if running_since:
        state["running"] = {"startedAt": running_since}
    if terminated:
        state["terminated"] = terminated
    if state:
        status["containerStatuses"] = [{"name": "trainer", "state": state}]
    return {"metadata": {"name": f"{job_name}-abcde", "labels": {"batch.kubernetes.io/job-name": job_name}}, "status": status}


def summary(**fields: Any) -> str:
    base = {"version": "tuneforge.dev/trainer-summary/v1", "status": "succeeded", "command": "train",
            "accuracy": 0.93, "macro_f1": 0.92, "eval_loss": 0.21, "n_eval": 80,
            "worst_classes": [{"label": "card_arrival", "f1": 0.81}, {"label": "pin_blocked", "f1": 0.86}],
            "baselines": [{"name": "zero_shot", "accuracy": 0.0}, {"name": "tfidf_lr", "accuracy": 0.96}],
            # As the trainer writes it: the mount path it opened (status maps it back to pvc://).
            "artifacts": {"adapter": "/mnt/pvc/artifacts/runs/ns/x/r1/adapter"}}
    base.update(fields)
    return json.dumps(base)


def finished(code: int, message: str | None, started: str = "2026-01-01T00:00:00Z", finished_at: str = "2026-01-01T00:10:00Z") -> dict[str, Any]:
    t: dict[str, Any] = {"exitCode": code, "startedAt": started, "finishedAt": finished_at}
    if message is not None:
        t["message"] = message
    return t
