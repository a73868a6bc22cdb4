"""Autoscaling that scales: a ModelServe's active color is scaled by the real KEDA (operator and
metrics API server, localcluster/keda.py) on a Prometheus trigger, through the real aggregation
layer and the real HPA controller.

What runs for real: the operator renders a ScaledObject (``prometheus_url`` set, the CRD served);
KEDA makes the HPA named as the ModelServe; kube-controller-manager's HPA controller reads the
external metric through ``external.metrics.k8s.io`` (the apiserver proxies to KEDA's metrics
server, which asks KEDA's operator over gRPC, which queries the real Prometheus). The color pods
run on kwok's GPU nodes, so the waiting requests they would report come from a stand-in exporter
on the host: one ``vllm:num_requests_waiting`` series per color pod, with the pod's namespace and
name as Prometheus' pod scraping labels them, and a value the test sets (a load of 6 waiting
requests, then none). Load, scale-up, load gone, scale-down, then a rollout: the ScaledObject and
KEDA's HPA move to the new color, which scales on its own pods' series.

The replica timeline goes to test-output/keda/timeline.json.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from operator_helpers import ROOT, OperatorProcess
from tuneforge_localcluster.prometheus import HOST_JOB, Prometheus, running
from tuneforge_localcluster.testing import Cluster, kwok_serve_env, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1200)]

OUTPUT = ROOT / "test-output" / "keda"
H100 = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
METRIC = "vllm:num_requests_waiting"
WINDOW = 10  # spec.hpa.scaleDownStabilizationSeconds: the test waits this, not the default 300 s


class WaitingRequests:
    """A stand-in for the color pods' /metrics: ``vllm:num_requests_waiting`` per pod, set by the
    test, in the text format whatever the scraper asks for, as vLLM's /metrics answers (its
    prometheus-fastapi-instrumentator route). prometheus_client's own server would negotiate the
    OpenMetrics format Prometheus 2.x asks for first, and client_python 0.26 writes the samples of a
    name with a colon there as ``vllm_num_requests_waiting`` (prometheus/client_python#1177): the
    query would find nothing."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.gauge = Gauge(METRIC, "Requests waiting (stand-in)", ["namespace", "pod"], registry=self.registry)

        def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            start_response("200 OK", [("Content-Type", CONTENT_TYPE_PLAIN_0_0_4)])
            return [generate_latest(self.registry)]

        self.server = make_server("127.0.0.1", 0, app, WSGIServer, handler_class=_QuietHandler)
        self.port = self.server.server_port
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def set(self, namespace: str, pods: list[str], total: float) -> None:
        """``total`` waiting requests spread over ``pods`` (every other series is dropped)."""
        self.gauge.clear()
        for pod in pods:
            self.gauge.labels(namespace, pod).set(total / len(pods))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


def manifest(version: int) -> dict[str, Any]:
    digest = "sha256:" + f"{version:x}" * 64
    return {"apiVersion": "tuneforge.dev/v1alpha1", "kind": "ModelServe", "metadata": {"name": "intents"}, "spec": {
        "baseModel": {"uri": "/models/base"},
        "adapters": [{"name": "intents", "uri": f"/adapters/v{version}", "digest": digest}],
        "resources": {"cpu": "1", "memory": "1Gi"},
        "scheduling": {"nodeSelector": H100},
        "hpa": {"minReplicas": 1, "maxReplicas": 2, "targetWaitingRequests": 4, "scaleDownStabilizationSeconds": WINDOW},
        "rollout": {"progressDeadlineSeconds": 120, "scaleDownDelaySeconds": 5,
                    "gate": {"minAccuracy": 0.8, "rows": 20, "datasetUri": "s3://gate/rows.jsonl"}},
    }}


@pytest.fixture
def prom(cluster: Cluster, tmp_path: Path) -> Iterator[Prometheus]:
    with running(tmp_path / "prometheus", rule_files=[], log_to=OUTPUT / "prometheus.log") as p:
        yield p


def test_keda_scales_the_active_color_on_waiting_requests_and_follows_the_switch(
        cluster: Cluster, keda: float, crds: None, prom: Prometheus) -> None:
    ns = cluster.new_namespace("t-keda")
    exporter = WaitingRequests()
    op = OperatorProcess(cluster, ns, {**kwok_serve_env(), "TUNEFORGE_RETRY_DELAY": "1", "TUNEFORGE_RETRY_MAX_DELAY": "5",
                                       "TUNEFORGE_PROMETHEUS_URL": prom.url}, "keda-operator-test").start()
    t0 = time.monotonic()
    timeline: list[dict[str, Any]] = [{"t": 0.0, "event": "start", "keda_start_seconds": round(keda, 1)}]

    def mark(event: str, **info: Any) -> None:
        timeline.append({"t": round(time.monotonic() - t0, 1), "event": event, **info})

    def describe() -> str:
        return "\n".join([cluster.describe("modelserve", "intents", ns), cluster.describe("hpa", "intents", ns),
                          op.log()[-3000:]])

    def replicas(color: str) -> int:
        d = cluster.get("deployment", f"intents-{color}", ns)
        return int((d.get("spec") or {}).get("replicas") or 0)

    def pods(color: str) -> list[str]:
        return sorted(p["metadata"]["name"] for p in cluster.list("pods", ns, f"tuneforge.dev/modelserve=intents,tuneforge.dev/color={color}")
                      if not p["metadata"].get("deletionTimestamp"))

    def scaled_to(color: str, n: int) -> Any:
        def probe() -> bool:
            op.check_alive()
            return replicas(color) == n
        return probe

    try:
        prom.set_host_targets([{"targets": [f"127.0.0.1:{exporter.port}"], "labels": {"component": "color-pods-standin"}}])
        cluster.apply(manifest(1), ns)
        st = wait_for("v1 Healthy", lambda: (s := cluster.get("modelserve", "intents", ns).get("status") or {})
                      .get("phase") == "Healthy" and s, 240, 1, describe)
        first = st["activeColor"]
        mark("healthy", color=first)

        # The operator's ScaledObject, KEDA's HPA (named as the ModelServe) on the active color, and
        # the operator's own HPA absent.
        so = wait_for("the ScaledObject Ready", lambda: (o := cluster.get("scaledobject", "intents", ns)) and any(
            c["type"] == "Ready" and c["status"] == "True" for c in (o.get("status") or {}).get("conditions") or ()) and o,
            120, 1, describe)
        assert so["spec"]["scaleTargetRef"]["name"] == f"intents-{first}"
        trigger = so["spec"]["triggers"][0]
        assert trigger["type"] == "prometheus" and trigger["metadata"]["serverAddress"] == prom.url
        assert f'pod=~"intents-{first}-' in trigger["metadata"]["query"]
        hpa = wait_for("KEDA's HPA", lambda: cluster.get("hpa", "intents", ns), 60, 1, describe)
        assert any(r["kind"] == "ScaledObject" for r in hpa["metadata"].get("ownerReferences") or ()), hpa["metadata"]
        assert hpa["spec"]["scaleTargetRef"]["name"] == f"intents-{first}"
        assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == WINDOW
        external = hpa["spec"]["metrics"][0]["external"]["metric"]["name"]

        # Load: 6 waiting requests on the one pod -> ceil(6 / 4) = 2 replicas.
        exporter.set(ns, pods(first), 6)
        mark("load", waiting=6, pods=pods(first))
        wait_for(f"intents-{first} scaled to 2", scaled_to(first, 2), 180, 1, describe)
        mark("scaled", color=first, replicas=2)
        # The value the HPA acted on came through the aggregation layer from KEDA's metrics server.
        raw = json.loads(cluster.kubectl("get", "--raw", f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/{external}"
                                         "?labelSelector=scaledobject.keda.sh%2Fname%3Dintents").stdout)
        assert raw["kind"] == "ExternalMetricValueList" and raw["items"], raw
        hpa = cluster.get("hpa", "intents", ns)
        assert hpa["status"]["desiredReplicas"] == 2, hpa["status"]

        # Load gone: back to 1 once the stabilization window has passed.
        exporter.set(ns, pods(first), 0)
        mark("load gone", waiting=0)
        wait_for(f"intents-{first} back to 1", scaled_to(first, 1), WINDOW + 180, 1, describe)
        mark("scaled", color=first, replicas=1)

        # A new version rolls out: the ScaledObject, and with it KEDA's HPA, move to the new color.
        cluster.apply(manifest(2), ns)
        st = wait_for("v2 Healthy on the other color", lambda: (s := cluster.get("modelserve", "intents", ns).get("status") or {})
                      .get("phase") == "Healthy" and s.get("activeColor") != first and s, 300, 1, describe)
        second = st["activeColor"]
        mark("switched", color=second, replicas=replicas(second))
        assert replicas(second) == 1  # the candidate started at the active color's count then
        wait_for("the ScaledObject on the new color", lambda: cluster.get("scaledobject", "intents", ns)["spec"]
                 ["scaleTargetRef"]["name"] == f"intents-{second}", 60, 1, describe)
        wait_for("KEDA's HPA on the new color", lambda: cluster.get("hpa", "intents", ns)["spec"]["scaleTargetRef"]
                 ["name"] == f"intents-{second}", 90, 1, describe)
        exporter.set(ns, pods(second), 6)
        mark("load", waiting=6, pods=pods(second))
        wait_for(f"intents-{second} scaled to 2", scaled_to(second, 2), 180, 1, describe)
        mark("scaled", color=second, replicas=2)
        # The old color goes to 0 by the rollout (scaleDownDelaySeconds), never by the autoscaler.
        wait_for(f"intents-{first} scaled down after the switch", scaled_to(first, 0), 60, 1, describe)
        exporter.set(ns, pods(second), 0)
        wait_for(f"intents-{second} back to 1", scaled_to(second, 1), WINDOW + 180, 1, describe)
        mark("scaled", color=second, replicas=1)
        assert not cluster.list("horizontalpodautoscalers", ns, "tuneforge.dev/modelserve=intents") or all(
            any(r["kind"] == "ScaledObject" for r in h["metadata"].get("ownerReferences") or ())
            for h in cluster.list("horizontalpodautoscalers", ns, "tuneforge.dev/modelserve=intents"))
        assert prom.query(f'up{{job="{HOST_JOB}",component="color-pods-standin"}} == 1')
    finally:
        OUTPUT.mkdir(parents=True, exist_ok=True)
        (OUTPUT / "timeline.json").write_text(json.dumps(timeline, indent=1))
        print("\nKEDA replica timeline:\n" + "\n".join(json.dumps(e) for e in timeline))
        op.kill()
        exporter.close()
        cluster.delete_namespace(ns)
