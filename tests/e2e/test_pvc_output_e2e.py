"""A FineTuneJob writing to ``pvc://`` is served by a ModelServe that follows it, on the real node
(review MS-3, issue 17 deliverable 4).

The FineTuneJob's status names its adapter and scored rows as ``pvc://<claim>/...`` (not the
trainer pod's ``/mnt/pvc`` paths); the ModelServe's server pods mount that claim to fetch the
adapter, its gate Job mounts it to read the rows, and the active Service answers with the
adapter's digest. The base model stays on the cluster's S3 server, as the demo stages it.

Kept cheap: the demo's data at 10 steps and 5 held-out rows per label, no baselines, thresholds
at 0 (this test is about where the bytes are, not how good they are); the demo's images and
staged inputs are reused (cached), its FineTuneJob is not needed.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from shared_demo import load_demo
from test_modelserve_e2e import HEADER, api, healthy_on
from tuneforge_localcluster.testing import Cluster, wait_for

pytestmark = pytest.mark.slow

NAME = "banking77-pvc"
CLAIM = "tuneforge-e2e-runs"


def finetunejob(demo: Any) -> dict[str, Any]:
    m = yaml.safe_load(demo.MANIFEST.read_text())
    m["metadata"]["name"] = NAME
    spec = m["spec"]
    spec["dataset"].update(maxRowsPerLabel=10, maxEvalRowsPerLabel=5)
    # The lm head, asked through chat completions below (the demo trains the classifier head).
    spec["task"]["head"] = "lm"
    spec["training"].update(maxSteps=10)
    spec["evaluation"] = {"baselines": [], "gate": {"minAccuracy": 0.0}}
    spec["output"] = {"uri": f"pvc://{CLAIM}/runs"}
    return m


def modelserve(demo: Any) -> dict[str, Any]:
    m = yaml.safe_load((demo.ROOT / "examples" / "modelserve-banking77.yaml").read_text())
    m["metadata"]["name"] = NAME
    m["spec"]["adapter"] = {"fineTuneJob": NAME}
    m["spec"]["rollout"]["gate"] = {"minAccuracy": 0.0, "maxP99Ms": 600000, "rows": 16, "concurrency": 2}
    return m


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


@pytest.mark.timeout(3000)
def test_a_pvc_finetunejob_is_served_by_a_modelserve_that_follows_it(cluster: Cluster, demo_operator: Any) -> None:
    demo = load_demo()
    ns = demo.NAMESPACE
    operator = demo_operator
    demo.stage_inputs(cluster.settings)
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(demo.ROOT / "crds"))
    cluster.kubectl("create", "namespace", ns, check=False)
    cluster.kubectl("create", "secret", "generic", "tuneforge-demo-s3", "-n", ns,
                    f"--from-literal=access-key-id={demo.components.S3_ACCESS_KEY}",
                    f"--from-literal=secret-access-key={demo.components.S3_SECRET_KEY}", check=False)
    cluster.kubectl("create", "secret", "generic", "tuneforge-demo-api-key", "-n", ns, f"--from-literal=key={demo.API_KEY}", check=False)
    # The node's two GPU stand-ins: one for training, then one for the color.
    cluster.kubectl("delete", "deployment", demo.SERVER, "-n", ns, "--ignore-not-found", "--wait=true", timeout=180)
    for kind in ("modelserve", "finetunejob"):
        cluster.kubectl("delete", kind, NAME, "-n", ns, "--ignore-not-found", "--wait=true", timeout=180)
    cluster.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": CLAIM},
                   "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}, ns)
    describe = lambda: cluster.describe("modelserve", NAME, ns)  # noqa: E731
    try:
        cluster.apply(finetunejob(demo), ns)
        ftj = demo.follow(cluster, NAME, operator, timeout=1500)
        st = ftj["status"]
        assert st["phase"] == "Succeeded", cluster.describe("finetunejob", NAME, ns)
        run = f"pvc://{CLAIM}/runs/{ns}/{NAME}/{ftj['metadata']['uid']}/r1"
        assert st["adapter"]["uri"] == f"{run}/adapter" and st["artifacts"]["predictions"] == f"{run}/predictions.jsonl", st
        assert not [s for s in _strings(st) if s.startswith("/mnt/")], st

        cluster.apply(modelserve(demo), ns)
        digest = st["adapter"]["digest"]
        ms = wait_for(f"ModelServe {NAME} to serve {digest[7:19]}", lambda: healthy_on(cluster, ns, NAME, digest), 1500, 5, describe)
        assert ms["active"]["adapters"][0]["uri"] == f"{run}/adapter", ms
        # The gate read the FineTuneJob's scored rows from the claim (the only rows it was given).
        assert ms["active"]["evalRowsUri"] == f"{run}/predictions.jsonl", ms["active"]
        assert ms["gate"]["outcome"] == "Passed" and ms["gate"].get("rows", 0) > 0, ms["gate"]
        color = cluster.get("deployment", f"{NAME}-{ms['activeColor']}", ns)
        assert CLAIM in {v.get("persistentVolumeClaim", {}).get("claimName") for v in color["spec"]["template"]["spec"]["volumes"]}

        ip = cluster.get("service", NAME, ns)["spec"]["clusterIP"]
        raw = api(f"http://{ip}:8000/v1", demo.API_KEY).chat.completions.with_raw_response.create(
            model=NAME, messages=[{"role": "user", "content": "I still have not received my new card"}], max_tokens=8, temperature=0)
        assert raw.headers[HEADER] == f"{NAME}={digest}"
    finally:
        # Owner references take the colors, the gate Job and the training Jobs; then the claim.
        for kind in ("modelserve", "finetunejob", "pvc"):
            name = CLAIM if kind == "pvc" else NAME
            cluster.kubectl("delete", kind, name, "-n", ns, "--ignore-not-found", "--wait=true", timeout=180, check=False)
