"""KEDA as the local cluster installs it: upstream's CRDs from the module, its operator and
metrics API server run on the host with the cluster's CA, and the external metrics API reached
through an APIService whose Service's one endpoint is this node."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from go_modules import go_module_source
from tuneforge_localcluster import binaries, components, keda, pki
from tuneforge_localcluster.settings import Settings

S = Settings(cache=Path("/c"), runtime=Path("/r"), repo=Path("/repo"), node_ip="192.0.2.2")
CA = b"-----BEGIN CERTIFICATE-----\nfake\n-----END CERTIFICATE-----\n"


def _flags(args: list[str]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) for a in args[1:] if a.startswith("--") and "=" in a)


@pytest.fixture(scope="module")
def source() -> Path:
    return go_module_source(keda.MODULE)


def test_crds_are_upstreams(source: Path) -> None:
    crds = {c["metadata"]["name"]: c for c in keda.crds(source)}
    assert {"scaledobjects.keda.sh", "scaledjobs.keda.sh", "triggerauthentications.keda.sh",
            "clustertriggerauthentications.keda.sh"} <= set(crds)
    versions = {v["name"] for v in crds["scaledobjects.keda.sh"]["spec"]["versions"] if v.get("served")}
    assert versions == {"v1alpha1"}  # the version the operator's ScaledObject builder writes


def test_binaries_come_from_the_pinned_wrapper_module() -> None:
    built = {b.name: b for b in binaries.OPTIONAL}
    assert {built["keda-operator"].module_dir, built["keda-adapter"].module_dir} == {"keda"}
    assert built["keda-operator"].package == "github.com/kedacore/keda/v2/cmd/operator"
    go_mod = (binaries.GO_DIR / "keda" / "go.mod").read_text()
    assert f"github.com/kedacore/keda/v2 {keda.VERSION}" in go_mod
    # KEDA's own replace directives: without them its dependency graph does not build.
    assert "k8s.io/client-go => k8s.io/client-go" in go_mod
    assert "keda-operator" not in {b.name for b in binaries.BINARIES}  # never in the default build


def test_operator_and_metrics_server_share_one_certificate_folder_and_loopback_grpc() -> None:
    op = _flags(keda.operator_args(S, Path("/bin/keda-operator")))
    ad = _flags(keda.adapter_args(S, Path("/bin/keda-adapter")))
    assert op["metrics-service-bind-address"] == ad["metrics-service-address"] == f"127.0.0.1:{keda.GRPC_PORT}"
    assert op["cert-dir"] == ad["cert-dir"] == "/r/keda/certs"
    assert ad["tls-cert-file"] == "/r/keda/certs/tls.crt" and ad["client-ca-file"] == "/r/keda/certs/ca.crt"
    assert op["enable-cert-rotation"] == op["enable-apiservice-patching"] == op["enable-webhook-patching"] == "false"
    assert op["health-probe-bind-address"].startswith("127.0.0.1:")
    # delegated authentication and authorization of the aggregator's proxied requests
    assert ad["authentication-kubeconfig"] == ad["authorization-kubeconfig"] == "/r/pki/keda.kubeconfig"
    assert ad["secure-port"] == str(keda.ADAPTER_PORT) and ad["bind-address"] == "0.0.0.0"
    assert keda.environment() == {"POD_NAMESPACE": "keda", "KEDA_CLUSTER_OBJECT_NAMESPACE": "keda", "WATCH_NAMESPACE": ""}


def test_external_metrics_api_is_routed_to_this_node_with_the_clusters_ca() -> None:
    objs = {o["kind"]: o for o in keda.metrics_api("192.0.2.2", CA)}
    api = objs["APIService"]
    assert api["metadata"]["name"] == "v1beta1.external.metrics.k8s.io"
    assert api["spec"]["service"] == {"name": keda.METRICS_SERVICE, "namespace": "keda", "port": 443}
    assert base64.b64decode(api["spec"]["caBundle"]) == CA and "insecureSkipTLSVerify" not in api["spec"]
    assert "selector" not in objs["Service"]["spec"]
    assert objs["Service"]["spec"]["ports"][0]["targetPort"] == keda.ADAPTER_PORT
    subset = objs["Endpoints"]["subsets"][0]
    assert subset["addresses"] == [{"ip": "192.0.2.2"}] and subset["ports"][0]["port"] == keda.ADAPTER_PORT
    # the apiserver can reach it: aggregator routing to endpoints, a front-proxy identity
    flags = _flags(components.apiserver_args(S, {"kube-apiserver": Path("/bin/kube-apiserver")}))
    assert flags["enable-aggregator-routing"] == "true"
    assert flags["requestheader-allowed-names"] == pki.FRONT_PROXY_CLIENT
    assert pki.FRONT_PROXY_CLIENT in {i.file for i in pki.client_identities("n")}


def test_grpc_certificate_serves_and_authenticates(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    pki._make_ca(tmp_path)
    pki.issue_server(tmp_path, keda.CERT_NAME, "keda-operator", dns=("localhost",), ips=("127.0.0.1",), client=True)
    cert = x509.load_pem_x509_certificate((tmp_path / f"{keda.CERT_NAME}.crt").read_bytes())
    usages = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert usages == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    pki.issue_server(tmp_path, "webhook", "webhook")  # a webhook's stays serving-only
    cert = x509.load_pem_x509_certificate((tmp_path / "webhook.crt").read_bytes())
    assert set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == {ExtendedKeyUsageOID.SERVER_AUTH}
