"""serve/reconcile.py against an in-memory API door: the wiring from the children (read as the
operator's indexes keep them, never listed) through the plan to applied actions, the status
written only when it changed, the gate Job, the HPA following the active color, old version
ConfigMaps removed and InferencePools skipped without their CRD."""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import json
from typing import Any

import pytest
import yaml

from tuneforge.serve.builders import GatePod
from tuneforge.serve.names import LABEL_COLOR, LABEL_MODELSERVE
from tuneforge.serve.observe import observe_color, project_child
from tuneforge.runtime import Runtime, pack
from tuneforge.serve.reconcile import Room, reconcile
from tuneforge.settings import Settings

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


class FakeKube:
    def __init__(self, pools: bool = False, keda: bool = False) -> None:
        self.objs: dict[tuple[str, str], dict[str, Any]] = {}
        self.status_writes: list[dict[str, Any]] = []
        self.served = {kind for kind, on in (("InferencePool", pools), ("ScaledObject", keda)) if on}
        self.messages: dict[str, str] = {}
        self.listed: list[str] = []
        self.probed: list[str] = []
        self.message_reads = 0

    def _labels_match(self, obj: dict[str, Any], labels: dict[str, str | None]) -> bool:
        have = obj["metadata"].get("labels") or {}
        return all(k in have and (v is None or have[k] == v) for k, v in labels.items())

    def children(self, kind: str, namespace: str, name: str) -> list[dict[str, Any]]:
        """What the operator's indexes hold: the children labelled with the ModelServe, projected."""
        return [project_child(kind, o) for (k, _), o in self.objs.items() if k == kind and self._labels_match(o, {LABEL_MODELSERVE: name})]

    async def list_labelled(self, kind: str, namespace: str, labels: dict[str, str | None]) -> list[dict[str, Any]]:
        self.listed.append(kind)
        return [copy.deepcopy(o) for (k, _), o in self.objs.items() if k == kind and self._labels_match(o, labels)]

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.objs.get((kind, name)))

    async def create(self, obj: dict[str, Any]) -> bool:
        key = (obj["kind"], obj["metadata"]["name"])
        if key in self.objs:
            return False
        self.objs[key] = copy.deepcopy(obj)
        self.objs[key]["metadata"].setdefault("uid", f"uid-{obj['kind']}-{obj['metadata']['name']}")
        return True

    async def apply(self, obj: dict[str, Any]) -> None:
        key = (obj["kind"], obj["metadata"]["name"])
        old = self.objs.get(key, {})
        self.objs[key] = {**copy.deepcopy(obj), "status": old.get("status", {})}

    async def merge_patch(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> None:
        obj = self.objs[(kind, name)]
        if "replicas" in patch.get("spec", {}):
            n = obj["spec"]["replicas"] = patch["spec"]["replicas"]
            st = obj.get("status") or {}  # pods beyond the count go; new ones start unready
            obj["status"] = {k: min(v, n) if k != "observedGeneration" else v for k, v in st.items()}
        if "selector" in patch.get("spec", {}):
            obj["spec"]["selector"].update(patch["spec"]["selector"])

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        self.objs.pop((kind, name), None)

    async def job_termination_message(self, namespace: str, job: str, container: str) -> str | None:
        self.message_reads += 1
        return self.messages.get(job)

    async def list_if_served(self, kind: str, namespace: str, labels: dict[str, str | None]) -> list[dict[str, Any]] | None:
        self.probed.append(kind)
        return await self.list_labelled(kind, namespace, labels) if kind in self.served else None

    async def write_status(self, kind: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        assert kind == "ModelServe"
        self.status_writes.append(copy.deepcopy(status))

    # test helpers
    def ready(self, color: str) -> None:
        d = self.objs[("Deployment", f"intents-{color}")]
        n = d["spec"]["replicas"]
        d["metadata"]["generation"] = 1
        d["status"] = {"observedGeneration": 1, "readyReplicas": n, "updatedReplicas": n, "replicas": n}

    def selector(self, service: str) -> str:
        return str(self.objs[("Service", service)]["spec"]["selector"][LABEL_COLOR])


def body(digest: str = D1, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"baseModel": {"uri": "s3://models/base"},
                            "adapters": [{"name": "intents", "uri": f"s3://runs/{digest[-4:]}", "digest": digest}]}
    base.update(spec)
    return {"apiVersion": "tuneforge.dev/v1alpha1", "kind": "ModelServe",
            "metadata": {"name": "intents", "namespace": "ns", "uid": "uid-ms", "generation": 1, "annotations": {}},
            "spec": base, "status": {}}


def runtime(kube: FakeKube, **settings: Any) -> tuple[Room, list[tuple[str, str]]]:
    """The ModelServe room over a runtime with this API door (its children as the indexes hold them)."""
    events: list[tuple[str, str]] = []
    rt = Runtime(Settings(server_image="server:1", **settings), kube, lambda b, t, r, m: events.append((t, r)))  # type: ignore[arg-type]
    return Room(rt=rt, modelserves={}, children=kube.children, gate_pod=GatePod("operator:1")), events


def configs(kube: FakeKube) -> set[str]:
    return {n for k, n in kube.objs if k == "ConfigMap"}


def config_of(kube: FakeKube, color: str) -> str:
    """The version ConfigMap a color's pods mount (named by its template hash)."""
    d = kube.objs[("Deployment", f"intents-{color}")]
    return str(next(v["configMap"]["name"] for v in d["spec"]["template"]["spec"]["volumes"] if "configMap" in v))


def step(room: Room, b: dict[str, Any], now: dt.datetime) -> tuple[dict[str, Any], float | None]:
    """One pass over ``b`` (as the index holds it): the status after it, and the requeue delay."""
    key = (b["metadata"]["namespace"], b["metadata"]["name"])
    room.modelserves = {key: [pack(b)]}
    requeue_after = asyncio.run(reconcile(room, key, now))
    assert requeue_after is None or isinstance(requeue_after, float)
    return room.last_status(b), requeue_after


def run(room: Room, b: dict[str, Any], now: dt.datetime) -> dict[str, Any] | float:
    """The status, or the requeue delay when the reconcile says "not yet"."""
    status, requeue_after = step(room, b, now)
    return status if requeue_after is None else float(requeue_after)


def test_first_deploy_then_rollout_with_gate_and_hpa_following_the_switch() -> None:
    kube = FakeKube()
    rt, events = runtime(kube)
    b = body(hpa={"maxReplicas": 3}, rollout={"scaleDownDelaySeconds": 30})
    assert isinstance(run(rt, b, T0), float)  # waiting for blue: a timer
    assert ("Deployment", "intents-blue") in kube.objs
    st0 = kube.status_writes[-1]
    assert configs(kube) == {config_of(kube, "blue")} == {f"intents-{st0['preview']['templateHash']}"}
    assert {("Service", "intents"), ("Service", "intents-preview"), ("PodDisruptionBudget", "intents-blue"),
            ("PodDisruptionBudget", "intents-green")} <= set(kube.objs)
    assert kube.selector("intents") == "none" and kube.selector("intents-preview") == "blue"
    kube.ready("blue")
    writes = len(kube.status_writes)
    st = run(rt, b, T0 + dt.timedelta(seconds=5))
    assert isinstance(st, dict) and st["phase"] == "Healthy" and st["activeColor"] == "blue", st
    assert kube.selector("intents") == "blue"
    assert kube.objs[("HorizontalPodAutoscaler", "intents")]["spec"]["scaleTargetRef"]["name"] == "intents-blue"
    assert len(kube.status_writes) == writes + 1
    run(rt, b, T0 + dt.timedelta(seconds=6))
    assert len(kube.status_writes) == writes + 1, "an unchanged status is not written again"
    # A new version behind a gate.
    b2 = body(D2, hpa={"maxReplicas": 3}, rollout={"scaleDownDelaySeconds": 30,
                                                   "gate": {"minAccuracy": 0.8, "datasetUri": "pvc://data/rows.jsonl"}})
    run(rt, b2, T0 + dt.timedelta(seconds=10))
    assert kube.selector("intents") == "blue" and kube.selector("intents-preview") == "green"
    kube.ready("green")
    run(rt, b2, T0 + dt.timedelta(seconds=12))
    job = kube.objs[("Job", "intents-gate-222222222222-2")]
    assert job["metadata"]["annotations"]["tuneforge.dev/attempt"] == "2"
    cmd = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert cmd[:3] == ["python3", "-m", "tuneforge.serve.gate"] and "pvc://data/rows.jsonl" in cmd
    assert "http://intents-preview.ns.svc:8000/v1" in cmd
    job["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    kube.messages["intents-gate-222222222222-2"] = json.dumps(
        {"rows": 10, "correct": 9, "errors": 0, "accuracy": 0.9, "p50Ms": 5, "p99Ms": 9})
    st = run(rt, b2, T0 + dt.timedelta(seconds=14))
    assert isinstance(st, float)  # the old color stays warm: a scale-down timer
    st2 = kube.status_writes[-1]
    assert st2["activeColor"] == "green" and st2["gate"]["outcome"] == "Passed", st2
    assert kube.selector("intents") == "green"
    assert kube.objs[("HorizontalPodAutoscaler", "intents")]["spec"]["scaleTargetRef"]["name"] == "intents-green"
    assert kube.objs[("Deployment", "intents-blue")]["spec"]["replicas"] == 1  # warm
    run(rt, b2, T0 + dt.timedelta(seconds=50))
    assert kube.objs[("Deployment", "intents-blue")]["spec"]["replicas"] == 0
    assert ("Normal", "Promoted") in events and ("Normal", "GatePassed") in events
    # Deployments, Services and gate Jobs come from the indexes: only old version ConfigMaps and
    # the converged PDBs and HPA are listed, and the finished gate's termination message was
    # read once, not on every later pass.
    assert set(kube.listed) == {"ConfigMap", "PodDisruptionBudget", "HorizontalPodAutoscaler"} and kube.message_reads == 1


def test_old_version_config_maps_are_removed_once_no_template_mounts_them() -> None:
    kube = FakeKube()
    rt, _ = runtime(kube)
    b = body(rollout={"scaleDownDelaySeconds": 0})
    run(rt, b, T0)
    kube.ready("blue")
    run(rt, b, T0 + dt.timedelta(seconds=1))
    b3 = body("sha256:" + "3" * 64, rollout={"scaleDownDelaySeconds": 0})
    run(rt, b3, T0 + dt.timedelta(seconds=2))
    kube.ready("green")
    run(rt, b3, T0 + dt.timedelta(seconds=3))
    v1, v3 = config_of(kube, "blue"), config_of(kube, "green")
    assert configs(kube) == {v1, v3} and v1 != v3
    b4 = body("sha256:" + "4" * 64, rollout={"scaleDownDelaySeconds": 0})
    run(rt, b4, T0 + dt.timedelta(seconds=4))  # blue gets version 4: nothing mounts version 1 any more
    assert configs(kube) == {v3, config_of(kube, "blue")} and v1 not in configs(kube)


@pytest.mark.parametrize("served", [False, True])
def test_inference_pools_only_where_their_crd_is_served(served: bool) -> None:
    kube = FakeKube(pools=served)
    rt, _ = runtime(kube)
    run(rt, body(inferencePool={"enabled": True, "endpointPicker": "epp"}), T0)
    pools = {n for k, n in kube.objs if k == "InferencePool"}
    assert pools == ({"intents", "intents-preview"} if served else set())


def _pool_color(kube: FakeKube, name: str) -> str:
    return str(kube.objs[("InferencePool", name)]["spec"]["selector"]["matchLabels"][LABEL_COLOR])


def test_pools_follow_the_switch_and_hpa_pdb_pools_converge_every_pass() -> None:
    """MS-6: the active pool switches with the active Service (Gateway traffic is blue/green too);
    MS-9: an edited HPA metric or target, a deleted PDB and disabled pools are converged on the
    next pass; MS-10: the PDB of one color only (a single PDB over both colors is removed)."""
    kube = FakeKube(pools=True)
    rt, _ = runtime(kube)
    # What an older operator left: one PDB across both colors and one pool per color.
    for kind, name in (("PodDisruptionBudget", "intents"), ("InferencePool", "intents-blue"), ("InferencePool", "intents-green")):
        kube.objs[(kind, name)] = {"kind": kind, "metadata": {
            "name": name, "labels": {LABEL_MODELSERVE: "intents"},
            "ownerReferences": [{"kind": "ModelServe", "name": "intents", "uid": "uid-ms", "controller": True}]}, "spec": {}}
    spec = {"hpa": {"maxReplicas": 3}, "inferencePool": {"enabled": True, "endpointPicker": "epp"},
            "rollout": {"scaleDownDelaySeconds": 30}}
    run(rt, body(**spec), T0)
    assert {n for k, n in kube.objs if k == "PodDisruptionBudget"} == {"intents-blue", "intents-green"}
    assert {n for k, n in kube.objs if k == "InferencePool"} == {"intents", "intents-preview"}
    assert _pool_color(kube, "intents") == "none" and _pool_color(kube, "intents-preview") == "blue"
    kube.ready("blue")
    run(rt, body(**spec), T0 + dt.timedelta(seconds=5))
    assert _pool_color(kube, "intents") == "blue" == kube.selector("intents")
    # A new version: the preview pool follows the candidate, the active pool stays on blue
    # until the promotion, then both move with the Services in the same pass.
    run(rt, body(D2, **spec), T0 + dt.timedelta(seconds=10))
    assert _pool_color(kube, "intents") == "blue" and _pool_color(kube, "intents-preview") == "green"
    kube.ready("green")
    run(rt, body(D2, **spec), T0 + dt.timedelta(seconds=12))
    assert kube.selector("intents") == "green" == _pool_color(kube, "intents")
    # Drift: the HPA's metric and target edited in the spec, a PDB deleted by hand.
    edited = {**spec, "hpa": {"maxReplicas": 3, "targetWaitingRequests": 9, "metric": "vllm:num_requests_running"}}
    del kube.objs[("PodDisruptionBudget", "intents-blue")]
    run(rt, body(D2, **edited), T0 + dt.timedelta(seconds=13))
    metric = kube.objs[("HorizontalPodAutoscaler", "intents")]["spec"]["metrics"][0]["pods"]
    assert metric == {"metric": {"name": "vllm:num_requests_running"}, "target": {"type": "AverageValue", "averageValue": "9"}}
    assert ("PodDisruptionBudget", "intents-blue") in kube.objs
    # Pools and HPA disabled: removed.
    run(rt, body(D2, rollout={"scaleDownDelaySeconds": 30}), T0 + dt.timedelta(seconds=14))
    assert not {k for k, _ in kube.objs if k in ("InferencePool", "HorizontalPodAutoscaler")}


PROMETHEUS = "http://prometheus.monitoring:9090"


def _scaler(kube: FakeKube) -> dict[str, Any]:
    return kube.objs[("ScaledObject", "intents")]


def test_keda_scaled_object_replaces_the_hpa_and_follows_the_switch() -> None:
    """With a Prometheus address and KEDA's CRD served: a ScaledObject on the active color (its
    trigger queries that color's pods in the namespace), no HPA of the operator's own (one left
    from before KEDA is deleted: KEDA's takes its name); it moves on a switch, follows spec edits,
    and goes with spec.hpa."""
    kube = FakeKube(keda=True)
    room, _ = runtime(kube, prometheus_url=PROMETHEUS)
    kube.objs[("HorizontalPodAutoscaler", "intents")] = {"kind": "HorizontalPodAutoscaler", "metadata": {
        "name": "intents", "labels": {LABEL_MODELSERVE: "intents"},
        "ownerReferences": [{"kind": "ModelServe", "name": "intents", "uid": "uid-ms", "controller": True}]}, "spec": {}}
    spec = {"hpa": {"minReplicas": 1, "maxReplicas": 2, "targetWaitingRequests": 3}, "rollout": {"scaleDownDelaySeconds": 30}}
    run(room, body(**spec), T0)
    assert ("ScaledObject", "intents") not in kube.objs  # no active color yet: nothing to scale
    kube.ready("blue")
    run(room, body(**spec), T0 + dt.timedelta(seconds=5))
    assert ("HorizontalPodAutoscaler", "intents") not in kube.objs
    so = _scaler(kube)["spec"]
    assert so["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "intents-blue"}
    assert (so["minReplicaCount"], so["maxReplicaCount"]) == (1, 2)
    assert so["advanced"]["horizontalPodAutoscalerConfig"]["name"] == "intents"
    assert so["triggers"] == [{"type": "prometheus", "metricType": "AverageValue", "metadata": {
        "serverAddress": PROMETHEUS, "threshold": "3",
        "query": 'sum(vllm:num_requests_waiting{namespace="ns",pod=~"intents-blue-[a-z0-9]+-[a-z0-9]+"})'}}]
    assert _scaler(kube)["metadata"]["ownerReferences"][0]["uid"] == "uid-ms"
    # A new version promoted: the ScaledObject moves to green with the active Service.
    run(room, body(D2, **spec), T0 + dt.timedelta(seconds=10))
    assert _scaler(kube)["spec"]["scaleTargetRef"]["name"] == "intents-blue"  # never the candidate
    kube.ready("green")
    run(room, body(D2, **spec), T0 + dt.timedelta(seconds=12))
    assert kube.selector("intents") == "green"
    so = _scaler(kube)["spec"]
    assert so["scaleTargetRef"]["name"] == "intents-green" and "intents-green-" in so["triggers"][0]["metadata"]["query"]
    # An edited metric and target reach the trigger; spec.hpa removed: the ScaledObject goes.
    edited = {**spec, "hpa": {"maxReplicas": 4, "targetWaitingRequests": 9, "metric": "vllm:num_requests_running"}}
    run(room, body(D2, **edited), T0 + dt.timedelta(seconds=13))
    trigger = _scaler(kube)["spec"]["triggers"][0]["metadata"]
    assert trigger["threshold"] == "9" and trigger["query"].startswith("sum(vllm:num_requests_running{")
    assert _scaler(kube)["spec"]["maxReplicaCount"] == 4
    run(room, body(D2, rollout={"scaleDownDelaySeconds": 30}), T0 + dt.timedelta(seconds=14))
    assert not {k for k, _ in kube.objs if k in ("ScaledObject", "HorizontalPodAutoscaler")}


@pytest.mark.parametrize(("keda_served", "address"), [(False, PROMETHEUS), (True, "")])
def test_the_operators_own_hpa_without_keda_or_without_a_prometheus_address(keda_served: bool, address: str) -> None:
    kube = FakeKube(keda=keda_served)
    room, _ = runtime(kube, prometheus_url=address)
    spec = {"hpa": {"maxReplicas": 3}, "rollout": {"scaleDownDelaySeconds": 30}}
    run(room, body(**spec), T0)
    kube.ready("blue")
    run(room, body(**spec), T0 + dt.timedelta(seconds=5))
    assert kube.objs[("HorizontalPodAutoscaler", "intents")]["spec"]["scaleTargetRef"]["name"] == "intents-blue"
    assert ("ScaledObject", "intents") not in kube.objs
    assert ("ScaledObject" in kube.probed) == bool(address)  # without an address KEDA is never looked for


def test_a_keda_query_template_that_does_not_format_fails_at_startup() -> None:
    with pytest.raises(ValueError, match="TUNEFORGE_KEDA_QUERY"):
        Settings.from_env({"TUNEFORGE_KEDA_QUERY": 'sum({metric}{pod=~"x"})'})  # braces not doubled
    custom = Settings.from_env({"TUNEFORGE_KEDA_QUERY": 'max({metric}{{kubernetes_namespace="{namespace}",app="{deployment}"}})'})
    assert custom.keda_trigger_query("m", "team-a", "intents-blue", "x") == 'max(m{kubernetes_namespace="team-a",app="intents-blue"})'


def test_invalid_spec_fails_naming_the_field_and_touches_nothing() -> None:
    kube = FakeKube()
    rt, events = runtime(kube)
    st = run(rt, body(replicas="two"), T0)
    assert isinstance(st, dict) and st["phase"] == "Failed" and st["message"].startswith("spec.replicas"), st
    assert kube.objs == {} and events == [("Warning", "InvalidSpec")]
    run(rt, body(replicas="two"), T0 + dt.timedelta(seconds=5))
    assert len(kube.status_writes) == 1 and len(events) == 1


def test_a_foreign_deployment_with_our_label_is_not_read() -> None:
    kube = FakeKube()
    rt, _ = runtime(kube)
    kube.objs[("Deployment", "intents-green")] = {
        "kind": "Deployment", "metadata": {"name": "intents-green", "labels": {"tuneforge.dev/modelserve": "intents"},
                                           "annotations": {"tuneforge.dev/version": D1}},
        "spec": {"replicas": 1}, "status": {"readyReplicas": 1, "updatedReplicas": 1, "replicas": 1}}
    run(rt, body(), T0)
    assert kube.status_writes[-1]["phase"] == "Progressing" and "activeColor" not in kube.status_writes[-1]


def test_a_switch_reaches_a_service_the_index_has_not_seen_yet() -> None:
    """Indexes lag behind our own writes: a Service created a moment ago and not indexed yet is
    found by creating it, and its selector is patched all the same."""
    kube = FakeKube()
    rt, _ = runtime(kube)
    b = body()
    run(rt, b, T0)
    kube.ready("blue")
    rt.children = lambda kind, ns, name: [] if kind == "Service" else kube.children(kind, ns, name)
    st = run(rt, b, T0 + dt.timedelta(seconds=5))
    assert isinstance(st, dict) and st["activeColor"] == "blue", st
    assert kube.selector("intents") == "blue"


def test_the_index_keeps_what_reconcile_reads_of_a_child_and_little_else() -> None:
    from tuneforge.serve.handlers import children_from
    kube = FakeKube()
    rt, _ = runtime(kube)
    run(rt, body(), T0)
    full = kube.objs[("Deployment", "intents-blue")]
    kept = project_child("Deployment", full)
    assert kept["metadata"]["ownerReferences"] == [{"uid": "uid-ms", "controller": True}]
    assert kept["metadata"]["annotations"] == {"tuneforge.dev/version": D1,
                                               "tuneforge.dev/template-hash": kube.status_writes[-1]["preview"]["templateHash"]}
    # The pod template shrinks to the GPUs each pod asks for (status.usage counts them).
    assert kept["spec"] == {"replicas": 1, "template": {"spec": {"containers": [{"resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}}
    assert observe_color(kept).gpus == 1
    assert len(json.dumps(kept)) * 4 < len(json.dumps(full))
    index = {"Deployment": {("ns", "intents"): [json.dumps(kept)]}, "Service": {}, "Job": {}}
    assert children_from(index)("Deployment", "ns", "intents") == [kept]
    assert children_from(index)("Service", "ns", "intents") == []


def test_a_conflicting_child_is_in_the_status_and_the_deadline_still_runs() -> None:
    """A Service named like the ModelServe that it does not control (common when migrating):
    every pass fails at it, yet the status says why, and the progress deadline counts from the
    first pass (startedAt is written, not restarted by each failed pass) (MS-11)."""
    from tuneforge.kube import ForeignChild

    class Conflicting(FakeKube):
        async def create(self, obj: dict[str, Any]) -> bool:
            if obj["kind"] == "Service" and obj["metadata"]["name"] == "intents":
                raise ForeignChild("Service", "ns", "intents", "uid-other", "ModelServe")
            return await super().create(obj)

    kube = Conflicting()
    rt, events = runtime(kube)
    b = body(rollout={"progressDeadlineSeconds": 600})
    with pytest.raises(ForeignChild):
        run(rt, b, T0)
    first = kube.status_writes[-1]
    assert first["reason"] == "ChildConflict" and "not this ModelServe" in first["message"]
    assert first["rollout"]["startedAt"] == "2026-01-01T00:00:00Z"
    assert ("Normal", "RolloutStarted") in events and ("Deployment", "intents-blue") in kube.objs
    with pytest.raises(ForeignChild):
        run(rt, b, T0 + dt.timedelta(seconds=60))
    assert kube.status_writes[-1]["rollout"]["startedAt"] == "2026-01-01T00:00:00Z"
    with pytest.raises(ForeignChild):
        run(rt, b, T0 + dt.timedelta(seconds=700))
    assert kube.status_writes[-1]["rejected"], kube.status_writes[-1]
    assert kube.status_writes[-1]["reason"] == "ChildConflict"


def test_a_classifier_fine_tune_job_is_served_and_gated_as_a_classifier() -> None:
    """A ModelServe following a FineTuneJob with task.head classifier: the launcher config says
    head classifier, the gate Job asks through /classify, the status records the head, and a pass
    with that status read back (as the apiserver returns it) starts no second rollout."""
    kube = FakeKube()
    kube.objs[("FineTuneJob", "intents")] = {
        "apiVersion": "tuneforge.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "intents", "namespace": "ns"},
        "spec": {"task": {"type": "classification", "head": "classifier"}},
        "status": {"phase": "Succeeded", "revision": 1, "gate": {"outcome": "Passed"}, "evaluation": {"accuracy": 0.95},
                   "adapter": {"revision": 1, "uri": "s3://runs/r1/adapter", "digest": D1, "baseModel": {"uri": "s3://models/base"}},
                   "artifacts": {"predictions": "s3://runs/r1/predictions.jsonl"}}}
    rt, _ = runtime(kube)
    b = body(rollout={"gate": {"minAccuracy": 0.8}})
    b["spec"] = {"adapter": {"fineTuneJob": "intents"}, "rollout": {"gate": {"minAccuracy": 0.8}}}
    run(rt, b, T0)
    cm = kube.objs[("ConfigMap", config_of(kube, "blue"))]
    assert yaml.safe_load(cm["data"]["server.yaml"])["head"] == "classifier"
    assert kube.status_writes[-1]["preview"]["head"] == "classifier"
    kube.ready("blue")
    b["status"] = kube.status_writes[-1]
    run(rt, b, T0 + dt.timedelta(seconds=2))
    [job] = [o for (k, _), o in kube.objs.items() if k == "Job"]
    cmd = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert cmd[cmd.index("--head") + 1] == "classifier" and "s3://runs/r1/predictions.jsonl" in cmd
    job["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    kube.messages[job["metadata"]["name"]] = json.dumps({"rows": 40, "correct": 38, "errors": 0, "accuracy": 0.95, "p50Ms": 5, "p99Ms": 9})
    b["status"] = kube.status_writes[-1]
    run(rt, b, T0 + dt.timedelta(seconds=4))
    st = kube.status_writes[-1]
    assert st["activeColor"] == "blue" and st["active"]["head"] == "classifier" and st["gate"]["outcome"] == "Passed", st
    b["status"] = st
    run(rt, b, T0 + dt.timedelta(seconds=6))
    assert kube.status_writes[-1]["activeColor"] == "blue"
    assert {n for k, n in kube.objs if k == "Deployment"} == {"intents-blue"}, "no second rollout"
