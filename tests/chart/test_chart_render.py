"""The Helm chart charts/tuneforge, linted and rendered by the real Helm CLI (v4, built and cached
like the cluster's other Go binaries): every mode's objects, the RBAC of each mode, the CRDs equal
to crds/, the schema refusing bad values by name, and the files generated from the repository
(hack/sync_chart.py) up to date. No cluster needed."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared_demo import load_hack
from tuneforge_localcluster import binaries
from tuneforge_localcluster import settings as lc_settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "tuneforge"
OWN_NS = "tuneforge-system"


@pytest.fixture(scope="session")
def helm() -> str:
    return str(binaries.helm(lc_settings.load()))


def _sync() -> Any:
    return load_hack("sync_chart.py", "sync_chart")


def run_helm(helm: str, *args: str, chart: Path = CHART) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args, str(chart)], capture_output=True, text=True, timeout=120)


def render(helm: str, values: dict[str, Any] | None = None, tmp: Path | None = None, chart: Path = CHART,
           release: str = "tf") -> list[dict[str, Any]]:
    args = ["template", release, "--namespace", OWN_NS]
    if values is not None:
        assert tmp is not None
        f = tmp / "values.json"
        f.write_text(json.dumps(values))
        args += ["-f", str(f)]
    res = run_helm(helm, *args, chart=chart)
    assert res.returncode == 0, res.stderr
    return [d for d in yaml.safe_load_all(res.stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def rule_set(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) triples: two rule lists grant the same iff their sets are equal."""
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def deployment_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    (deploy,) = by_kind(docs, "Deployment")
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", "") for e in container["env"]}


CLUSTER_SCOPED = {("scheduling.k8s.io", "priorityclasses", "get")}
DISCOVERY = {("apiextensions.k8s.io", "customresourcedefinitions", "list"),
             ("apiextensions.k8s.io", "customresourcedefinitions", "watch")}
"""Kopf's CRD watch: cluster-wide mode only (with named namespaces the operator turns it off)."""
def lease_rules_ok(role: dict[str, Any], lease: str) -> bool:
    """create (which cannot be limited to a name), then get and update of the one Lease only."""
    return sorted(role["rules"], key=lambda r: r["verbs"]) == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": [lease], "verbs": ["get", "update"]},
    ]


# --- lint -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", [[], ["--set", "watchNamespaces={team-a,team-b}"],
                                  ["--set", "serviceMonitor.enabled=true", "--set", "prometheusRule.enabled=true"]])
def test_helm_lint_strict(helm: str, mode: list[str]) -> None:
    res = run_helm(helm, "lint", "--strict", *mode)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 chart(s) failed" in res.stdout


# --- RBAC per mode ---------------------------------------------------------------------------------

def test_cluster_wide_mode_is_one_cluster_role_plus_the_lease_role(helm: str) -> None:
    docs = render(helm)
    (role,) = by_kind(docs, "ClusterRole")
    (binding,) = by_kind(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "tf-tuneforge", "namespace": OWN_NS}]
    granted = rule_set(role["rules"])
    assert CLUSTER_SCOPED | DISCOVERY <= granted
    assert not any(r == "namespaces" for _, r, _ in granted)  # Kopf lists none when cluster-wide
    assert ("batch", "jobs", "create") in granted and ("", "pods/log", "get") in granted
    # The leader Lease only in the release's own namespace, never cluster-wide.
    (lease_role,) = by_kind(docs, "Role")
    assert lease_role["metadata"]["namespace"] == OWN_NS and lease_rules_ok(lease_role, "tf-tuneforge")
    assert not any(g == "coordination.k8s.io" for g, _, _ in granted)
    env = deployment_env(docs)
    assert env["TUNEFORGE_NAMESPACES"] == ""
    assert (env["TUNEFORGE_LEADER_ELECT"], env["TUNEFORGE_LEADER_ELECTION_LEASE"],
            env["TUNEFORGE_LEADER_ELECTION_NAMESPACE"]) == ("true", "tf-tuneforge", OWN_NS)


def test_namespaced_mode_has_roles_only_and_nothing_cluster_wide_but_cluster_scoped_reads(helm: str,
                                                                                         tmp_path: Path) -> None:
    wide = render(helm)
    (wide_role,) = by_kind(wide, "ClusterRole")
    docs = render(helm, {"watchNamespaces": ["team-a", "team-b"]}, tmp_path)
    (cluster_role,) = by_kind(docs, "ClusterRole")
    assert rule_set(cluster_role["rules"]) == CLUSTER_SCOPED  # nothing else cluster-wide
    (crb,) = by_kind(docs, "ClusterRoleBinding")
    assert crb["roleRef"]["name"] == cluster_role["metadata"]["name"]
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]): r for r in by_kind(docs, "Role")}
    bindings = {(b["metadata"]["namespace"], b["metadata"]["name"]): b for b in by_kind(docs, "RoleBinding")}
    assert set(roles) == set(bindings) == {("team-a", "tf-tuneforge"), ("team-b", "tf-tuneforge"),
                                           (OWN_NS, "tf-tuneforge-leader")}
    for ns in ("team-a", "team-b"):
        # Exactly the cluster-wide mode's namespaced rules: one list, so the modes cannot drift.
        assert rule_set(roles[(ns, "tf-tuneforge")]["rules"]) == rule_set(wide_role["rules"]) - CLUSTER_SCOPED - DISCOVERY
        b = bindings[(ns, "tf-tuneforge")]
        assert b["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "tf-tuneforge"}
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": "tf-tuneforge", "namespace": OWN_NS}]
    assert lease_rules_ok(roles[(OWN_NS, "tf-tuneforge-leader")], "tf-tuneforge")
    # The operator is told the same namespaces (Kopf watches only those).
    assert deployment_env(docs)["TUNEFORGE_NAMESPACES"] == "team-a,team-b"


@pytest.mark.parametrize("values", [{}, {"watchNamespaces": ["team-a"]}])
def test_no_wildcards_and_secrets_only_by_name(helm: str, tmp_path: Path, values: dict[str, Any]) -> None:
    docs = render(helm, values, tmp_path)
    roles = by_kind(docs, "ClusterRole") + by_kind(docs, "Role")
    for role in roles:
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[key], (role["metadata"]["name"], rule)
            assert "nonResourceURLs" not in rule
            assert "resourceNames" not in rule or rule["resources"] == ["leases"], rule
        secrets = {v for g, r, v in rule_set(role["rules"]) if (g, r) == ("", "secrets")}
        assert secrets <= {"get"}, secrets  # never listed or watched


def test_rbac_create_false_renders_no_rbac(helm: str, tmp_path: Path) -> None:
    docs = render(helm, {"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "mine"}}, tmp_path)
    assert not [d for d in docs if d["apiVersion"].startswith("rbac.")]
    assert not by_kind(docs, "ServiceAccount")
    (deploy,) = by_kind(docs, "Deployment")
    assert deploy["spec"]["template"]["spec"]["serviceAccountName"] == "mine"


# --- the Deployment -------------------------------------------------------------------------------

def test_deployment_defaults(helm: str) -> None:
    docs = render(helm)
    (deploy,) = by_kind(docs, "Deployment")
    spec = deploy["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "tuneforge/operator:0.1.0"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}, probe
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"metrics": 8080, "health": 8081}
    env = deployment_env(docs)
    assert (env["TUNEFORGE_METRICS_PORT"], env["TUNEFORGE_LIVENESS_PORT"]) == ("8080", "8081")
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    # Pod Security "restricted", read-only root file system with a writable /tmp.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert c["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"][0]["emptyDir"]["sizeLimit"] == "64Mi"
    (pdb,) = by_kind(docs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"]
    (svc,) = by_kind(docs, "Service")
    assert svc["spec"]["selector"] == spec["selector"]["matchLabels"] and svc["spec"]["ports"][0]["name"] == "metrics"
    assert not by_kind(docs, "ServiceMonitor") and not by_kind(docs, "PrometheusRule")


def test_images_and_settings_reach_the_operator(helm: str, tmp_path: Path) -> None:
    digest = "sha256:" + "ab" * 32
    docs = render(helm, {
        "images": {"operator": {"repository": "reg.example/tf/operator", "tag": "1.2.3"},
                   "trainer": {"repository": "reg.example/tf/trainer", "tag": "t1", "digest": digest},
                   "server": {"repository": "reg.example/tf/server", "tag": "s1"},
                   "pullPolicy": "Always"},
        "settings": {"progressInterval": 2.5, "dependencyWaitSeconds": 1000000, "gpuTaintKey": "amd.com/gpu",
                     "validateNodeSelector": '{"pool": "cpu"}'},
    }, tmp_path)
    (deploy,) = by_kind(docs, "Deployment")
    assert deploy["spec"]["template"]["spec"]["containers"][0]["image"] == "reg.example/tf/operator:1.2.3"
    env = deployment_env(docs)
    assert env["TUNEFORGE_TRAINER_IMAGE"] == f"reg.example/tf/trainer@{digest}"  # the digest wins
    assert env["TUNEFORGE_SERVER_IMAGE"] == "reg.example/tf/server:s1"
    assert env["TUNEFORGE_GATE_IMAGE"] == "reg.example/tf/operator:1.2.3"  # gate runs in the operator image
    assert env["TUNEFORGE_IMAGE_PULL_POLICY"] == "Always"
    assert env["TUNEFORGE_PROGRESS_INTERVAL"] == "2.5"
    assert env["TUNEFORGE_DEPENDENCY_WAIT_SECONDS"] == "1000000"  # not 1e+06
    assert env["TUNEFORGE_GPU_TAINT_KEY"] == "amd.com/gpu"
    # What the chart renders is what the operator's own settings loader accepts.
    from tuneforge.settings import Settings
    s = Settings.from_env({k: v for k, v in env.items() if k.startswith("TUNEFORGE_")})
    assert s.progress_interval == 2.5 and s.dependency_wait_seconds == 1000000
    assert s.validate_placement()[0] == {"pool": "cpu"}
    gate = render(helm, {"images": {"gate": {"repository": "reg.example/tf/gate", "tag": "g1"}}}, tmp_path)
    assert deployment_env(gate)["TUNEFORGE_GATE_IMAGE"] == "reg.example/tf/gate:g1"


def test_every_settings_key_is_an_operator_setting(helm: str) -> None:
    """The schema's settings keys are the Settings dataclass's fields (camelCase), less those the
    chart sets from its own keys, which it renders itself."""
    import dataclasses

    from tuneforge.settings import Settings
    sync = _sync()
    schema = json.loads((CHART / "values.schema.json").read_text())
    keys = set(schema["properties"]["settings"]["properties"])
    fields = {f.name for f in dataclasses.fields(Settings)}
    assert {sync.camel(f) for f in fields - set(sync.CHART_OWNED_SETTINGS)} == keys
    env = deployment_env(render(helm))
    assert {f"TUNEFORGE_{f.upper()}" for f in sync.CHART_OWNED_SETTINGS} <= set(env)


# --- CRDs -----------------------------------------------------------------------------------------

def test_chart_crds_equal_crds_folder_and_are_kept(helm: str) -> None:
    docs = render(helm)
    crds = {d["metadata"]["name"]: d for d in by_kind(docs, "CustomResourceDefinition")}
    sources = [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "crds").glob("*.yaml"))]
    assert set(crds) == {s["metadata"]["name"] for s in sources}
    for src in sources:
        got = crds[src["metadata"]["name"]]
        meta = got.pop("metadata")
        assert meta["annotations"] == {"helm.sh/resource-policy": "keep"}
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "Helm"
        src_meta = src.pop("metadata")
        assert {k: v for k, v in meta.items() if k not in ("labels", "annotations")} == src_meta
        assert got == src  # semantically equal: same spec, every field
    # The chart's copies are byte-for-byte the crds/ folder (hack/sync_chart.py writes them).
    for p in sorted((ROOT / "crds").glob("*.yaml")):
        assert (CHART / "files" / "crds" / p.name).read_bytes() == p.read_bytes(), p.name


def test_crds_can_be_skipped_or_not_kept(helm: str, tmp_path: Path) -> None:
    assert not by_kind(render(helm, {"crds": {"install": False}}, tmp_path), "CustomResourceDefinition")
    for crd in by_kind(render(helm, {"crds": {"keep": False}}, tmp_path), "CustomResourceDefinition"):
        assert "helm.sh/resource-policy" not in (crd["metadata"].get("annotations") or {})


def test_generated_files_are_current(helm: str) -> None:
    """The chart's CRD copies, the schema's settings and operator/deploy/operator.yaml are what
    hack/sync_chart.py writes (run it after changing crds/, settings.py or the chart)."""
    assert _sync().stale(helm) == []


# --- schema ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "named"), [
    ("replicaCount=0", "/replicaCount"),
    ("watchNamespaces[0]=Team_A", "/watchNamespaces/0"),
    ("bogus=1", "'bogus'"),
    ("settings.progresInterval=5", "'progresInterval'"),
    ("settings.progressInterval=fast", "/settings/progressInterval"),
    ("images.pullPolicy=Sometimes", "/images/pullPolicy"),
    ("images.operator.digest=latest", "/images/operator/digest"),
    ("crds.keep=maybe", "/crds/keep"),
])
def test_schema_refuses_a_bad_value_naming_it(helm: str, value: str, named: str) -> None:
    res = run_helm(helm, "template", "tf", "--set", value)
    assert res.returncode != 0, res.stdout[:500]
    assert "don't meet the specifications of the schema" in res.stderr and named in res.stderr, res.stderr


# --- optional Prometheus objects ------------------------------------------------------------------

def test_service_monitor_and_prometheus_rule(helm: str, tmp_path: Path) -> None:
    """The ServiceMonitor scrapes the metrics Service; the PrometheusRule carries every group of
    the chart's rule files (files/prometheus/*.yaml) and is absent while there are none."""
    chart = tmp_path / "tuneforge"
    shutil.copytree(CHART, chart)
    shutil.rmtree(chart / "files" / "prometheus", ignore_errors=True)
    on = {"serviceMonitor": {"enabled": True, "labels": {"release": "kps"}}, "prometheusRule": {"enabled": True}}
    docs = render(helm, on, tmp_path, chart=chart)
    (sm,) = by_kind(docs, "ServiceMonitor")
    (svc,) = by_kind(docs, "Service")
    assert sm["metadata"]["labels"]["release"] == "kps"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    assert not by_kind(docs, "PrometheusRule")
    (chart / "files" / "prometheus").mkdir()
    group = {"name": "tuneforge.test", "rules": [{"alert": "TuneforgeTest", "expr": "vector(1)", "for": "1m"}]}
    (chart / "files" / "prometheus" / "test.yaml").write_text(yaml.safe_dump({"groups": [group]}))
    (rule,) = by_kind(render(helm, on, tmp_path, chart=chart), "PrometheusRule")
    assert rule["spec"]["groups"] == [group]


def test_notes_name_the_mode(helm: str) -> None:
    res = run_helm(helm, "install", "tf", "--dry-run=client", "--namespace", OWN_NS, "--set", "watchNamespaces={team-a}")
    assert res.returncode == 0, res.stderr
    assert "Watching only: team-a" in res.stdout and "helm.sh/resource-policy" in res.stdout


def test_argocd_customizations_in_argocd_cm_keys(helm: str, tmp_path: Path) -> None:
    """The Lua files in Argo CD's layout (files/argocd/<group>/<Kind>/...) render to argocd-cm's
    keys: the health script as is, the actions as discovery.lua plus one definition per action;
    with no such files nothing is rendered."""
    chart = tmp_path / "tuneforge"
    shutil.copytree(CHART, chart)
    shutil.rmtree(chart / "files" / "argocd", ignore_errors=True)
    on = {"argocd": {"customizations": {"enabled": True}}}
    assert not by_kind(render(helm, on, tmp_path, chart=chart), "ConfigMap")
    kind_dir = chart / "files" / "argocd" / "tuneforge.dev" / "FineTuneJob"
    (kind_dir / "actions" / "suspend").mkdir(parents=True)
    (kind_dir / "actions" / "resume").mkdir(parents=True)
    (kind_dir / "health.lua").write_text('hs = {status = "Healthy"}\nreturn hs\n')
    (kind_dir / "actions" / "discovery.lua").write_text("return {suspend = {}}\n")
    (kind_dir / "actions" / "suspend" / "action.lua").write_text("obj.spec.suspend = true\nreturn obj\n")
    (kind_dir / "actions" / "resume" / "action.lua").write_text("obj.spec.suspend = false\nreturn obj\n")
    (cm,) = by_kind(render(helm, on, tmp_path, chart=chart), "ConfigMap")
    assert cm["metadata"]["name"] == "tf-tuneforge-argocd-cm"
    data = cm["data"]
    assert data["resource.customizations.health.tuneforge.dev_FineTuneJob"] == 'hs = {status = "Healthy"}\nreturn hs\n'
    actions = yaml.safe_load(data["resource.customizations.actions.tuneforge.dev_FineTuneJob"])
    assert actions["discovery.lua"] == "return {suspend = {}}\n"
    assert {d["name"]: d["action.lua"] for d in actions["definitions"]} == {
        "suspend": "obj.spec.suspend = true\nreturn obj\n", "resume": "obj.spec.suspend = false\nreturn obj\n"}
    assert not by_kind(render(helm, {}, tmp_path, chart=chart), "ConfigMap")  # off by default
