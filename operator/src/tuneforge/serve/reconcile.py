"""Reconcile one ModelServe: list its children, observe, resolve, plan, apply, write status.

The thin, writing half of the room; every decision is plan.py's. One pass:

1. parse the spec (an invalid one is a ``Failed`` status naming the field; nothing is touched;
   so is an ``s3.endpoint`` whose key Secrets have not opted in for it, see endpoint_secrets);
2. read the children this ModelServe controls (color Deployments, Services, gate Jobs) from
   ``Room.children`` — Kopf's indexes in the operator, no list calls — with a finished gate
   pod's termination message (read once per gate Job), and the followed FineTuneJob's status as
   data;
3. resolve what to serve (the ModelServe's own history counts as already-served versions),
   stamp it with the hash of the template it renders (builders.template_hash: with the digest,
   the rollout's identity) and plan; apply the actions in the order given; then the children that follow from the status
   (Services, PDB, HPA on the active color, InferencePools where their CRD is served, old
   version ConfigMaps removed);
4. write the status only when it changed, post the plan's Events, add what the status's usage
   grew by to the usage metrics, and return the plan's delay when a timer needs another look
   (the handlers' work queue schedules it).

At an accounting point of the usage (status.py), and with a Prometheus configured
(``prometheus_url``), step 2 also asks Prometheus for the requests served (served.py).

The actions are a diff against what is observed, so a reconcile that dies half way is finished
by the next one. A transient API error leaves the status unwritten (the pass is retried at
once); a child that cannot be applied (its name taken by a foreign object: ``ChildConflict``;
refused by the apiserver: ``ApplyFailed``) is written into the status with the plan's state, so
the user sees why and the progress deadline keeps counting from the rollout's start.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from typing import Any, Callable, Iterable, Mapping


from .. import metrics
from ..promapi import PromApi
from ..endpoint_secrets import refusal
from ..kube import ForeignChild, Kube, api_error_message, is_transient
from ..labels import LABEL_ROLE
from ..runtime import Key, Obj, Packed, RoomState, one
from ..settings import Settings
from ..workqueue import Outcome
from .builders import (
    GatePod, ServeContext, build_active_service, build_color_deployment, build_gate_job, build_hpa,
    build_inference_pool, build_pdb, build_preview_service, build_scaled_object, build_version_config_map, endpoints,
    serve_context, template_hash,
)
from .names import (
    ANNOTATION_TEMPLATE, ANNOTATION_VERSION, COLORS, LABEL_COLOR, LABEL_MODELSERVE, LABEL_VERSION, active_service_name, color_name,
    preview_service_name,
)
from .observe import observe
from .plan import DeleteGate, Plan, Requests, RunGate, Scale, SwitchActive, SwitchPreview, plan
from .server import GPU_RESOURCE
from .served import deployment_pods_regex, requests_query
from .status import PHASES, Event, Metering, invalid_status, known_versions, rollout_clock, usage_due
from .source import job_head, resolve
from .spec import ModelServeSpec, SpecError, endpoint_secrets, parse_spec

__all__ = [
    "Room", "count_events", "count_usage", "gate_pod", "invalid_status", "known_versions", "metering", "reconcile",
    "rollout_clock", "secrets_refused",
]

log = logging.getLogger(__name__)
ChildrenFn = Callable[[str, str, str], Iterable[Obj]]
"""(kind, namespace, ModelServe name) -> its children of that kind (``Deployment``, ``Service``,
``Job``: those labelled with the ModelServe, as ``observe.project_child`` keeps them)."""
GATE_CONTAINER = "gate"
SECRET_RECHECK_SECONDS = 30.0


def metering(settings: Settings) -> Metering:
    """How usage is priced and counted, from the operator's settings: the price of one GPU-hour
    of the servers' GPU resource (``nvidia.com/gpu``), as for a FineTuneJob."""
    return Metering(settings.gpu_hour_price(GPU_RESOURCE), settings.cost_currency, settings.serve_usage_interval)


def gate_pod(settings: Settings) -> GatePod:
    """The gate Job's pod settings (image, pull policy, placement) from the operator's settings."""
    selector, tolerations, annotations = settings.gate_placement()
    return GatePod(settings.gate_image, settings.image_pull_policy, selector, tuple(tolerations), annotations)


@dataclasses.dataclass(kw_only=True)
class Room(RoomState):
    """The ModelServe room's state: the runtime, Kopf's index of ModelServes, their children
    (``children``: Kopf's indexes in the operator) and what the operator keeps between passes."""

    KIND = "ModelServe"
    modelserves: Mapping[Key, Iterable[Packed]]
    children: ChildrenFn
    gate_pod: GatePod
    gate_messages: dict[tuple[str, str], dict[str, str]] = dataclasses.field(default_factory=dict)
    """Per ModelServe, its finished gate Jobs' termination messages by Job uid (a finished pod's
    message does not change, so it is read once, not on every pass)."""
    tally: metrics.PhaseTally = dataclasses.field(
        default_factory=lambda: metrics.PhaseTally(PHASES, metrics.MODELSERVES_BY_PHASE))
    metering: Metering | None = None
    """How usage is priced and counted (None: no status.usage, no status.cost)."""
    prometheus: PromApi | None = None
    """Where requests served are read (None: no ``prometheus_url``, no status.usage.requests)."""

    def body(self, key: Key) -> dict[str, Any] | None:
        return one(self.modelserves.get(key))

    def forget(self, key: Key, uid: str | None) -> None:
        self.gate_messages.pop(key, None)
        self.forget_status(uid)
        if uid:
            self.tally.set(uid, None)
        metrics.forget("ModelServe", *key)


async def secrets_refused(kube: Kube, namespace: str, spec: ModelServeSpec) -> tuple[str, str] | None:
    """(reason, message) when a Secret the spec sends to a user-chosen endpoint has not opted in
    for it (review OP-2): checked before any child is written, on every pass."""
    for ref in endpoint_secrets(spec):
        refused = refusal(ref, await kube.secret_annotations(namespace, ref.secret), namespace)
        if refused:
            return refused
    return None


def _controlled(objs: Iterable[Obj], uid: str) -> list[Obj]:
    """Only children whose controller is this ModelServe (a label proves nothing)."""
    return [o for o in objs if any(r.get("controller") and r.get("uid") == uid
                                   for r in (o.get("metadata") or {}).get("ownerReferences") or ())]


def _finished(job: Obj) -> bool:
    return any(c.get("status") == "True" and c.get("type") in ("Complete", "Failed")
               for c in (job.get("status") or {}).get("conditions") or ())


async def _apply(room: Room, ctx: ServeContext, spec: ModelServeSpec, p: Plan, services: dict[str, Obj]) -> None:
    kube = room.kube
    for action in p.actions:
        if isinstance(action, Scale) and action.version is not None:
            await kube.create(build_version_config_map(ctx, spec, action.version))
            await kube.apply(build_color_deployment(ctx, spec, action.color, action.version, action.replicas))
        elif isinstance(action, Scale):
            await kube.merge_patch("Deployment", ctx.namespace, color_name(ctx.name, action.color),
                                   {"spec": {"replicas": action.replicas}})
        elif isinstance(action, RunGate):
            await kube.create(build_gate_job(ctx, spec, action.version, room.gate_pod, action.attempt))
        elif isinstance(action, DeleteGate):
            await kube.delete("Job", ctx.namespace, action.name)
        elif isinstance(action, (SwitchActive, SwitchPreview)):
            active = isinstance(action, SwitchActive)
            name = active_service_name(ctx.name) if active else preview_service_name(ctx.name)
            # Not indexed yet (created a moment ago): creating it finds it, and it is patched.
            if name in services or not await kube.create((build_active_service if active else build_preview_service)(ctx, action.color)):
                await kube.merge_patch("Service", ctx.namespace, name, {"spec": {"selector": {LABEL_COLOR: action.color}}})
            services[name] = {}


async def _static_children(room: Room, ctx: ServeContext, spec: ModelServeSpec, status: Obj,
                           services: dict[str, Obj]) -> None:
    """The children that follow from the status rather than from a rollout step, converged on
    every pass: Services (when missing), the PDBs, the HPA and the InferencePools. The last
    three are listed (not indexed) and compared in full with what is wanted: drift and edited
    fields are applied, a deleted one is recreated, one no longer wanted is deleted."""
    kube, ns = room.kube, ctx.namespace
    active, preview = status.get("activeColor"), status.get("previewColor") or status.get("activeColor")
    if active_service_name(ctx.name) not in services:
        await kube.create(build_active_service(ctx, active))
    if preview_service_name(ctx.name) not in services:
        await kube.create(build_preview_service(ctx, preview))
    mine: dict[str, str | None] = {LABEL_MODELSERVE: ctx.name}
    uid = ctx.owner_references[0]["uid"] if ctx.owner_references else ""
    await _converge(kube, "PodDisruptionBudget", ns, uid, await kube.list_labelled("PodDisruptionBudget", ns, mine),
                    [build_pdb(ctx, color) for color in COLORS])
    await _autoscaling(room, ctx, spec, active, uid)
    # One list call tells whether the InferencePool CRD is served (installed later: used then).
    pools = await kube.list_if_served("InferencePool", ns, mine)
    if pools is None:
        if spec.inference_pool is not None:
            room.log(log, (ns, ctx.name)).info("ModelServe %s/%s asks for InferencePools but their CRD is not installed: skipped",
                                               ns, ctx.name)
        return
    # The pools take their colors from the same status as the Services' switches in this pass.
    await _converge(kube, "InferencePool", ns, uid, pools, [build_inference_pool(ctx, spec, "active", active),
                                                            build_inference_pool(ctx, spec, "preview", preview)])


async def _autoscaling(room: Room, ctx: ServeContext, spec: ModelServeSpec, active: str | None, uid: str) -> None:
    """The active color's autoscaler: where KEDA is used (``prometheus_url`` is set and the
    ScaledObject CRD is served) a ScaledObject, and KEDA makes the HPA; otherwise the operator's
    own HPA. Either follows the active color (moved on a switch, never pointed at a candidate); the
    one not in use is deleted, the HPA before the ScaledObject's takes its name. Until a color is
    active, nothing changes (and nothing is listed)."""
    if spec.hpa is not None and not active:
        return
    kube, ns = room.kube, ctx.namespace
    mine: dict[str, str | None] = {LABEL_MODELSERVE: ctx.name}
    address = room.settings.prometheus_url
    # One list call tells whether the ScaledObject CRD is served (KEDA installed later: used then).
    scaled = await kube.list_if_served("ScaledObject", ns, mine) if address else None
    hpas = await kube.list_labelled("HorizontalPodAutoscaler", ns, mine)
    if scaled is None:
        await _converge(kube, "HorizontalPodAutoscaler", ns, uid, hpas, [build_hpa(ctx, spec, active)] if active else [])
        return
    await _converge(kube, "HorizontalPodAutoscaler", ns, uid, hpas, [])
    want = None
    if spec.hpa is not None and active:
        deployment = color_name(ctx.name, active)
        query = room.settings.keda_trigger_query(spec.hpa.metric, ns, deployment, deployment_pods_regex(deployment))
        want = build_scaled_object(ctx, spec, active, address, query)
    await _converge(kube, "ScaledObject", ns, uid, scaled, [want])


async def _converge(kube: Kube, kind: str, ns: str, uid: str, have: Iterable[Obj], want: list[dict[str, Any] | None]) -> None:
    """Apply each wanted object whose spec or labels differ from what exists (server-side apply
    of the whole object), and delete the ones this ModelServe controls that are not wanted."""
    existing = {o["metadata"]["name"]: o for o in _controlled(have, uid)}
    wanted = [w for w in want if w is not None]
    for w in wanted:
        old = existing.get(w["metadata"]["name"])
        if old is None or not _covers(old.get("spec"), w["spec"]) or \
                not _covers(old["metadata"].get("labels"), w["metadata"]["labels"]):
            await kube.apply(w)
    for name in set(existing) - {w["metadata"]["name"] for w in wanted}:
        await kube.delete(kind, ns, name)


def _covers(have: Any, want: Any) -> bool:
    """Whether ``have`` holds every field of ``want`` with its value (the apiserver adds defaults,
    such as an HPA's scale-up policies, that are not drift)."""
    if isinstance(want, Mapping):
        return isinstance(have, Mapping) and all(_covers(have.get(k), v) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(have, list) and len(have) == len(want) and all(_covers(h, w) for h, w in zip(have, want))
    return bool(have == want)


async def _drop_old_configs(room: Room, ctx: ServeContext, deployments: list[Obj], p: Plan) -> None:
    """Delete version ConfigMaps no color's template mounts any more (after a scale-down or a
    new version, the only times that set changes)."""
    templates = _templates(deployments)
    for a in p.actions:
        if isinstance(a, Scale) and a.version is not None:
            templates[a.color] = (a.version.digest, a.version.template_hash)
    keep = set(templates.values())
    for cm in await room.kube.list_labelled("ConfigMap", ctx.namespace, {LABEL_MODELSERVE: ctx.name, LABEL_VERSION: None}):
        if _identity(cm) not in keep:
            await room.kube.delete("ConfigMap", ctx.namespace, cm["metadata"]["name"])


def _identity(obj: Obj) -> tuple[str | None, str | None]:
    """(digest, template hash) a color Deployment or version ConfigMap was rendered for."""
    a = obj["metadata"].get("annotations") or {}
    return a.get(ANNOTATION_VERSION), a.get(ANNOTATION_TEMPLATE)


def _templates(deployments: list[Obj]) -> dict[str, tuple[str | None, str | None]]:
    """Color -> the rollout identity its template serves."""
    return {(d["metadata"].get("labels") or {}).get(LABEL_COLOR, ""): _identity(d) for d in deployments}


async def _gate_messages(room: Room, ns: str, name: str, jobs: list[Obj]) -> list[tuple[Obj, str | None]]:
    """The gate Jobs with their finished pod's termination message (None while running)."""
    known = room.gate_messages.get((ns, name), {})
    out: list[tuple[Obj, str | None]] = []
    for job in jobs:
        uid = job["metadata"].get("uid") or ""
        message = known.get(uid)
        if message is None and _finished(job):
            message = await room.kube.job_termination_message(ns, job["metadata"]["name"], GATE_CONTAINER)
        out.append((job, message))
    # Only the Jobs that still exist are remembered.
    room.gate_messages[(ns, name)] = {j["metadata"].get("uid") or "": m for j, m in out if m is not None}
    return out


_GATE_OUTCOMES = {"GatePassed": "Passed", "GateFailed": "Failed", "GateError": "Error"}
ROLLBACK_REASONS = ("GateFailed", "GateError", "ProgressDeadlineExceeded", "Aborted", "RolledBack")
"""The plan's Event reasons that mean a rollback (``_reject``'s reasons, and ``_switch``'s
RolledBack back to the warm previous color)."""


def count_events(namespace: str, name: str, events: Iterable[Event]) -> None:
    """Gate results and rollbacks, counted from the plan's Events (each posted once, for the
    transition the status write records)."""
    for e in events:
        outcome = _GATE_OUTCOMES.get(e.reason)
        if outcome is not None:
            metrics.GATE_EVALUATIONS.labels("ModelServe", namespace, name, outcome).inc()
        if e.reason in ROLLBACK_REASONS:
            metrics.ROLLBACKS.labels(namespace, name, e.reason).inc()


def _clock_metrics(namespace: str, name: str, spec: ModelServeSpec | None, status: Obj) -> None:
    clock = rollout_clock(spec, status) if spec is not None else None
    if clock is None:
        metrics.drop(metrics.ROLLOUT_STARTED, namespace, name)
        metrics.drop(metrics.ROLLOUT_DEADLINE, namespace, name)
    else:
        metrics.ROLLOUT_STARTED.labels(namespace, name).set(clock[0])
        metrics.ROLLOUT_DEADLINE.labels(namespace, name).set(clock[1])


async def reconcile(room: Room, key: Key, now: dt.datetime | None = None) -> Outcome:
    """One pass over the ModelServe ``key`` (see the module docstring); returns the seconds after
    which a pending timer (deadline, gate poll, scale-down) needs another pass, else None."""
    body = room.body(key)
    if body is None:
        return None
    meta = body["metadata"]
    try:
        spec: ModelServeSpec | None = parse_spec(body.get("spec") or {})
    except SpecError:
        spec = None
    metrics.seed_counters("ModelServe", meta["namespace"], meta["name"], _GATE_OUTCOMES.values(), ROLLBACK_REASONS)
    if room.metering is not None:
        metrics.seed_serving(meta["namespace"], meta["name"],
                             room.metering.currency if room.metering.gpu_hour_price is not None else None)
    status, after = await _reconcile(room, body, now or dt.datetime.now(dt.timezone.utc))
    room.tally.set(meta["uid"], status.get("phase"))
    _clock_metrics(meta["namespace"], meta["name"], spec, status)
    return None if after is None else float(after or room.settings.retry_delay)


async def _reconcile(room: Room, body: Obj, now: dt.datetime) -> tuple[dict[str, Any], float | None]:
    meta = body["metadata"]
    ns, name, uid, generation = meta["namespace"], meta["name"], meta["uid"], int(meta.get("generation") or 0)
    prior = room.last_status(body)
    try:
        spec = parse_spec(body.get("spec") or {})
    except SpecError as exc:
        status = invalid_status(prior, exc, generation, now)
        if status != prior:
            await room.write_status(body, status)
            room.emit(body, "Warning", "InvalidSpec", str(exc))
        return status, None  # permanent: nothing to retry until the spec changes
    refused = await secrets_refused(room.kube, ns, spec)
    if refused is not None:
        # No watch announces a Secret's annotation: looked at again after SECRET_RECHECK_SECONDS.
        status = invalid_status(prior, refused[1], generation, now, reason=refused[0])
        if status != prior:
            await room.write_status(body, status)
            room.emit(body, "Warning", refused[0], refused[1])
        return status, SECRET_RECHECK_SECONDS
    ctx = serve_context(body, spec, room.settings.server_image)
    kube = room.kube
    deployments = _controlled(room.children("Deployment", ns, name), uid)
    services: dict[str, Obj] = {s["metadata"]["name"]: s for s in _controlled(room.children("Service", ns, name), uid)}
    jobs = [j for j in _controlled(room.children("Job", ns, name), uid)
            if (j["metadata"].get("labels") or {}).get(LABEL_ROLE) == "gate"]
    observed = observe(name, deployments, services.values(), await _gate_messages(room, ns, name, jobs))
    usage = prior.get("usage")
    if room.prometheus is not None and room.metering is not None and \
            usage_due(usage, observed, now, room.metering.refresh_seconds) == 0.0:
        expr = requests_query(ns, name, (usage or {}).get("since"), now)
        if expr is not None:
            observed = dataclasses.replace(observed, requests_served=await room.prometheus.scalar(expr, now))
    ftj_status, head = None, "lm"
    if spec.fine_tune_job:
        ftj = await kube.get("FineTuneJob", ns, spec.fine_tune_job)
        ftj_status = (ftj.get("status") or {}) if ftj is not None else None
        head = job_head(ftj)
    desired = resolve(spec, ftj_status, known_versions(prior), head)
    if desired.version is not None:
        v = desired.version
        desired = dataclasses.replace(desired, version=dataclasses.replace(v, template_hash=template_hash(ctx, spec, v)))
    p = plan(spec, generation, desired, observed, prior, Requests.from_annotations(meta.get("annotations")), now,
             endpoints(ctx), room.metering)
    try:
        await _apply(room, ctx, spec, p, services)
        await _static_children(room, ctx, spec, p.status, services)
    except Exception as exc:
        if is_transient(exc) and not isinstance(exc, ForeignChild):
            raise  # retried at once with backoff: the next pass redoes the same diff
        # A name taken by a foreign object, or a child the apiserver refuses: every pass would
        # fail here, so the status says why (and keeps startedAt, so the progress deadline runs).
        # The plan's actions are a diff against what is observed: what failed is planned again.
        reason = "ChildConflict" if isinstance(exc, ForeignChild) else "ApplyFailed"
        await _finish(room, body, prior, {**p.status, "reason": reason, "message": api_error_message(exc)[:1000]}, p)
        raise
    if any(isinstance(a, Scale) for a in p.actions):
        await _drop_old_configs(room, ctx, deployments, p)
    await _finish(room, body, prior, p.status, p)
    return p.status, p.requeue_after


def count_usage(namespace: str, name: str, prior: Obj, status: Obj, metering: Metering) -> None:
    """Add what status.usage's GPU-seconds grew by since ``prior`` (a new ``since``: all of them)
    to the GPU-seconds metric, and its price to the cost metric when there is one. Called once the
    status is written, so a pass retried after a failed write counts nothing twice."""
    old, new = prior.get("usage") or {}, status.get("usage") or {}
    base = float(old.get("gpuSeconds") or 0.0) if old.get("since") == new.get("since") else 0.0
    grown = float(new.get("gpuSeconds") or 0.0) - base
    if grown <= 0:
        return
    metrics.MODELSERVE_GPU_SECONDS.labels(namespace, name).inc(grown)
    if metering.gpu_hour_price is not None:
        metrics.MODELSERVE_COST.labels(namespace, name, metering.currency).inc(grown / 3600.0 * metering.gpu_hour_price)


async def _finish(room: Room, body: Obj, prior: Obj, status: dict[str, Any], p: Plan) -> None:
    if status != prior:
        await room.write_status(body, status)
        if room.metering is not None:
            count_usage(body["metadata"]["namespace"], body["metadata"]["name"], prior, status, room.metering)
    for e in p.events:
        room.emit(body, e.type, e.reason, e.message)
    count_events(body["metadata"]["namespace"], body["metadata"]["name"], p.events)


