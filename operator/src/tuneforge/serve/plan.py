"""The ModelServe rollout as a pure state machine, in Argo Rollouts blue/green terms.

``plan(spec, generation, desired, observed, prior, requests, now)`` decides from the spec, the
version the spec resolves to (source.py), what exists (observe.py), the last written status and
the user's requests; it returns the new status and the actions that make the world match it.
It reads no clock and calls nothing: the reconcile applies the actions in the order given and
then writes the status. The actions are a diff against what was observed, so a reconcile that
died half way (operator SIGKILL) is finished by the next one without a duplicate or a wrong
switch: the status is written only after its actions succeeded.

Steps of a rollout (two colors, an active and a preview Service, as Argo's blue/green):

1. a new desired version goes to the idle color (scaled up with that version; the preview
   Service selects it) — the active color and its traffic are not touched;
2. every pod of it ready and rolled out within ``progressDeadlineSeconds``, else rollback;
3. the gate (gate.py, a Job) asks held-out rows through the preview Service; a failed gate is a
   rollback; no gate configured: skipped;
4. promotion — at once with ``autoPromotion``, else the phase is ``Paused`` until the user
   promotes; the first deploy of a ModelServe is promoted once its gate passes (nothing serves
   yet; pausing would only delay it, as Argo does for an initial deploy);
5. the active Service's selector switches to the new color; the old color stays warm for
   ``scaleDownDelaySeconds`` (a rollback in that window is a selector switch, not a restart),
   then scales to zero.

A rollback (deadline missed, gate failed, aborted) scales the candidate down and records it as
``status.rejected``: the same version is not tried again until the user asks (``retry``) or the
desired version moves on. Traffic never leaves the stable color.

Manual requests are annotations on the ModelServe whose value is the version's digest (full or
the 12-digit short form ``kubectl get`` shows)::

    kubectl annotate modelserve intents tuneforge.dev/promote=3f1c2ab4c5d6 --overwrite
    kubectl annotate modelserve intents tuneforge.dev/abort=3f1c2ab4c5d6 --overwrite
    kubectl annotate modelserve intents tuneforge.dev/retry=3f1c2ab4c5d6 --overwrite

Why annotations carrying a digest: ``kubectl annotate`` drives them by hand and a GitOps tool
drives them by committing the annotation into the manifest, without the request becoming part
of the desired state (the spec says *what* to serve; a promote approves one candidate). Because
the value names the version, a request is idempotent and safe to leave in place: a stale
``promote`` never approves a later candidate, and a kept ``abort`` keeps that version out while
it names it (remove it, or ``retry``, to try again). A kept ``retry`` retries once: should that
attempt be rejected too, nothing starts until the annotation is removed and set again. A value
naming nothing current is ignored; an ``abort`` naming the active version that cannot be
applied (no warm previous color) is said once, as a Warning and ``status.abortNotApplied``.

A version here is a rollout identity: the digest the requests name plus the hash of the
template it renders (source.py), so a spec edit that reshapes a color is rolled out like a new
adapter. Each rollout (a new identity, or a retry) is an *attempt* with its own number: its
gate Job carries it, only that Job is read, and every other gate Job is deleted. The candidate
is scaled to the active color's current count (the HPA's, capped by its maximum).

Manual rollback through the spec: point it at an earlier version (``adapter.digest`` for a
FineTuneJob, the URIs and digest for explicit adapters). While the previous color is warm and
serves that version it is a selector switch; later it is an ordinary rollout. ``abort`` naming
the active version while the previous color is warm switches back the same way.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any, Mapping

from .gate import judge
from .names import ANNOTATION_ABORT, ANNOTATION_PROMOTE, ANNOTATION_RETRY, COLORS, other
from .source import Resolution, ServedVersion, digest_matches
from .spec import ModelServeSpec
from .status import (
    GATE_SLACK_SECONDS, PHASES, ColorState, Event, GateJob, Metering, Observed, RolloutState, compute_status, now_iso,
    parse_time, usage_due,
)

__all__ = [
    "PHASES", "ColorState", "DeleteGate", "Event", "GateJob", "Metering", "Observed", "Plan", "Requests", "RunGate", "Scale",
    "SwitchActive", "SwitchPreview", "plan",
]

Obj = Mapping[str, Any]

GATE_POLL_SECONDS = 15.0



# --- inputs ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Requests:
    """The user's promote/abort/retry annotations (values: a digest or a short digest)."""

    promote: str | None = None
    abort: str | None = None
    retry: str | None = None

    @classmethod
    def from_annotations(cls, annotations: Mapping[str, str] | None) -> "Requests":
        a = annotations or {}
        return cls(promote=(a.get(ANNOTATION_PROMOTE) or "").strip() or None,
                   abort=(a.get(ANNOTATION_ABORT) or "").strip() or None,
                   retry=(a.get(ANNOTATION_RETRY) or "").strip() or None)


# --- outputs --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Scale:
    """Make color's Deployment serve ``version`` with ``replicas`` pods (create it if absent);
    ``version`` None keeps its template (a scale down)."""

    color: str
    version: ServedVersion | None
    replicas: int


@dataclasses.dataclass(frozen=True)
class RunGate:
    """Create the gate Job of rollout attempt ``attempt`` of ``version`` against the preview
    Service (AlreadyExists is fine)."""

    color: str
    version: ServedVersion
    attempt: int


@dataclasses.dataclass(frozen=True)
class DeleteGate:
    """Delete a gate Job that belongs to no current attempt (aborted, superseded, retried, or
    from before attempts; its pods with it): it would otherwise go on asking the preview Service."""

    name: str


@dataclasses.dataclass(frozen=True)
class SwitchActive:
    color: str


@dataclasses.dataclass(frozen=True)
class SwitchPreview:
    color: str


Action = Scale | RunGate | DeleteGate | SwitchActive | SwitchPreview


@dataclasses.dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    """In the order to apply: gate deletions, scale-ups, gate, preview switch, active switch, scale-downs."""
    status: dict[str, Any]
    events: tuple[Event, ...] = ()
    requeue_after: float | None = None
    """Seconds until a timer (deadline, scale-down, gate poll) needs another look."""


# --- helpers --------------------------------------------------------------------------------

def _replicas(spec: ModelServeSpec) -> int:
    """Pods a color starts with (a candidate needs at least one to be gated)."""
    return max(1, spec.hpa.min_replicas if spec.hpa else spec.replicas)


def _cand_replicas(s: "RolloutState", spec: ModelServeSpec, observed: Observed) -> int:
    """Pods the candidate is scaled to and must have ready before the switch: the load it will
    take, i.e. the active color's current count (the HPA's), capped by ``hpa.maxReplicas`` and at
    least the spec's floor (Argo's default without ``previewReplicaCount``)."""
    n = _replicas(spec)
    obs = observed.colors.get(s.active_color or "")
    if spec.hpa is None or obs is None or s.stable is None or obs.version != s.stable.digest:
        return n
    return max(n, min(obs.replicas, spec.hpa.max_replicas))


def _end_gate(s: RolloutState, outcome: str) -> None:
    """The attempt ended before its gate did: status.gate says so (its Job is deleted)."""
    if s.gate.get("outcome") in ("Pending", "Running"):
        s.gate.update(outcome=outcome, finishedAt=s.stamp)


def _attempt(s: RolloutState) -> int:
    """The current rollout attempt; 0 when the status has none (written before attempts, or
    pruned by an older CRD): one number throughout, so such a gate is run once, not churned."""
    return int(s.gate.get("attempt") or 0)


def _is_rejected(s: RolloutState, v: ServedVersion) -> bool:
    r = s.rejected
    return r is not None and r["digest"] == v.digest and r.get("templateHash") == v.template_hash


def _reject(s: RolloutState, spec: ModelServeSpec, reason: str, message: str) -> None:
    """Roll the candidate back: it scales down, the stable color keeps all traffic."""
    assert s.cand is not None
    _end_gate(s, "Aborted" if reason == "Aborted" else "Cancelled")
    s.rejected = {"digest": s.cand.digest, "shortDigest": s.cand.short, "reason": reason, "message": message, "at": s.stamp}
    if s.rollout.get("retriedBy"):
        s.rejected["retriedBy"] = s.rollout["retriedBy"]
    if s.cand.template_hash:
        s.rejected["templateHash"] = s.cand.template_hash
    s.record(s.cand, reason, s.cand_color, spec.rollout.revision_history_limit)
    where = f"stable {s.active_color} {s.stable.short} keeps serving" if s.stable else "nothing serves yet"
    s.event("Warning", reason, f"Rolled back {s.cand.short}: {message}; {where}")
    s.cand, s.cand_color = None, None
    s.rollout = {}


def _switch(s: RolloutState, spec: ModelServeSpec, color: str, version: ServedVersion, outcome: str) -> None:
    """Make ``color`` (serving ``version``) active; the old active color stays warm."""
    old_color, old = s.active_color, s.stable
    s.active_color, s.stable = color, version
    s.cand, s.cand_color = None, None
    s.rollout = {}
    if old_color and old and old_color != color:
        s.rollout = {"previousColor": old_color, "previous": old.to_status(),
                     "scaleDownAt": now_iso(s.now + dt.timedelta(seconds=spec.rollout.scale_down_delay_seconds))}
    s.record(version, outcome, color, spec.rollout.revision_history_limit)
    tail = f"; {old_color} {old.short} stays warm for {spec.rollout.scale_down_delay_seconds}s" if old_color and old else ""
    s.event("Normal", outcome, f"Active Service switched to {color} serving {version.short}{tail}")


def _start(s: RolloutState, spec: ModelServeSpec, version: ServedVersion) -> None:
    if s.cand is not None:
        s.event("Normal", "RolloutSuperseded", f"Rollout of {s.cand.display} superseded by {version.display}")
    color = other(s.active_color)
    s.cand, s.cand_color = version, color
    # Each rollout attempt (a new version, a new template, a retry) gets a number of its own: its
    # gate Job carries it and only a Job of this attempt is ever read.
    attempt = _attempt(s) + 1
    # Starting on the idle color overwrites whatever stayed warm there.
    s.rollout = {"startedAt": s.stamp, "attempt": attempt}
    s.gate = {"digest": version.digest, "shortDigest": version.short, "outcome": "Pending", "attempt": attempt}
    s.event("Normal", "RolloutStarted", f"Deploying {version.display} to {color} (preview)")


def _advance(s: RolloutState, spec: ModelServeSpec, observed: Observed, requests: Requests) -> None:
    """One step (or several, when they are already due) of the candidate's rollout."""
    cand, color = s.cand, s.cand_color
    assert cand is not None and color is not None
    if requests.abort and digest_matches(requests.abort, cand.digest):
        _reject(s, spec, "Aborted", f"aborted by the {ANNOTATION_ABORT} annotation")
        return
    n = _cand_replicas(s, spec, observed)
    obs = observed.colors.get(color)
    ready = obs is not None and obs.serves(cand, n)
    outcome = s.gate.get("outcome")
    if outcome == "Pending":
        if not ready:
            waited = s.elapsed(s.rollout.get("startedAt"))
            deadline = spec.rollout.progress_deadline_seconds
            if waited > deadline:
                have = obs.ready if obs is not None and obs.holds(cand) else 0
                _reject(s, spec, "ProgressDeadlineExceeded", f"{have}/{n} pods of {color} ready after {deadline}s")
                return
            s.reason, s.message = "Deploying", f"Waiting for {color} to serve {cand.short}: {obs.ready if obs else 0}/{n} ready"
            s.requeue.append(max(1.0, deadline - waited + 1))
            return
        s.rollout["readyAt"] = s.stamp
        if spec.rollout.gate is None:
            s.gate.update(outcome="Skipped", finishedAt=s.stamp)
            outcome = "Skipped"
        else:
            s.gate.update(outcome="Running", startedAt=s.stamp)
            s.event("Normal", "GateStarted", f"Gate of {cand.short} asks {spec.rollout.gate.rows} rows through the preview Service")
            outcome = "Running"
    if outcome == "Running" and spec.rollout.gate is None:
        s.gate.update(outcome="Skipped", finishedAt=s.stamp)  # the gate was taken out of the spec
        outcome = "Skipped"
    if outcome == "Running":
        assert spec.rollout.gate is not None
        job = _gate_job(s, observed)
        if job is not None and job.finished and job.measures is not None:
            verdict = judge(job.measures, spec.rollout.gate)
            s.gate.update(outcome="Passed" if verdict.passed else "Failed", reasons=list(verdict.reasons),
                          finishedAt=s.stamp, **job.measures.to_json())
            if not verdict.passed:
                _reject(s, spec, "GateFailed", "; ".join(verdict.reasons))
                return
            s.event("Normal", "GatePassed", f"Gate of {cand.short}: {'; '.join(verdict.reasons)}")
            outcome = "Passed"
        elif job is not None and (job.failed or job.finished):
            s.gate.update(outcome="Failed", reasons=[job.message or "the gate Job failed without measures"], finishedAt=s.stamp)
            _reject(s, spec, "GateError", job.message or "the gate Job failed without measures")
            return
        elif s.elapsed(s.gate.get("startedAt")) > spec.rollout.gate.timeout_seconds + GATE_SLACK_SECONDS:
            s.gate.update(outcome="Failed", reasons=["the gate did not answer in time"], finishedAt=s.stamp)
            _reject(s, spec, "GateError", f"the gate did not answer within {spec.rollout.gate.timeout_seconds}s")
            return
        else:
            s.reason, s.message = "Gating", f"Gate of {cand.short} running against {color}"
            s.requeue.append(GATE_POLL_SECONDS)
            return
    # Passed or Skipped. A candidate that lost readiness since gets the progress deadline again
    # (it would otherwise hold its GPUs, paused or approved, for ever).
    if ready:
        s.rollout.pop("notReadySince", None)
    else:
        since = s.rollout.setdefault("notReadySince", s.stamp)
        waited, deadline = s.elapsed(since), spec.rollout.progress_deadline_seconds
        if waited > deadline:
            have = obs.ready if obs is not None and obs.holds(cand) else 0
            _reject(s, spec, "ProgressDeadlineExceeded", f"{have}/{n} pods of {color} ready {deadline}s after its gate")
            return
        s.requeue.append(max(1.0, deadline - waited + 1))
    approved = (spec.rollout.auto_promotion or s.stable is None
                or (requests.promote is not None and digest_matches(requests.promote, cand.digest)))
    if not approved:
        if "pausedAt" not in s.rollout:
            s.rollout["pausedAt"] = s.stamp
            s.event("Normal", "Paused", f"{cand.short} passed its gate on {color}; waiting for {ANNOTATION_PROMOTE}")
        s.reason = "WaitingForPromotion"
        s.message = (f"{cand.short} passed its gate on {color} (preview); promote with "
                     f"kubectl annotate modelserve <name> {ANNOTATION_PROMOTE}={cand.short} --overwrite")
        return
    if not ready:
        s.reason, s.message = "CandidateNotReady", f"{cand.short} is approved but {color} is not fully ready"
        return
    _switch(s, spec, color, cand, "Promoted")


def _gate_job(s: RolloutState, observed: Observed) -> GateJob | None:
    """The gate Job of the current attempt (never an older attempt's, whatever it measured)."""
    attempt = _attempt(s)
    return next((g for g in observed.gates.values()
                 if s.cand is not None and g.attempt == attempt and g.digest == s.cand.digest), None)


def _rollback_warm(s: RolloutState, spec: ModelServeSpec, observed: Observed, want: ServedVersion) -> bool:
    """Switch back to the warm previous color when it still serves ``want``."""
    warm = s.warm_previous()
    if warm is None or not warm[1].same(want):
        return False
    color, version = warm
    obs = observed.colors.get(color)
    if obs is None or not obs.serves(version, max(1, min(obs.replicas, _replicas(spec)))):
        return False
    _end_gate(s, "Cancelled")
    if s.cand is not None:
        s.event("Normal", "RolloutSuperseded", f"Rollout of {s.cand.short} dropped for a rollback to {version.short}")
    _switch(s, spec, color, version, "RolledBack")
    return True


def _abort_active(s: RolloutState, spec: ModelServeSpec, observed: Observed, requests: Requests) -> None:
    """An abort naming the active version: while the previous color is warm and serves, the
    rollback action; otherwise it cannot be applied, and a Warning says so (once per value)."""
    if not (requests.abort and s.stable and digest_matches(requests.abort, s.stable.digest)) or (
            s.rejected and digest_matches(requests.abort, s.rejected["digest"])) or (
            s.cand is not None and digest_matches(requests.abort, s.cand.digest)):
        s.abort_not_applied = None
        return
    warm = s.warm_previous()
    if s.cand is None and warm is not None:
        aborted = s.stable
        if _rollback_warm(s, spec, observed, warm[1]):
            s.rejected = {"digest": aborted.digest, "shortDigest": aborted.short, "reason": "Aborted",
                          "message": f"rolled back by the {ANNOTATION_ABORT} annotation", "at": s.stamp}
            if aborted.template_hash:
                s.rejected["templateHash"] = aborted.template_hash
            s.abort_not_applied = None
            return
    if (s.abort_not_applied or {}).get("value") != requests.abort:
        why = ("a rollout is in flight" if s.cand is not None else
               "no previous color is warm to switch back to" if warm is None else
               "the previous color is not ready")
        message = (f"{ANNOTATION_ABORT}={requests.abort} names the active {s.stable.short} but cannot be applied: "
                   f"{why}; point the spec at an earlier version to roll back")
        s.abort_not_applied = {"value": requests.abort, "message": message, "at": s.stamp}
        s.event("Warning", "AbortNotApplied", message)


def _decide(s: RolloutState, spec: ModelServeSpec, desired: Resolution, observed: Observed, requests: Requests) -> None:
    want = desired.version
    retried_by = None
    if s.rejected and not requests.retry:
        s.rejected.pop("retriedBy", None)  # the annotation was taken away: setting it again retries again
    if s.rejected and requests.retry and digest_matches(requests.retry, s.rejected["digest"]) and not (
            requests.abort and digest_matches(requests.abort, s.rejected["digest"])) and (
            s.rejected.get("retriedBy") != requests.retry):
        s.event("Normal", "Retry", f"Retrying {s.rejected['shortDigest']} on request")
        s.rejected, retried_by = None, requests.retry
    if s.rejected and want is not None and not _is_rejected(s, want):
        s.rejected = None  # the desire moved on; coming back to that version later tries it again
    _abort_active(s, spec, observed, requests)
    if want is None:
        if s.cand is not None:
            s.event("Normal", "RolloutCancelled", f"Rollout of {s.cand.short} cancelled: {desired.message}")
            _end_gate(s, "Cancelled")
            s.cand, s.cand_color, s.rollout = None, None, {k: v for k, v in s.rollout.items() if k in ("previousColor", "previous", "scaleDownAt")}
        return
    if want.same(s.stable):
        if s.cand is not None:
            s.event("Normal", "RolloutCancelled", f"Rollout of {s.cand.display} cancelled: the spec asks for the active {want.display}")
            _end_gate(s, "Cancelled")
            s.cand, s.cand_color = None, None
            s.rollout = {}
        # The version is its digest and rendered template (source.py): the same bytes rendered
        # the same way under another revision roll nothing out.
        return
    if _is_rejected(s, want):
        if s.cand is not None and s.cand.same(want):
            s.cand, s.cand_color, s.rollout = None, None, {}
        return
    if _rollback_warm(s, spec, observed, want):
        return
    if s.cand is None or not s.cand.same(want):
        _start(s, spec, want)
        if retried_by:
            # One retry per annotation value: should this attempt be rejected too, the kept
            # annotation does not start another (no loop of gate Jobs).
            s.rollout["retriedBy"] = retried_by
    _advance(s, spec, observed, requests)


# --- actions --------------------------------------------------------------------------------

def _actions(s: RolloutState, spec: ModelServeSpec, observed: Observed) -> tuple[Action, ...]:
    ups: list[Action] = []
    downs: list[Action] = []
    warm = s.warm_previous()
    n = _replicas(spec)
    # Every gate Job but the last attempt's goes (that one stays while it runs for a rollout in
    # flight, or once finished, for its logs, until its TTL).
    attempt = _attempt(s)
    in_flight = s.cand is not None and s.gate.get("outcome") == "Running"
    deletes: list[Action] = [DeleteGate(name) for name, g in sorted(observed.gates.items())
                             if not (g.attempt == attempt and g.digest == s.gate.get("digest")
                                     and (in_flight or g.finished or g.failed))]
    for color in COLORS:
        obs = observed.colors.get(color)
        version: ServedVersion | None = None
        if color == s.active_color and s.stable is not None:
            version = s.stable
            # With an HPA the active color's replica count is the HPA's; only a template change
            # or a scale from zero is ours.
            if spec.hpa is None:
                replicas = spec.replicas
            else:
                replicas = obs.replicas if obs is not None and obs.replicas > 0 else n
        elif color == s.cand_color and s.cand is not None:
            version, replicas = s.cand, _cand_replicas(s, spec, observed)
        elif warm is not None and color == warm[0]:
            continue
        if version is not None:
            if obs is None or not obs.holds(version):
                ups.append(Scale(color, version, replicas))
            elif obs.replicas != replicas:
                # Same template: only the count changes (a template is never re-applied in place).
                ups.append(Scale(color, None, replicas))
        elif obs is not None and obs.replicas != 0:
            downs.append(Scale(color, None, 0))
    if s.cand is not None and s.cand_color and in_flight and _gate_job(s, observed) is None:
        ups.append(RunGate(s.cand_color, s.cand, attempt))
    switches: list[Action] = []
    preview = s.cand_color or s.active_color
    if preview and observed.preview_selector != preview:
        switches.append(SwitchPreview(preview))
    if s.active_color and observed.active_selector != s.active_color:
        switches.append(SwitchActive(s.active_color))
    return tuple(deletes + ups + switches + downs)


def plan(spec: ModelServeSpec, generation: int, desired: Resolution, observed: Observed, prior: Obj,
         requests: Requests, now: dt.datetime, endpoints: Mapping[str, str] | None = None,
         metering: Metering | None = None) -> Plan:
    """The next status of a ModelServe and the actions that get there (see the module docstring);
    with a ``metering``, its usage and cost too (status.py), counted again when the next
    accounting point is due."""
    s = RolloutState(prior, now)
    _decide(s, spec, desired, observed, requests)
    warm = s.warm_previous()
    if s.rollout.get("previousColor") and warm is None:
        s.event("Normal", "ScaledDown", f"{s.rollout['previousColor']} scaled down after {spec.rollout.scale_down_delay_seconds}s")
        s.rollout = {k: v for k, v in s.rollout.items() if k not in ("previousColor", "previous", "scaleDownAt")}
    elif warm is not None:
        at = parse_time(s.rollout["scaleDownAt"])
        assert at is not None
        s.requeue.append(max(1.0, (at - now).total_seconds()))
    status = compute_status(s, spec, generation, desired, observed, prior, endpoints or {}, metering)
    if metering is not None:
        due = usage_due(status.get("usage"), observed, now, metering.refresh_seconds)
        if due is not None:
            s.requeue.append(max(1.0, due))
    return Plan(_actions(s, spec, observed), status, tuple(s.events), min(s.requeue) if s.requeue else None)

