"""FineTuneJobs queued by the real Kueue (v0.17.0, run by the ``kueue`` fixture): a ClusterQueue's
nvidia.com/gpu quota over the kwok 8-GPU nodes (or the real node's CPU stand-ins), a LocalQueue in
the test's namespace. Over quota, a FineTuneJob waits Queued with Kueue's own message; a
higher-priority one preempts a lower one, which later resumes from its checkpoint; a 2-node gang
is admitted as one Workload or not at all. Each test writes its timeline to test-output/kueue/."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kueue_helpers import KWOK_H100, REAL_NODE, KueueQueues, Timeline
from operator_helpers import ftj_manifest, pvc_manifest, summary_annotation
from test_operator_cluster import H100, S3_SECRET, kwok_ftj
from tuneforge_localcluster.testing import Cluster, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.pod_security("restricted")]

EIGHT_GPUS = {"gpus": 8, "cpu": "8", "memory": "64Gi"}


def _status(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return dict(cluster.get("finetunejob", name, namespace).get("status") or {})


def _until(what: str, check: Any, timeline: Timeline, cluster: Cluster, namespace: str, names: list[str],
           queues: KueueQueues, op: Any, timeout: float) -> Any:
    """Wait for ``check()`` while recording the timeline of ``names`` and their Workloads."""
    def probe() -> Any:
        op.check_alive()
        timeline.observe(cluster, namespace, names, queues)
        return check()

    return wait_for(what, probe, timeout, 0.5, lambda: "\n".join(timeline.rows) + "\n" + op.log()[-4000:])


def _kwok_annotations(delay: str) -> str:
    """The kwok training pod ends after ``delay`` with a succeeded trainer summary."""
    annotations = json.loads(summary_annotation())
    annotations["pod-complete.stage.kwok.x-k8s.io/delay"] = delay
    # kwok draws the delay between the delay and the jitter-delay (the stage's default jitter is
    # 2 s): without an equal jitter-delay a long delay is cut to seconds.
    annotations["pod-complete.stage.kwok.x-k8s.io/jitter-delay"] = delay
    return json.dumps(annotations)


def _events(cluster: Cluster, namespace: str, pod: str) -> list[dict[str, Any]]:
    """The trainer events (JSON lines) of a pod's log."""
    log = cluster.kubectl("logs", pod, "-n", namespace, "-c", "trainer").stdout
    return [json.loads(line) for line in log.splitlines() if line.startswith("{")]


def _workload_of(queues: KueueQueues, job: str) -> list[dict[str, Any]]:
    return [w for w in queues.workloads()
            if any(o.get("kind") == "Job" and o.get("name") == job for o in w["metadata"].get("ownerReferences") or ())]


def _reserved(wl: dict[str, Any]) -> bool:
    return any(c["type"] == "QuotaReserved" and c["status"] == "True" for c in (wl.get("status") or {}).get("conditions") or ())


def test_over_quota_waits_queued_with_kueues_reason_then_admitted(cluster: Cluster, namespace: str, kueue_queues: KueueQueues,
                                                                  run_operator: Any, standin_image: str) -> None:
    queue = kueue_queues.queue("gpus", gpus=8, node_labels=KWOK_H100)
    op = run_operator(TUNEFORGE_TRAINER_IMAGE=standin_image, TUNEFORGE_POD_ANNOTATIONS=_kwok_annotations("30s"))
    cluster.apply(S3_SECRET, namespace)
    timeline = Timeline("over-quota")
    names = ["first", "second"]
    scheduling = {"queueName": queue, **H100}
    cluster.apply(kwok_ftj("first", resources=EIGHT_GPUS, scheduling=scheduling), namespace)
    _until("first admitted and running", lambda: _status(cluster, namespace, "first").get("phase") == "Running",
           timeline, cluster, namespace, names[:1], kueue_queues, op, 120)
    cluster.apply(kwok_ftj("second", resources=EIGHT_GPUS, scheduling=scheduling), namespace)

    def second_waits() -> bool:
        st = _status(cluster, namespace, "second")
        return st.get("reason") == "WaitingForKueue" and "insufficient unused quota for nvidia.com/gpu" in st.get("message", "")

    _until("second queued in Kueue's words", second_waits, timeline, cluster, namespace, names, kueue_queues, op, 90)
    st = _status(cluster, namespace, "second")
    assert st["phase"] == "Queued" and st["message"].startswith(f"Kueue queue {queue}: Pending: "), st
    assert "8 more needed" in st["message"], st
    assert _status(cluster, namespace, "first")["phase"] == "Running"
    assert not cluster.list("pods", namespace, "tuneforge.dev/finetunejob=second,tuneforge.dev/role=train")

    _until("both succeeded", lambda: all(_status(cluster, namespace, n).get("phase") == "Succeeded" for n in names),
           timeline, cluster, namespace, names, kueue_queues, op, 150)
    timeline.write()
    # Admitted only once the first had finished: its pod started after the first's ended.
    first_pod = cluster.list("pods", namespace, "tuneforge.dev/finetunejob=first,tuneforge.dev/role=train")[0]
    second_pod = cluster.list("pods", namespace, "tuneforge.dev/finetunejob=second,tuneforge.dev/role=train")[0]
    ended = first_pod["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"]
    assert second_pod["metadata"]["creationTimestamp"] >= ended, (ended, second_pod["metadata"]["creationTimestamp"])


def test_higher_priority_preempts_and_the_preempted_resumes_from_its_checkpoint(
        cluster: Cluster, namespace: str, kueue_queues: KueueQueues, run_operator: Any, standin_image: str) -> None:
    """On the real node (the stand-in trainer checkpoints to the PVC after every step): one GPU of
    quota; the low-priority job trains, the high-priority one arrives and Kueue evicts the low one
    (its Job suspended, its pod stopped with SIGTERM), runs the high one, then admits the low one
    again, whose new pod resumes after its last checkpoint."""
    queue = kueue_queues.queue("cpu-standin", gpus=1, node_labels=REAL_NODE)
    low, high = kueue_queues.priority_class("low", 100), kueue_queues.priority_class("high", 1000)
    op = run_operator(TUNEFORGE_TRAINER_IMAGE=standin_image)
    cluster.apply(pvc_manifest(), namespace)
    timeline = Timeline("preemption")
    names = ["low", "high"]
    cluster.apply(ftj_manifest("low", dataset={"uri": "/standin/checkpoint=1/steps=60/step_s=0.5/eval_s=0.5/train.jsonl"},
                               scheduling={"queueName": queue, "priorityClassName": low}), namespace)

    def low_trained_a_while() -> bool:
        st = _status(cluster, namespace, "low")
        return st.get("phase") == "Running" and int((st.get("progress") or {}).get("step") or 0) >= 4

    _until("low trains past step 4", low_trained_a_while, timeline, cluster, namespace, names[:1], kueue_queues, op, 180)
    cluster.apply(ftj_manifest("high", dataset={"uri": "/standin/steps=3/step_s=0.5/eval_s=0.5/train.jsonl"},
                               scheduling={"queueName": queue, "priorityClassName": high}), namespace)
    _until("low preempted", lambda: _status(cluster, namespace, "low").get("reason") == "PreemptedByKueue",
           timeline, cluster, namespace, names, kueue_queues, op, 120)
    st = _status(cluster, namespace, "low")
    # A revision's phase never moves back (Running stays Running); reason and message say it waits.
    assert st["phase"] == "Running" and "Preempted to accommodate a workload" in st["message"], st
    assert "waiting to be admitted again from queue cpu-standin" in st["message"], st
    _until("both succeeded", lambda: all(_status(cluster, namespace, n).get("phase") == "Succeeded" for n in names),
           timeline, cluster, namespace, names, kueue_queues, op, 240)
    timeline.write()
    assert _status(cluster, namespace, "low")["evaluation"]["accuracy"] == 0.93
    # The preempted pod was deleted with its suspended Job's pods (SIGTERM: the stand-in saved its
    # checkpoint, reported preempted, exited 143); the pod of the readmitted Job resumed after it.
    (pod,) = cluster.list("pods", namespace, "tuneforge.dev/finetunejob=low,tuneforge.dev/role=train")
    events = _events(cluster, namespace, pod["metadata"]["name"])
    (resumed,) = [e for e in events if e["event"] == "resume"]
    assert resumed["step"] >= 4 and resumed["checkpoint"].endswith(f"/checkpoint-{resumed['step']}"), resumed
    steps = [e["step"] for e in events if e["event"] == "progress"]
    assert steps[0] == resumed["step"] + 1 and steps[-1] == 60, steps
    # High finished before low did (the FineTuneJobs' rows: a Workload row may be noted first).
    order = [row for row in timeline.rows if "Succeeded" in row and "  ftj/" in row]
    assert order and "  ftj/high:" in order[0], timeline.rows


def test_two_node_gang_admitted_as_one_workload_or_not_at_all(cluster: Cluster, namespace: str, kueue_queues: KueueQueues,
                                                              run_operator: Any, standin_image: str) -> None:
    queue = kueue_queues.queue("gang", gpus=8, node_labels=KWOK_H100)
    # The workers stay running (a long simulated run) once admitted.
    op = run_operator(TUNEFORGE_TRAINER_IMAGE=standin_image, TUNEFORGE_POD_ANNOTATIONS=_kwok_annotations("900s"))
    cluster.apply(S3_SECRET, namespace)
    timeline = Timeline("gang")
    cluster.apply(kwok_ftj("gang", resources={"nodes": 2, **EIGHT_GPUS}, scheduling={"queueName": queue, **H100}), namespace)

    def waits() -> bool:
        return "insufficient quota for nvidia.com/gpu" in _status(cluster, namespace, "gang").get("message", "")

    _until("the gang waits: 16 GPUs over a quota of 8", waits, timeline, cluster, namespace, ["gang"], kueue_queues, op, 120)
    st = _status(cluster, namespace, "gang")
    assert st["phase"] == "Queued" and st["reason"] == "WaitingForKueue", st
    # Not at all: no worker exists while the whole gang does not fit.
    assert not cluster.list("pods", namespace, "tuneforge.dev/finetunejob=gang,tuneforge.dev/role=train")
    (wl,) = _workload_of(kueue_queues, "gang-train-1")
    assert [ps["count"] for ps in wl["spec"]["podSets"]] == [2] and not _reserved(wl)

    kueue_queues.set_gpus("gang", 16)

    def both_running() -> bool:
        st = _status(cluster, namespace, "gang")
        return st.get("phase") == "Running" and [w.get("phase") for w in st.get("workers") or ()] == ["Running", "Running"]

    _until("the gang admitted whole", both_running, timeline, cluster, namespace, ["gang"], kueue_queues, op, 120)
    timeline.write()
    (wl,) = _workload_of(kueue_queues, "gang-train-1")
    assignment = wl["status"]["admission"]["podSetAssignments"]
    assert [(a["count"], a["resourceUsage"]["nvidia.com/gpu"]) for a in assignment] == [(2, "16")], assignment
    nodes = {w["node"] for w in _status(cluster, namespace, "gang")["workers"]}
    assert len(nodes) == 2 and all(n.startswith("kwok-gpu-") for n in nodes)
