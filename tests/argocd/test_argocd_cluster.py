"""The Argo CD health and action scripts on live objects: FineTuneJobs and ModelServes driven
through every phase on the local cluster (stand-in trainer, kwok GPU nodes, the gate's measures
as kwok pods' termination messages), each phase's health verdict checked on the live object, and
each action applied as Argo CD applies it, the operator's reaction awaited. What the run saw is
written to test-output/argocd-capture/ (``hack/capture_argocd_testdata.py`` writes the same into
the chart's testdata)."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from argocd_capture import ROOT, STANDIN_DIR, clean, drive

sys.path.insert(0, str(ROOT / "tests" / "monitoring"))
import promtool  # noqa: E402

pytestmark = pytest.mark.cluster
OUTPUT = ROOT / "test-output" / "argocd-capture"


def test_health_and_actions_on_live_objects(cluster: Any, namespace: str) -> None:
    standin = str(cluster.image(STANDIN_DIR, "trainer-standin"))
    run = drive(cluster, namespace, standin)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    report = [{"kind": c.kind, "file": c.file, "phase": (c.obj.get("status") or {}).get("phase"),
               "reason": (c.obj.get("status") or {}).get("reason"), "health": c.verdict} for c in run.captures]
    (OUTPUT / "verdicts.json").write_text(json.dumps(report, indent=1))
    for c in run.captures:
        (OUTPUT / f"{c.kind}-{c.file}.json").write_text(json.dumps(clean(c.obj, namespace), indent=1))
    # Every phase of both kinds was captured and judged (drive asserts each verdict as it goes).
    phases = {(c.kind, (c.obj.get("status") or {}).get("phase")) for c in run.captures}
    for phase in ("Pending", "Validating", "Queued", "Running", "Evaluating", "Succeeded", "Failed", "Suspended", None):
        assert ("FineTuneJob", phase) in phases, phases
    for phase in ("Progressing", "Paused", "Healthy", "Degraded", "Failed", None):
        assert ("ModelServe", phase) in phases, phases
    assert {(a.kind, a.action) for a in run.actions} == {
        ("FineTuneJob", "suspend"), ("FineTuneJob", "resume"), ("FineTuneJob", "retry"),
        ("ModelServe", "promote"), ("ModelServe", "rollback"), ("ModelServe", "retry"), ("ModelServe", "abort")}
    # The running operator's exposition after all of that passes promtool's lint.
    (OUTPUT / "operator-metrics.txt").write_text(run.metrics)
    res = promtool.run("check", "metrics", input=run.metrics)
    assert res.returncode == 0, res.stdout + res.stderr
    assert 'tuneforge_finetunejobs{phase="Failed"} 2.0' in run.metrics, run.metrics
