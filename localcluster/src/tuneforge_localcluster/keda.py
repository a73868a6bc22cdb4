"""KEDA (``github.com/kedacore/keda/v2``) as an optional component of the local cluster: its
operator and its metrics API server, so that a ScaledObject's HPA really scales.

Both run on the host like the control plane, from binaries built and cached like the cluster's
other Go components (``binaries.OPTIONAL``, wrapper module ``localcluster/go/keda``); tests that
need KEDA ask for it (the ``keda`` fixture) and only they pay for its build and start.

- **CRDs**: upstream's own (``config/crd/bases`` of the module).
- **Operator**: reconciles ScaledObjects into HPAs (named by ``spec.advanced.
  horizontalPodAutoscalerConfig.name``) and answers metric queries over gRPC (mutual TLS) on
  loopback. KEDA's certificate rotation is off: one certificate from the cluster's CA, valid for
  serving and as a client, is its gRPC server's and the metrics server's client certificate.
- **Metrics API server** (``cmd/adapter``): an aggregated API server for
  ``external.metrics.k8s.io/v1beta1``. The apiserver reaches it through an APIService whose
  Service has no selector and one endpoint, this node's address and the server's port: the
  apiserver routes to endpoints (``--enable-aggregator-routing``) and proxies with its
  front-proxy client certificate (``pki.FRONT_PROXY_CLIENT``); the server authenticates and
  authorizes those requests by delegation (TokenReview / SubjectAccessReview), as in a cluster.

The HPA controller (kube-controller-manager, as its ``horizontal-pod-autoscaler`` service
account) reads the external metric, so a Prometheus trigger's value drives the replicas.

The builders here are pure; ``ensure`` writes, applies and starts what they return.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import yaml

from tuneforge_localcluster import binaries, cluster, manifests, pki
from tuneforge_localcluster.settings import Settings

VERSION = binaries.KEDA_VERSION
MODULE = f"github.com/kedacore/keda/v2@{VERSION}"
NAMESPACE = "keda"
METRICS_SERVICE = "keda-metrics-apiserver"
API_GROUP = "external.metrics.k8s.io"
API_VERSION = "v1beta1"
GRPC_PORT = 19666
OPERATOR_HEALTH_PORT = 18091
OPERATOR_METRICS_PORT = 18092
ADAPTER_PORT = 16443
"""The metrics API server's HTTPS port, on every address (the APIService's endpoint is the node's)."""
ADAPTER_METRICS_PORT = 18093
IDENTITY = pki.Identity("keda", "system:keda-operator")
CERT_NAME = "keda-grpc"


def environment() -> dict[str, str]:
    """What KEDA reads from the pod it would run in: its namespace, and every namespace watched."""
    return {"POD_NAMESPACE": NAMESPACE, "KEDA_CLUSTER_OBJECT_NAMESPACE": NAMESPACE, "WATCH_NAMESPACE": ""}


def cert_dir(s: Settings) -> Path:
    """``ca.crt``, ``tls.crt`` and ``tls.key``: the names KEDA's gRPC server and client load."""
    return s.runtime / "keda" / "certs"


def operator_args(s: Settings, binary: Path) -> list[str]:
    return [
        str(binary),
        f"--kubeconfig={s.pki / 'keda.kubeconfig'}",
        f"--health-probe-bind-address=127.0.0.1:{OPERATOR_HEALTH_PORT}",
        f"--metrics-bind-address=127.0.0.1:{OPERATOR_METRICS_PORT}",
        f"--metrics-service-bind-address=127.0.0.1:{GRPC_PORT}",
        f"--cert-dir={cert_dir(s)}",
        # The certificates come from the cluster's CA; nothing for KEDA to generate or patch.
        "--enable-cert-rotation=false",
        "--enable-webhook-patching=false",
        "--enable-apiservice-patching=false",
        "--leader-elect=false",
        "--zap-log-level=info",
    ]


def adapter_args(s: Settings, binary: Path) -> list[str]:
    kubeconfig = s.pki / "keda.kubeconfig"
    certs = cert_dir(s)
    return [
        str(binary),
        f"--kubeconfig={kubeconfig}",
        f"--lister-kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        f"--secure-port={ADAPTER_PORT}",
        "--bind-address=0.0.0.0",
        f"--cert-dir={certs}",
        f"--tls-cert-file={certs / 'tls.crt'}",
        f"--tls-private-key-file={certs / 'tls.key'}",
        f"--client-ca-file={certs / 'ca.crt'}",
        f"--metrics-service-address=127.0.0.1:{GRPC_PORT}",
        f"--port={ADAPTER_METRICS_PORT}",
        "--zap-log-level=info",
    ]


def crds(source: Path) -> list[dict[str, Any]]:
    """Upstream's CRDs, as its ``config/crd`` kustomization lists them."""
    crd_dir = source / "config" / "crd"
    kustomization = yaml.safe_load((crd_dir / "kustomization.yaml").read_text())
    return [yaml.safe_load((crd_dir / rel).read_text()) for rel in kustomization["resources"]]


def bootstrap() -> list[dict[str, Any]]:
    """KEDA's namespace and cluster-admin for its host identity."""
    return manifests.host_addon("keda", NAMESPACE, IDENTITY.user)


def metrics_api(node_ip: str, ca_bundle: bytes) -> list[dict[str, Any]]:
    """The external metrics API: a selector-less Service with one endpoint (the host-run server
    at this node's address) and the APIService that sends ``external.metrics.k8s.io`` there,
    trusting the cluster's CA."""
    labels = {"app.kubernetes.io/name": METRICS_SERVICE, "app.kubernetes.io/part-of": "keda-operator"}
    return [
        {
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": METRICS_SERVICE, "namespace": NAMESPACE, "labels": labels},
            "spec": {"ports": [{"name": "https", "port": 443, "targetPort": ADAPTER_PORT, "protocol": "TCP"}]},
        },
        # An Endpoints object, not an EndpointSlice: the EndpointSlice mirroring controller
        # makes the slice of a selector-less Service from it, so the aggregator finds the
        # endpoint whichever of the two APIs it reads.
        {
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": METRICS_SERVICE, "namespace": NAMESPACE, "labels": labels},
            "subsets": [{"addresses": [{"ip": node_ip}], "ports": [{"name": "https", "port": ADAPTER_PORT, "protocol": "TCP"}]}],
        },
        {
            "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
            "metadata": {"name": f"{API_VERSION}.{API_GROUP}", "labels": labels},
            "spec": {
                "service": {"name": METRICS_SERVICE, "namespace": NAMESPACE, "port": 443},
                "group": API_GROUP, "version": API_VERSION,
                "caBundle": base64.b64encode(ca_bundle).decode(),
                "groupPriorityMinimum": 100, "versionPriority": 100,
            },
        },
    ]


# ------------------------------------------------------------------ side effects


def build(s: Settings) -> dict[str, Path]:
    """The operator and metrics server binaries (built on first use, minutes cold; cached)."""
    return binaries.ensure_binaries(s, ["keda-operator", "keda-adapter"])


def _ready(port: int) -> bool:
    try:
        return cluster._http_ok(f"http://127.0.0.1:{port}/readyz")
    except OSError:
        return False


def _api_available(s: Settings) -> bool:
    out = cluster.kubectl(s, "get", "apiservice", f"{API_VERSION}.{API_GROUP}", "-o",
                          "jsonpath={.status.conditions[?(@.type=='Available')].status}", check=False)
    return out.strip() == "True"


def running(s: Settings) -> bool:
    return (cluster.component_pid(s, "keda-operator") is not None and cluster.component_pid(s, "keda-adapter") is not None
            and _ready(OPERATOR_HEALTH_PORT) and _api_available(s))


def ensure(s: Settings) -> float:
    """Install KEDA's CRDs, start its operator and metrics API server unless they run, register
    the external metrics API and wait until the apiserver reports it Available; return the
    seconds it took (0 when it was running)."""
    bins = build(s)
    with cluster.locked(s):
        if running(s):
            return 0.0
        started = time.monotonic()
        for name in ("keda-adapter", "keda-operator"):
            pid = cluster.component_pid(s, name)
            if pid:
                cluster._stop_pid(pid)
        pki.issue_client(s.pki, IDENTITY, s.apiserver_url)
        pki.issue_server(s.pki, CERT_NAME, "keda-operator",
                         dns=("localhost", f"keda-operator.{NAMESPACE}.svc", f"{METRICS_SERVICE}.{NAMESPACE}.svc"),
                         ips=("127.0.0.1", s.node_ip), client=True)
        certs = cert_dir(s)
        certs.mkdir(parents=True, exist_ok=True)
        ca = (s.pki / "ca.crt").read_bytes()
        (certs / "ca.crt").write_bytes(ca)
        (certs / "tls.crt").write_bytes((s.pki / f"{CERT_NAME}.crt").read_bytes())
        (certs / "tls.key").write_bytes((s.pki / f"{CERT_NAME}.key").read_bytes())
        (certs / "tls.key").chmod(0o600)
        source = binaries.module_dir(MODULE)
        cluster._apply(s, bootstrap())
        definitions = crds(source)
        cluster._apply(s, definitions)
        cluster.kubectl(s, "wait", "--for=condition=Established", "--timeout=60s",
                        *[f"crd/{c['metadata']['name']}" for c in definitions])
        env = environment()
        cluster._start(s, "keda-operator", operator_args(s, bins["keda-operator"]), env)
        cluster._wait("KEDA's operator ready", lambda: _ready(OPERATOR_HEALTH_PORT) or cluster.component_pid(s, "keda-operator") is None,
                      120, s.logs / "keda-operator.log")
        if not _ready(OPERATOR_HEALTH_PORT):
            raise RuntimeError(f"KEDA's operator exited at start ({s.logs / 'keda-operator.log'})")
        cluster._start(s, "keda-adapter", adapter_args(s, bins["keda-adapter"]), env)
        cluster._apply(s, metrics_api(s.node_ip, ca))
        cluster._wait("the external metrics API Available (KEDA's metrics server)",
                      lambda: _api_available(s) or cluster.component_pid(s, "keda-adapter") is None, 120,
                      s.logs / "keda-adapter.log")
        if not _api_available(s):
            raise RuntimeError(f"KEDA's metrics API server exited or is not reachable ({s.logs / 'keda-adapter.log'})")
        return time.monotonic() - started
