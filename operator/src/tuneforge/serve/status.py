"""The ModelServe's status: what exists (``Observed``, read by observe.py), the rollout's working
state (``RolloutState``, the status being decided), and the whole status computed from them
(``compute_status``), as the FineTuneJob room's status.py computes a FineTuneJob's. Pure.

plan.py decides a pass's transitions on a ``RolloutState`` and calls ``compute_status``;
reconcile.py writes the result the one way both rooms write a status (runtime.py: replaced, only
when it changed). Also here: the status of an invalid spec (``invalid_status``), the versions a
status names (``known_versions``) and the deadline a rollout in flight waits on
(``rollout_clock``, exported as metrics).

Usage and cost (``status.usage``, ``status.cost``; :func:`usage_status`): the GPUs the color
pods hold are integrated over time into GPU-seconds, counted at *accounting points* — when the
number of GPUs held changes (a color scaled, a pod added or gone: each changes a color
Deployment's status, which triggers a pass) and every ``Metering.refresh_seconds`` while
pods exist. Between two points the GPUs held were constant, so the sum is exact up to event
latency, and a pass that is not a point leaves the usage as it was (the no-op pass after our
own status write stays a no-op). Requests served come from the Prometheus that scrapes the
colors (vLLM's ``vllm:request_success_total``, read by reconcile.py at a point); the cost is
GPU-seconds x the price of one GPU-hour, per 1,000 requests once requests are known. A field
that cannot be computed (no price, no request count yet) is absent.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
from typing import Any, Mapping, Sequence

from ..runtime import now_iso, parse_time
from .gate import GateMeasures
from .names import ANNOTATION_RETRY
from .source import Resolution, ServedVersion
from .spec import ModelServeSpec, SpecError

__all__ = [
    "PHASES", "ColorState", "Event", "GateJob", "Observed", "RolloutState", "compute_status", "conditions",
    "invalid_status", "known_versions", "now_iso", "parse_time", "rollout_clock",
    "Metering", "gpus_held", "usage_due", "usage_status",
]

Obj = Mapping[str, Any]

PROGRESSING, HEALTHY, PAUSED, DEGRADED, FAILED = "Progressing", "Healthy", "Paused", "Degraded", "Failed"
PHASES = (PROGRESSING, HEALTHY, PAUSED, DEGRADED, FAILED)
GATE_SLACK_SECONDS = 120
"""A gate Job that has neither finished nor failed this long after its own timeout is lost."""


# --- inputs: what exists ---------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ColorState:
    """One color Deployment as observed."""

    version: str | None
    """Full digest of the version its template serves (its ``tuneforge.dev/version`` annotation)."""
    replicas: int
    """spec.replicas."""
    ready: int = 0
    updated: int = 0
    total: int = 0
    """status.readyReplicas, updatedReplicas, replicas."""
    current: bool = True
    """status.observedGeneration has caught up with metadata.generation."""
    created_at: dt.datetime | None = None
    template: str | None = None
    """The template hash its template was rendered with (its ``tuneforge.dev/template-hash`` annotation)."""
    gpus: int = 0
    """GPUs each of its pods asks for (its pod template's GPU limit)."""

    def holds(self, version: ServedVersion) -> bool:
        """Its template is ``version``'s rollout identity (digest and template hash)."""
        return self.version == version.digest and self.template == version.template_hash

    def serves(self, version: ServedVersion, n: int) -> bool:
        """Every one of ``n`` pods runs ``version`` and is ready, and no pod of an older template is left."""
        return (self.holds(version) and self.current and self.updated >= n and self.ready >= n
                and self.total <= self.updated)


@dataclasses.dataclass(frozen=True)
class GateJob:
    """A gate Job as observed: still running, or done with measures, or failed."""

    digest: str
    finished: bool = False
    failed: bool = False
    measures: GateMeasures | None = None
    message: str = ""
    attempt: int = 0
    """The rollout attempt it measures (status.gate.attempt when it was created)."""
    name: str = ""


@dataclasses.dataclass(frozen=True)
class Observed:
    colors: Mapping[str, ColorState] = dataclasses.field(default_factory=dict)
    active_selector: str | None = None
    """The color the active Service selects (None: no Service, or it selects no color yet)."""
    preview_selector: str | None = None
    gates: Mapping[str, GateJob] = dataclasses.field(default_factory=dict)
    """Every gate Job of the ModelServe, by Job name (only the current attempt's is read; the
    others are deleted)."""
    requests_served: float | None = None
    """Requests its colors served from status.usage.since to now, as Prometheus counts them
    (read only at an accounting point; None: not read, or Prometheus has no series yet)."""


@dataclasses.dataclass(frozen=True)
class Event:
    """A Kubernetes Event the pass posts (a transition: rollout started, gate passed, rolled back...)."""

    type: str
    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class Metering:
    """How a ModelServe's usage is priced and how often it is counted (from the operator's settings)."""

    gpu_hour_price: float | None = None
    """Price of one GPU for one hour of the servers' GPU resource (None: no status.cost)."""
    currency: str = "USD"
    refresh_seconds: float = 300.0
    """Longest time between two accounting points while pods exist (0: only when the GPUs held change)."""


# --- helpers --------------------------------------------------------------------------------

def version_of(raw: Obj | None) -> ServedVersion | None:
    return ServedVersion.from_status(raw) if raw else None


def version_status(v: ServedVersion, color: str) -> dict[str, Any]:
    return {"color": color, "display": f"{color} {v.short}", **v.to_status()}


# --- the rollout's working state -------------------------------------------------------------

class RolloutState:
    """The mutable working copy of the status while one plan is decided."""

    def __init__(self, prior: Obj, now: dt.datetime) -> None:
        self.now = now
        self.stamp = now_iso(now)
        self.active_color: str | None = prior.get("activeColor")
        self.stable = version_of((prior.get("active") or None))
        self.cand_color: str | None = prior.get("previewColor")
        self.cand = version_of(prior.get("preview") or None)
        self.rollout: dict[str, Any] = copy.deepcopy(dict(prior.get("rollout") or {}))
        self.gate: dict[str, Any] = copy.deepcopy(dict(prior.get("gate") or {}))
        self.rejected: dict[str, Any] | None = copy.deepcopy(prior.get("rejected")) or None
        self.abort_not_applied: dict[str, Any] | None = copy.deepcopy(prior.get("abortNotApplied")) or None
        self.history: list[dict[str, Any]] = [dict(h) for h in prior.get("history") or ()]
        self.events: list[Event] = []
        self.reason = ""
        self.message = ""
        self.requeue: list[float] = []

    def event(self, type_: str, reason: str, message: str) -> None:
        self.events.append(Event(type_, reason, message))

    def record(self, v: ServedVersion, outcome: str, color: str | None, limit: int) -> None:
        entry = {"digest": v.digest, "shortDigest": v.short, "outcome": outcome, "at": self.stamp, "version": v.to_status()}
        if color:
            entry["color"] = color
        self.history = (self.history + [entry])[-limit:]

    def elapsed(self, since: str | None) -> float:
        t = parse_time(since)
        return (self.now - t).total_seconds() if t else 0.0

    def warm_previous(self) -> tuple[str, ServedVersion] | None:
        """The previous color and version while its scale-down delay runs."""
        color = self.rollout.get("previousColor")
        prev = version_of(self.rollout.get("previous"))
        at = parse_time(self.rollout.get("scaleDownAt"))
        if color and prev and at and self.now < at:
            return color, prev
        return None


# --- the status -----------------------------------------------------------------------------

def _phase(s: RolloutState, spec: ModelServeSpec, desired: Resolution, observed: Observed) -> tuple[str, str, str]:
    active_ready = _active_ready(s, observed)
    if s.cand is not None:
        if s.reason == "WaitingForPromotion":
            return PAUSED, s.reason, s.message
        return PROGRESSING, s.reason or "Progressing", s.message or f"Rolling out {s.cand.short}"
    if s.rejected and (desired.version is None or desired.version.digest == s.rejected["digest"]):
        msg = f"{s.rejected['shortDigest']} was rolled back ({s.rejected['message']})"
        if s.stable is None:
            return FAILED, s.rejected["reason"], f"{msg}; nothing serves"
        return DEGRADED, s.rejected["reason"], f"{msg}; {s.active_color} serves {s.stable.short}; retry with {ANNOTATION_RETRY}"
    if desired.version is None:
        if s.stable is None:
            return FAILED if desired.blocked else PROGRESSING, desired.reason, desired.message
        return DEGRADED, desired.reason, f"{desired.message}; {s.active_color} keeps serving {s.stable.short}"
    if s.stable is None:
        return PROGRESSING, "Progressing", "Waiting to deploy"
    n = spec.replicas
    if active_ready < n:
        return DEGRADED, "ActiveNotReady", f"{active_ready}/{n} pods of {s.active_color} ready"
    return HEALTHY, "Serving", f"{s.active_color} serves {s.stable.short}"


def _active_ready(s: RolloutState, observed: Observed) -> int:
    obs = observed.colors.get(s.active_color or "")
    return obs.ready if obs is not None and s.stable is not None and obs.version == s.stable.digest else 0


def conditions(prior: Sequence[Obj], new: Sequence[tuple[str, str, str, str]], generation: int, stamp: str) -> list[dict[str, Any]]:
    old = {c.get("type"): c for c in prior}
    out = []
    for type_, status, reason, message in new:
        was = old.get(type_) or {}
        since = was.get("lastTransitionTime") if was.get("status") == status and was.get("lastTransitionTime") else stamp
        out.append({"type": type_, "status": status, "reason": reason, "message": message,
                    "lastTransitionTime": since, "observedGeneration": generation})
    return out


def compute_status(s: RolloutState, spec: ModelServeSpec, generation: int, desired: Resolution, observed: Observed, prior: Obj,
            endpoints: Mapping[str, str], metering: Metering | None = None) -> dict[str, Any]:
    """The ModelServe's whole status from the rollout's state after this pass's decisions (``s``),
    what the spec resolves to and what exists: phase, reason and message, the colors and their
    versions, gate, rollout, rejection, history, endpoints, kstatus conditions, and with a
    ``metering`` the usage and cost."""
    phase, reason, message = _phase(s, spec, desired, observed)
    active_ready = _active_ready(s, observed)
    # kstatus: the generation is observed once the object reflects it, i.e. no rollout is in
    # flight (its candidate promoted or rolled back). Until then the last such generation stays
    # (0 before the first), so Argo CD and Flux see the edit as in progress, not as served.
    in_flight = s.cand is not None
    # Pods of the active color not ready (a scale-up, a crash) may mend on their own: not stalled.
    stalled = phase in (DEGRADED, FAILED) and not in_flight and reason != "ActiveNotReady"
    observed_generation = min(int(prior.get("observedGeneration") or 0), generation) if in_flight else generation
    status: dict[str, Any] = {"phase": phase, "reason": reason, "message": message,
                              "observedGeneration": observed_generation, "readyReplicas": active_ready}
    if s.active_color and s.stable:
        status["activeColor"] = s.active_color
        status["active"] = version_status(s.stable, s.active_color)
    if s.cand_color and s.cand:
        status["previewColor"] = s.cand_color
        status["preview"] = version_status(s.cand, s.cand_color)
    if s.gate:
        status["gate"] = s.gate
    if s.rollout:
        status["rollout"] = s.rollout
    if s.rejected:
        status["rejected"] = s.rejected
    if s.abort_not_applied:
        status["abortNotApplied"] = s.abort_not_applied
    if s.history:
        status["history"] = s.history
    if endpoints:
        status["endpoints"] = dict(endpoints)
    if metering is not None:
        status["usage"] = usage_status(prior.get("usage"), observed, s.now, metering)
        cost = cost_status(status["usage"], metering)
        if cost is not None:
            status["cost"] = cost
    gate_outcome = s.gate.get("outcome")
    # Aborted / Cancelled: the attempt ended before its gate did; nothing was judged.
    gate_cond = {"Passed": "True", "Skipped": "True", "Failed": "False"}.get(gate_outcome or "", "Unknown")
    status["conditions"] = conditions(prior.get("conditions") or (), [
        ("Available", "True" if active_ready > 0 else "False", "Serving" if active_ready > 0 else "NoActiveColor",
         f"{active_ready} pods of {s.active_color} ready" if s.active_color else "No color is active yet"),
        ("Progressing", "True" if s.cand is not None else "False", reason if s.cand is not None else "Idle", message),
        # kstatus' own pair (Flux, kpt, cli-utils): Reconciling while a rollout is in flight,
        # Stalled when nothing more happens without the user (a rollback, an invalid source).
        ("Reconciling", "True" if in_flight else "False", reason if in_flight else "Idle", message if in_flight else ""),
        ("Stalled", "True" if stalled else "False", reason if stalled else "NotStalled", message if stalled else ""),
        ("Paused", "True" if phase == PAUSED else "False", reason if phase == PAUSED else "NotPaused",
         message if phase == PAUSED else ""),
        ("GatePassed", gate_cond, f"Gate{gate_outcome}" if gate_outcome else "NoGate",
         "; ".join(s.gate.get("reasons") or ()) or (f"{s.gate.get('shortDigest')}: {gate_outcome}" if gate_outcome else "")),
    ], generation, s.stamp)
    return status


# --- usage and cost -------------------------------------------------------------------------

def gpus_held(observed: Observed) -> tuple[int, int]:
    """(GPUs, pods) the color pods hold now: each color's pods (its Deployment's status.replicas,
    ready or not) times the GPUs its template asks for each."""
    return (sum(c.total * c.gpus for c in observed.colors.values()),
            sum(c.total for c in observed.colors.values()))


def usage_due(prior: Obj | None, observed: Observed, now: dt.datetime, refresh_seconds: float) -> float | None:
    """Seconds until the next accounting point: 0 when this pass is one (no usage yet, the GPUs
    held changed, or ``refresh_seconds`` passed while pods exist or GPUs were held), None when
    nothing is running to count."""
    gpus, pods = gpus_held(observed)
    counted = parse_time((prior or {}).get("countedAt"))
    if not prior or counted is None or gpus != int(prior.get("gpus") or 0):
        return 0.0
    if refresh_seconds <= 0 or (pods == 0 and gpus == 0):
        return None
    return max(0.0, refresh_seconds - (parse_time(now_iso(now)) - counted).total_seconds())  # type: ignore[operator]


def usage_status(prior: Obj | None, observed: Observed, now: dt.datetime, metering: Metering) -> dict[str, Any]:
    """status.usage at ``now``: at an accounting point the GPU-seconds grow by the time since the
    last point times the GPUs held since then (all the previous point counted), and the request
    count is Prometheus's when it was read; otherwise the prior usage unchanged."""
    if usage_due(prior, observed, now, metering.refresh_seconds) != 0.0:
        return dict(prior or {})
    stamp = now_iso(now)
    gpus, _ = gpus_held(observed)
    counted = parse_time((prior or {}).get("countedAt"))
    if not prior or counted is None:
        return {"since": stamp, "countedAt": stamp, "gpus": gpus, "gpuSeconds": 0.0}
    # Between whole-second stamps, so consecutive intervals add up without overlap.
    elapsed = max(0.0, (parse_time(stamp) - counted).total_seconds())  # type: ignore[operator]
    usage: dict[str, Any] = {"since": prior.get("since") or prior["countedAt"], "countedAt": stamp, "gpus": gpus,
                             "gpuSeconds": round(float(prior.get("gpuSeconds") or 0.0) + elapsed * int(prior.get("gpus") or 0), 1)}
    requests = observed.requests_served if observed.requests_served is not None else prior.get("requests")
    if requests is not None:
        usage["requests"] = int(round(requests))
    return usage


def cost_status(usage: Obj, metering: Metering) -> dict[str, Any] | None:
    """status.cost: the usage's GPU-seconds x the price of one GPU-hour, and per 1,000 requests
    once some were served (None without a price)."""
    price = metering.gpu_hour_price
    if price is None or "gpuSeconds" not in usage:
        return None
    amount = round(float(usage["gpuSeconds"]) / 3600.0 * price, 4)
    cost: dict[str, Any] = {"estimated": amount, "currency": metering.currency, "gpuHourPrice": price,
                            "display": f"{amount:.2f} {metering.currency}"}
    requests = usage.get("requests")
    if requests:
        per1k = round(amount / requests * 1000.0, 6)
        cost["per1kRequests"] = per1k
        cost["per1kRequestsDisplay"] = f"{per1k:.4f} {metering.currency}"
    return cost


def known_versions(status: Obj) -> list[ServedVersion]:
    """Versions this ModelServe served or tried (history, active, preview): source.resolve takes
    a FineTuneJob revision's URI and base from them when the job's status no longer names them."""
    raws = [h.get("version") for h in status.get("history") or ()] + [status.get("active"), status.get("preview")]
    return [ServedVersion.from_status(r) for r in raws if r and r.get("adapters")]


def invalid_status(prior: Obj, error: SpecError | str, generation: int, now: dt.datetime,
                   reason: str = "InvalidSpec") -> dict[str, Any]:
    """Phase Failed naming the field; what serves keeps serving (its status is kept). Also a
    Secret refused for a user-chosen endpoint (``reason`` SecretNotAllowed / SecretNotFound)."""
    stamp = now_iso(now)
    old = {c.get("type"): c for c in prior.get("conditions") or ()}
    ready = old.get("Ready") or {}
    since = ready.get("lastTransitionTime") if ready.get("reason") == reason else stamp
    conditions = [c for t, c in old.items() if t != "Ready"] + [
        {"type": "Ready", "status": "False", "reason": reason, "message": str(error),
         "lastTransitionTime": since, "observedGeneration": generation}]
    return {**prior, "phase": FAILED, "reason": reason, "message": str(error), "observedGeneration": generation,
            "conditions": conditions}


def rollout_clock(spec: ModelServeSpec, status: Obj) -> tuple[float, float] | None:
    """(Unix start, seconds allowed) of the deadline-bound wait of the rollout in flight, or None
    when nothing waits on a deadline (no rollout, or one paused for promotion or switched):
    the candidate's readiness (``progressDeadlineSeconds`` from ``startedAt``, or from
    ``notReadySince`` after its gate) or its gate (the gate's timeout and slack from its start)."""
    if not status.get("preview") or status.get("phase") != "Progressing":
        return None
    rollout, gate = status.get("rollout") or {}, status.get("gate") or {}
    deadline = float(spec.rollout.progress_deadline_seconds)
    if gate.get("outcome") == "Running" and spec.rollout.gate is not None:
        since, deadline = gate.get("startedAt"), float(spec.rollout.gate.timeout_seconds + GATE_SLACK_SECONDS)
    elif "readyAt" not in rollout:
        since = rollout.get("startedAt")
    else:
        since = rollout.get("notReadySince")
    started = parse_time(since)
    return None if started is None else (started.timestamp(), deadline)
