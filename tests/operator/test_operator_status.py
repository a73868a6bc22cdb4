"""compute_status and derive_phase: a table from what exists to phase, reason and fields."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import pytest

from ftj_helpers import MINIMAL_SPEC, defaulted_spec, load_crd
from k8s_objects import finished, job, pod, summary
from tuneforge.finetune.progress import Progress
from tuneforge.finetune.spec import parse_spec, spec_hash
from tuneforge.finetune.status import (
    Observed, Revision, compute_status, decide_revision, derive_phase, gpu_seconds, status_changed,
)

NOW = dt.datetime(2026, 1, 1, 0, 10, tzinfo=dt.timezone.utc)
V, T, S = "intent-validate-1", "intent-train-1", "intent-summary-1"
VOK = job(V, complete=True)


def spec_of(**overrides: Any) -> Any:
    raw = copy.deepcopy(MINIMAL_SPEC)
    raw.update(overrides)
    return parse_spec(defaulted_spec(raw))


GATED = {"evaluation": {"baselines": [{"type": "tfidf-logreg"}, {"type": "zero-shot"}],
                        "gate": {"minAccuracy": 0.9, "mustBeatBaseline": "zero-shot"}}}

CASES: list[tuple[str, dict[str, Any], Observed, str, str]] = [
    ("nothing yet", {}, Observed(), "Pending", "Creating"),
    ("preflight", {}, Observed(preflight_error=("PersistentVolumeClaimNotFound", "spec.dataset.uri: ...")),
     "Failed", "PersistentVolumeClaimNotFound"),
    ("validating", {}, Observed(validate_job=job(V), validate_pods=[pod(V, phase="Running", running_since="2026-01-01T00:00:00Z")]),
     "Validating", "ValidatingData"),
    ("validate missing secret", {"baseModel": {"uri": "hf://o/m", "tokenSecretRef": {"name": "hf", "key": "t"}}},
     Observed(validate_job=job(V), validate_pods=[pod(V, waiting="CreateContainerConfigError")]),
     "Failed", "CreateContainerConfigError"),
    ("validation failed", {}, Observed(validate_job=job(V, failed="PodFailurePolicy"), validate_pods=[
        pod(V, phase="Failed", terminated=finished(3, summary(status="failed", command="validate",
                                                                message="row 17: label 'foo' is not in task.labels")))]),
     "Failed", "DataValidationFailed"),
    ("validated, no train job", {}, Observed(validate_job=VOK), "Pending", "DataValidated"),
    ("kueue queued", {"scheduling": {"queueName": "q"}}, Observed(validate_job=VOK, train_job=job(T, suspend=True)),
     "Queued", "WaitingForKueue"),
    ("suspended", {"suspend": True}, Observed(validate_job=VOK, train_job=job(T, suspend=True)), "Suspended", "Suspended"),
    ("no pod yet", {}, Observed(validate_job=VOK, train_job=job(T)), "Queued", "CreatingPod"),
    ("waiting for gpu", {}, Observed(validate_job=VOK, train_job=job(T), train_pods=[
        pod(T, unscheduled="0/4 nodes are available: 4 Insufficient nvidia.com/gpu.")]), "Queued", "WaitingForGPU"),
    ("being scheduled", {}, Observed(validate_job=VOK, train_job=job(T), train_pods=[pod(T, scheduled=False)]),
     "Queued", "Scheduling"),
    ("container creating", {}, Observed(validate_job=VOK, train_job=job(T), train_pods=[pod(T, waiting="ContainerCreating")]),
     "Running", "ContainerCreating"),
    ("training", {}, Observed(validate_job=VOK, train_job=job(T), train_pods=[
        pod(T, phase="Running", running_since="2026-01-01T00:00:00Z")], progress=Progress("train", 5, 50)), "Running", "Training"),
    ("evaluating", {}, Observed(validate_job=VOK, train_job=job(T), train_pods=[
        pod(T, phase="Running", running_since="2026-01-01T00:00:00Z")], progress=Progress("evaluate", 50, 50)),
     "Evaluating", "Evaluating"),
    ("retrying", {}, Observed(validate_job=VOK, train_job=job(T, failed_count=1), train_pods=[
        pod(T, phase="Failed", terminated=finished(1, "boom"))]), "Running", "Retrying"),
    ("gate passed", GATED, Observed(validate_job=VOK, train_job=job(T, complete=True), train_pods=[
        pod(T, phase="Succeeded", terminated=finished(0, summary()))]), "Succeeded", "GatePassed"),
    ("gate failed", {"evaluation": {"baselines": [{"type": "tfidf-logreg"}], "gate": {"mustBeatBaseline": "tfidf-logreg"}}},
     Observed(validate_job=VOK, train_job=job(T, complete=True), train_pods=[
         pod(T, phase="Succeeded", terminated=finished(0, summary()))]), "Failed", "GateFailed"),
    ("no summary: read summary.json", {}, Observed(validate_job=VOK, train_job=job(T, complete=True), train_pods=[
        pod(T, phase="Succeeded", terminated=finished(0, None))]), "Evaluating", "ReadingSummary"),
    ("backoff exceeded", {}, Observed(validate_job=VOK, train_job=job(T, failed="BackoffLimitExceeded"), train_pods=[
        pod(T, phase="Failed", terminated=finished(1, summary(status="failed", message="RuntimeError: CUDA out of memory")))]),
     "Failed", "TrainingFailed"),
    ("complete, pod status lagging", {}, Observed(validate_job=VOK, train_job=job(T, complete=True), train_pods=[
        pod(T, phase="Running", running_since="2026-01-01T00:00:00Z")]), "Evaluating", "CollectingResults"),
    ("validation failed, pod status lagging", {}, Observed(validate_job=job(V, failed="PodFailurePolicy"), validate_pods=[
        pod(V, phase="Running", running_since="2026-01-01T00:00:00Z")]), "Validating", "CollectingResults"),
    ("complete, pods gone: read summary.json", {}, Observed(validate_job=VOK, train_job=job(T, complete=True)),
     "Evaluating", "ReadingSummary"),
    ("reader running", {}, Observed(validate_job=VOK, train_job=job(T, complete=True), summary_job=job(S)),
     "Evaluating", "ReadingSummary"),
    ("reader read it", GATED, Observed(validate_job=VOK, train_job=job(T, complete=True), summary_job=job(S, complete=True),
                                       summary_pods=[pod(S, phase="Succeeded", terminated=finished(0, summary()))]),
     "Succeeded", "GatePassed"),
    ("reader could not", {}, Observed(validate_job=VOK, train_job=job(T, complete=True), summary_job=job(S, failed="BackoffLimitExceeded"),
                                      summary_pods=[pod(S, phase="Failed", terminated=finished(1, "cannot read s3://b/x/summary.json: NoSuchKey"))]),
     "Failed", "SummaryMissing"),
    ("deadline", {}, Observed(validate_job=VOK, train_job=job(T, failed="DeadlineExceeded")), "Failed", "DeadlineExceeded"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_derive_phase(case: tuple[str, dict[str, Any], Observed, str, str]) -> None:
    _, overrides, observed, phase, reason = case
    info = derive_phase(spec_of(**overrides), observed)
    assert (info.phase, info.reason) == (phase, reason), info.message


def test_messages_name_the_cause() -> None:
    spec = spec_of(baseModel={"uri": "hf://o/m", "tokenSecretRef": {"name": "hf", "key": "t"}})
    info = derive_phase(spec, Observed(validate_job=job(V), validate_pods=[pod(V, waiting="CreateContainerConfigError")]))
    assert info.message.startswith("spec.baseModel.tokenSecretRef: ")
    bad = [c for c in CASES if c[0] == "validation failed"][0][2]
    assert derive_phase(spec_of(), bad).message == "row 17: label 'foo' is not in task.labels"
    oom = [c for c in CASES if c[0] == "backoff exceeded"][0][2]
    assert "CUDA out of memory" in derive_phase(spec_of(), oom).message


def _status(spec: Any, observed: Observed, prior: dict[str, Any] | None = None, rev: Revision | None = None) -> dict[str, Any]:
    rev = rev or Revision(1, "h1", prior is None, ())
    return compute_status(spec, 1, prior or {}, rev, observed, NOW, {"trainJob": T}, "pvc://artifacts/runs/ns/intent/r1")


def test_succeeded_status_fields() -> None:
    obs = Observed(validate_job=VOK, train_job=job(T, complete=True), train_pods=[
        pod(T, phase="Succeeded", terminated=finished(0, summary()))])
    st = _status(spec_of(resources={"gpus": 2}, **GATED), obs)
    assert st["phase"] == "Succeeded"
    assert st["evaluation"]["accuracy"] == 0.93 and st["evaluation"]["macroF1"] == 0.92
    assert st["evaluation"]["worstClasses"][0] == {"label": "card_arrival", "f1": 0.81}
    assert {b["name"] for b in st["baselines"]} == {"zero-shot", "tfidf-logreg"}  # the spec's spelling
    assert st["gate"]["outcome"] == "Passed"
    # The trainer reports the mount path it wrote to; status names it as the user does (MS-3).
    assert st["artifacts"]["adapter"] == "pvc://artifacts/runs/ns/x/r1/adapter" and st["artifacts"]["output"].startswith("pvc://")
    assert st["gpuSeconds"] == 1200.0  # 2 GPUs x 600 s
    assert st["progress"]["display"] == "100%"
    assert st["completionTime"] == "2026-01-01T00:10:00Z"
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Succeeded"]["status"] == "True" and conds["GatePassed"]["status"] == "True"
    assert conds["Validated"]["status"] == "True" and conds["Trained"]["status"] == "True"
    assert all(c["observedGeneration"] == 1 and c["lastTransitionTime"] for c in conds.values())


def test_terminal_state_sticks() -> None:
    prior = {"phase": "Succeeded", "revision": 1, "specHash": "h1", "reason": "GatePassed", "observedGeneration": 1}
    # Children gone (GC, TTL) or an operator restart: the status stays what it was.
    st = compute_status(spec_of(), 2, prior, Revision(1, "h1", False, ()), Observed(), NOW, {}, "x")
    assert st["phase"] == "Succeeded" and st["observedGeneration"] == 2


def test_progress_in_status() -> None:
    obs = Observed(validate_job=VOK, train_job=job(T), train_pods=[pod(T, phase="Running", running_since="2026-01-01T00:05:00Z")],
                   progress=Progress("train", step=10, total_steps=40, epoch=0.5, train_loss=1.25, eval_loss=1.5, eta_seconds=90))
    st = _status(spec_of(), obs)
    assert st["progress"]["display"] == "25%"
    assert st["progress"]["trainLoss"] == 1.25 and st["progress"]["etaSeconds"] == 90
    assert st["gpuSeconds"] == 300.0
    assert st["gate"]["outcome"] == "Pending"


def test_condition_transition_time_kept_when_unchanged() -> None:
    obs = Observed(validate_job=VOK, train_job=job(T), train_pods=[pod(T, phase="Running", running_since="2026-01-01T00:05:00Z")])
    first = _status(spec_of(), obs)
    first["conditions"][0]["lastTransitionTime"] = "2025-12-31T00:00:00Z"
    again = compute_status(spec_of(), 1, first, Revision(1, "h1", False, ()), obs, NOW + dt.timedelta(minutes=1), {}, "x")
    assert again["conditions"][0]["lastTransitionTime"] == "2025-12-31T00:00:00Z"
    assert again["startTime"] == first["startTime"]


def test_decide_revision() -> None:
    assert decide_revision("h1", 1, {}) == Revision(1, "h1", True, ())
    same = {"revision": 3, "specHash": "h1", "phase": "Running", "observedGeneration": 1}
    assert decide_revision("h1", 2, same) == Revision(3, "h1", False, ())
    done = {"revision": 3, "specHash": "h1", "phase": "Succeeded", "reason": "GatePassed", "observedGeneration": 1,
            "evaluation": {"accuracy": 0.9}, "startTime": "a", "completionTime": "b"}
    nxt = decide_revision("h2", 2, done)
    assert (nxt.number, nxt.is_new) == (4, True)
    assert nxt.history == ({"revision": 3, "specHash": "h1", "phase": "Succeeded", "reason": "GatePassed",
                            "accuracy": 0.9, "startTime": "a", "completionTime": "b"},)
    running = decide_revision("h2", 2, same)
    assert running.history[0]["phase"] == "Superseded"
    capped = decide_revision("h9", 2, {**done, "history": [{"revision": i} for i in range(20)]}, history_limit=20)
    assert len(capped.history) == 20 and capped.history[-1]["revision"] == 3


@pytest.mark.parametrize("phase", ["Succeeded", "Failed", "Running"])
def test_crd_default_change_is_not_a_new_revision(phase: str) -> None:
    """A CRD upgrade adds a defaulted field: every defaulted spec's hash changes, but nobody
    wrote a spec (the generation stands), so the revision stays — finished or running — and its
    hash is rebased, so a later suspend-only edit is not taken for a new spec either."""
    prior = {"phase": phase, "revision": 1, "specHash": "old", "observedGeneration": 4, "reason": "x",
             "conditions": [], "startTime": "2026-01-01T00:00:00Z"}
    rev = decide_revision("with-new-default", 4, prior)
    assert rev == Revision(1, "with-new-default", False, ())
    obs = Observed(validate_job=VOK, train_job=job(T), train_pods=[pod(T, phase="Running", running_since="2026-01-01T00:05:00Z")])
    st = compute_status(spec_of(), 4, prior, rev, obs, NOW, {}, "x")
    assert st["revision"] == 1 and st["specHash"] == "with-new-default"
    assert st["phase"] == (phase if phase != "Running" else "Running")
    # The user then toggles suspend: a new generation, the same (rebased) hash.
    assert decide_revision("with-new-default", 5, st).is_new is False
    # A real edit still starts the next revision.
    assert decide_revision("edited", 5, st).number == 2


def test_spec_hash_ignores_suspend() -> None:
    a = defaulted_spec(MINIMAL_SPEC)
    assert spec_hash(a) == spec_hash({**a, "suspend": True})
    assert spec_hash(a) != spec_hash({**a, "quantization": "none"})


def test_new_revision_resets_results_and_keeps_history() -> None:
    prior = {"phase": "Succeeded", "revision": 1, "specHash": "h1", "evaluation": {"accuracy": 0.9},
             "completionTime": "2026-01-01T00:00:00Z", "startTime": "2025-12-31T00:00:00Z"}
    rev = decide_revision("h2", 2, prior)
    st = compute_status(spec_of(), 2, prior, rev, Observed(), NOW, {}, "x")
    assert st["phase"] == "Pending" and st["revision"] == 2
    assert "evaluation" not in st and "completionTime" not in st
    assert st["history"][0]["accuracy"] == 0.9


def test_gpu_seconds_over_retries() -> None:
    pods = [pod(T, phase="Failed", terminated=finished(1, "x", "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z")),
            pod(T, phase="Running", running_since="2026-01-01T00:09:00Z")]
    assert gpu_seconds(pods, 4, NOW) == 4 * (60 + 60)


def test_status_changed_ignores_progress_read_time() -> None:
    a = {"phase": "Running", "progress": {"percent": 10.0, "updatedAt": "t1"}}
    assert not status_changed(a, {"phase": "Running", "progress": {"percent": 10.0, "updatedAt": "t2"}})
    assert status_changed(a, {"phase": "Running", "progress": {"percent": 20.0, "updatedAt": "t2"}})


ADAPTER = {"uri": "s3://runs/ns/intent/r1/adapter", "digest": "sha256:" + "ab12" * 16,
           "base_model": {"uri": "s3://models/smollm2", "digest": "sha256:" + "cd" * 32},
           "dataset": {"uri": "s3://data/train.csv", "digest": "sha256:" + "ef" * 32}}


def test_status_adapter_names_the_bytes_a_revision_wrote() -> None:
    obs = Observed(validate_job=VOK, train_job=job(T, complete=True), train_pods=[
        pod(T, phase="Succeeded", terminated=finished(0, summary(adapter=ADAPTER)))])
    st = _status(spec_of(**GATED), obs)
    assert st["adapter"] == {
        "uri": ADAPTER["uri"], "digest": ADAPTER["digest"], "shortDigest": "ab12ab12ab12", "revision": 1,
        "baseModel": {"uri": "s3://models/smollm2", "digest": "sha256:" + "cd" * 32},
        "dataset": {"uri": "s3://data/train.csv", "digest": "sha256:" + "ef" * 32},
    }
    # A summary without a well-formed adapter block (an older trainer) leaves it out.
    for bad in ({"uri": "x", "digest": "md5:1"}, "nonsense"):
        obs = Observed(validate_job=VOK, train_job=job(T, complete=True), train_pods=[
            pod(T, phase="Succeeded", terminated=finished(0, summary(adapter=bad)))])
        assert "adapter" not in _status(spec_of(**GATED), obs)


def test_history_keeps_each_revision_adapter_and_gate() -> None:
    """A superseded revision stays servable from the history alone: digest, URI, base model."""
    base = {"uri": "s3://models/smollm2", "digest": "sha256:" + "cd" * 32}
    prior = {"revision": 1, "specHash": "h1", "phase": "Succeeded", "gate": {"outcome": "Passed"},
             "adapter": {"digest": ADAPTER["digest"], "uri": ADAPTER["uri"], "baseModel": base},
             "evaluation": {"accuracy": 0.93}}
    rev = decide_revision("h2", 2, {**prior, "observedGeneration": 1})
    assert rev.history[-1] == {"revision": 1, "specHash": "h1", "phase": "Succeeded", "accuracy": 0.93, "gate": "Passed",
                               "adapterDigest": ADAPTER["digest"], "adapterUri": ADAPTER["uri"], "baseModel": base}
    # The CRD's status schema keeps every key of an entry (the apiserver prunes unknown ones).
    schema = load_crd("finetunejob.yaml")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    item = schema["properties"]["status"]["properties"]["history"]["items"]
    assert set(rev.history[-1]) <= set(item["properties"])
    assert set(base) <= set(item["properties"]["baseModel"]["properties"])


# --- waiting for dependencies, phases only forward -------------------------------------------

PVC_MISSING = ("PersistentVolumeClaimNotFound", "spec.output.uri: PersistentVolumeClaim 'artifacts' not found in namespace ns")


def _conds(st: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in st["conditions"]}


def test_missing_pvc_waits_then_fails_naming_the_field() -> None:
    obs = Observed(preflight_error=PVC_MISSING)
    first = compute_status(spec_of(), 1, {}, Revision(1, "h1", True, ()), obs, NOW, {}, "x", wait_limit=600)
    assert (first["phase"], first["reason"]) == ("Pending", "PersistentVolumeClaimNotFound")
    assert "waiting up to 600 s" in first["message"] and first["message"].startswith("spec.output.uri: ")
    found = _conds(first)["DependenciesFound"]
    assert found["status"] == "False" and found["lastTransitionTime"] == "2026-01-01T00:10:00Z"
    later = compute_status(spec_of(), 1, first, Revision(1, "h1", False, ()), obs, NOW + dt.timedelta(seconds=599), {}, "x",
                           wait_limit=600)
    assert later["phase"] == "Pending"
    done = compute_status(spec_of(), 1, later, Revision(1, "h1", False, ()), obs, NOW + dt.timedelta(seconds=600), {}, "x",
                          wait_limit=600)
    assert (done["phase"], done["reason"]) == ("Failed", "PersistentVolumeClaimNotFound")
    assert done["message"].startswith("spec.output.uri: PersistentVolumeClaim 'artifacts' not found")
    # It appeared in time: the wait ends and the run goes on.
    ok = compute_status(spec_of(), 1, later, Revision(1, "h1", False, ()), Observed(), NOW + dt.timedelta(seconds=30), {}, "x",
                        wait_limit=600)
    assert ok["phase"] == "Pending" and ok["reason"] == "Creating" and _conds(ok)["DependenciesFound"]["status"] == "True"


@pytest.mark.parametrize("stage", ["validate", "train"])
def test_missing_secret_waits_then_fails(stage: str) -> None:
    spec = spec_of(baseModel={"uri": "hf://o/m", "tokenSecretRef": {"name": "hf", "key": "t"}})
    if stage == "validate":
        obs = Observed(validate_job=job(V), validate_pods=[pod(V, waiting="CreateContainerConfigError")])
    else:
        obs = Observed(validate_job=VOK, train_job=job(T), train_pods=[pod(T, waiting="CreateContainerConfigError")])
    info = derive_phase(spec, obs, waited=10, wait_limit=600)
    assert info.phase == ("Validating" if stage == "validate" else "Running") and info.waiting
    assert info.message.startswith("spec.baseModel.tokenSecretRef: ")
    final = derive_phase(spec, obs, waited=600, wait_limit=600)
    assert (final.phase, final.reason) == ("Failed", "CreateContainerConfigError")
    # A bad image name never fixes itself: no wait.
    bad = Observed(validate_job=job(V), validate_pods=[pod(V, waiting="InvalidImageName")])
    assert derive_phase(spec, bad, waited=0, wait_limit=600).phase == "Failed"


@pytest.mark.parametrize("name,observed", [
    # The pod finished before its Job's Complete condition arrived: no active pod, no failure.
    ("pod done, job not yet", Observed(validate_job=VOK, train_job=job(T), train_pods=[
        pod(T, phase="Succeeded", terminated=finished(0, summary()))])),
    # The trainer's last log events after scoring ("done").
    ("trainer done event", Observed(validate_job=VOK, train_job=job(T), train_pods=[
        pod(T, phase="Running", running_since="2026-01-01T00:05:00Z")], progress=Progress("done", 50, 50))),
    # A retry after a failure in evaluation.
    ("retry", Observed(validate_job=VOK, train_job=job(T, failed_count=1), train_pods=[
        pod(T, phase="Failed", terminated=finished(1, "boom"))])),
])
def test_phase_never_moves_back_from_evaluating(name: str, observed: Observed) -> None:
    prior = {"phase": "Evaluating", "revision": 1, "specHash": "h1", "observedGeneration": 1, "conditions": []}
    st = compute_status(spec_of(), 1, prior, Revision(1, "h1", False, ()), observed, NOW, {}, "x")
    assert st["phase"] == "Evaluating", (name, st["reason"])


def test_phase_may_leave_suspended() -> None:
    prior = {"phase": "Suspended", "revision": 1, "specHash": "h1", "observedGeneration": 1, "conditions": []}
    obs = Observed(validate_job=VOK, train_job=job(T), train_pods=[pod(T, phase="Running", running_since="2026-01-01T00:05:00Z")])
    assert compute_status(spec_of(), 1, prior, Revision(1, "h1", False, ()), obs, NOW, {}, "x")["phase"] == "Running"


@pytest.mark.parametrize("name,observed,listed", [
    ("plain run", Observed(validate_job=VOK, train_job=job(T, complete=True), train_pods=[
        pod(T, phase="Succeeded", terminated=finished(0, summary()))]), False),
    ("pods gone: reader about to be created", Observed(validate_job=VOK, train_job=job(T, complete=True)), True),
    ("reader running", Observed(validate_job=VOK, train_job=job(T, complete=True), summary_job=job(S)), True),
    ("reader read it", Observed(validate_job=VOK, train_job=job(T, complete=True), summary_job=job(S, complete=True),
                                summary_pods=[pod(S, phase="Succeeded", terminated=finished(0, summary()))]), True),
    ("reader failed", Observed(validate_job=VOK, train_job=job(T, complete=True), summary_job=job(S, failed="BackoffLimitExceeded"),
                               summary_pods=[pod(S, phase="Failed", terminated=finished(1, "cannot read"))]), True),
])
def test_summary_reader_job_is_listed_among_the_children(name: str, observed: Observed, listed: bool) -> None:
    children = {"configMap": "intent-config-1", "validateJob": V, "trainJob": T}
    st = compute_status(spec_of(), 1, {}, Revision(1, "h1", True, ()), observed, NOW, children, "x", summary_job=S)
    expected = {**children, "summaryJob": S} if listed else children
    assert st["children"] == expected, name


class _FakeKube:
    """The preflight's view of the cluster: which PVCs, ConfigMaps (with keys) and PriorityClasses exist."""

    def __init__(self, pvcs: set[str], config_maps: dict[str, set[str]], priority_classes: frozenset[str] = frozenset()) -> None:
        self.pvcs, self.config_maps, self.priority_classes = pvcs, config_maps, priority_classes

    async def pvc_exists(self, namespace: str, name: str) -> bool:
        return name in self.pvcs

    async def config_map_keys(self, namespace: str, name: str) -> set[str] | None:
        return self.config_maps.get(name)

    async def priority_class_exists(self, name: str) -> bool:
        return name in self.priority_classes


CM_DATA = {"uri": "configmap://intents/train.csv", "evalUri": "configmap://held-out/test.csv", "format": "csv"}


@pytest.mark.parametrize("name,dataset,config_maps,expected", [
    ("all there", CM_DATA, {"intents": {"train.csv"}, "held-out": {"test.csv", "other.csv"}}, None),
    ("train ConfigMap missing", CM_DATA, {"held-out": {"test.csv"}},
     ("ConfigMapNotFound", "spec.dataset.uri: ConfigMap 'intents' not found in namespace team-a")),
    ("eval ConfigMap missing", CM_DATA, {"intents": {"train.csv"}},
     ("ConfigMapNotFound", "spec.dataset.evalUri: ConfigMap 'held-out' not found in namespace team-a")),
    ("key missing", CM_DATA, {"intents": {"train.jsonl"}, "held-out": {"test.csv"}},
     ("ConfigMapKeyNotFound", "spec.dataset.uri: ConfigMap 'intents' has no key 'train.csv'")),
    ("no ConfigMap source", {"uri": "pvc://data/train.csv"}, {}, None),
])
def test_preflight_config_map_sources(name: str, dataset: dict[str, Any], config_maps: dict[str, set[str]],
                                      expected: tuple[str, str] | None) -> None:
    import asyncio

    from tuneforge.finetune.reconcile import preflight
    kube = _FakeKube({"data", "artifacts"}, config_maps)
    assert asyncio.run(preflight(kube, "team-a", spec_of(dataset=dataset))) == expected, name  # type: ignore[arg-type]


@pytest.mark.parametrize("reason", ["ConfigMapNotFound", "ConfigMapKeyNotFound"])
def test_missing_config_map_waits_then_fails(reason: str) -> None:
    obs = Observed(preflight_error=(reason, "spec.dataset.uri: ConfigMap 'intents' not found in namespace team-a"))
    first = compute_status(spec_of(), 1, {}, Revision(1, "h1", True, ()), obs, NOW, {}, "x", wait_limit=600)
    assert (first["phase"], first["reason"]) == ("Pending", reason) and "waiting up to 600 s" in first["message"]
    assert _conds(first)["DependenciesFound"]["status"] == "False"
    done = compute_status(spec_of(), 1, first, Revision(1, "h1", False, ()), obs, NOW + dt.timedelta(seconds=600), {},
                          "x", wait_limit=600)
    assert (done["phase"], done["reason"]) == ("Failed", reason)
    assert done["message"].startswith("spec.dataset.uri: ConfigMap 'intents'")
    assert _conds(done)["DependenciesFound"]["status"] == "False"
