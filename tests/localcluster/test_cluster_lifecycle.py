"""Object and pod lifecycle: owner-reference garbage collection, SIGTERM, preStop, grace period."""

from __future__ import annotations

import time
from pathlib import Path

from tuneforge_localcluster.testing import Cluster, real_node_pod_spec, wait_for


def test_deleting_owner_collects_children(cluster: Cluster, namespace: str) -> None:
    cluster.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner"}, "data": {}}, namespace)
    owner = cluster.get("configmap", "owner", namespace)
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
    children = [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"child-{i}", "ownerReferences": [ref]}, "data": {}}
        for i in range(3)
    ]
    cluster.apply(children, namespace)
    cluster.kubectl("delete", "configmap", "owner", "-n", namespace)
    wait_for(
        "children garbage-collected",
        lambda: not [c for c in cluster.list("configmaps", namespace) if c["metadata"]["name"].startswith("child-")],
        60,
    )


def test_pod_deletion_runs_prestop_sends_sigterm_and_honours_grace(
    cluster: Cluster, namespace: str, probe_image: str, tmp_path: Path
) -> None:
    marker_dir = tmp_path / "marker"
    marker_dir.mkdir()
    marker_dir.chmod(0o777)
    marker = "/marker/events.txt"
    spec = real_node_pod_spec(
        probe_image,
        ["record-sigterm", marker],
        terminationGracePeriodSeconds=4,
        volumes=[{"name": "marker", "hostPath": {"path": str(marker_dir), "type": "Directory"}}],
    )
    container = spec["containers"][0]
    container["volumeMounts"] = [{"name": "marker", "mountPath": "/marker"}]
    container["lifecycle"] = {
        "preStop": {"exec": {"command": ["sh", "-c", f"echo prestop $(date +%s.%N) >> {marker}"]}}
    }
    cluster.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "graceful"}, "spec": spec}, namespace)
    wait_for(
        "pod graceful Running",
        lambda: "waiting for SIGTERM" in cluster.kubectl("logs", "-n", namespace, "graceful", check=False).stdout,
        120,
        describe=lambda: cluster.describe("pod", "graceful", namespace),
    )
    started = time.time()
    cluster.kubectl("delete", "pod", "graceful", "-n", namespace, "--wait=true", timeout=60)
    elapsed = time.time() - started
    events = (marker_dir / "events.txt").read_text().split("\n")
    kinds = [line.split()[0] for line in events if line]
    # preStop runs first, then SIGTERM (which the program ignores), then SIGKILL at the
    # end of the 4 s grace period, which counts from the deletion and includes preStop.
    assert kinds == ["prestop", "sigterm"], events
    assert 3.5 <= elapsed < 15, elapsed
