"""The alert rules the chart ships (charts/tuneforge/files/prometheus/alerts.yaml): valid for
``promtool check rules``, their unit tests (rules_test.yaml) pass under ``promtool test rules``,
every alert is shown both firing and silent there, and every metric they read is one the
operator exposes. The operator's own /metrics exposition, served
as main.py serves it, passes ``promtool check metrics``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

import promtool

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "charts" / "tuneforge" / "files" / "prometheus"
def _alerts() -> list[dict[str, Any]]:
    doc = yaml.safe_load((RULES / "alerts.yaml").read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def test_promtool_check_rules() -> None:
    res = promtool.run("check", "rules", str(RULES / "alerts.yaml"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(_alerts())} rules found" in res.stdout


def test_promtool_test_rules() -> None:
    res = promtool.run("test", "rules", "rules_test.yaml", cwd=RULES)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_every_alert_is_unit_tested_firing_and_silent() -> None:
    tests = yaml.safe_load((RULES / "rules_test.yaml").read_text())["tests"]
    fired, silent = set(), set()
    for t in tests:
        for case in t.get("alert_rule_test") or ():
            (fired if case.get("exp_alerts") else silent).add(case["alertname"])
    names = {a["alert"] for a in _alerts()}
    assert names == {"TuneforgeFineTuneJobFailed", "TuneforgeGateFailed", "TuneforgeTrainingStalled", "TuneforgeRolloutStuck",
                     "TuneforgeRollbackHappened", "TuneforgeNoOperatorLeader", "TuneforgeReconcileErrorsRising"}
    assert names - fired == set(), "alerts never shown firing"
    assert names - {"TuneforgeNoOperatorLeader"} - silent == set(), "alerts never shown silent"
    assert "TuneforgeNoOperatorLeader" in silent


def test_promtool_check_metrics_on_operator_exposition(exposition: str) -> None:
    res = promtool.run("check", "metrics", input=exposition)
    assert res.returncode == 0, res.stdout + res.stderr + exposition
    assert 'tuneforge_finetunejobs{phase="Succeeded"} 1.0' in exposition
    # The check is not a formality: a counter without _total is refused.
    bad = promtool.run("check", "metrics", input="# HELP jobs_done Done.\n# TYPE jobs_done counter\njobs_done 3\n")
    assert bad.returncode != 0 and "_total" in bad.stdout + bad.stderr, bad.stdout + bad.stderr


def test_rules_read_only_exposed_metrics(exposition: str) -> None:
    exposed = set(re.findall(r"^# TYPE (\S+) ", exposition, re.M))
    # prometheus-client names a counter's family without _total in TYPE; its samples carry it.
    exposed |= {f"{n}_total" for n in exposed}
    used = set()
    for alert in _alerts():
        used |= set(re.findall(r"\btuneforge_[a-zA-Z0-9_:]*", alert["expr"]))
    # No rule reads a metric the operator does not expose (a typo, an invented name).
    assert used - exposed == set(), f"not exposed: {sorted(used - exposed)}"
    header = (RULES / "alerts.yaml").read_text().split("groups:")[0]
    for name in used:
        assert name in header, f"{name}: not listed in alerts.yaml's header"
