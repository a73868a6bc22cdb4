"""ServiceAccount tokens work in pods, and RBAC refuses what a Role does not allow."""

from __future__ import annotations

import json

from tuneforge_localcluster.testing import Cluster, real_node_pod_spec, wait_for


def test_service_account_token_respects_role(cluster: Cluster, namespace: str, probe_image: str) -> None:
    cluster.apply(
        [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}},
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "configmap-reader"},
                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "reader"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "configmap-reader"},
                "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
            },
        ],
        namespace,
    )
    results = {}
    for name, path in (
        ("allowed", f"/api/v1/namespaces/{namespace}/configmaps"),
        ("denied", f"/api/v1/namespaces/{namespace}/secrets"),
        ("other-ns", "/api/v1/namespaces/default/configmaps"),
    ):
        spec = real_node_pod_spec(probe_image, ["api", path], serviceAccountName="reader")
        cluster.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}, namespace)
    for name in ("allowed", "denied", "other-ns"):
        wait_for(f"pod {name} Succeeded", lambda n=name: cluster.get("pod", n, namespace)["status"].get("phase") == "Succeeded",
                 120, describe=lambda n=name: cluster.describe("pod", n, namespace))
        results[name] = json.loads(cluster.kubectl("logs", "-n", namespace, name).stdout.strip().splitlines()[-1])
    assert results["allowed"]["code"] == 200
    assert results["allowed"]["items"] >= 1  # kube-root-ca.crt is always there
    assert results["denied"]["code"] == 403
    assert results["other-ns"]["code"] == 403
