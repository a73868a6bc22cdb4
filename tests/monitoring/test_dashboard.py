"""The chart's Grafana dashboard (files/grafana/tuneforge-dashboard.json), without a cluster:
every PromQL expression parses (``promtool check rules`` over a rule file of them), reads only
Tuneforge's or vLLM's metrics (the Tuneforge ones exposed by the operator), the panels cover what
a platform team looks at, and the chart renders the dashboard as a ConfigMap for the Grafana
sidecar only when asked. Whether every metric really has series is checked against the real
Prometheus in test_prometheus_cluster.py."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

import dashboard
import promtool
from tuneforge_localcluster import binaries
from tuneforge_localcluster import settings as lc_settings

CHART = dashboard.ROOT / "charts" / "tuneforge"
# The metric each topic of issue 19's dashboard reads.
TOPICS = {
    "jobs by phase": "tuneforge_finetunejobs",
    "GPU-hours": "tuneforge_gpu_seconds_total",
    "serving GPU-hours": "tuneforge_modelserve_gpu_seconds_total",
    "fine-tuning cost": "tuneforge_finetunejob_cost_total",
    "serving cost": "tuneforge_modelserve_cost_total",
    "eval accuracy per job": "tuneforge_eval_accuracy",
    "serving requests": "vllm:request_success_total",
    "latency p50/p99": "vllm:e2e_request_latency_seconds_bucket",
    "waiting queue": "vllm:num_requests_waiting",
    "gate results": "tuneforge_gate_evaluations_total",
    "rollouts": "tuneforge_modelserve_rollout_started_timestamp_seconds",
    "rollbacks": "tuneforge_modelserve_rollbacks_total",
}


def test_every_expression_parses(tmp_path: Path) -> None:
    rules = [{"record": f"tuneforge:dashboard:{i}", "expr": expr} for i, (_, expr) in enumerate(dashboard.exprs())]
    f = tmp_path / "dashboard-rules.yaml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    res = promtool.run("check", "rules", str(f))
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(rules)} rules found" in res.stdout
    # The check is not a formality: a broken expression is refused.
    f.write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": [{"record": "r", "expr": "sum by (le (x)"}]}]}))
    assert promtool.run("check", "rules", str(f)).returncode != 0


def test_cost_per_1k_requests_divides_each_modelserves_cost_by_its_own_requests() -> None:
    """The one panel that joins the operator's series (``namespace``/``name``) with vLLM's
    (``namespace``/``modelserve``): both sides aggregated to (namespace, name), requests renamed,
    and no bar where nothing was served."""
    (expr,) = [e for t, e in dashboard.exprs() if t == "Serving cost per 1,000 requests"]
    assert dashboard.metric_names(expr) == {"tuneforge_modelserve_cost_total", "vllm:request_success_total"}
    assert 'label_replace(increase(vllm:request_success_total[1h]), "name", "$1", "modelserve", "(.+)")' in expr
    assert "/ on (namespace, name) group_left ()" in expr and expr.endswith("> 0)")


@pytest.mark.parametrize(("expr", "names"), [
    ('sum by (phase) (tuneforge_finetunejobs{phase="Failed"})', {"tuneforge_finetunejobs"}),
    ("histogram_quantile(0.99, sum by (le, color) (rate(vllm:e2e_request_latency_seconds_bucket[5m])))",
     {"vllm:e2e_request_latency_seconds_bucket"}),
    ("a_total / on (ns) group_left (name) b offset 5m > bool 3e2 and c{x=~'by|on'}", {"a_total", "b", "c"}),
    ("max(tuneforge_leader) < 1 or absent(tuneforge_leader)", {"tuneforge_leader"}),
])
def test_metric_names_of_an_expression(expr: str, names: set[str]) -> None:
    assert dashboard.metric_names(expr) == names


def test_panels_read_only_tuneforge_and_vllm_metrics_and_cover_the_topics(exposition: str) -> None:
    used = {name for _, expr in dashboard.exprs() for name in dashboard.metric_names(expr)}
    assert used, "no metric read"
    foreign = {n for n in used if not (n.startswith("tuneforge_") or n.startswith("vllm:"))}
    assert not foreign, foreign
    exposed = set(re.findall(r"^(\w+)(?:\{|\s)", exposition, re.M))
    assert {n for n in used if n.startswith("tuneforge_")} - exposed == set(), "tuneforge metrics the operator does not expose"
    missing = {topic: m for topic, m in TOPICS.items() if m not in used}
    assert not missing, missing


def test_dashboard_is_grafana_shaped() -> None:
    doc = dashboard.load()
    assert doc["uid"] == "tuneforge" and doc["title"] == "Tuneforge"
    (var,) = [v for v in doc["templating"]["list"] if v["type"] == "datasource"]
    assert var["name"] == "datasource" and var["query"] == "prometheus"
    panels = doc["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"] and p.get("description"), p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]


def _render(*sets: str) -> list[dict[str, Any]]:
    helm = str(binaries.helm(lc_settings.load()))
    args = [helm, "template", "tf", str(CHART), "--namespace", "tuneforge-system"]
    for s in sets:
        args += ["--set", s]
    res = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return [d for d in yaml.safe_load_all(res.stdout) if d]


def _dashboard_cms(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")]


def test_chart_renders_the_dashboard_configmap_for_the_sidecar_only_when_enabled() -> None:
    assert _dashboard_cms(_render()) == []
    (cm,) = _dashboard_cms(_render("grafana.dashboard.enabled=true"))
    assert cm["metadata"]["name"] == "tf-tuneforge-dashboard" and cm["metadata"]["namespace"] == "tuneforge-system"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert "annotations" not in cm["metadata"]
    assert json.loads(cm["data"]["tuneforge-dashboard.json"]) == dashboard.load()
    (cm,) = _dashboard_cms(_render("grafana.dashboard.enabled=true", "grafana.dashboard.namespace=monitoring",
                                   "grafana.dashboard.folder=Platform"))
    assert cm["metadata"]["namespace"] == "monitoring" and cm["metadata"]["annotations"] == {"grafana_folder": "Platform"}


def test_schema_refuses_an_unknown_dashboard_key() -> None:
    helm = str(binaries.helm(lc_settings.load()))
    res = subprocess.run([helm, "template", "tf", str(CHART), "--set", "grafana.dashboard.enable=true"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "'enable'" in res.stderr, res.stderr


def test_helm_lint_strict_with_the_dashboard() -> None:
    helm = str(binaries.helm(lc_settings.load()))
    res = subprocess.run([helm, "lint", "--strict", str(CHART), "--set", "grafana.dashboard.enabled=true"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
