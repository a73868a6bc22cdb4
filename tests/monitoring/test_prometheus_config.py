"""The local cluster's Prometheus: its configuration passes ``promtool check config`` with the
chart's rule file, and pod discovery (``pod_targets``, standing in for Kubernetes SD, which
Debian's build lacks) keeps exactly the pods a Kubernetes-SD scrape job with the usual
``prometheus.io`` relabelling would, labelled with color and ModelServe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

import promtool
from tuneforge_localcluster import prometheus

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "charts" / "tuneforge" / "files" / "prometheus" / "alerts.yaml"
NODE = "tuneforge-node"


def test_config_passes_promtool_check_config_with_the_chart_rules(tmp_path: Path) -> None:
    cfg = prometheus.build_config(rule_files=[RULES], host_targets=tmp_path / "host.json", pod_targets=tmp_path / "pods.json")
    f = tmp_path / "prometheus.yml"
    f.write_text(yaml.safe_dump(cfg))
    res = promtool.run("check", "config", str(f))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS: 7 rules found" in res.stdout, res.stdout
    assert [j["job_name"] for j in cfg["scrape_configs"]] == [prometheus.HOST_JOB, prometheus.POD_JOB]


def test_debian_build_has_no_kubernetes_sd(tmp_path: Path) -> None:
    """Why discovery is done by the caller: the packaged server refuses kubernetes_sd_configs
    (when a build has it, this fails and the module can switch to it)."""
    f = tmp_path / "k8s.yml"
    f.write_text(yaml.safe_dump({"scrape_configs": [{"job_name": "k", "kubernetes_sd_configs": [{"role": "pod"}]}]}))
    res = promtool.run("check", "config", str(f))
    assert res.returncode != 0 and "kubernetes_sd_configs not found" in res.stdout + res.stderr, res.stdout + res.stderr


def _pod(name: str, *, node: str = NODE, phase: str = "Running", ip: str | None = "10.244.0.7",
         annotations: dict[str, str] | None = None, labels: dict[str, str] | None = None, deleting: bool = False) -> dict[str, Any]:
    ann = {"prometheus.io/scrape": "true", "prometheus.io/port": "8000", "prometheus.io/path": "/metrics"}
    ann.update(annotations or {})
    meta: dict[str, Any] = {"name": name, "namespace": "team-a", "annotations": ann, "labels": labels or {}}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-06T20:00:00Z"
    return {"metadata": meta, "spec": {"nodeName": node}, "status": {"phase": phase, **({"podIP": ip} if ip else {})}}


def test_pod_targets_keep_annotated_running_pods_of_the_real_node_with_color_labels() -> None:
    pods = [
        _pod("intents-blue-1", labels={"tuneforge.dev/color": "blue", "tuneforge.dev/modelserve": "intents"}),
        _pod("intents-green-1", node="kwok-gpu-0", labels={"tuneforge.dev/color": "green"}),  # kwok: made-up IP
        _pod("pending", phase="Pending", ip=None),
        _pod("not-annotated", annotations={"prometheus.io/scrape": "false"}),
        _pod("going", deleting=True),
        _pod("custom", ip="10.244.0.9", annotations={"prometheus.io/port": "9100", "prometheus.io/path": "/stats"}),
    ]
    assert prometheus.pod_targets(pods, NODE) == [
        {"targets": ["10.244.0.7:8000"], "labels": {"namespace": "team-a", "pod": "intents-blue-1", "__metrics_path__": "/metrics",
                                                   "color": "blue", "modelserve": "intents"}},
        {"targets": ["10.244.0.9:9100"], "labels": {"namespace": "team-a", "pod": "custom", "__metrics_path__": "/stats"}},
    ]


def test_pod_targets_name_a_pod_without_a_port() -> None:
    pod = _pod("noport")
    del pod["metadata"]["annotations"]["prometheus.io/port"]
    with pytest.raises(ValueError, match="team-a/noport: prometheus.io/scrape without prometheus.io/port"):
        prometheus.pod_targets([pod], NODE)
