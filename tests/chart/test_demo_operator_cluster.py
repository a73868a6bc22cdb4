"""The demo's operator (hack/demo.py ``start_operator``, which the e2e tests share): the chart
installed as release ``tuneforge`` in ``tuneforge-system``, the operator running in the cluster
and watching ``tuneforge-demo`` only; it runs a FineTuneJob (the stand-in trainer, seconds), and
``terminate``/``wait`` and a second ``start_operator`` (a ``helm upgrade``) stop and restart it as
the e2e tests expect. The release is uninstalled afterwards (the CRDs stay)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shared_demo import load_demo
from tuneforge_localcluster.testing import Cluster, wait_for

pytestmark = pytest.mark.exclusive  # see pyproject.toml

ROOT = Path(__file__).resolve().parents[2]
NAME = "demo-operator-check"


def revision(cluster: Cluster, demo: Any) -> int:
    out = cluster.helm("status", demo.RELEASE, "--namespace", demo.OPERATOR_NAMESPACE, "-o", "json").stdout
    return int(json.loads(out)["version"])


@pytest.mark.timeout(900)
def test_demo_runs_the_operator_in_the_cluster(cluster: Cluster) -> None:
    demo = load_demo()
    ns = demo.NAMESPACE
    standin = cluster.image(ROOT / "tests" / "images" / "trainer-standin", "trainer-standin")
    try:
        operator = demo.start_operator(cluster, standin)
        status = demo.helm_status(cluster)
        assert "STATUS: deployed" in status and f"NAMESPACE: {demo.OPERATOR_NAMESPACE}" in status, status
        for name in (ns, demo.OPERATOR_NAMESPACE):  # the operator and every pod it builds: restricted
            labels = cluster.get("namespace", name)["metadata"]["labels"]
            assert labels["pod-security.kubernetes.io/enforce"] == "restricted", (name, labels)
        pods = operator.pods()
        assert len(pods) == demo.OPERATOR_REPLICAS == 2  # the chart's default: a leader and a follower
        for pod in pods:
            assert pod["spec"]["nodeName"] == cluster.settings.node_name  # in the cluster, on the real node
            env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
            assert env["TUNEFORGE_NAMESPACES"] == ns and env["TUNEFORGE_TRAINER_IMAGE"] == standin
            assert env["TUNEFORGE_LEADER_ELECT"] == "true"
        cluster.kubectl("delete", "finetunejob", NAME, "-n", ns, "--ignore-not-found", "--wait=true")
        cluster.apply([{"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "demo-operator-check"},
                        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}}},
                       {"apiVersion": "tuneforge.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": NAME},
                        "spec": {"baseModel": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
                                 "dataset": {"uri": "/standin/accuracy=0.93/steps=4/train.jsonl"},
                                 "output": {"uri": "pvc://demo-operator-check/runs"},
                                 "resources": {"cpu": "0", "memory": "64Mi"}}}], ns)
        ftj = demo.follow(cluster, NAME, operator, timeout=300)
        assert ftj["status"]["phase"] == "Succeeded", ftj["status"]
        assert operator.poll() is None

        operator.terminate()
        operator.wait(30)
        assert operator.pods() == []
        before = revision(cluster, demo)
        again = demo.start_operator(cluster, standin)  # helm upgrade: scaled up again
        assert len(again.pods()) == demo.OPERATOR_REPLICAS and revision(cluster, demo) == before + 1
    finally:
        cluster.kubectl("delete", "finetunejob", NAME, "-n", ns, "--ignore-not-found", "--wait=true", check=False)
        cluster.kubectl("delete", "pvc", NAME, "-n", ns, "--ignore-not-found", check=False)
        cluster.helm("uninstall", demo.RELEASE, "--namespace", demo.OPERATOR_NAMESPACE, "--wait", check=False)
    wait_for("the operator pods to go", lambda: not cluster.list(
        "pods", demo.OPERATOR_NAMESPACE, f"app.kubernetes.io/instance={demo.RELEASE}"), 120, 2)
    assert cluster.get("crd", "finetunejobs.tuneforge.dev")["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
