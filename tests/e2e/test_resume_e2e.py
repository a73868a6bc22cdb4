"""Recovery on the real node: a training pod evicted mid-run (what a preemption or a node drain
does) is replaced by the Job, and the replacement resumes from the last checkpoint in the output
store — not from step 0 — and the FineTuneJob still succeeds.

The run is the demo's data at a smaller size (40 steps, a checkpoint every 10, no baselines) so
it costs a few minutes on top of the demo's own run, whose staged inputs and image it reuses.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from shared_demo import load_demo
from tuneforge_localcluster.testing import Cluster, wait_for

pytestmark = pytest.mark.slow

NAME = "banking77-resume"
MAX_STEPS = 40
SAVE_STEPS = 10


def resume_manifest(demo: Any) -> dict[str, Any]:
    m = yaml.safe_load(demo.MANIFEST.read_text())
    m["metadata"]["name"] = NAME
    spec = m["spec"]
    spec["dataset"]["maxEvalRowsPerLabel"] = 5
    spec["training"].update(maxSteps=MAX_STEPS, saveSteps=SAVE_STEPS)
    spec["evaluation"] = {"baselines": [], "gate": {"minAccuracy": 0.0}}
    return m


def evict(cluster: Cluster, pod: dict[str, Any]) -> None:
    """The Eviction API, as `kubectl drain` and the scheduler's preemption use it."""
    ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
    body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name, "namespace": ns}}
    cluster.kubectl("create", "--raw", f"/api/v1/namespaces/{ns}/pods/{name}/eviction", "-f", "-", input=json.dumps(body))


@pytest.mark.timeout(2400)
def test_an_evicted_training_pod_resumes_from_its_last_checkpoint(cluster: Cluster, demo_finetunejob: dict[str, Any],
                                                                  demo_operator: Any) -> None:
    demo = load_demo()
    ns = demo.NAMESPACE
    operator = demo_operator
    cluster.kubectl("delete", "finetunejob", NAME, "-n", ns, "--ignore-not-found", "--wait=true", timeout=120)
    cluster.apply(resume_manifest(demo), ns)
    job = f"{NAME}-train-1"

    def training_past_a_checkpoint() -> tuple[dict[str, Any], dict[str, Any] | None, int] | None:
        st = cluster.get("finetunejob", NAME, ns).get("status", {})
        if operator.poll() is not None or st.get("phase") in ("Succeeded", "Failed"):
            return st, None, -1  # ended before the eviction: fails below with what was seen
        step = int(st.get("progress", {}).get("step") or 0)
        pods = [p for p in cluster.list("pods", ns, f"job-name={job}") if p["status"].get("phase") == "Running"]
        return (st, pods[0], step) if pods and SAVE_STEPS + 2 <= step < MAX_STEPS - 5 else None

    st, pod, step = wait_for("training past its first checkpoint", training_past_a_checkpoint, timeout=1200, interval=2)
    assert pod is not None, (operator.returncode, st)
    evict(cluster, pod)
    # The evicted pod is marked as disrupted, which the Job's podFailurePolicy ignores.
    uid = pod["metadata"]["uid"]
    wait_for("the evicted pod to go", lambda: all(p["metadata"]["uid"] != uid for p in cluster.list("pods", ns, f"job-name={job}")),
             timeout=300, interval=2)

    ftj = demo.follow(cluster, NAME, operator, timeout=1500)

    st = ftj["status"]
    assert st["phase"] == "Succeeded", cluster.describe("finetunejob", NAME, ns)
    summary = json.loads(demo.read_s3(cluster.settings, st["adapter"]["uri"].rsplit("/", 1)[0] + "/summary.json"))
    print(f"evicted at step {step}; the replacement resumed from step {summary.get('resumed_from_step')}")
    # Resumed from the checkpoint the trainer saved on SIGTERM (at the step boundary after the
    # eviction, so at or after the step the status showed), never from scratch or an older
    # periodic one, and trained on to the end.
    assert step <= summary["resumed_from_step"] < MAX_STEPS, (step, summary)
    assert summary["steps"] == MAX_STEPS, summary
    k8s_job = cluster.get("job", job, ns)
    assert k8s_job["status"].get("succeeded") == 1, k8s_job["status"]
    # The eviction did not count against backoffLimit.
    assert not k8s_job["status"].get("failed"), k8s_job["status"]
