"""Kueue's CRDs and webhooks as the local cluster installs them: upstream's files from the
module, reached on loopback with the cluster's CA, kept to what the host-run manager serves."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from go_modules import go_module_source
from tuneforge_localcluster import binaries, kueue
from tuneforge_localcluster.settings import Settings

S = Settings(cache=Path("/c"), runtime=Path("/r"), repo=Path("/repo"), node_ip="192.0.2.2")
CA = b"-----BEGIN CERTIFICATE-----\nfake\n-----END CERTIFICATE-----\n"


@pytest.fixture(scope="module")
def source() -> Path:
    return go_module_source(kueue.MODULE)


def test_crds_are_upstreams_with_conversion_by_url(source: Path) -> None:
    crds = {c["metadata"]["name"]: c for c in kueue.crds(source, CA)}
    assert {"workloads.kueue.x-k8s.io", "clusterqueues.kueue.x-k8s.io", "localqueues.kueue.x-k8s.io",
            "resourceflavors.kueue.x-k8s.io", "workloadpriorityclasses.kueue.x-k8s.io"} <= set(crds)
    conv = crds["workloads.kueue.x-k8s.io"]["spec"]["conversion"]["webhook"]["clientConfig"]
    assert conv == {"url": f"https://127.0.0.1:{kueue.WEBHOOK_PORT}/convert", "caBundle": base64.b64encode(CA).decode()}
    # Upstream's kustomization leaves ResourceFlavor's conversion patch commented out.
    assert "conversion" not in crds["resourceflavors.kueue.x-k8s.io"]["spec"]
    served = {v["name"] for v in crds["workloads.kueue.x-k8s.io"]["spec"]["versions"] if v.get("storage")}
    assert served == {"v1beta2"}


def test_webhooks_only_for_what_the_manager_serves(source: Path) -> None:
    configs = {c["kind"]: c for c in kueue.webhook_configurations(source, CA)}
    assert set(configs) == {"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"}
    hooks = [h for c in configs.values() for h in c["webhooks"]]
    groups = {g for h in hooks for r in h["rules"] for g in r["apiGroups"]}
    # A webhook for pods or deployments would fail every one of them in the shared cluster.
    assert groups == {"kueue.x-k8s.io", "batch"}
    for hook in hooks:
        assert set(hook["clientConfig"]) == {"url", "caBundle"}
        assert hook["clientConfig"]["url"].startswith(f"https://127.0.0.1:{kueue.WEBHOOK_PORT}/")
        is_job = any("batch" in r["apiGroups"] for r in hook["rules"])
        assert (hook.get("namespaceSelector") == {"matchLabels": {kueue.MANAGED_LABEL: kueue.MANAGED_VALUE}}) is is_job
    names = {h["name"] for h in hooks}
    assert {"mjob.kb.io", "vjob.kb.io", "mworkload.kb.io", "vclusterqueue.kb.io"} <= names
    assert all(c["metadata"]["name"].startswith("kueue-") for c in configs.values())


def test_configuration_and_flags() -> None:
    cfg = kueue.configuration(S)
    assert cfg["integrations"]["frameworks"] == ["batch/job"]
    assert cfg["internalCertManagement"] == {"enable": False}
    assert cfg["webhook"] == {"port": kueue.WEBHOOK_PORT, "host": "127.0.0.1", "certDir": "/r/kueue/certs"}
    assert cfg["managedJobsNamespaceSelector"] == {"matchLabels": {"tuneforge.dev/kueue": "managed"}}
    args = kueue.args(S, Path("/bin/kueue"))
    assert args[0] == "/bin/kueue" and "--feature-gates=VisibilityOnDemand=false" in args


def test_kueue_is_optional_and_never_pruned() -> None:
    assert "kueue" not in {b.name for b in binaries.BINARIES}
    assert [b.package for b in binaries.OPTIONAL if b.name == "kueue"] == [f"sigs.k8s.io/kueue/cmd/kueue@{kueue.VERSION}"]
    with pytest.raises(ValueError, match="kueu"):
        binaries.ensure_binaries(S, ["kueu"])
