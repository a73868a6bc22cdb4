"""Rollout integrity (review 2026-12, MS-1, MS-2, MS-4, MS-7): a gate belongs to one rollout
attempt, every spec change that shapes a color rolls out through a candidate and the gate,
the candidate is promoted at the active color's load, and status never reports a gate that
no longer runs. Reconcile-level against the in-memory API door where the behaviour is the
wiring (Jobs deleted, templates applied), plan tables where it is the state machine."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

from test_serve_plan import FAIL, PASS, V1, V2, World, healthy_on, kinds, spec
from test_serve_reconcile import D1, D2, T0, FakeKube, body, run, runtime

from tuneforge.serve.builders import ServeContext, template_hash
from tuneforge.serve.plan import Requests, Scale
from tuneforge.serve.source import Lineage
from tuneforge.serve.spec import parse_spec

GATE = {"minAccuracy": 0.8, "datasetUri": "pvc://data/rows.jsonl"}
PASSING = json.dumps({"rows": 10, "correct": 9, "errors": 0, "accuracy": 0.9, "p50Ms": 5, "p99Ms": 9})


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def gate_jobs(kube: FakeKube) -> dict[str, dict[str, Any]]:
    return {n: o for (k, n), o in kube.objs.items() if k == "Job"}


def finish_gates(kube: FakeKube, message: str = PASSING) -> None:
    """Every gate Job that exists completes with ``message`` as its measures."""
    for name, job in gate_jobs(kube).items():
        if not job.get("status"):
            job["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
            kube.messages[name] = message


def with_annotations(b: dict[str, Any], **annotations: str) -> dict[str, Any]:
    out = json.loads(json.dumps(b))
    out["metadata"]["annotations"] = {f"tuneforge.dev/{k}": v for k, v in annotations.items()}
    return out


def served_on_blue(kube: FakeKube, **spec: Any) -> tuple[Any, dict[str, Any]]:
    rt, _ = runtime(kube)
    b = body(D1, **spec)
    run(rt, b, T0)
    kube.ready("blue")
    run(rt, b, at(1))
    finish_gates(kube)
    st = run(rt, b, at(2))
    assert kube.status_writes[-1]["activeColor"] == "blue", st
    return rt, b


# --- MS-1: a gate belongs to one attempt --------------------------------------------------------

def test_an_aborted_attempts_gate_is_deleted_and_never_credited_to_a_retry() -> None:
    """The review's bypass: V2 aborted while gating; its orphaned Job then measures the stable
    color through the preview Service and passes; a retry of V2 must not be promoted on that."""
    kube = FakeKube()
    rt, b1 = served_on_blue(kube, rollout={"gate": GATE})
    b2 = body(D2, rollout={"gate": GATE})
    run(rt, b2, at(10))
    kube.ready("green")
    run(rt, b2, at(11))
    running = set(gate_jobs(kube)) - {n for n, j in gate_jobs(kube).items() if j.get("status")}
    assert len(running) == 1, gate_jobs(kube)
    st = run(rt, with_annotations(b2, abort=D2[7:19]), at(12))
    st = kube.status_writes[-1]
    assert (st["phase"], st["reason"]) == ("Degraded", "Aborted")
    assert st["gate"]["outcome"] == "Aborted", st["gate"]
    assert not running & set(gate_jobs(kube)), "the aborted attempt's gate Job is still there"
    finish_gates(kube)  # whatever still runs measures the stable color (preview is back on blue)
    run(rt, with_annotations(b2, retry=D2[7:19]), at(13))
    kube.ready("green")
    run(rt, with_annotations(b2, retry=D2[7:19]), at(14))
    st = kube.status_writes[-1]
    assert st["activeColor"] == "blue" and st["gate"]["outcome"] == "Running", st
    fresh = [n for n, j in gate_jobs(kube).items() if not j.get("status")]
    assert len(fresh) == 1, "retry sends fresh requests: a new gate Job"


def test_retry_after_a_failed_gate_runs_a_new_gate_job() -> None:
    kube = FakeKube()
    rt, _ = served_on_blue(kube, rollout={"gate": GATE})
    b2 = body(D2, rollout={"gate": GATE})
    run(rt, b2, at(10))
    kube.ready("green")
    run(rt, b2, at(11))
    finish_gates(kube, json.dumps({"rows": 10, "correct": 1, "errors": 0, "accuracy": 0.1, "p50Ms": 5, "p99Ms": 9}))
    run(rt, b2, at(12))
    assert kube.status_writes[-1]["reason"] == "GateFailed"
    r = with_annotations(b2, retry=D2[7:19])
    run(rt, r, at(13))
    kube.ready("green")
    run(rt, r, at(14))
    st = kube.status_writes[-1]
    assert (st["phase"], st["gate"]["outcome"]) == ("Progressing", "Running"), st
    assert len([n for n, j in gate_jobs(kube).items() if not j.get("status")]) == 1
    assert len(gate_jobs(kube)) == 1, "the failed attempt's Job is deleted"


# --- MS-2: everything that shapes a color rolls out ---------------------------------------------

def _env(kube: FakeKube, color: str) -> set[str]:
    d = kube.objs[("Deployment", f"intents-{color}")]
    return {e["name"] for c in d["spec"]["template"]["spec"]["containers"] for e in c.get("env") or ()}


def test_an_api_key_added_with_a_replicas_bump_rolls_out_through_a_candidate() -> None:
    kube = FakeKube()
    rt, _ = served_on_blue(kube)
    blue_before = json.dumps(kube.objs[("Deployment", "intents-blue")]["spec"]["template"], sort_keys=True)
    b = body(D1, replicas=2, apiKey={"secretRef": {"name": "k", "key": "key"}})
    b["metadata"]["generation"] = 2
    run(rt, b, at(10))
    st = kube.status_writes[-1]
    assert (st["phase"], st.get("previewColor")) == ("Progressing", "green"), (st["phase"], st["reason"])
    assert json.dumps(kube.objs[("Deployment", "intents-blue")]["spec"]["template"], sort_keys=True) == blue_before, \
        "the active color was re-templated in place"
    assert "TUNEFORGE_API_KEY" in _env(kube, "green") and "TUNEFORGE_API_KEY" not in _env(kube, "blue")
    assert st["preview"]["templateHash"] != st["active"]["templateHash"]
    assert st["preview"]["digest"] == st["active"]["digest"] == D1
    configs = {n for k, n in kube.objs if k == "ConfigMap"}
    assert len(configs) == 2 and f"intents-{st['preview']['templateHash']}" in configs, configs
    kube.ready("green")
    run(rt, b, at(11))
    st = kube.status_writes[-1]
    assert (st["phase"], st["activeColor"]) == ("Healthy", "green")


def test_a_replicas_edit_alone_only_scales_the_active_color() -> None:
    kube = FakeKube()
    rt, _ = served_on_blue(kube)
    blue_before = json.dumps(kube.objs[("Deployment", "intents-blue")]["spec"]["template"], sort_keys=True)
    run(rt, body(D1, replicas=3), at(10))
    blue = kube.objs[("Deployment", "intents-blue")]
    assert blue["spec"]["replicas"] == 3 and ("Deployment", "intents-green") not in kube.objs
    assert json.dumps(blue["spec"]["template"], sort_keys=True) == blue_before


# --- MS-4: promotion at the load it will take ---------------------------------------------------

def test_the_candidate_scales_to_the_active_colors_hpa_count_capped_by_max() -> None:
    s = parse_spec({"adapter": {"fineTuneJob": "i"}, "hpa": {"minReplicas": 2, "maxReplicas": 10},
                    "rollout": {"gate": {"minAccuracy": 0.8}}})
    w = healthy_on(World(s), V1)
    w.colors["blue"] = dataclasses.replace(w.colors["blue"], replicas=8, ready=8, updated=8, total=8)  # the HPA scaled up
    p = w.step(V2)
    assert ("Scale", "green", V2.short) in kinds(p)
    assert [a.replicas for a in p.actions if isinstance(a, Scale) and a.color == "green"] == [8]
    g = w.colors["green"]
    w.colors["green"] = dataclasses.replace(g, ready=2, updated=2, total=2)  # only minReplicas ready: not yet
    assert not any(type(a).__name__ == "RunGate" for a in w.step(V2).actions)
    w.ready("green")
    w.step(V2)
    w.gate_done(V2, PASS)
    p = w.step(V2)
    assert w.active == "green" and w.colors["green"].replicas == 8
    w2 = healthy_on(World(s), V1)
    w2.colors["blue"] = dataclasses.replace(w2.colors["blue"], replicas=12, ready=12, updated=12, total=12)
    assert [a.replicas for a in w2.step(V2).actions if isinstance(a, Scale) and a.color == "green"] == [10]


# --- MS-7: status after a rollback, ignored requests, the stuck state ---------------------------

def test_gate_status_after_an_abort_or_a_deadline_is_not_left_running() -> None:
    w = healthy_on(World(spec(autoPromotion=False)), V1)
    w.step(V2)
    w.ready("green")
    w.step(V2)
    assert w.status["gate"]["outcome"] == "Running"
    p = w.step(V2, Requests(abort=V2.short))
    assert p.status["gate"]["outcome"] == "Aborted"
    cond = {c["type"]: c for c in p.status["conditions"]}["GatePassed"]
    assert cond["reason"] != "GateRunning" and cond["status"] != "True"
    w = healthy_on(World(spec()), V1)
    w.step(V2)
    p = w.step(V2, after=700)
    assert p.status["reason"] == "ProgressDeadlineExceeded" and p.status["gate"]["outcome"] == "Cancelled"


def test_an_abort_of_the_active_version_that_cannot_be_applied_warns() -> None:
    w = healthy_on(World(spec()), V1)
    p = w.step(V1, Requests(abort=V1.short), after=10)
    assert [(e.type, e.reason) for e in p.events] == [("Warning", "AbortNotApplied")]
    assert "tuneforge.dev/abort" in p.events[0].message
    assert w.step(V1, Requests(abort=V1.short), after=10).events == (), "warned once, not every pass"


def test_an_approved_candidate_that_loses_readiness_is_rolled_back_after_the_deadline() -> None:
    w = healthy_on(World(spec(progressDeadlineSeconds=60)), V1)
    w.step(V2)
    w.ready("green")
    w.step(V2)
    w.gate_done(V2, PASS)
    w.colors["green"] = dataclasses.replace(w.colors["green"], ready=0)  # lost readiness before the switch
    p = w.step(V2)
    assert p.status["reason"] == "CandidateNotReady" and p.requeue_after is not None
    p = w.step(V2, after=61)
    assert (p.status["phase"], p.status["reason"]) == ("Degraded", "ProgressDeadlineExceeded")
    assert w.active == "blue" and w.colors["green"].replicas == 0


# --- MS-2: observedGeneration says when the spec is really served (kstatus) ---------------------

def test_observed_generation_advances_only_when_the_rollout_for_it_has_ended() -> None:
    """A spec edit that reshapes the color (same digest, another template hash) at generation 2:
    until the candidate is promoted or rolled back, status.observedGeneration stays behind and
    kstatus' Reconciling condition is True, so Argo CD / Flux see Progressing, not Healthy."""
    def conds(p: Any) -> dict[str, str]:
        return {c["type"]: c["status"] for c in p.status["conditions"]}

    reshaped = dataclasses.replace(V1, template_hash="b0b0b0b0b0")
    for outcome in ("promoted", "rolled back"):
        w = healthy_on(World(spec()), V1)
        w.generation = 2
        p = w.step(reshaped)
        assert p.status["phase"] == "Progressing" and p.status["preview"]["templateHash"] == "b0b0b0b0b0"
        assert p.status["observedGeneration"] == 1 and conds(p)["Reconciling"] == "True"
        w.ready("green")
        w.step(reshaped)
        w.gate_done(reshaped, PASS if outcome == "promoted" else FAIL)
        p = w.step(reshaped)
        assert p.status["observedGeneration"] == 2 and conds(p)["Reconciling"] == "False", outcome
        assert conds(p)["Stalled"] == ("True" if outcome == "rolled back" else "False"), outcome
    w = World(spec())
    assert w.step(V1).status["observedGeneration"] == 0  # a first deploy in flight reflects no generation yet


def test_a_retry_left_in_place_is_one_attempt_not_a_loop() -> None:
    """Requests are safe to leave in place: a kept retry retries once; after that attempt is
    rejected again, nothing starts until the annotation is taken away and set again."""
    w = healthy_on(World(spec()), V1)
    w.step(V2)
    w.ready("green")
    w.step(V2)
    w.gate_done(V2, FAIL)
    assert w.step(V2).status["reason"] == "GateFailed"
    retry = Requests(retry=V2.short)
    w.step(V2, retry)
    w.ready("green")
    w.step(V2, retry)
    w.gate_done(V2, FAIL)
    p = w.step(V2, retry)
    assert (p.status["reason"], p.status["gate"]["attempt"]) == ("GateFailed", 3)
    for _ in range(3):
        p = w.step(V2, retry, after=5)
        assert "previewColor" not in p.status and p.status["gate"]["attempt"] == 3, "a kept retry loops"
    w.step(V2, after=5)  # the annotation removed
    p = w.step(V2, retry, after=5)  # and set again
    assert p.status["gate"]["attempt"] == 4 and p.status["phase"] == "Progressing"


# --- MS-2: what the template hash covers ---------------------------------------------------------

CTX = ServeContext("intents", "ns", "reg/server:1")
BASE_SPEC: dict[str, Any] = {"adapter": {"fineTuneJob": "intents"}}
RESHAPES: dict[str, dict[str, Any]] = {
    "apiKey": {"apiKey": {"secretRef": {"name": "k", "key": "t"}}},
    "mode": {"mode": "lora"},
    "gpus": {"gpus": 2},
    "maxModelLen": {"maxModelLen": 4096},
    "maxNumSeqs": {"maxNumSeqs": 8},
    "dtype": {"dtype": "bfloat16"},
    "resources": {"resources": {"cpu": "4", "memory": "32Gi"}},
    "scheduling": {"scheduling": {"nodeSelector": {"gpu": "h100"}}},
}


def _hash(raw: dict[str, Any], version: Any = V1, ctx: ServeContext = CTX) -> str:
    s = parse_spec(raw)
    return template_hash(dataclasses.replace(ctx, node_selector=dict(s.node_selector)), s, version)


def test_the_template_hash_changes_with_everything_that_shapes_a_color_and_nothing_else() -> None:
    base = _hash(BASE_SPEC)
    assert len(base) == 10 and base == _hash(BASE_SPEC)
    changed = {k: _hash({**BASE_SPEC, **v}) for k, v in RESHAPES.items()}
    changed["server image"] = _hash(BASE_SPEC, ctx=dataclasses.replace(CTX, image="reg/server:2"))
    # What source.resolve puts in the version from spec.baseModel / adapter.name / the job's status.
    a = V1.adapters[0]
    changed["base uri"] = _hash(BASE_SPEC, dataclasses.replace(V1, base_uri="s3://models/other"))
    changed["base digest"] = _hash(BASE_SPEC, dataclasses.replace(V1, base_digest="sha256:" + "b" * 64))
    changed["adapter name"] = _hash(BASE_SPEC, dataclasses.replace(V1, adapters=(dataclasses.replace(a, name="renamed"),)))
    changed["adapter uri"] = _hash(BASE_SPEC, dataclasses.replace(V1, adapters=(dataclasses.replace(a, uri="s3://elsewhere"),)))
    assert base not in changed.values() and len(set(changed.values())) == len(changed), changed
    # Not the replica count, the HPA, the gate, the rollout timers, nor where the version came from.
    same = [{**BASE_SPEC, "replicas": 3}, {**BASE_SPEC, "hpa": {"minReplicas": 2, "maxReplicas": 4}},
            {**BASE_SPEC, "rollout": {"gate": {"minAccuracy": 0.5}, "scaleDownDelaySeconds": 5}}]
    assert {_hash(r) for r in same} == {base}
    relabelled = dataclasses.replace(V1, lineage=Lineage("intents", 7, 0.5), eval_rows_uri="s3://rows")
    assert _hash(BASE_SPEC, relabelled) == base


def test_a_status_without_attempts_runs_its_gate_once_not_in_a_churn() -> None:
    """Status written before attempts (or pruned by a CRD not yet upgraded) while gating: the
    gate is attempt 0 throughout; older, unnumbered Jobs (attempt -1) are deleted."""
    from tuneforge.serve.plan import GateJob
    w = healthy_on(World(spec()), V1)
    w.step(V2)
    w.ready("green")
    w.step(V2)
    for key in ("gate", "rollout"):
        w.status[key].pop("attempt")
    w.gates = {"old": GateJob(V2.digest, attempt=-1, name="old")}
    p = w.step(V2)
    assert kinds(p) == [("DeleteGate", "old", None), ("RunGate", "green", V2.short)]
    assert w.step(V2).actions == () and list(w.gates) == [f"gate-{V2.short}-0"]
    w.gate_done(V2, PASS)
    assert w.step(V2).status["activeColor"] == "green"
