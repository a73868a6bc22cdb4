"""``localcluster`` command line: up, down, status, binaries, image build."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tuneforge_localcluster import binaries, cluster, images, settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="localcluster", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("up", help="start the cluster (cleaning up any earlier run first)")
    sub.add_parser("down", help="stop every process and remove the pods' leftovers")
    st = sub.add_parser("status", help="show processes, nodes and disk use")
    st.add_argument("--quiet", "-q", action="store_true", help="print nothing; exit 0 when the cluster is up, 1 when not")
    sub.add_parser("binaries", help="build (or find cached) Go binaries and print their paths")
    img = sub.add_parser("image", help="images from the repo's Dockerfiles")
    img_sub = img.add_subparsers(dest="image_cmd", required=True)
    build = img_sub.add_parser("build", help="build a Dockerfile folder and push it to the local registry")
    build.add_argument("context", type=Path, help="folder holding the Dockerfile")
    build.add_argument("--name", required=True, help="image name (tagged with a hash of its inputs)")
    build.add_argument("--dockerfile", default="Dockerfile")
    build.add_argument("--target", default=None, help="the Dockerfile stage to build (e.g. cpu, gpu)")
    args = parser.parse_args(argv)

    s = settings.load()
    if args.cmd == "up":
        with cluster.locked(s):
            cluster.up(s)
    elif args.cmd == "down":
        with cluster.locked(s):
            cluster.down(s)
    elif args.cmd == "status" and args.quiet:
        return 0 if cluster.is_up(s) else 1
    elif args.cmd == "status":
        report = cluster.status(s)
        nodes = report.pop("nodes", "")
        disk = report.pop("disk")
        for name, pid in report["processes"].items():  # type: ignore[attr-defined]
            print(f"{name:24} {'running pid ' + str(pid) if pid else 'stopped'}")
        if nodes:
            print(nodes)
        for label, size in disk.items():  # type: ignore[attr-defined]
            print(f"{label:18} {size / 2**30:6.2f} GiB")
    elif args.cmd == "binaries":
        print(json.dumps({k: str(v) for k, v in binaries.ensure_binaries(s).items()}, indent=2))
    elif args.cmd == "image":
        print(images.build(s, args.context, args.name, args.dockerfile, args.target))
    return 0


if __name__ == "__main__":
    sys.exit(main())
