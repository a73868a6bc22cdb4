"""Beyond one process, for real on the local node: the demo's BANKING77 FineTuneJob trained by two
gloo processes through the operator — one pod running torchrun with 2 processes, and 2 pods of an
Indexed Job meeting over the headless Service — at the demo's effective batch size (4 per
process x 2 = the demo's 8), scored on the same held-out rows: each lands within 3 accuracy
points of the demo's single-process run.

The 2-pod run is also the gang's recovery test: worker 1 is evicted mid-run (the Eviction API,
as a drain or a preemption does it), the operator restarts the whole gang as a new Job of the
same revision (status.restarts 1), and the new gang resumes from the last complete checkpoint
(not step 0) and still lands in the same accuracy band.

Baselines are off (they score the base model, not what the processes trained); the demo's run
is the reference, so the two runs cost their training and one scoring pass each.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from shared_demo import load_demo
from test_resume_e2e import evict
from tuneforge_localcluster.testing import Cluster

pytestmark = pytest.mark.slow

# The evicted gang's periodic checkpoints: the restart resumes from one of them (or a later one).
SAVE_STEPS = 20
SHAPES = [  # (name, nodes, GPU stand-ins per pod): the real node advertises two
    pytest.param("banking77-ddp-1x2", 1, 2, id="1-pod-x-2-processes"),
    pytest.param("banking77-ddp-2x1", 2, 1, id="2-pods-x-1-process"),
]


def distributed_manifest(demo: Any, name: str, nodes: int, gpus: int, max_steps: int) -> dict[str, Any]:
    """The demo's job for ``nodes`` x ``gpus`` processes, for the demo run's ``max_steps`` (its
    epochs as steps, pinned so the eviction window and the step count are known)."""
    m = yaml.safe_load(demo.MANIFEST.read_text())
    m["metadata"]["name"] = name
    spec = m["spec"]
    world = nodes * max(gpus, 1)
    batch = spec["training"]["batchSize"]
    assert batch % world == 0, "the effective batch must stay the demo's"
    spec["training"]["batchSize"] = batch // world
    spec["evaluation"] = {"baselines": [], "gate": {"minAccuracy": 0.0}}
    spec["resources"].update(nodes=nodes, gpus=gpus)
    spec["training"]["maxSteps"] = max_steps
    if nodes > 1:
        spec["training"]["saveSteps"] = SAVE_STEPS
    return m


@pytest.mark.timeout(2400)
@pytest.mark.parametrize("name,nodes,gpus", SHAPES)
def test_two_gloo_processes_match_the_single_process_run(cluster: Cluster, demo_finetunejob: dict[str, Any],
                                                         demo_operator: Any, name: str, nodes: int, gpus: int) -> None:
    demo = load_demo()
    ns = demo.NAMESPACE
    reference = demo_finetunejob["status"]
    cluster.kubectl("delete", "finetunejob", name, "-n", ns, "--ignore-not-found", "--wait=true", timeout=120)
    operator = demo_operator
    workers_seen: list[dict[str, Any]] = []
    evicted: list[int] = []  # the step the status showed when worker 1 was evicted
    max_steps = int(json.loads(demo.read_s3(cluster.settings, reference["artifacts"]["output"] + "/summary.json"))["steps"])
    manifest = distributed_manifest(demo, name, nodes, gpus, max_steps)
    cluster.apply(manifest, ns)

    def watch_workers(ftj: dict[str, Any]) -> None:
        st = ftj.get("status", {})
        running = [w for w in st.get("workers") or () if w.get("phase") == "Running"]
        if len(running) > len(workers_seen):
            workers_seen[:] = running
        step = int((st.get("progress") or {}).get("step") or 0)
        if nodes > 1 and not evicted and len(running) == 2 and SAVE_STEPS + 2 <= step < max_steps - 10:
            evict(cluster, cluster.get("pod", running[1]["pod"], ns))
            evicted.append(step)

    ftj = demo.follow(cluster, name, operator, timeout=2000, on_poll=watch_workers)

    st = ftj["status"]
    assert st["phase"] == "Succeeded", cluster.describe("finetunejob", name, ns)
    assert st["worldSize"] == 2
    # The evicted gang ran again as attempt 1 of the same revision; the first attempt's Job is gone.
    train_job = f"{name}-train-1-1" if nodes > 1 else f"{name}-train-1"
    assert st["children"]["trainJob"] == train_job and st["revision"] == 1, st
    job = cluster.get("job", train_job, ns)
    pods = cluster.list("pods", ns, f"job-name={train_job}")
    assert pods and all(p["spec"]["nodeName"] == cluster.settings.node_name for p in pods)
    if nodes > 1:
        assert evicted and st["restarts"] == 1, (evicted, st)
        assert job["spec"]["completionMode"] == "Indexed" and job["status"].get("succeeded") == 2, job["status"]
        # The revision ended: its workers Service is deleted with it.
        assert not cluster.kubectl("get", "service", f"{name}-train-1", "-n", ns, "--ignore-not-found", "-o", "name").stdout.strip()
        # Both workers ran at once (a gang), each on its own pod.
        assert [w["rank"] for w in workers_seen] == [0, 1], workers_seen
    else:
        assert "completionMode" not in job["spec"] or job["spec"]["completionMode"] == "NonIndexed"
        assert "--nproc-per-node=2" in job["spec"]["template"]["spec"]["containers"][0]["command"]

    # Rank 0 alone wrote the result: one summary, the adapter, the run's metrics.
    run = st["artifacts"]["output"]
    summary = json.loads(demo.read_s3(cluster.settings, run + "/summary.json"))
    metrics = json.loads(demo.read_s3(cluster.settings, run + "/metrics.json"))
    assert summary["status"] == "succeeded" and summary["steps"] == max_steps
    assert metrics["training"]["steps"] == summary["steps"]
    if nodes > 1:
        # Resumed from a complete checkpoint of the same output (not from step 0), then to the end.
        print(f"{name}: worker 1 evicted at step {evicted[0]}; the gang resumed from step {summary.get('resumed_from_step')}")
        assert SAVE_STEPS <= (summary.get("resumed_from_step") or 0) < max_steps, (evicted, summary)
    accuracy, single = st["evaluation"]["accuracy"], reference["evaluation"]["accuracy"]
    assert st["evaluation"]["evalRows"] == reference["evaluation"]["evalRows"], (st["evaluation"], reference["evaluation"])
    print(f"{name}: {nodes} pod(s) x {max(gpus, 1)} process(es), batch 4 each: accuracy {accuracy:.4f} "
          f"vs single process batch 8: {single:.4f} (difference {100 * (accuracy - single):+.1f} points)")
    assert abs(accuracy - single) <= 0.03, (accuracy, single)
