"""ModelServe rollouts at scale: N ModelServes on kwok nodes, first deploys and then a new version
of each at once, with the operator running both kinds (FineTuneJob and ModelServe rooms loaded).

Each ModelServe serves one explicit adapter; a new version is a new digest in its spec, which is
what a new passing FineTuneJob revision resolves to (the followed-FineTuneJob path adds one
watch event and one GET before the same plan). Colors run on the kwok GPU nodes (kwok marks them
Ready), the gate Job's pod on the kwok CPU node ends with the measures a real gate writes (the
fast tier's stand-in), and the operator judges them for real. Printed: p50/p99 seconds from the
apply to the switch (the operator's own ``Promoted`` time in the status history), for first
deploys and for new versions; the wall time until all N switched; the operator's peak RSS (goal,
with both kinds loaded: < 200 MB, as for 1,000 FineTuneJobs — `bench/operator_throughput.py`
measures those goals with the same operator process image).

    python bench/rollout.py [--n 50]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for sub in ("operator/src", "localcluster/src"):
    if str(ROOT / sub) not in sys.path:
        sys.path.insert(0, str(ROOT / sub))

from tuneforge_localcluster import settings as lc_settings  # noqa: E402
from tuneforge_localcluster.testing import (  # noqa: E402
    KWOK_TOLERATION, Cluster, kwok_serve_env, operator_python, start_or_reuse,
)

ENV = {**kwok_serve_env("bench-never-pulled", gate_delay="1s"), "TUNEFORGE_PROGRESS_INTERVAL": "30"}
DEADLINE = 1800.0


def digest(version: int, i: int) -> str:
    return "sha256:" + f"{version:02x}{i:06x}".ljust(64, "0")


def manifest(i: int, version: int) -> dict[str, Any]:
    return {
        "apiVersion": "tuneforge.dev/v1alpha1", "kind": "ModelServe", "metadata": {"name": f"ms-{i:04d}"},
        "spec": {
            "baseModel": {"uri": "s3://models/base"},
            "adapters": [{"name": "intents", "uri": f"s3://runs/{i}/v{version}/adapter", "digest": digest(version, i)}],
            "gpus": 0, "resources": {"cpu": "100m", "memory": "128Mi"},
            # CPU servers (gpus: 0) packed onto kwok's GPU nodes: they tolerate the GPU taint
            # themselves (the operator adds it only for pods that request GPUs).
            "scheduling": {"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                           "tolerations": [KWOK_TOLERATION, {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
            "rollout": {"progressDeadlineSeconds": 600, "scaleDownDelaySeconds": 5,
                        "gate": {"minAccuracy": 0.8, "rows": 20, "datasetUri": "s3://gate/rows.jsonl"}},
        },
    }


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))] if s else float("nan")


def apply_all(cluster: Cluster, ns: str, objs: list[dict[str, Any]]) -> float:
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}), timeout=600)
    return time.time()


def switched_at(cluster: Cluster, ns: str, n: int, version: int, op: subprocess.Popen[bytes]) -> dict[str, float]:
    """Per ModelServe, when the operator promoted ``version`` (its status history)."""
    done: dict[str, float] = {}
    deadline = time.monotonic() + DEADLINE
    while len(done) < n:
        if op.poll() is not None:
            raise SystemExit(f"the operator exited with {op.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(done)} of {n} switched to v{version} within {DEADLINE:.0f} s")
        for ms in cluster.list("modelserves", ns):
            name, st = ms["metadata"]["name"], ms.get("status") or {}
            want = digest(version, int(name.rsplit("-", 1)[1]))
            if name in done or st.get("phase") != "Healthy" or (st.get("active") or {}).get("digest") != want:
                continue
            at = next(h["at"] for h in reversed(st["history"]) if h["digest"] == want and h["outcome"] == "Promoted")
            done[name] = dt.datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp()
        time.sleep(2)
    return done


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=50, help="ModelServes (two kwok GPU nodes hold 220 pods: both colors of 100)")
    args = p.parse_args()
    cluster, _ = start_or_reuse(lc_settings.load())
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    ns = cluster.new_namespace("bench-rollout")
    env = dict(os.environ, **ENV, TUNEFORGE_NAMESPACES=ns, PYTHONPATH=str(ROOT / "operator" / "src"))
    log = open(cluster.settings.logs / "operator-bench-rollout.log", "wb")
    op = subprocess.Popen([operator_python(), "-m", "tuneforge", "--kubeconfig", str(cluster.kubeconfig)],
                          env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        figures = {}
        for version, label in ((1, "first deploy"), (2, "new version")):
            applied = apply_all(cluster, ns, [manifest(i, version) for i in range(args.n)])
            done = switched_at(cluster, ns, args.n, version, op)
            lat = [t - applied for t in done.values()]
            figures[label] = (percentile(lat, 0.5), percentile(lat, 0.99), max(done.values()) - applied)
            print(f"{label:13}: {args.n} ModelServes, apply -> switch p50 {figures[label][0]:.1f} s  "
                  f"p99 {figures[label][1]:.1f} s  all switched after {figures[label][2]:.1f} s", flush=True)
        rss = peak_rss_mb(op.pid)
        print(f"operator peak RSS with both kinds loaded, {args.n} ModelServes: {rss:.0f} MB (goal < 200 MB)")
        mean = statistics.mean(figures["new version"][:2])
        print(f"new version vs first deploy (p50): {figures['new version'][0] / max(figures['first deploy'][0], 1e-9):.2f}x "
              f"(a rollout has a warm stable color and a scale-down; mean of p50/p99 {mean:.1f} s)")
    finally:
        op.terminate()
        op.wait(30)
        cluster.delete_namespace(ns)
    return 0


if __name__ == "__main__":
    sys.exit(main())
