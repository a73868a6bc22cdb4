"""A disrupted gang through reconcile (indexes in, API calls out, no cluster): the restart
creates the next attempt's Job once, the failed attempt's Job is deleted after, status.restarts
holds through the passes, and the revision's end deletes the workers Service (DT-1, DT-5)."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from ftj_helpers import MINIMAL_SPEC, defaulted_spec
from tuneforge.finetune.reconcile import Room, reconcile
from tuneforge.runtime import Runtime, pack, unpack
from tuneforge.settings import Settings

NS, NAME, UID = "team-a", "gang", "ftj-uid"
INDEX = "batch.kubernetes.io/job-completion-index"


class FakeKube:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.status: dict[str, Any] = {}

    async def create(self, obj: dict[str, Any]) -> bool:
        self.calls.append((f"create {obj['kind']}", obj["metadata"]["name"]))
        return True

    async def delete_job(self, namespace: str, name: str) -> None:
        self.calls.append(("delete Job", name))

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        self.calls.append((f"delete {kind}", name))

    async def write_status(self, kind: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        assert kind == "FineTuneJob"
        self.status = copy.deepcopy(status)  # the whole status is replaced


def _job(name: str, uid: str, condition: str | None = None) -> dict[str, Any]:
    conds = [{"type": condition, "status": "True", "reason": "PodFailurePolicy"}] if condition else []
    return {"metadata": {"name": name, "uid": uid, "labels": {"tuneforge.dev/revision": "1"}, "controllerUid": UID},
            "status": {"conditions": conds}, "spec": {"suspend": False}}


def _pod(job: dict[str, Any], rank: int, exit_code: int | None = None, disrupted: bool = False) -> dict[str, Any]:
    state: dict[str, Any] = {"running": {"startedAt": "2026-12-05T00:00:00Z"}}
    if exit_code is not None:
        state = {"terminated": {"exitCode": exit_code, "reason": "Error", "finishedAt": "2026-12-05T00:01:00Z"}}
    conds = [{"type": "PodScheduled", "status": "True"}]
    if disrupted:
        conds.append({"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"})
    return {"metadata": {"name": f"{job['metadata']['name']}-{rank}-x", "uid": f"{job['metadata']['uid']}-{rank}",
                         "labels": {"job-name": job["metadata"]["name"]}, "controllerUid": job["metadata"]["uid"],
                         "annotations": {INDEX: str(rank)}, "creationTimestamp": "2026-12-05T00:00:00Z"},
            "spec": {"nodeName": "gpu-a"},
            "status": {"phase": "Failed" if exit_code is not None else "Running", "conditions": conds,
                       "containerStatuses": [{"name": "trainer", "state": state}]}}


def test_a_disrupted_gang_restarts_once_and_keeps_counting() -> None:
    raw = copy.deepcopy(MINIMAL_SPEC)
    raw["resources"] = {"nodes": 2, "gpus": 8}
    body = {"metadata": {"name": NAME, "namespace": NS, "uid": UID, "generation": 1}, "spec": defaulted_spec(raw)}
    kube = FakeKube()
    jobs: list[dict[str, Any]] = [_job("gang-validate-1", "v", "Complete")]
    pods: list[dict[str, Any]] = []
    ctx = Room(rt=Runtime(Settings(trainer_image="t:1"), kube, lambda *a: None), ftjs={}, jobs={}, pods={})  # type: ignore[arg-type]

    def run() -> dict[str, Any]:
        ctx.ftjs = {(NS, NAME): [pack({**body, "status": kube.status})]}
        ctx.jobs = {(NS, NAME): [pack(j) for j in jobs]}
        ctx.pods = {(NS, NAME): [pack(p) for p in pods]}
        kube.calls.clear()
        asyncio.run(reconcile(ctx, (NS, NAME)))
        return kube.status

    run()
    assert ("create Job", "gang-train-1") in kube.calls and ("create Service", "gang-train-1") in kube.calls
    first = _job("gang-train-1", "t0")
    jobs.append(first)
    pods[:] = [_pod(first, 0), _pod(first, 1)]
    assert run()["phase"] == "Running" and "restarts" not in kube.status

    # Worker 1 evicted; worker 0 dies of the broken collective first: the gang restarts.
    first["status"]["conditions"] = [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}]
    pods[:] = [_pod(first, 0, exit_code=1), _pod(first, 1, exit_code=137, disrupted=True)]
    st = run()
    assert (st["phase"], st["reason"], st["restarts"]) == ("Running", "GangRestarting", 1)
    assert kube.calls == [("create Service", "gang-train-1"), ("create Job", "gang-train-1-1")]

    # The index has not seen the new Job yet: the same attempt again (AlreadyExists), no attempt 2.
    st = run()
    assert st["restarts"] == 1 and ("create Job", "gang-train-1-1") in kube.calls
    assert ("create Job", "gang-train-1-2") not in kube.calls

    second = _job("gang-train-1-1", "t1")
    jobs.append(second)
    pods[:] = [*pods, _pod(second, 0), _pod(second, 1)]
    st = run()
    assert kube.calls == [("delete Job", "gang-train-1")] and st["restarts"] == 1
    assert st["children"]["trainJob"] == "gang-train-1-1"

    jobs.remove(first)
    pods[:] = [_pod(second, 0), _pod(second, 1)]
    st = run()
    assert (st["phase"], st["restarts"]) == ("Running", 1) and kube.calls == []

    # The operator restarted: no status of its own, only what the apiserver holds.
    ctx.written.clear()
    st = run()
    assert st["restarts"] == 1 and kube.calls == []

    # A worker's own error: the revision fails naming it; the workers Service goes.
    second["status"]["conditions"] = [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}]
    pods[:] = [_pod(second, 0, exit_code=143), _pod(second, 1, exit_code=1)]
    pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"] = "2026-12-05T00:02:00Z"
    st = run()
    assert (st["phase"], st["reason"], st["restarts"]) == ("Failed", "WorkerFailed", 1), st
    assert st["message"].startswith("worker rank 1 of 16 (pod gang-train-1-1-1-x")
    assert kube.calls == [("delete Service", "gang-train-1")]
    assert "workersService" not in st["children"]
    assert run() == st and kube.calls == []
