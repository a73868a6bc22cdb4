"""Figures of the local cluster: cold build times (recorded when each piece was built on
this machine), warm ``cluster-up`` time to a Ready node, RSS of the whole cluster at rest,
pod start latency on the real node, and disk used by caches.

Run: ``make bench`` (or ``python bench/localcluster.py --pods 10``). It restarts the
cluster to time a warm start, so do not run it while tests use the cluster.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from tuneforge_localcluster import binaries, cluster, images, settings
from tuneforge_localcluster.testing import Cluster, real_node_pod_spec, wait_for

PROBE = Path(__file__).resolve().parents[1] / "tests" / "images" / "probe"


def rss_bytes(s: settings.Settings) -> dict[str, int]:
    """Resident memory of every process of the cluster (components, shims, pods)."""
    out: dict[str, int] = {}
    for pid in cluster._our_processes(s):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                out[name] = out.get(name, 0) + int(line.split()[1]) * 1024
    return out


def incremental(c: Cluster, folder: Path) -> None:
    """Time a code-only change of a big image: first load (if needed), then rebuild, push, pull, run."""
    import shutil
    import tempfile

    ns = c.new_namespace("bench-image")
    try:
        for label, change in (("as committed", False), ("after a code-only change", True)):
            with tempfile.TemporaryDirectory() as tmp:
                ctx = Path(tmp) / folder.name
                shutil.copytree(folder, ctx)
                if change:
                    for py in sorted(ctx.rglob("__init__.py"))[:1]:
                        py.write_text(py.read_text() + f"\n# bench change {time.time()}\n")
                t0 = time.monotonic()
                ref = images.build(c.settings, ctx, folder.name)
                built = time.monotonic() - t0
            spec = real_node_pod_spec(ref, ["--help"])
            name = "changed" if change else "committed"
            c.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}, ns)
            wait_for(f"pod {name} done", lambda n=name: c.get("pod", n, ns)["status"].get("phase") in ("Succeeded", "Failed"), 600, 0.2)
            total = time.monotonic() - t0
            print(f"== {folder.name} image {label}: build+push {built:.1f} s, to a finished pod {total:.1f} s")
    finally:
        c.delete_namespace(ns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pods", type=int, default=10, help="pods to start one after another")
    parser.add_argument("--settle", type=float, default=20, help="seconds at rest before RSS is read")
    parser.add_argument("--incremental-image", default=str(Path(__file__).resolve().parents[1] / "trainer-image"),
                        help="Dockerfile folder whose code-only rebuild+load is timed ('' to skip)")
    args = parser.parse_args()
    s = settings.load()

    print("== cold builds (recorded on this machine)")
    records = binaries.build_records(s)
    for name, secs in sorted(records.items(), key=lambda kv: -kv[1]):
        print(f"{name:26} {secs:7.0f} s")
    print(f"{'sum of Go builds':26} {sum(records.values()):7.0f} s")
    base = s.cache / "base-image-build.json"
    if base.exists():
        print(f"{'base image (debootstrap)':26} {json.loads(base.read_text())['seconds']:7.0f} s")

    with cluster.locked(s):
        cluster.down(s)
        started = time.monotonic()
        cluster.up(s)
        warm_up = time.monotonic() - started
    print(f"\n== warm cluster-up to every node Ready: {warm_up:.1f} s")

    c = Cluster(s)
    image = c.image(PROBE, "probe")
    ns = c.new_namespace("bench-pods")
    latencies = []
    try:
        for i in range(args.pods):
            spec = real_node_pod_spec(image, ["serve"])
            spec["restartPolicy"] = "Always"
            t0 = time.monotonic()
            c.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"p{i}"}, "spec": spec}, ns)
            wait_for(f"pod p{i} Running", lambda n=f"p{i}": c.get("pod", n, ns)["status"].get("phase") == "Running", 60, 0.05)
            latencies.append(time.monotonic() - t0)
        print(f"== pod start latency on the real node (create -> Running, n={len(latencies)}): "
              f"p50 {statistics.median(latencies):.2f} s, max {max(latencies):.2f} s")
    finally:
        c.delete_namespace(ns)

    time.sleep(args.settle)
    rss = rss_bytes(s)
    print(f"\n== RSS at rest (after {args.settle:.0f} s idle, pods deleted): {sum(rss.values()) / 2**20:.0f} MiB")
    for name, b in sorted(rss.items(), key=lambda kv: -kv[1]):
        print(f"{name:26} {b / 2**20:7.0f} MiB")

    if args.incremental_image:
        incremental(c, Path(args.incremental_image))

    print("\n== disk used by caches and image stores")
    usage = images.disk_usage(s)
    for label, b in usage.items():
        print(f"{label:26} {b / 2**30:7.2f} GiB")
    print(f"{'total':26} {sum(usage.values()) / 2**30:7.2f} GiB")


if __name__ == "__main__":
    main()
