"""A search through reconcile (indexes in, API calls out, no cluster): trials start two at a time,
each with its own ConfigMap; one fails and the search goes on; an operator restart mid-search
(nothing in memory, the pods of finished trials gone) starts no finished trial again; the winner's
settings become the revision's ConfigMap and training Job; the job ends with the winner's
evaluation and adapter."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import yaml

from ftj_helpers import MINIMAL_SPEC, defaulted_spec
from k8s_objects import finished, summary
from test_gang_reconcile import FakeKube
from tuneforge.finetune.reconcile import Room, reconcile
from tuneforge.runtime import Runtime, pack
from tuneforge.settings import Settings

NS, NAME, UID = "team-a", "intent", "ftj-uid"


class RecordingKube(FakeKube):
    """FakeKube that keeps the bodies it was asked to create."""

    def __init__(self) -> None:
        super().__init__()
        self.created: dict[str, dict[str, Any]] = {}

    async def create(self, obj: dict[str, Any]) -> bool:
        self.created[f"{obj['kind']}/{obj['metadata']['name']}"] = obj
        return await super().create(obj)


def _job(name: str, condition: str | None = None) -> dict[str, Any]:
    conds = [{"type": condition, "status": "True", "reason": "BackoffLimitExceeded"}] if condition else []
    return {"metadata": {"name": name, "uid": f"uid-{name}", "labels": {"tuneforge.dev/revision": "1"}, "controllerUid": UID},
            "status": {"conditions": conds}, "spec": {"suspend": False}}


def _pod(job: dict[str, Any], exit_code: int | None = None, message: str | None = None,
         ended: str = "2026-12-05T00:05:00Z") -> dict[str, Any]:
    state: dict[str, Any] = {"running": {"startedAt": "2026-12-05T00:00:00Z"}}
    if exit_code is not None:
        state = {"terminated": finished(exit_code, message, "2026-12-05T00:00:00Z", ended)}
    return {"metadata": {"name": f"{job['metadata']['name']}-x", "uid": f"p-{job['metadata']['name']}",
                         "labels": {"job-name": job["metadata"]["name"]}, "controllerUid": job["metadata"]["uid"]},
            "status": {"phase": "Running" if exit_code is None else ("Succeeded" if exit_code == 0 else "Failed"),
                       "conditions": [{"type": "PodScheduled", "status": "True"}],
                       "containerStatuses": [{"name": "trainer", "state": state}]}}


def _scored(acc: float) -> str:
    return summary(accuracy=acc, eval_loss=0.3, n_eval=80, steps=50, baselines=[], artifacts={})


def test_a_search_through_reconcile_survives_a_failed_trial_and_a_restart() -> None:
    raw = copy.deepcopy(MINIMAL_SPEC)
    raw["search"] = {"space": {"head": ["lm", "classifier"], "maxSteps": [20, 40]}, "parallelism": 2}
    raw["evaluation"] = {"baselines": [{"type": "tfidf-logreg"}]}
    body = {"metadata": {"name": NAME, "namespace": NS, "uid": UID, "generation": 1}, "spec": defaulted_spec(raw)}
    kube = RecordingKube()
    jobs: dict[str, dict[str, Any]] = {"intent-validate-1": _job("intent-validate-1", "Complete")}
    pods: dict[str, dict[str, Any]] = {}
    ctx = Room(rt=Runtime(Settings(trainer_image="t:1"), kube, lambda *a: None), ftjs={}, jobs={}, pods={})  # type: ignore[arg-type]

    def run() -> dict[str, Any]:
        ctx.ftjs = {(NS, NAME): [pack({**body, "status": kube.status})]}
        ctx.jobs = {(NS, NAME): [pack(j) for j in jobs.values()]}
        ctx.pods = {(NS, NAME): [pack(p) for p in pods.values()]}
        kube.calls.clear()
        asyncio.run(reconcile(ctx, (NS, NAME)))
        return kube.status

    def start(name: str) -> None:
        jobs[name] = _job(name)
        pods[name] = _pod(jobs[name])

    def end(name: str, code: int, message: str, ended: str = "2026-12-05T00:05:00Z") -> None:
        jobs[name] = _job(name, "Complete" if code == 0 else "Failed")
        pods[name] = _pod(jobs[name], code, message, ended)

    st = run()
    assert kube.calls == [("create ConfigMap", "intent-trial-1-0"), ("create Job", "intent-trial-1-0"),
                          ("create ConfigMap", "intent-trial-1-1"), ("create Job", "intent-trial-1-1")]
    config = yaml.safe_load(kube.created["ConfigMap/intent-trial-1-1"]["data"]["config.yaml"])
    assert (config["task"]["head"], config["training"]["max_steps"], config["eval"]["split"]) == ("lm", 40, "validation")
    assert (st["phase"], st["reason"], st["search"]["display"]) == ("Queued", "Searching", "0/4")

    start("intent-trial-1-0")
    start("intent-trial-1-1")
    st = run()
    assert kube.calls == [] and st["phase"] == "Running"  # parallelism 2: nothing more

    # Trial 0 fails; the search goes on with trial 2.
    end("intent-trial-1-0", 1, summary(status="failed", message="out of memory", accuracy=None))
    st = run()
    assert ("create Job", "intent-trial-1-2") in kube.calls and ("create Job", "intent-trial-1-3") not in kube.calls
    assert st["search"]["trials"][0]["phase"] == "Failed" and st["phase"] == "Running"

    end("intent-trial-1-1", 0, _scored(0.85), ended="2026-12-05T00:02:00Z")
    start("intent-trial-1-2")
    st = run()
    assert kube.calls == [("create ConfigMap", "intent-trial-1-3"), ("create Job", "intent-trial-1-3")]
    assert st["search"]["display"] == "2/4"

    # The operator restarts: nothing in memory, and the pods of the finished trials are gone.
    ctx.written.clear()
    del pods["intent-trial-1-0"], pods["intent-trial-1-1"]
    start("intent-trial-1-3")
    st = run()
    assert kube.calls == [], "a restart starts no trial again"
    assert [t["phase"] for t in st["search"]["trials"]] == ["Failed", "Succeeded", "Running", "Running"]
    assert st["search"]["trials"][1]["validationAccuracy"] == 0.85

    # Trial 2 (classifier, 20 steps) scores best; trial 3 is within one SE of it and cheaper;
    # trial 1 (0.85, the cheapest) is not within it.
    end("intent-trial-1-2", 0, _scored(0.95), ended="2026-12-05T00:09:00Z")
    end("intent-trial-1-3", 0, _scored(0.94), ended="2026-12-05T00:04:00Z")
    st = run()
    winner = st["search"]["winner"]
    assert (winner["index"], winner["params"]) == (3, {"head": "classifier", "maxSteps": 40})
    assert kube.calls == [("create ConfigMap", "intent-config-1-winner"), ("create Job", "intent-train-1")]
    final = yaml.safe_load(kube.created["ConfigMap/intent-config-1-winner"]["data"]["config.yaml"])
    assert (final["task"]["head"], final["training"]["max_steps"]) == ("classifier", 40)
    assert final["eval"].get("split", "test") == "test" and final["eval"]["baselines"]["tfidf_lr"] is True
    train = kube.created["Job/intent-train-1"]["spec"]["template"]["spec"]
    assert train["volumes"][0]["configMap"]["name"] == "intent-config-1-winner"

    jobs["intent-train-1"] = _job("intent-train-1", "Complete")
    pods["intent-train-1"] = _pod(jobs["intent-train-1"], 0, summary(
        accuracy=0.96, adapter={"uri": "/mnt/pvc/artifacts/runs/a/adapter", "digest": "sha256:" + "b" * 64}))
    st = run()
    assert (st["phase"], st["evaluation"]["accuracy"], st["adapter"]["uri"]) == ("Succeeded", 0.96, "pvc://artifacts/runs/a/adapter")
    assert st["search"]["winner"]["index"] == 3 and st["search"]["display"] == "4/4"
    # The trials' GPU-seconds count in the revision's (one GPU each; the final Job 300).
    assert st["gpuSeconds"] == 300 + 120 + 540 + 240 + 300
