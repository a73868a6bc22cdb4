"""End to end on the real node: the BANKING77 8-intent FineTuneJob of `make demo` runs the real
trainer image through the operator and ends Succeeded, its accuracy in `kubectl get`, within the
trainer's acceptance numbers (>= 90 %, >= 60 points above zero-shot)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared_demo import load_demo
from tuneforge_localcluster.testing import Cluster

pytestmark = pytest.mark.slow


# Training and scoring take ~15 min on 2 idle cores; allow for a busy machine.
@pytest.mark.timeout(3600)
def test_banking77_finetunejob_on_the_real_node(cluster: Cluster, demo_finetunejob: dict[str, Any]) -> None:
    demo = load_demo()
    ftj = demo_finetunejob
    st = ftj["status"]
    name, ns = ftj["metadata"]["name"], demo.NAMESPACE
    assert st["phase"] == "Succeeded", st
    accuracy = st["evaluation"]["accuracy"]
    zero_shot = {b["name"]: b["accuracy"] for b in st["baselines"]}["zero-shot"]
    assert accuracy >= 0.90, st["evaluation"]
    assert accuracy - zero_shot >= 0.60, st["baselines"]
    assert st["gate"]["outcome"] == "Passed"
    row = cluster.kubectl("get", "ftj", name, "-n", ns, "--no-headers").stdout.split()
    assert row[1] == "Succeeded" and float(row[2]) == pytest.approx(accuracy, abs=0.005), row
    # The Job ran the real trainer image on the real node and its artifacts are in S3.
    pods = cluster.list("pods", ns, f"job-name={name}-train-1")
    assert pods and all(p["spec"]["nodeName"] == cluster.settings.node_name for p in pods)
    card = demo.read_s3(cluster.settings, st["artifacts"]["modelCard"])
    assert "| fine-tuned adapter |" in card and "zero_shot" in card
    # The demo's release prices a GPU-hour: the revision's cost in its status, and the card's cost
    # per 1,000 predictions for the adapter (scoring GPU-seconds at that price), not "–".
    assert st["cost"]["currency"] == "USD" and st["cost"]["gpuHourPrice"] == demo.DEMO_GPU_HOUR_PRICE, st["cost"]
    assert st["cost"]["estimated"] > 0, st["cost"]
    (adapter_row,) = [line for line in card.splitlines() if line.startswith("| fine-tuned adapter |")]
    assert not adapter_row.rstrip(" |").endswith("–"), adapter_row
    # The adapter version: its digest is the one in the adapter's own manifest, in kubectl -o wide.
    adapter = st["adapter"]
    manifest = json.loads(demo.read_s3(cluster.settings, adapter["uri"] + "/tuneforge.json"))
    assert manifest["digest"] == adapter["digest"] and adapter["digest"].startswith("sha256:")
    assert manifest["lineage"]["fineTuneJob"] == {"namespace": ns, "name": name, "uid": ftj["metadata"]["uid"], "revision": 1}
    assert manifest["lineage"]["baseModel"]["digest"] == adapter["baseModel"]["digest"]
    assert manifest["lineage"]["evaluation"]["accuracy"] == pytest.approx(accuracy)
    wide = cluster.kubectl("get", "ftj", name, "-n", ns, "-o", "wide").stdout
    assert adapter["shortDigest"] in wide
