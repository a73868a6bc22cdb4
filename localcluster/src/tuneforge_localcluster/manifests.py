"""The objects a fresh cluster needs before workloads: RBAC for the host-run add-ons,
the DNS and S3 Services that route to host processes, and the default StorageClass."""

from __future__ import annotations

from tuneforge_localcluster import components
from tuneforge_localcluster.settings import Settings

SYSTEM_NAMESPACE = "tuneforge-system"


def _binding(name: str, role: str, user: str) -> dict:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }


def host_addon(name: str, namespace: str, user: str) -> list[dict]:
    """An optional add-on run on the host (Kueue, KEDA): its namespace and cluster-admin for its
    identity, as kwok's and the provisioner's below (test infrastructure, not a copy of
    upstream's roles to keep in step)."""
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        _binding(f"tuneforge-localcluster:{name}", "cluster-admin", user),
    ]


def bootstrap(s: Settings) -> list[dict]:
    coredns_role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "system:coredns"},
        "rules": [
            {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"], "verbs": ["list", "watch"]},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
        ],
    }
    objs: list[dict] = [
        # kubeadm's binding: the apiserver's client identity may use the kubelet API.
        _binding("kube-apiserver-kubelet-client", "system:kubelet-api-admin", "kube-apiserver-kubelet-client"),
        coredns_role,
        _binding("system:coredns", "system:coredns", "system:coredns"),
        # kwok and the provisioner are test infrastructure run on the host; they get
        # cluster-admin rather than hand-maintained copies of their upstream roles.
        _binding("tuneforge-localcluster:kwok", "cluster-admin", "system:kwok-controller"),
        _binding("tuneforge-localcluster:local-path", "cluster-admin", "system:local-path-provisioner"),
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": components.LOCAL_PATH_NAMESPACE}},
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "local-path-provisioner", "namespace": components.LOCAL_PATH_NAMESPACE},
        },
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {
                "name": "local-path",
                "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
            },
            "provisioner": "rancher.io/local-path",
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "WaitForFirstConsumer",
        },
        components.local_path_configmap(s),
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SYSTEM_NAMESPACE}},
    ]
    objs += components.host_service(
        "kube-dns", "kube-system", s.dns_service_ip, s.node_ip, [("dns", 53, "UDP"), ("dns-tcp", 53, "TCP")]
    )
    objs += components.host_service("s3", SYSTEM_NAMESPACE, None, s.node_ip, [("http", s.s3_port, "TCP")])
    return objs
