"""The ModelServe rollout state machine, step by step: first deploy, a new version, deadline and
gate rollbacks, manual promotion, abort and retry, rollback while the old color is warm, a
FineTuneJob revision that fails its gate, and convergence after a half-applied reconcile.

A tiny world stands in for the cluster: applying a plan's actions changes what is observed,
pods become ready when a test says so, and the gate Job reports when a test says so."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest

from tuneforge.serve.gate import GateMeasures
from tuneforge.serve.plan import (
    ColorState, DeleteGate, GateJob, Observed, Plan, Requests, RunGate, Scale, SwitchActive, SwitchPreview, plan,
)
from tuneforge.serve.source import Resolution, ServedAdapter, ServedVersion
from tuneforge.serve.spec import ModelServeSpec, parse_spec

T0 = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.timezone.utc)
V1, V2, V3 = (ServedVersion("s3://models/base", (ServedAdapter("intents", f"s3://runs/r{i}/adapter", "sha256:" + c * 64),))
              for i, c in ((1, "1"), (2, "2"), (3, "3")))
GATED = {"gate": {"minAccuracy": 0.8, "maxP99Ms": 2000}}
PASS = GateMeasures(rows=100, correct=90, errors=0, accuracy=0.9, p50_ms=100, p99_ms=800)
FAIL = GateMeasures(rows=100, correct=50, errors=0, accuracy=0.5, p50_ms=100, p99_ms=800)


def spec(**rollout: Any) -> ModelServeSpec:
    return parse_spec({"adapter": {"fineTuneJob": "intents"}, "rollout": {**GATED, **rollout}})


@dataclasses.dataclass
class World:
    """What the cluster holds, as the observer would report it, plus the last status written."""

    spec: ModelServeSpec
    colors: dict[str, ColorState] = dataclasses.field(default_factory=dict)
    active: str | None = None
    preview: str | None = None
    gates: dict[str, GateJob] = dataclasses.field(default_factory=dict)
    """Gate Jobs by name."""
    status: dict[str, Any] = dataclasses.field(default_factory=dict)
    now: dt.datetime = T0
    generation: int = 1
    last: Plan | None = None

    def observed(self) -> Observed:
        return Observed(dict(self.colors), self.active, self.preview, dict(self.gates))

    def step(self, want: ServedVersion | None, requests: Requests = Requests(), after: float = 0, apply: bool = True) -> Plan:
        self.now += dt.timedelta(seconds=after)
        desired = Resolution(want, "Test", "desired" if want else "no version")
        p = plan(self.spec, self.generation, desired, self.observed(), self.status, requests, self.now)
        if apply:
            self.apply(p)
        self.last = p
        return p

    def apply(self, p: Plan) -> None:
        for a in p.actions:
            if isinstance(a, Scale):
                old = self.colors.get(a.color)
                if a.version is None:  # the count only: pods beyond it go, new ones start unready
                    assert old is not None
                    keep = min(old.ready, a.replicas)
                    self.colors[a.color] = dataclasses.replace(old, replicas=a.replicas, ready=keep, updated=keep, total=keep)
                elif old is not None and old.holds(a.version):
                    self.colors[a.color] = dataclasses.replace(old, replicas=a.replicas)
                else:  # a new template: pods start unready
                    self.colors[a.color] = ColorState(a.version.digest, a.replicas, 0, 0, 0, True, self.now,
                                                      a.version.template_hash)
            elif isinstance(a, RunGate):
                assert self.preview == a.color or any(isinstance(x, SwitchPreview) and x.color == a.color for x in p.actions)
                name = f"gate-{a.version.short}-{a.attempt}"
                self.gates[name] = GateJob(a.version.digest, attempt=a.attempt, name=name)
            elif isinstance(a, DeleteGate):
                self.gates.pop(a.name)
            elif isinstance(a, SwitchActive):
                assert self.colors[a.color].ready > 0, "traffic switched to a color with no ready pod"
                self.active = a.color
            elif isinstance(a, SwitchPreview):
                self.preview = a.color
        self.status = p.status

    def ready(self, color: str) -> None:
        c = self.colors[color]
        self.colors[color] = dataclasses.replace(c, ready=c.replicas, updated=c.replicas, total=c.replicas)

    def gate_done(self, v: ServedVersion, m: GateMeasures | None, failed: bool = False, message: str = "") -> None:
        """The newest gate Job of ``v`` finishes (or fails)."""
        name, job = max(((n, g) for n, g in self.gates.items() if g.digest == v.digest), key=lambda ng: ng[1].attempt)
        self.gates[name] = dataclasses.replace(job, finished=not failed, failed=failed, measures=m, message=message)


def kinds(p: Plan) -> list[tuple[str, str, str | None]]:
    """Actions as (kind, color, short digest) (a DeleteGate: its Job name)."""
    out = []
    for a in p.actions:
        if isinstance(a, DeleteGate):
            out.append(("DeleteGate", a.name, None))
            continue
        v = getattr(a, "version", None)
        out.append((type(a).__name__, a.color, v.short if v else (str(a.replicas) if isinstance(a, Scale) else None)))
    return out


def healthy_on(w: World, v: ServedVersion) -> World:
    """Drive a first deploy of ``v`` to Healthy (blue)."""
    w.step(v)
    w.ready("blue")
    w.step(v)
    w.gate_done(v, PASS)
    w.step(v)
    assert w.status["phase"] == "Healthy" and w.active == "blue"
    return w


# --- first deploy -----------------------------------------------------------------------------

@pytest.mark.parametrize("auto", [True, False])
def test_first_deploy_deploys_gates_then_activates(auto: bool) -> None:
    w = World(spec(autoPromotion=auto))
    p = w.step(V1)
    assert kinds(p) == [("Scale", "blue", V1.short), ("SwitchPreview", "blue", None)]
    assert (p.status["phase"], p.status["reason"], p.status["previewColor"]) == ("Progressing", "Deploying", "blue")
    assert "activeColor" not in p.status and p.requeue_after is not None and p.requeue_after <= 601
    assert w.step(V1, after=10).actions == ()  # pods still starting: nothing to do
    w.ready("blue")
    p = w.step(V1, after=10)
    assert kinds(p) == [("RunGate", "blue", V1.short)]
    assert (p.status["reason"], p.status["gate"]["outcome"]) == ("Gating", "Running")
    assert w.step(V1, after=5).actions == ()  # the Job exists: not created twice
    w.gate_done(V1, PASS)
    p = w.step(V1, after=5)
    # the first deploy is promoted even without autoPromotion: nothing serves yet (Argo's rule)
    assert kinds(p) == [("SwitchActive", "blue", None)]
    assert (p.status["phase"], p.status["activeColor"], p.status["active"]["display"]) == ("Healthy", "blue", f"blue {V1.short}")
    assert p.status["gate"]["accuracy"] == 0.9 and p.status["gate"]["p99Ms"] == 800
    assert [h["outcome"] for h in p.status["history"]] == ["Promoted"]
    assert [e.reason for e in p.events] == ["GatePassed", "Promoted"]
    assert w.step(V1, after=60).actions == ()  # a fixpoint


def test_without_a_gate_the_ready_candidate_is_promoted() -> None:
    w = World(parse_spec({"adapter": {"fineTuneJob": "intents"}}))
    w.step(V1)
    w.ready("blue")
    p = w.step(V1)
    assert kinds(p) == [("SwitchActive", "blue", None)] and p.status["gate"]["outcome"] == "Skipped"


# --- a new version ----------------------------------------------------------------------------

def test_new_version_rolls_out_blue_green_and_scales_the_old_color_down_after_the_delay() -> None:
    w = healthy_on(World(spec(scaleDownDelaySeconds=300)), V1)
    p = w.step(V2, after=60)
    # V1's finished gate Job belongs to an earlier attempt: it goes.
    assert kinds(p) == [("DeleteGate", f"gate-{V1.short}-1", None), ("Scale", "green", V2.short), ("SwitchPreview", "green", None)]
    assert p.status["phase"] == "Progressing" and p.status["activeColor"] == "blue" and w.active == "blue"
    assert p.status["preview"]["display"] == f"green {V2.short}"
    w.ready("green")
    assert kinds(w.step(V2, after=30)) == [("RunGate", "green", V2.short)]
    w.gate_done(V2, PASS)
    p = w.step(V2, after=30)
    assert kinds(p) == [("SwitchActive", "green", None)]  # the preview Service already selects green
    assert p.status["rollout"]["previousColor"] == "blue" and p.requeue_after == 300
    assert w.colors["blue"].replicas == 1  # warm
    assert w.step(V2, after=299).actions == ()
    p = w.step(V2, after=2)
    assert kinds(p) == [("Scale", "blue", "0")] and [e.reason for e in p.events] == ["ScaledDown"]
    assert "rollout" not in p.status and p.status["phase"] == "Healthy"


def test_a_newer_version_during_a_rollout_supersedes_it_on_the_same_color() -> None:
    w = healthy_on(World(spec()), V1)
    w.step(V2)
    p = w.step(V3, after=10)
    assert kinds(p) == [("Scale", "green", V3.short)] and p.status["preview"]["digest"] == V3.digest
    assert p.status["gate"] == {"digest": V3.digest, "shortDigest": V3.short, "outcome": "Pending", "attempt": 3}
    assert "RolloutSuperseded" in [e.reason for e in p.events]


def test_spec_back_to_the_stable_version_cancels_the_rollout() -> None:
    w = healthy_on(World(spec()), V1)
    w.step(V2)
    p = w.step(V1, after=10)
    assert kinds(p) == [("SwitchPreview", "blue", None), ("Scale", "green", "0")]
    assert p.status["phase"] == "Healthy" and "preview" not in p.status


# --- automatic rollback -----------------------------------------------------------------------

@pytest.mark.parametrize("first", [False, True])
def test_progress_deadline_missed_rolls_back_and_the_stable_color_is_untouched(first: bool) -> None:
    w = World(spec(progressDeadlineSeconds=120))
    if not first:
        healthy_on(w, V1)
    cand, color = (V1, "blue") if first else (V2, "green")
    w.step(cand)
    assert w.step(cand, after=119).actions == ()
    p = w.step(cand, after=2)
    assert all(not isinstance(a, SwitchActive) for a in p.actions)
    assert ("Scale", color, "0") in kinds(p)
    assert p.status["rejected"]["reason"] == "ProgressDeadlineExceeded" and p.status["reason"] == "ProgressDeadlineExceeded"
    assert p.status["phase"] == ("Failed" if first else "Degraded")
    assert w.active == (None if first else "blue") and w.colors.get("blue", ColorState(None, 0)).replicas == (0 if first else 1)
    # the same version is not tried again by itself
    assert w.step(cand, after=600).actions == () and w.status["phase"] == p.status["phase"]
    # a different desired version goes ahead
    assert ("Scale", color, V3.short) in kinds(w.step(V3))


@pytest.mark.parametrize("measures,failed,reason", [(FAIL, False, "GateFailed"), (None, True, "GateError")])
def test_a_failing_gate_rolls_back(measures: GateMeasures | None, failed: bool, reason: str) -> None:
    w = healthy_on(World(spec()), V1)
    w.step(V2)
    w.ready("green")
    w.step(V2)
    w.gate_done(V2, measures, failed=failed, message="BackoffLimitExceeded")
    p = w.step(V2, after=30)
    assert kinds(p) == [("SwitchPreview", "blue", None), ("Scale", "green", "0")]
    assert (p.status["phase"], p.status["reason"], p.status["activeColor"]) == ("Degraded", reason, "blue")
    assert p.status["gate"]["outcome"] == "Failed" and p.status["history"][-1]["outcome"] == reason
    if measures:
        assert p.status["gate"]["accuracy"] == 0.5 and "accuracy 0.500 < 0.8" in p.status["gate"]["reasons"][0]
    assert [e.type for e in p.events] == ["Warning"]
    cond = {c["type"]: c for c in p.status["conditions"]}
    assert cond["GatePassed"]["status"] == "False" and cond["Available"]["status"] == "True"


def test_a_gate_job_that_never_reports_fails_after_its_timeout() -> None:
    w = healthy_on(World(parse_spec({"adapter": {"fineTuneJob": "i"}, "rollout": {"gate": {"minAccuracy": 0.5, "timeoutSeconds": 60}}})), V1)
    w.step(V2)
    w.ready("green")
    w.step(V2)
    w.gates.clear()  # the Job was deleted by hand
    assert kinds(w.step(V2, after=10)) == [("RunGate", "green", V2.short)]  # recreated
    p = w.step(V2, after=200)
    assert p.status["reason"] == "GateError"


# --- manual promotion, abort, retry -------------------------------------------------------------

def test_auto_promotion_off_pauses_until_the_promote_annotation_names_the_candidate() -> None:
    w = healthy_on(World(spec(autoPromotion=False)), V1)
    w.step(V2)
    w.ready("green")
    w.step(V2)
    w.gate_done(V2, PASS)
    p = w.step(V2)
    assert p.actions == () and (p.status["phase"], p.status["reason"]) == ("Paused", "WaitingForPromotion")
    assert f"tuneforge.dev/promote={V2.short}" in p.status["message"]
    assert {c["type"]: c["status"] for c in p.status["conditions"]}["Paused"] == "True"
    # a promote naming another (earlier) version does nothing
    assert w.step(V2, Requests(promote=V1.short), after=3600).status["phase"] == "Paused"
    p = w.step(V2, Requests(promote=V2.short))
    assert kinds(p) == [("SwitchActive", "green", None)] and p.status["phase"] == "Healthy"
    # the annotation left in place does not approve the next candidate
    w.step(V3, Requests(promote=V2.short))
    w.ready("blue")
    w.step(V3, Requests(promote=V2.short))
    w.gate_done(V3, PASS)
    assert w.step(V3, Requests(promote=V2.short)).status["phase"] == "Paused"
    p = w.step(V3, Requests(promote=V3.digest))
    assert ("SwitchActive", "blue", None) in kinds(p)


@pytest.mark.parametrize("stage", ["deploying", "gating", "paused"])
def test_abort_rolls_the_candidate_back_and_retry_tries_again(stage: str) -> None:
    w = healthy_on(World(spec(autoPromotion=False)), V1)
    w.step(V2)
    if stage != "deploying":
        w.ready("green")
        w.step(V2)
    if stage == "paused":
        w.gate_done(V2, PASS)
        w.step(V2)
    p = w.step(V2, Requests(abort=V2.short))
    running = [("DeleteGate", f"gate-{V2.short}-2", None)] if stage == "gating" else []  # it would go on asking
    assert kinds(p) == running + [("SwitchPreview", "blue", None), ("Scale", "green", "0")]
    assert (p.status["phase"], p.status["reason"]) == ("Degraded", "Aborted") and w.active == "blue"
    # while the abort names it, a retry does not bring it back
    assert w.step(V2, Requests(abort=V2.short, retry=V2.short)).actions == ()
    p = w.step(V2, Requests(retry=V2.short))
    # green still holds V2's template: only its count changes; a retry is a new attempt
    assert ("Scale", "green", "1") in kinds(p) and p.status["phase"] == "Progressing" and "rejected" not in p.status
    assert p.status["gate"]["attempt"] == 3 and not [g for g in w.gates.values() if g.attempt != 3]


# --- manual rollback ----------------------------------------------------------------------------

def promoted_v2(delay: int = 300) -> World:
    w = healthy_on(World(spec(scaleDownDelaySeconds=delay)), V1)
    w.step(V2)
    w.ready("green")
    w.step(V2)
    w.gate_done(V2, PASS)
    w.step(V2)
    assert w.active == "green"
    return w


def test_rollback_through_the_spec_while_warm_is_a_selector_switch() -> None:
    w = promoted_v2()
    p = w.step(V1, after=60)
    assert kinds(p) == [("SwitchPreview", "blue", None), ("SwitchActive", "blue", None)]  # no Scale: no restart
    assert (p.status["phase"], p.status["activeColor"], p.status["rollout"]["previousColor"]) == ("Healthy", "blue", "green")
    assert p.status["history"][-1]["outcome"] == "RolledBack"
    # and forward again while green is warm: another switch
    assert kinds(w.step(V2, after=60)) == [("SwitchPreview", "green", None), ("SwitchActive", "green", None)]


def test_rollback_after_the_old_color_scaled_down_is_a_gated_rollout() -> None:
    w = promoted_v2(delay=30)
    w.step(V2, after=31)
    assert w.colors["blue"].replicas == 0
    p = w.step(V1, after=10)
    # blue kept V1's template at zero pods: only its count changes
    assert kinds(p) == [("DeleteGate", f"gate-{V2.short}-2", None), ("Scale", "blue", "1"),
                        ("SwitchPreview", "blue", None)] and p.status["phase"] == "Progressing"


def test_abort_of_the_active_version_while_warm_switches_back() -> None:
    w = promoted_v2()
    p = w.step(V2, Requests(abort=V2.digest), after=10)
    assert kinds(p) == [("SwitchPreview", "blue", None), ("SwitchActive", "blue", None)]
    assert (p.status["phase"], p.status["reason"], p.status["active"]["digest"]) == ("Degraded", "Aborted", V1.digest)
    assert w.step(V2, Requests(abort=V2.digest), after=10).actions == ()  # V2 stays out


# --- the source -------------------------------------------------------------------------------

def test_a_finetunejob_revision_that_fails_its_gate_changes_nothing() -> None:
    """source.resolve keeps answering the last passing revision; the plan sees the same version."""
    w = healthy_on(World(spec()), V1)
    p = w.step(V1, after=3600)
    assert p.actions == () and p.events == () and p.status["phase"] == "Healthy"


def test_a_missing_source_keeps_serving_and_says_so() -> None:
    w = healthy_on(World(spec()), V1)
    p = w.step(None)
    assert p.actions == () and (p.status["phase"], p.status["reason"]) == ("Degraded", "Test")
    fresh = World(spec())
    p = fresh.step(None)
    assert p.actions == () and p.status["phase"] == "Progressing"


# --- convergence, status shape ------------------------------------------------------------------

def test_a_half_applied_promotion_is_finished_by_the_next_reconcile() -> None:
    """The operator died after the status write but before the switch (or the Service was edited):
    the next plan only switches."""
    w = promoted_v2()
    w.active, w.preview = "blue", "blue"
    assert kinds(w.step(V2)) == [("SwitchPreview", "green", None), ("SwitchActive", "green", None)]


def test_a_lost_status_write_repeats_the_step_without_duplicates() -> None:
    """The operator died after its actions but before writing status: the same plan again finds the
    world already changed and emits nothing it already did."""
    w = healthy_on(World(spec()), V1)
    before = dict(w.status)
    w.step(V2)
    w.status = before
    p = w.step(V2)
    assert p.actions == () and p.status["previewColor"] == "green"


def test_conditions_carry_observed_generation_and_keep_transition_times() -> None:
    w = healthy_on(World(spec()), V1)
    w.generation = 7
    first = {c["type"]: c for c in w.step(V1, after=100).status["conditions"]}
    assert {c["observedGeneration"] for c in first.values()} == {7}
    assert first["Available"]["status"] == "True" and first["Progressing"]["status"] == "False"
    again = {c["type"]: c for c in w.step(V1, after=100).status["conditions"]}
    assert again["Available"]["lastTransitionTime"] == first["Available"]["lastTransitionTime"]
    assert w.status["observedGeneration"] == 7


def test_history_is_bounded() -> None:
    w = World(parse_spec({"adapter": {"fineTuneJob": "i"}, "rollout": {"revisionHistoryLimit": 3, "scaleDownDelaySeconds": 0}}))
    versions = [ServedVersion("s3://b", (ServedAdapter("i", f"s3://r/{i}", "sha256:" + f"{i:064x}"),)) for i in range(6)]
    for v in versions:
        w.step(v, after=1)
        color = w.status["previewColor"]
        w.ready(color)
        w.step(v, after=1)
    assert [h["digest"] for h in w.status["history"]] == [v.digest for v in versions[-3:]]


def test_hpa_owns_the_active_replica_count() -> None:
    s = parse_spec({"adapter": {"fineTuneJob": "i"}, "hpa": {"minReplicas": 2, "maxReplicas": 5}})
    w = World(s)
    w.step(V1)
    assert w.colors["blue"].replicas == 2
    w.ready("blue")
    w.step(V1)
    w.colors["blue"] = dataclasses.replace(w.colors["blue"], replicas=5, ready=5, updated=5, total=5)  # the HPA scaled up
    assert w.step(V1, after=60).actions == ()
