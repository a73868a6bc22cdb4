#!/usr/bin/env python3
"""Capture the Argo CD testdata of charts/tuneforge/files/argocd/ from the local cluster.

Drives FineTuneJobs and ModelServes through every phase (tests/argocd/argocd_capture.py, the
same run the cluster test checks) and writes, per kind:
  testdata/<phase>_<what>.yaml      the live objects (managedFields, uid, resourceVersion and the
                                    run's namespace taken out)
  health_test.yaml                  each object's expected health: the status the phase means (set by
                                    the scenario), the message the script gave on the live object
  actions/action_test.yaml          discovery on every captured object; each action applied live,
                                    its expected output the input with the operator's request (the
                                    scenario's patch, not the script's) applied
  actions/testdata/<in>_<action>.yaml  those expected outputs

Run it with the cluster lock held (the local cluster is shared):
  TUNEFORGE_KEEP_CLUSTER=1 flock /work/coord/cluster.lock \\
    env PYTHONPATH=operator/src:trainer-image/src:server-image/src:localcluster/src \\
    $(hack/venv.sh)/bin/python hack/capture_argocd_testdata.py
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "argocd"), str(ROOT / "tests" / "operator")]

from argocd_capture import CAPTURED_NAMESPACE, GROUP, Run, clean, drive  # noqa: E402
from argocd_lua import CUSTOMIZATIONS, apply_merge_patch  # noqa: E402
from tuneforge_localcluster import settings as lc_settings  # noqa: E402
from tuneforge_localcluster.testing import start_or_reuse  # noqa: E402

HEADER = "# Captured from the local cluster by hack/capture_argocd_testdata.py; do not edit by hand.\n"
ACTIONS = {"FineTuneJob": ("resume", "retry", "suspend"), "ModelServe": ("abort", "promote", "retry", "rollback")}


def dump(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + yaml.safe_dump(data, sort_keys=False, width=120))


def write(run: Run) -> None:
    for kind in ACTIONS:
        folder = CUSTOMIZATIONS / GROUP / kind
        for old in [*folder.glob("testdata/*.yaml"), *folder.glob("actions/testdata/*.yaml")]:
            old.unlink()
        caps = [c for c in run.captures if c.kind == kind]
        health, discovery, actions = [], [], []
        for c in caps:
            dump(folder / "testdata" / f"{c.file}.yaml", clean(c.obj, run.namespace))
            message = c.verdict["message"].replace(run.namespace, CAPTURED_NAMESPACE)
            health.append({"healthStatus": {"status": c.expect, "message": message},
                           "inputPath": f"testdata/{c.file}.yaml"})
            if c.enabled is not None:
                discovery.append({"inputPath": f"../testdata/{c.file}.yaml", "result": [
                    {"name": a, "disabled": a not in c.enabled} for a in ACTIONS[kind]]})
        for a in (a for a in run.actions if a.kind == kind):
            expected = apply_merge_patch(clean(a.obj, run.namespace), a.expected_patch)
            out = f"{a.input_file}_{a.action}.yaml"
            dump(folder / "actions" / "testdata" / out, expected)
            actions.append({"action": a.action, "inputPath": f"../testdata/{a.input_file}.yaml",
                            "expectedOutputPath": f"testdata/{out}"})
        dump(folder / "health_test.yaml", {"tests": health})
        dump(folder / "actions" / "action_test.yaml", {"discoveryTests": discovery, "actionTests": actions})
        print(f"{kind}: {len(caps)} objects, {len(actions)} actions", file=sys.stderr)


def main() -> int:
    cluster, _ = start_or_reuse(lc_settings.load())
    namespace = cluster.new_namespace("argocd-capture")
    try:
        standin = str(cluster.image(ROOT / "tests" / "images" / "trainer-standin", "trainer-standin"))
        run = drive(cluster, namespace, standin)
    finally:
        cluster.delete_namespace(namespace)
    write(run)
    for c in run.captures:
        st = c.obj.get("status") or {}
        print(f"{c.kind:12} {c.file:40} phase={st.get('phase')!s:12} -> {c.verdict['status']}: {c.verdict['message']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
