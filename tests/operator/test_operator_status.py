"""compute_status and derive_phase: a table from what exists to phase, reason and fields."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import pytest

from ftj_helpers import MINIMAL_SPEC, defaulted_spec
from k8s_objects import finished, job, pod, summary
from tuneforge.progress import Progress
from tuneforge.spec import parse_spec, spec_hash
from tuneforge.status import (
    Observed, Revision, compute_status, decide_revision, derive_phase, gpu_seconds, status_changed,
)

NOW = dt.datetime(2026, 1, 1, 0, 10, tzinfo=dt.timezone.utc)
V, T = "intent-validate-1", "intent-train-1"
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
    ("no summary", {}, Observed(validate_job=VOK, train_job=job(T, complete=True), train_pods=[
        pod(T, phase="Succeeded", terminated=finished(0, None))]), "Failed", "SummaryMissing"),
    ("backoff exceeded", {}, Observed(validate_job=VOK, train_job=job(T, failed="BackoffLimitExceeded"), train_pods=[
        pod(T, phase="Failed", terminated=finished(1, summary(status="failed", message="RuntimeError: CUDA out of memory")))]),
     "Failed", "TrainingFailed"),
    ("complete, pod status lagging", {}, Observed(validate_job=VOK, train_job=job(T, complete=True), train_pods=[
        pod(T, phase="Running", running_since="2026-01-01T00:00:00Z")]), "Evaluating", "CollectingResults"),
    ("validation failed, pod status lagging", {}, Observed(validate_job=job(V, failed="PodFailurePolicy"), validate_pods=[
        pod(V, phase="Running", running_since="2026-01-01T00:00:00Z")]), "Validating", "CollectingResults"),
    ("complete, pods gone", {}, Observed(validate_job=VOK, train_job=job(T, complete=True)), "Failed", "SummaryMissing"),
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
    assert {b["name"] for b in st["baselines"]} == {"zero_shot", "tfidf_lr"}
    assert st["gate"]["outcome"] == "Passed"
    assert st["artifacts"]["adapter"].endswith("/adapter") and st["artifacts"]["output"].startswith("pvc://")
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
    assert decide_revision("h1", {}) == Revision(1, "h1", True, ())
    same = {"revision": 3, "specHash": "h1", "phase": "Running"}
    assert decide_revision("h1", same) == Revision(3, "h1", False, ())
    done = {"revision": 3, "specHash": "h1", "phase": "Succeeded", "reason": "GatePassed",
            "evaluation": {"accuracy": 0.9}, "startTime": "a", "completionTime": "b"}
    nxt = decide_revision("h2", done)
    assert (nxt.number, nxt.is_new) == (4, True)
    assert nxt.history == ({"revision": 3, "specHash": "h1", "phase": "Succeeded", "reason": "GatePassed",
                            "accuracy": 0.9, "startTime": "a", "completionTime": "b"},)
    running = decide_revision("h2", same)
    assert running.history[0]["phase"] == "Superseded"
    capped = decide_revision("h9", {**done, "history": [{"revision": i} for i in range(20)]}, history_limit=20)
    assert len(capped.history) == 20 and capped.history[-1]["revision"] == 3


def test_spec_hash_ignores_suspend() -> None:
    a = defaulted_spec(MINIMAL_SPEC)
    assert spec_hash(a) == spec_hash({**a, "suspend": True})
    assert spec_hash(a) != spec_hash({**a, "quantization": "none"})


def test_new_revision_resets_results_and_keeps_history() -> None:
    prior = {"phase": "Succeeded", "revision": 1, "specHash": "h1", "evaluation": {"accuracy": 0.9},
             "completionTime": "2026-01-01T00:00:00Z", "startTime": "2025-12-31T00:00:00Z"}
    rev = decide_revision("h2", prior)
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


def test_history_keeps_each_revision_adapter_digest_and_gate() -> None:
    prior = {"revision": 1, "specHash": "h1", "phase": "Succeeded", "gate": {"outcome": "Passed"},
             "adapter": {"digest": ADAPTER["digest"]}, "evaluation": {"accuracy": 0.93}}
    rev = decide_revision("h2", prior)
    assert rev.history[-1]["adapterDigest"] == ADAPTER["digest"] and rev.history[-1]["gate"] == "Passed"
