"""Pure builders of the local cluster's configuration (no processes, no cluster)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneforge_localcluster import audit, components, manifests
from tuneforge_localcluster.settings import Settings

S = Settings(cache=Path("/c"), runtime=Path("/r"), repo=Path("/repo"), node_ip="192.0.2.2")
BINS = {name: Path(f"/bin/{name}") for name in (
    "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy",
    "kwok", "coredns", "crane", "versitygw", "local-path-provisioner",
)}


def _flags(args: list[str]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) for a in args[1:] if a.startswith("--") and "=" in a)


@pytest.mark.parametrize(
    ("builder", "flag", "value"),
    [
        (components.apiserver_args, "authorization-mode", "Node,RBAC"),
        (components.apiserver_args, "enable-admission-plugins", "NodeRestriction,OwnerReferencesPermissionEnforcement"),
        (components.apiserver_args, "kubelet-preferred-address-types", "InternalIP"),
        (components.apiserver_args, "advertise-address", "192.0.2.2"),
        (components.apiserver_args, "anonymous-auth", "false"),
        (components.apiserver_args, "audit-policy-file", "/r/audit/policy.yaml"),
        (components.apiserver_args, "audit-log-path", "/r/audit/audit.log"),
        (components.apiserver_args, "audit-log-mode", "batch"),
        # the aggregation layer, for KEDA's external metrics API on the host
        (components.apiserver_args, "requestheader-allowed-names", "front-proxy-client"),
        (components.apiserver_args, "proxy-client-cert-file", "/r/pki/front-proxy-client.crt"),
        (components.apiserver_args, "enable-aggregator-routing", "true"),
        (components.controller_manager_args, "use-service-account-credentials", "true"),
        (components.kwok_args, "manage-all-nodes", "false"),
        (components.kwok_args, "manage-nodes-with-annotation-selector", "kwok.x-k8s.io/node=fake"),
        (components.etcd_args, "listen-client-urls", "http://127.0.0.1:23790"),
    ],
)
def test_component_flags(builder, flag: str, value: str) -> None:
    assert _flags(builder(S, BINS))[flag] == value


def test_audit_policy_logs_service_accounts_but_not_the_control_plane(tmp_path: Path) -> None:
    rules = audit.POLICY["rules"]
    assert rules[0] == {"level": "None", "userGroups": ["system:serviceaccounts:kube-system"]}
    assert rules[1] == {"level": "Metadata", "userGroups": ["system:serviceaccounts"]}
    assert rules[-1] == {"level": "None"}  # nodes, the admin, kwok: never logged
    s = Settings(cache=tmp_path, runtime=tmp_path, repo=tmp_path, node_ip="192.0.2.2")
    audit.write_policy(s)
    audit.log_path(s).write_text(
        '{"user": {"username": "system:serviceaccount:a:op"}, "verb": "get"}\n'
        '{"user": {"username": "system:serviceaccount:b:op"}, "verb": "list"}\n{"user": {"userna')
    assert [e["verb"] for e in audit.events(s, "system:serviceaccount:a:op")] == ["get"]
    assert len(list(audit.events(s))) == 2  # a line still being written is skipped


def test_kubelet_config_fits_this_machine() -> None:
    cfg = components.kubelet_config(S)
    assert cfg["failCgroupV1"] is False
    assert cfg["cgroupDriver"] == "cgroupfs"
    assert cfg["authorization"] == {"mode": "Webhook"}
    assert cfg["authentication"]["anonymous"] == {"enabled": False}
    assert cfg["clusterDNS"] == [S.dns_service_ip]
    assert cfg["evictionHard"] == {}


def test_containerd_config_has_the_two_required_settings() -> None:
    toml = components.containerd_config(S, "127.0.0.1:5000/tuneforge/pause:abc")
    assert "restrict_oom_score_adj = true" in toml
    assert 'sandbox_image = "127.0.0.1:5000/tuneforge/pause:abc"' in toml


def test_cni_keeps_pod_traffic_on_the_machine() -> None:
    bridge = components.cni_conflist(S)["plugins"][0]
    assert bridge["ipMasq"] is False
    assert bridge["ipam"]["ranges"] == [[{"subnet": S.pod_cidr}]]


def test_fake_nodes_gpu_and_cpu() -> None:
    nodes = {n["metadata"]["name"]: n for n in components.fake_nodes(S)}
    assert set(nodes) == {"kwok-gpu-0", "kwok-gpu-1", "kwok-cpu-0"}
    for name in ("kwok-gpu-0", "kwok-gpu-1"):
        node = nodes[name]
        assert node["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
        assert node["spec"]["taints"] == [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
    assert "nvidia.com/gpu" not in nodes["kwok-cpu-0"]["status"]["allocatable"]


def test_host_services_route_to_the_node() -> None:
    objs = {o["kind"]: o for o in components.host_service("kube-dns", "kube-system", "10.96.0.10", "192.0.2.2", [("dns", 53, "UDP")])}
    assert objs["Service"]["spec"]["clusterIP"] == "10.96.0.10"
    assert "selector" not in objs["Service"]["spec"]
    assert objs["EndpointSlice"]["metadata"]["labels"]["kubernetes.io/service-name"] == "kube-dns"
    assert objs["EndpointSlice"]["endpoints"][0]["addresses"] == ["192.0.2.2"]


def test_bootstrap_has_default_storage_class() -> None:
    classes = [o for o in manifests.bootstrap(S) if o["kind"] == "StorageClass"]
    assert [c["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] for c in classes] == ["true"]


def test_kwok_serve_env_puts_the_gate_pod_on_the_kwok_cpu_node() -> None:
    """The fast tier's operator environment (tests and bench/rollout.py share it) names the
    node and taint that fake_nodes creates, and the measures the pod-complete stage writes."""
    import json

    from tuneforge_localcluster.testing import GATE_MEASURES, KWOK_CPU_NODE, KWOK_TOLERATION, kwok_serve_env
    cpu = next(n for n in components.fake_nodes(S) if n["metadata"]["name"] == KWOK_CPU_NODE)
    (taint,) = cpu["spec"]["taints"]
    assert (KWOK_TOLERATION["key"], KWOK_TOLERATION["effect"]) == (taint["key"], taint["effect"])
    env = kwok_serve_env("bench", gate_delay="1s")
    assert env["TUNEFORGE_SERVER_IMAGE"] == "tuneforge/server:bench"
    assert json.loads(env["TUNEFORGE_GATE_NODE_SELECTOR"]) == {"kubernetes.io/hostname": KWOK_CPU_NODE}
    assert json.loads(env["TUNEFORGE_GATE_TOLERATIONS"]) == [KWOK_TOLERATION]
    annotations = json.loads(env["TUNEFORGE_GATE_POD_ANNOTATIONS"])
    assert json.loads(annotations["kwok.tuneforge.dev/termination-message"]) == GATE_MEASURES
    assert annotations["pod-complete.stage.kwok.x-k8s.io/delay"] == "1s"


def test_real_node_gpu_stand_ins_default_to_the_settings_field(monkeypatch: pytest.MonkeyPatch) -> None:
    """make test's two cluster groups share the real node: its GPU stand-ins are the field's
    default unless TUNEFORGE_NODE_GPUS says otherwise (the environment's default once shadowed it)."""
    from tuneforge_localcluster import settings

    monkeypatch.setenv("TUNEFORGE_NODE_IP", "192.0.2.2")
    monkeypatch.delenv("TUNEFORGE_NODE_GPUS", raising=False)
    assert settings.load().gpus == settings.Settings.gpus == 8
    monkeypatch.setenv("TUNEFORGE_NODE_GPUS", "3")
    assert settings.load().gpus == 3
