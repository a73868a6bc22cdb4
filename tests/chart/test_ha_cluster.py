"""The chart's two operator replicas on the local cluster, seen through the apiserver's audit log
(``tuneforge_localcluster.audit``: every request of a ServiceAccount, with its source address):

* the leader pod is deleted while a FineTuneJob is Running and a ModelServe is mid-rollout: the
  other replica takes the Lease and carries on; both finish, with one child of each kind, and the
  FineTuneJob's progress keeps counting; the takeover is measured from the audit log;
* the leader is frozen in its pod (the container's cgroup freezer, ``ctr tasks pause``) past its
  Lease: the follower takes over; thawed, it exits and not one request leaves its pod address;
* least privilege: the (verb, resource, namespace) set the operator's ServiceAccount used while
  running a FineTuneJob and a ModelServe rollout equals the chart's rendered RBAC rules, in both
  modes; in namespaced mode a FineTuneJob outside the watched namespaces is ignored and a
  ``kubectl auth can-i`` table shows the operator cannot create a Job there.

One chart install per mode (a module-scoped, parametrised fixture). ModelServes run on the kwok
GPU nodes (``kwok_serve_env``, as tests/operator/test_serve_cluster.py); FineTuneJobs run the
stand-in trainer on the real node.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tuneforge_localcluster import audit
from tuneforge_localcluster.testing import Cluster, kwok_serve_env, pod_security_labels, wait_for

pytestmark = pytest.mark.exclusive  # see pyproject.toml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "tuneforge"
OUTPUT = ROOT / "test-output"
H100 = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
WRITES = {"create", "update", "patch", "delete", "deletecollection"}


def image_values(ref: str) -> dict[str, str]:
    repository, tag = ref.rsplit(":", 1)
    return {"repository": repository, "tag": tag}


def _ts(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass
class Release:
    """An installed chart: its namespace, the watched namespace, its ServiceAccount user."""

    cluster: Cluster
    name: str
    ns: str
    watched: str
    mode: str
    values: dict[str, Any]
    started: float = field(default_factory=time.time)

    @property
    def fullname(self) -> str:
        return f"{self.name}-tuneforge"

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.ns}:{self.fullname}"

    def pods(self) -> list[dict[str, Any]]:
        return self.cluster.list("pods", self.ns, f"app.kubernetes.io/instance={self.name},app.kubernetes.io/component=operator")

    def ready_pods(self, n: int = 2) -> list[dict[str, Any]] | None:
        pods = [p for p in self.pods() if not p["metadata"].get("deletionTimestamp")]
        ready = [p for p in pods if any(c["type"] == "Ready" and c["status"] == "True"
                                        for c in p["status"].get("conditions", []))]
        return ready if len(ready) == n == len(pods) else None

    def holder(self) -> str:
        return str(self.cluster.get("lease", self.fullname, self.ns)["spec"].get("holderIdentity") or "")

    def leader_pod(self) -> dict[str, Any]:
        holder = self.holder()
        found = [p for p in self.pods() if holder.startswith(p["metadata"]["name"] + "_")]
        assert len(found) == 1, (holder, [p["metadata"]["name"] for p in self.pods()])
        return found[0]

    def events(self) -> list[dict[str, Any]]:
        """The audit events of the operator's ServiceAccount since the install (final stage)."""
        time.sleep(2)  # the audit backend flushes its batch within a second
        return [e for e in audit.events(self.cluster.settings, self.user)
                if e.get("stage") in ("ResponseComplete", "ResponseStarted", "Panic")]

    def logs(self) -> str:
        out = []
        for p in self.pods():
            out.append(self.cluster.kubectl("logs", "-n", self.ns, p["metadata"]["name"], "--tail=40", check=False).stdout)
        return "\n".join(out)


def chart_values(cluster: Cluster, watch: list[str], gate_delay: str = "20s", server: str | None = None) -> dict[str, Any]:
    """The chart's values for these tests: the operator image, the stand-in trainer, ModelServes'
    gate Jobs ended by kwok after ``gate_delay`` and their servers on kwok nodes (``server`` None:
    an image kwok never pulls) or the given image (the server stand-in, on the real node)."""
    operator_image = cluster.image(ROOT / "operator", "operator")
    standin = cluster.image(ROOT / "tests" / "images" / "trainer-standin", "trainer-standin")
    serve = kwok_serve_env(gate_delay=gate_delay)
    return {
        "watchNamespaces": watch,
        "images": {"operator": image_values(operator_image), "trainer": image_values(standin),
                   "server": image_values(server or serve["TUNEFORGE_SERVER_IMAGE"]),
                   "gate": image_values(serve["TUNEFORGE_GATE_IMAGE"])},
        "nodeSelector": {"tuneforge.dev/node-kind": "real"},
        # The real node's 2 CPUs are shared with the training runs of other tests.
        "resources": {"requests": {"cpu": "0", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
        "settings": {"validateCpu": "0", "validateMemory": "64Mi", "progressInterval": 2,
                     "retryDelay": 1, "retryMaxDelay": 5},
        "extraEnv": [{"name": k, "value": v} for k, v in serve.items()
                     if k not in ("TUNEFORGE_SERVER_IMAGE", "TUNEFORGE_GATE_IMAGE")],
    }


@pytest.fixture(scope="module")
def release(cluster: Cluster, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    """The chart installed in ``request.param`` mode ("namespaced" watches one namespace,
    "cluster-wide" all), with the operator image in the cluster and the chart's HA defaults."""
    mode = request.param
    name = f"ha-{uuid.uuid4().hex[:5]}"
    ns = cluster.new_namespace(f"t-ha-{mode}", pod_security_labels("restricted"))
    watched = cluster.new_namespace(f"t-ha-{mode}-work", pod_security_labels("restricted"))
    values = chart_values(cluster, [watched] if mode == "namespaced" else [])
    vfile = tmp_path_factory.mktemp("ha") / "values.json"
    vfile.write_text(json.dumps(values))
    rel = Release(cluster, name, ns, watched, mode, values)
    cluster.helm("install", name, str(CHART), "--namespace", ns, "-f", str(vfile), "--wait", "--timeout", "5m",
                 "--take-ownership", "--force-conflicts")
    try:
        wait_for("2 Ready operator pods", rel.ready_pods, 120, 1)
        wait_for("a leader", rel.holder, 60, 0.5)
        yield rel
    finally:
        cluster.helm("uninstall", name, "--namespace", ns, "--wait", "--timeout", "3m", check=False)
        for n in (ns, watched):
            cluster.delete_namespace(n)


# --- workloads ------------------------------------------------------------------------------

def digest(n: int) -> str:
    return "sha256:" + f"{n:x}" * 64


def ms_manifest(name: str, version: int, real_node: bool = False) -> dict[str, Any]:
    """A ModelServe on the kwok GPU nodes, or (``real_node``) served on the real node's CPU
    (``gpus: 0``: its GPU stand-ins stay free for other tests)."""
    where, size = ({"tuneforge.dev/node-kind": "real"}, {"cpu": "50m", "memory": "128Mi"}) if real_node else \
        (H100, {"cpu": "1", "memory": "1Gi"})
    return {"apiVersion": "tuneforge.dev/v1alpha1", "kind": "ModelServe", "metadata": {"name": name}, "spec": {
        **({"gpus": 0} if real_node else {}),
        "baseModel": {"uri": "/models/base"},
        "adapters": [{"name": "intents", "uri": f"/adapters/v{version}", "digest": digest(version)}],
        "resources": size, "scheduling": {"nodeSelector": where},
        "rollout": {"progressDeadlineSeconds": 120, "scaleDownDelaySeconds": 5,
                    "gate": {"minAccuracy": 0.8, "rows": 20, "datasetUri": "s3://gate/rows.jsonl"}}}}


def ftj_manifests(name: str, steps: int) -> list[dict[str, Any]]:
    return [{"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
             "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}}},
            {"apiVersion": "tuneforge.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name},
             "spec": {"baseModel": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
                      "dataset": {"uri": f"/standin/accuracy=0.93/steps={steps}/train.jsonl"},
                      "output": {"uri": f"pvc://{name}/runs"},
                      "resources": {"cpu": "0", "memory": "64Mi"}}}]


def _status(rel: Release, kind: str, name: str, ns: str | None = None) -> dict[str, Any]:
    return dict(rel.cluster.get(kind, name, ns or rel.watched).get("status") or {})


def _serving(st: dict[str, Any], color: str, n: int) -> bool:
    return (st.get("phase") == "Healthy" and st.get("activeColor") == color
            and (st.get("active") or {}).get("digest") == digest(n))


def _wait(rel: Release, what: str, probe: Any, timeout: float = 180) -> Any:
    return wait_for(what, probe, timeout, 0.5, rel.logs)


def _ftj_running(rel: Release, name: str, min_step: int = 1) -> dict[str, Any] | None:
    st = _status(rel, "finetunejob", name)
    step = (st.get("progress") or {}).get("step") or 0
    return st if st.get("phase") == "Running" and step >= min_step else None


def _ftj_done(rel: Release, name: str) -> str | None:
    phase = _status(rel, "finetunejob", name).get("phase")
    return phase if phase in ("Succeeded", "Failed") else None


def _children(rel: Release) -> dict[str, list[str]]:
    return {kind: sorted(o["metadata"]["name"] for o in rel.cluster.list(kind, rel.watched))
            for kind in ("jobs", "deployments", "services")}


def run_workload(rel: Release, ftj: str, ms: str, steps: int = 6) -> None:
    """A FineTuneJob to the end and a ModelServe's first deploy and one rollout."""
    rel.cluster.apply(ftj_manifests(ftj, steps), rel.watched)
    rel.cluster.apply(ms_manifest(ms, 1), rel.watched)
    _wait(rel, f"{ms} serves v1 on blue", lambda: _serving(_status(rel, "modelserve", ms), "blue", 1))
    rel.cluster.apply(ms_manifest(ms, 2), rel.watched)
    _wait(rel, f"{ms} serves v2 on green", lambda: _serving(_status(rel, "modelserve", ms), "green", 2))
    assert _wait(rel, f"{ftj} to end", lambda: _ftj_done(rel, ftj)) == "Succeeded", _status(rel, "finetunejob", ftj)


# --- HA ---------------------------------------------------------------------------------------

def _source(event: dict[str, Any]) -> str:
    return str((event.get("sourceIPs") or [""])[0])


STEPS = 60
"""The stand-in training run of the pod-deletion test (about a second a step)."""


@pytest.mark.timeout(600)
@pytest.mark.parametrize("release", ["namespaced"], indirect=True)
def test_leader_pod_deleted_mid_run_and_mid_rollout(release: Release) -> None:
    rel, c = release, release.cluster
    c.apply(ms_manifest("blue-green", 1), rel.watched)
    _wait(rel, "blue serves v1", lambda: _serving(_status(rel, "modelserve", "blue-green"), "blue", 1))
    # The FineTuneJob first, then the rollout: a trainer slow to start (the machine's cores are
    # shared with other tests) must not let the 20 s gate pass before the leader goes.
    c.apply(ftj_manifests("long-run", STEPS), rel.watched)
    _wait(rel, "long-run Running with progress", lambda: _ftj_running(rel, "long-run", 2))
    c.apply(ms_manifest("blue-green", 2), rel.watched)
    # Mid-rollout: green is up and its gate Job runs (the stand-in gate takes 20 s).
    _wait(rel, "the rollout's gate Job", lambda: any("gate" in j for j in _children(rel)["jobs"]))
    assert _status(rel, "modelserve", "blue-green")["phase"] == "Progressing"
    before = _ftj_running(rel, "long-run")
    assert before is not None, _status(rel, "finetunejob", "long-run")
    children = _children(rel)

    leader = rel.leader_pod()
    old_holder, old_ip = rel.holder(), leader["status"]["podIP"]
    deleted = time.time()
    c.kubectl("delete", "pod", "-n", rel.ns, leader["metadata"]["name"], "--wait=false")
    new_holder = wait_for("another replica to take the Lease", lambda: (h := rel.holder()) and h != old_holder and h,
                          60, 0.1, rel.logs)
    holder_seen = time.time()
    lease = c.get("lease", rel.fullname, rel.ns)["spec"]
    acquired = _ts(lease["acquireTime"])
    new_pod = next(p for p in rel.pods() if new_holder.startswith(p["metadata"]["name"] + "_"))
    new_ip = new_pod["status"]["podIP"]
    assert new_ip != old_ip

    # Both finish, each child made once (names are per revision), and the progress kept counting.
    after = _wait(rel, "long-run's progress to move on under the new leader",
                  lambda: _ftj_running(rel, "long-run", before["progress"]["step"] + 1) or _ftj_done(rel, "long-run"))
    assert _wait(rel, "long-run to end", lambda: _ftj_done(rel, "long-run"), 240) == "Succeeded"
    _wait(rel, "green serves v2", lambda: _serving(_status(rel, "modelserve", "blue-green"), "green", 2))
    final = _children(rel)
    assert final["jobs"] == sorted(set(children["jobs"]) | {"long-run-train-1", "long-run-validate-1"}), final
    assert len(final["jobs"]) == len(set(final["jobs"])) and final["deployments"] == ["blue-green-blue", "blue-green-green"]
    assert final["services"] == children["services"], final
    ftj = c.get("finetunejob", "long-run", rel.watched)
    assert (ftj["status"].get("progress") or {}).get("step", STEPS) == STEPS, ftj["status"]
    pods = c.list("pods", rel.watched, "tuneforge.dev/finetunejob=long-run,tuneforge.dev/role=train")
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]  # no retraining

    # Takeover from the audit log: the new leader's first request that is not about the Lease,
    # and its first write, after it acquired the Lease.
    events = [e for e in rel.events() if _source(e) == new_ip and _ts(e["requestReceivedTimestamp"]) >= acquired]
    work = [e for e in events if (e.get("objectRef") or {}).get("resource") != "leases"]
    writes = [e for e in work if e["verb"] in WRITES]
    assert work and writes, events[:5]
    first_request = _ts(work[0]["requestReceivedTimestamp"]) - acquired
    first_write = _ts(writes[0]["requestReceivedTimestamp"]) - acquired
    # Nothing came from the deleted pod's address after the new leader acquired the Lease.
    late = [e for e in rel.events() if _source(e) == old_ip and _ts(e["requestReceivedTimestamp"]) >= acquired]
    assert late == [], late[:3]
    result = {"delete_to_new_holder_s": round(acquired - deleted, 2),
              "delete_to_holder_observed_s": round(holder_seen - deleted, 2),
              "holder_change_to_first_request_s": round(first_request, 2),
              "holder_change_to_first_write_s": round(first_write, 2),
              "first_write": f'{writes[0]["verb"]} {writes[0]["objectRef"].get("resource")}/'
                             f'{writes[0]["objectRef"].get("subresource", "")}',
              "step_at_delete": before["progress"]["step"], "step_after": (after or {}).get("progress", {}).get("step")}
    OUTPUT.mkdir(parents=True, exist_ok=True)
    (OUTPUT / "ha-pod-takeover.json").write_text(json.dumps(result, indent=1))
    print("leader pod deleted:", result)
    assert acquired - deleted + first_write <= 20, result


def _ctr(rel: Release, *args: str) -> None:
    s = rel.cluster.settings
    subprocess.run(["ctr", "--address", str(s.containerd_socket), "-n", "k8s.io", *args], check=True,
                   capture_output=True, text=True, timeout=30)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("release", ["namespaced"], indirect=True)
def test_frozen_leader_pod_replaced_and_writes_nothing_after_thaw(release: Release) -> None:
    rel, c = release, release.cluster
    wait_for("2 Ready operator pods", rel.ready_pods, 120, 1)
    c.apply(ftj_manifests("frozen-run", 40), rel.watched)
    _wait(rel, "frozen-run Running with progress", lambda: _ftj_running(rel, "frozen-run", 2))
    leader = rel.leader_pod()
    old_holder, old_ip = rel.holder(), leader["status"]["podIP"]
    status = leader["status"]["containerStatuses"][0]
    container, restarts = status["containerID"].split("://", 1)[1], status["restartCount"]

    # Freeze the leader's container (the cgroup freezer: every thread stops, as on a stalled node),
    # past its Lease; the follower takes over.
    _ctr(rel, "tasks", "pause", container)
    frozen = time.time()
    try:
        new_holder = wait_for("the follower to take the Lease", lambda: (h := rel.holder()) != old_holder and h,
                              60, 0.2, rel.logs)
        acquired = _ts(c.get("lease", rel.fullname, rel.ns)["spec"]["acquireTime"])
        new_ip = next(p for p in rel.pods() if new_holder.startswith(p["metadata"]["name"] + "_"))["status"]["podIP"]
        first_write = wait_for("the new leader's first write", lambda: next(
            (e for e in rel.events() if _source(e) == new_ip and e["verb"] in WRITES
             and (e.get("objectRef") or {}).get("resource") != "leases"
             and _ts(e["requestReceivedTimestamp"]) >= acquired), None), 30, 1)
    finally:
        _ctr(rel, "tasks", "resume", container)
    thawed = time.time()

    # Thawed, it exits on its own (status 3) and the kubelet restarts it as a follower.
    def restarted() -> dict[str, Any] | None:
        pod = c.get("pod", leader["metadata"]["name"], rel.ns)
        st = pod["status"]["containerStatuses"][0]
        return st if st["restartCount"] > restarts and st.get("lastState", {}).get("terminated") else None
    st = wait_for("the thawed leader to exit and restart", restarted, 90, 0.5, rel.logs)
    ended = st["lastState"]["terminated"]
    assert ended["exitCode"] == 3, ended
    previous = c.kubectl("logs", "-n", rel.ns, leader["metadata"]["name"], "--previous", check=False).stdout
    assert "not renewed in time" in previous, previous[-2000:]
    assert _wait(rel, "frozen-run to end", lambda: _ftj_done(rel, "frozen-run"), 240) == "Succeeded"

    # The audit log: from the frozen pod's address, not one request between the freeze and its
    # container's exit, and never a write after the freeze (its restarted container only reads the
    # Lease, as a follower). Both containers share the pod's address, and the kubelet restarts at
    # once: a fresh follower reads the Lease about a second after the old one exited. Timestamps have
    # whole seconds (truncated), so the old container's window ends at finishedAt + 1 s, but never
    # after the new one's startedAt (truncated too, so at or before its real start).
    events = [e for e in rel.events() if _source(e) == old_ip and _ts(e["requestReceivedTimestamp"]) >= frozen]
    exited = _ts(ended["finishedAt"]) + 1
    current = c.get("pod", leader["metadata"]["name"], rel.ns)["status"]["containerStatuses"][0]
    if started := (current.get("state", {}).get("running") or {}).get("startedAt"):
        exited = min(exited, _ts(started))
    assert [e for e in events if _ts(e["requestReceivedTimestamp"]) < exited] == [], events[:3]
    assert [e for e in events if e["verb"] in WRITES] == [], [(e["verb"], e["objectRef"]) for e in events]
    assert c.get("lease", rel.fullname, rel.ns)["spec"]["holderIdentity"] == new_holder
    result = {"freeze_to_new_holder_s": round(acquired - frozen, 2),
              "holder_change_to_first_write_s": round(_ts(first_write["requestReceivedTimestamp"]) - acquired, 2),
              "thaw_to_exit_at_most_s": round(exited - thawed, 1), "exit_code": ended["exitCode"],
              "requests_from_frozen_pod_after_freeze": len(events),
              "writes_from_frozen_pod_after_freeze": 0}
    OUTPUT.mkdir(parents=True, exist_ok=True)
    (OUTPUT / "ha-freeze-takeover.json").write_text(json.dumps(result, indent=1))
    print("leader pod frozen:", result)
    assert acquired - frozen <= 20, result


# --- least privilege ----------------------------------------------------------------------------

Use = tuple[str, str, str, str, str]
"""(apiGroup, resource[/subresource], verb, namespace or "" for cluster scope, name)."""
Rule = tuple[str, str, str, str]
"""(apiGroup, resource[/subresource], verb, namespace or "*" for a ClusterRole's cluster-wide grant)."""

GRANTED_TO_EVERYONE = {("authorization.k8s.io", "selfsubjectaccessreviews"), ("authorization.k8s.io", "selfsubjectrulesreviews"),
                       ("authentication.k8s.io", "selfsubjectreviews")}
"""system:basic-user's grants to every authenticated user; not the chart's business."""

_APPLIED = ("server-side apply of an absent object: the apiserver authorizes create inside the patch "
            "request, which is all the audit log shows")
_OWNER_REF = ("OwnerReferencesPermissionEnforcement authorizes it inside each child's create (blockOwnerDeletion "
              "on the controller reference); the audit log shows only the create")
_ALREADY_EXISTS = "kube.create on AlreadyExists (a child made before a leader change): reads its controller reference"
NOT_EXERCISED: dict[tuple[str, str, str], str] = {  # (apiGroup, resource, verb): the path that uses it
    ("apps", "deployments", "create"): _APPLIED,
    ("policy", "poddisruptionbudgets", "create"): _APPLIED,
    ("autoscaling", "horizontalpodautoscalers", "create"): _APPLIED + " (spec.autoscaling only)",
    ("inference.networking.k8s.io", "inferencepools", "create"): _APPLIED + " (only where the InferencePool CRD is installed)",
    ("autoscaling", "horizontalpodautoscalers", "patch"): "spec.autoscaling only (server-side apply)",
    ("inference.networking.k8s.io", "inferencepools", "patch"): "only where the InferencePool CRD is installed",
    ("autoscaling", "horizontalpodautoscalers", "delete"): "spec.autoscaling removed from a ModelServe",
    ("policy", "poddisruptionbudgets", "delete"): "a ModelServe that no longer wants its PDB",
    ("inference.networking.k8s.io", "inferencepools", "delete"): "a ModelServe that no longer wants its InferencePool",
    ("keda.sh", "scaledobjects", "list"): "only with settings.prometheusUrl (KEDA scales ModelServes where it is installed)",
    ("keda.sh", "scaledobjects", "create"): _APPLIED + " (only where KEDA is used)",
    ("keda.sh", "scaledobjects", "patch"): "only where KEDA is used (server-side apply)",
    ("keda.sh", "scaledobjects", "delete"): "spec.hpa removed from a ModelServe where KEDA is used",
    ("", "configmaps", "delete"): "old per-version launcher ConfigMaps of a ModelServe beyond the ones kept",
    ("", "services", "delete"): "a multi-node FineTuneJob revision's headless workers Service when it ends",
    ("batch", "jobs", "get"): _ALREADY_EXISTS,
    ("", "configmaps", "get"): _ALREADY_EXISTS + "; a dataset ConfigMap's keys (pre-flight)",
    ("", "services", "get"): _ALREADY_EXISTS,
    ("batch", "jobs", "patch"): "(un)suspending a Job: a FineTuneJob's spec.suspend / queueing",
    ("", "secrets", "get"): "a Secret sent to a user-chosen endpoint: its opt-in annotation (review OP-2)",
    ("scheduling.k8s.io", "priorityclasses", "get"): "spec.scheduling.priorityClassName (checked before the Job)",
    ("tuneforge.dev", "finetunejobs", "get"): "a ModelServe whose adapter names a FineTuneJob (adapter.fineTuneJob)",
    ("tuneforge.dev", "finetunejobs/finalizers", "update"): _OWNER_REF,
    ("tuneforge.dev", "modelserves/finalizers", "update"): _OWNER_REF,
    # Kopf watches Kueue's Workloads only where Kueue's CRD is installed (tests/operator/test_kueue_cluster.py).
    ("kueue.x-k8s.io", "workloads", "list"): "only where Kueue is installed: a queued training Job's Workload",
    ("kueue.x-k8s.io", "workloads", "watch"): "only where Kueue is installed: a queued training Job's Workload",
}
"""Rules of the chart that a FineTuneJob and a ModelServe rollout on the happy path do not use,
each with the path that does (the comparison fails if one of them is used, or one more is unused)."""


def chart_rules(manifest: str, sa_namespace: str, sa_name: str) -> dict[Rule, tuple[str, ...]]:
    """Every (group, resource, verb, namespace) the release's bindings grant its ServiceAccount,
    with the resourceNames a rule is limited to (empty: any name)."""
    docs = [d for d in yaml.safe_load_all(manifest) if d]
    roles = {(d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]): d
             for d in docs if d["kind"] in ("Role", "ClusterRole")}
    out: dict[Rule, tuple[str, ...]] = {}
    for b in docs:
        if b["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if not any(s["kind"] == "ServiceAccount" and s["name"] == sa_name and s.get("namespace") == sa_namespace
                   for s in b["subjects"]):
            continue
        ns = b["metadata"].get("namespace", "") if b["kind"] == "RoleBinding" else "*"
        ref = b["roleRef"]
        role = roles[(ref["kind"], ns if ref["kind"] == "Role" else "", ref["name"])]
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        assert "*" not in (group, resource, verb), rule  # no wildcards
                        out[(group, resource, verb, ns)] = tuple(rule.get("resourceNames", ()))
    return out


def used_requests(events: list[dict[str, Any]]) -> dict[Use, int]:
    """What the audit events asked for (resource requests only): 403 where RBAC refused it."""
    out: dict[Use, int] = {}
    for e in events:
        ref = e.get("objectRef")
        if not ref or (ref.get("apiGroup", ""), ref.get("resource")) in GRANTED_TO_EVERYONE:
            continue
        resource = ref["resource"] + (f'/{ref["subresource"]}' if ref.get("subresource") else "")
        key = (ref.get("apiGroup", ""), resource, e["verb"], ref.get("namespace", ""), ref.get("name", ""))
        # RBAC's own refusal (a 403 may also be a namespace being deleted refusing a create).
        code = 403 if (e.get("annotations") or {}).get("authorization.k8s.io/decision") == "forbid" else 200
        out[key] = code if code == 403 else out.get(key, code)
    return out


def compare(rules: dict[Rule, tuple[str, ...]], used: dict[Use, int]) -> tuple[set[Use], set[Rule]]:
    """(requests no rule allows or the apiserver refused, rules no request used)."""
    def allows(rule: Rule, names: tuple[str, ...], use: Use) -> bool:
        group, resource, verb, ns = rule
        return ((group, resource, verb) == use[:3] and ns in ("*", use[3])
                and (not names or use[4] in names))

    missing = {u for u, code in used.items() if code == 403 or not any(allows(r, n, u) for r, n in rules.items())}
    unused = {r for r, n in rules.items() if not any(allows(r, n, u) for u in used)}
    return missing, unused


def test_compare_rbac_with_audit_table() -> None:
    rules = {("batch", "jobs", "create", "w"): (), ("coordination.k8s.io", "leases", "update", "ops"): ("l",),
             ("scheduling.k8s.io", "priorityclasses", "get", "*"): ()}
    used = {("batch", "jobs", "create", "w", ""): 201, ("coordination.k8s.io", "leases", "update", "ops", "other"): 403,
            ("", "pods", "list", "w", ""): 200}
    missing, unused = compare(rules, used)
    assert missing == {("coordination.k8s.io", "leases", "update", "ops", "other"), ("", "pods", "list", "w", "")}
    assert unused == {("coordination.k8s.io", "leases", "update", "ops"), ("scheduling.k8s.io", "priorityclasses", "get", "*")}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("release", ["namespaced", "cluster-wide"], indirect=True)
def test_rbac_rules_are_exactly_what_the_operator_uses(release: Release) -> None:
    rel, c = release, release.cluster
    ignored = ""
    if rel.mode == "namespaced":
        ignored = c.new_namespace("t-ha-unwatched", pod_security_labels("restricted"))
        c.apply(ftj_manifests("ignored", 4), ignored)
    try:
        run_workload(rel, "audited", "audited-serve")
        events = rel.events()
        if ignored:
            # Not watched: never touched (no status, no child, not one request in that namespace).
            assert _status(rel, "finetunejob", "ignored", ignored) == {}
            assert c.list("jobs", ignored) == []
            assert [e for e in events if (e.get("objectRef") or {}).get("namespace") == ignored] == []
            sa = f"--as={rel.user}"
            table = {}
            for verb, resource in (("create", "jobs"), ("create", "deployments.apps"), ("get", "pods/log"),
                                   ("patch", "finetunejobs.tuneforge.dev/status"), ("list", "finetunejobs.tuneforge.dev"),
                                   ("get", "secrets")):
                args = [verb, resource] if "/" not in resource else [verb, resource.split("/")[0], f"--subresource={resource.split('/')[1]}"]
                table[f"{verb} {resource}"] = {n: c.kubectl("auth", "can-i", *args, "-n", n, sa, check=False).stdout.strip()
                                               for n in (rel.watched, ignored)}
            print("kubectl auth can-i as the operator (watched, unwatched):", json.dumps(table, indent=1))
            (OUTPUT / "ha-can-i-namespaced.json").write_text(json.dumps(table, indent=1))
            assert all(row[ignored] == "no" for row in table.values()), table
            assert all(row[rel.watched] == "yes" for k, row in table.items() if k != "get secrets"), table
    finally:
        if ignored:
            c.delete_namespace(ignored)

    manifest = c.helm("get", "manifest", rel.name, "--namespace", rel.ns).stdout
    rules = chart_rules(manifest, rel.ns, rel.fullname)
    used = used_requests(events)
    missing, unused = compare(rules, used)
    report = {"mode": rel.mode, "rules": len(rules), "distinct_requests": len(used),
              "used": sorted({f"{u[2]} {u[0] or 'core'}/{u[1]} ns={'own' if u[3] == rel.ns else 'watched' if u[3] == rel.watched else u[3] or 'cluster'}"
                              for u in used}),
              "missing": sorted(map(str, missing)),
              "unused": sorted(f"{r[2]} {r[0] or 'core'}/{r[1]} ({r[3]})" for r in unused)}
    OUTPUT.mkdir(parents=True, exist_ok=True)
    (OUTPUT / f"ha-rbac-audit-{rel.mode}.json").write_text(json.dumps(report, indent=1))
    print("RBAC vs audit:", json.dumps(report, indent=1))
    assert missing == set(), report
    # Every unused rule is one whose path the list explains, and the list names only chart rules.
    assert {r[:3] for r in unused} <= set(NOT_EXERCISED), report
    assert set(NOT_EXERCISED) <= {r[:3] for r in rules}, set(NOT_EXERCISED) - {r[:3] for r in rules}
