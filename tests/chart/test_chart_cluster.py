"""The chart on the local cluster with the real Helm CLI and the operator image: `helm install`
into a namespace that enforces Pod Security "restricted", the operator pods Ready; `helm upgrade`
rolls them with the new values and the operator, under the chart's namespaced Role, runs a
FineTuneJob (the stand-in trainer); `helm uninstall` removes the release but keeps the CRDs and
the user's objects.

The release watches only its own namespace (namespaced mode), so it never touches the objects of
other tests on the shared cluster.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from tuneforge_localcluster.testing import Cluster, wait_for

pytestmark = pytest.mark.exclusive  # see pyproject.toml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "tuneforge"
CRDS = ("finetunejobs.tuneforge.dev", "modelserves.tuneforge.dev")


def image_values(ref: str) -> dict[str, str]:
    """{repository, tag} of an image reference (the registry part may hold a port)."""
    repository, tag = ref.rsplit(":", 1)
    return {"repository": repository, "tag": tag}


def _pods(cluster: Cluster, ns: str, release: str) -> list[dict[str, Any]]:
    return cluster.list("pods", ns, f"app.kubernetes.io/instance={release},app.kubernetes.io/component=operator")


def _ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))


def _n_ready(cluster: Cluster, ns: str, release: str, n: int) -> list[dict[str, Any]] | None:
    """The operator pods once there are exactly ``n``, all Ready (none still terminating)."""
    pods = _pods(cluster, ns, release)
    return pods if len(pods) == n and all(_ready(p) and not p["metadata"].get("deletionTimestamp") for p in pods) else None


def _env(pod: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in pod["spec"]["containers"][0]["env"]}


@pytest.mark.timeout(900)
def test_helm_install_upgrade_uninstall(cluster: Cluster, namespace: str, tmp_path: Path,
                                        request: pytest.FixtureRequest) -> None:
    watched = namespace
    release = f"tf-{uuid.uuid4().hex[:6]}"
    # The release's own namespace (the operator, its leader Lease) enforces "restricted".
    ns = cluster.new_namespace(f"t-helm-{release}")
    request.addfinalizer(lambda: cluster.delete_namespace(ns))
    cluster.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted",
                    "pod-security.kubernetes.io/enforce-version=latest")
    operator_image = cluster.image(ROOT / "operator", "operator")
    standin = cluster.image(ROOT / "tests" / "images" / "trainer-standin", "trainer-standin")
    values: dict[str, Any] = {
        "watchNamespaces": [watched],
        "images": {"operator": image_values(operator_image), "trainer": image_values(standin)},
        "nodeSelector": {"tuneforge.dev/node-kind": "real"},
        # The real node's 2 CPUs are shared with the training runs of other tests.
        "resources": {"requests": {"cpu": "0", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
        "settings": {"validateCpu": "0", "validateMemory": "64Mi", "progressInterval": 2},
    }
    vfile = tmp_path / "values.json"
    vfile.write_text(json.dumps(values))
    common = ["--namespace", ns, "-f", str(vfile), "--wait", "--timeout", "5m",
              # The shared cluster's CRDs may have been applied by kubectl (other tests): adopt them.
              "--take-ownership", "--force-conflicts"]
    try:
        # install: two Ready replicas, admitted by the restricted Pod Security level.
        cluster.helm("install", release, str(CHART), *common)
        pods = wait_for("2 Ready operator pods", lambda: _n_ready(cluster, ns, release, 2), 120, 2)
        assert all(p["status"]["containerStatuses"][0]["restartCount"] == 0 for p in pods)
        assert _env(pods[0])["TUNEFORGE_NAMESPACES"] == watched
        status = json.loads(cluster.helm("status", release, "--namespace", ns, "-o", "json").stdout)
        assert status["info"]["status"] == "deployed" and status["version"] == 1
        for crd in CRDS:
            meta = cluster.get("crd", crd)["metadata"]
            assert meta["annotations"]["helm.sh/resource-policy"] == "keep"
            assert meta["annotations"]["meta.helm.sh/release-name"] == release
            cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")

        # Namespaced mode on the apiserver: Jobs in its namespace only, nothing elsewhere.
        sa = f"system:serviceaccount:{ns}:{release}-tuneforge"
        def can(*args: str) -> str:
            return cluster.kubectl("auth", "can-i", *args, f"--as={sa}", check=False).stdout.strip()
        assert can("create", "jobs", "-n", watched) == "yes"
        assert can("create", "jobs", "-n", ns) == "no"
        assert can("create", "jobs", "-n", "default") == "no"
        assert can("get", "pods", "--subresource=log", "-n", "default") == "no"
        assert can("update", f"leases/{release}-tuneforge", "-n", ns) == "yes"
        assert can("update", "leases/another", "-n", ns) == "no"
        assert can("create", "leases", "-n", watched) == "no"
        assert can("get", "priorityclasses") == "yes"
        assert can("list", "customresourcedefinitions") == "no"
        assert can("list", "namespaces") == "no"
        assert can("list", "secrets", "-n", watched) == "no"

        # upgrade: a new setting; the two pods roll (the Lease is handed over) and the leader runs a
        # FineTuneJob under the chart's RBAC.
        values["settings"]["historyLimit"] = 7
        vfile.write_text(json.dumps(values))
        cluster.helm("upgrade", release, str(CHART), *common)
        status = json.loads(cluster.helm("status", release, "--namespace", ns, "-o", "json").stdout)
        assert status["info"]["status"] == "deployed" and status["version"] == 2
        def upgraded() -> list[dict[str, Any]] | None:
            pods = _n_ready(cluster, ns, release, 2)
            return pods if pods and all(_env(p).get("TUNEFORGE_HISTORY_LIMIT") == "7" for p in pods) else None
        pods = wait_for("the 2 upgraded operator pods", upgraded, 180, 2)
        names = [p["metadata"]["name"] for p in pods]
        # The Lease was handed over to (or taken by) one of the new pods.
        wait_for("a new pod to hold the Lease", lambda: any(
            (cluster.get("lease", f"{release}-tuneforge", ns)["spec"].get("holderIdentity") or "").startswith(n)
            for n in names), 60, 1)
        cluster.apply([{"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "artifacts"},
                        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}}},
                       {"apiVersion": "tuneforge.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "via-helm"},
                        "spec": {"baseModel": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
                                 "dataset": {"uri": "/standin/accuracy=0.93/steps=4/train.jsonl"},
                                 "output": {"uri": "pvc://artifacts/runs"},
                                 "resources": {"cpu": "0", "memory": "64Mi"}}}], watched)

        def ended() -> str | None:
            phase = (cluster.get("finetunejob", "via-helm", watched).get("status") or {}).get("phase")
            return phase if phase in ("Succeeded", "Failed") else None

        def logs() -> str:
            return cluster.kubectl("logs", "-n", ns, f"deployment/{release}-tuneforge", "--tail=60", check=False).stdout

        assert wait_for("the FineTuneJob to end", ended, 300, 2, logs) == "Succeeded", cluster.describe("ftj", "via-helm", watched)
        assert "Forbidden" not in logs() and " 403 " not in logs()
    finally:
        uninstalled = cluster.helm("uninstall", release, "--namespace", ns, "--wait", "--timeout", "3m", check=False)

    # uninstall: the release's objects are gone, the CRDs and the user's FineTuneJob stay.
    assert uninstalled.returncode == 0, uninstalled.stderr
    assert "kept due to the resource policy" in uninstalled.stdout + uninstalled.stderr
    assert cluster.helm("status", release, "--namespace", ns, check=False).returncode != 0
    assert cluster.list("deployments", ns, f"app.kubernetes.io/instance={release}") == []
    assert cluster.kubectl("get", "clusterrole", f"{release}-tuneforge-cluster", check=False).returncode != 0
    for crd in CRDS:
        assert cluster.get("crd", crd)["metadata"]["name"] == crd
    assert cluster.get("finetunejob", "via-helm", watched)["status"]["phase"] == "Succeeded"
