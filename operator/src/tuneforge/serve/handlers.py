"""Kopf handlers of the ModelServe room: thin — each finds the ModelServe an event concerns and
runs its reconcile in the background (serialised and coalesced per ModelServe). The room plugs
into the one start-up (``startup.plug``): its ``start`` gets the runtime and Kopf's indexes.

Triggers: the ModelServe's own events (spec, promote/abort/retry annotations), its color
Deployments and gate Jobs (labelled ``tuneforge.dev/modelserve``), the FineTuneJob it follows
(the ``modelserves_by_finetunejob`` index maps a FineTuneJob to its followers, so a new passing
revision rolls out at once), and timers: a reconcile that returns a delay is run
again after it; any other failure is retried with backoff and a Warning Event.

Indexes (filled before any handler runs) hold the ModelServes and projections of their children
(color Deployments, Services, gate Jobs; ``observe.project_child``), so a reconcile — the no-op
pass after its own status write included — lists nothing, and an operator restart sees every
existing child before it acts.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import kopf

from .. import FTJ_PLURAL, GROUP, MS_PLURAL, VERSION, startup
from ..promapi import PromApi
from ..runtime import Key, Packed, Runtime, pack, unpack
from ..workqueue import Outcome, WorkQueue
from .names import ANNOTATION_ABORT, ANNOTATION_PROMOTE, ANNOTATION_RETRY, LABEL_MODELSERVE
from .observe import project_child
from .reconcile import ChildrenFn, Room, gate_pod, metering, reconcile

log = logging.getLogger(__name__)
CHILD = {LABEL_MODELSERVE: kopf.PRESENT}
_REQUESTS = (ANNOTATION_PROMOTE, ANNOTATION_ABORT, ANNOTATION_RETRY)


def _project(body: kopf.Body) -> Packed:
    """What the index keeps of a ModelServe (JSON text): what reconcile reads, nothing more."""
    m = body["metadata"]
    return pack({
        "apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
        "metadata": {"name": m["name"], "namespace": m["namespace"], "uid": m["uid"], "generation": m.get("generation"),
                     "annotations": {k: v for k, v in (m.get("annotations") or {}).items() if k in _REQUESTS}},
        "spec": body.get("spec"), "status": body.get("status"),
    })


def work_queue(room: Room) -> WorkQueue[Key]:
    """The ModelServes' work queue: every trigger runs ``reconcile`` through it, serialised and
    coalesced per ModelServe; a rollout's "not yet" comes back as a timer, any failure is retried
    with backoff (a non-transient one posts a Warning Event)."""
    return room.work_queue(reconcile)


_state: dict[str, Any] = {}


@kopf.index(GROUP, VERSION, MS_PLURAL)
async def modelserves(*, namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Key, str]:
    return {(namespace or "", name): _project(body)}


@kopf.index(GROUP, VERSION, MS_PLURAL)
async def modelserves_by_finetunejob(*, namespace: str | None, name: str, spec: kopf.Spec, **_: Any) -> dict[Key, str] | None:
    job = (spec.get("adapter") or {}).get("fineTuneJob")
    return {(namespace or "", job): name} if job else None


def _child(kind: str, namespace: str | None, labels: kopf.Labels, body: kopf.Body) -> dict[Key, str]:
    return {(namespace or "", labels[LABEL_MODELSERVE]): pack(project_child(kind, body))}


# Named apart from the FineTuneJob room's job_index: Kopf passes every index by its name.
@kopf.index("apps", "v1", "deployments", labels=CHILD)
async def modelserve_deployments(*, namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Key, str]:
    return _child("Deployment", namespace, labels, body)


@kopf.index("", "v1", "services", labels=CHILD)
async def modelserve_services(*, namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Key, str]:
    return _child("Service", namespace, labels, body)


@kopf.index("batch", "v1", "jobs", labels=CHILD)
async def modelserve_jobs(*, namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Key, str]:
    return _child("Job", namespace, labels, body)


def children_from(indexes: dict[str, Any]) -> ChildrenFn:
    """``Runtime.children`` over Kopf's indexes of the children, by kind."""
    def children(kind: str, namespace: str, name: str) -> list[dict[str, Any]]:
        return [unpack(text) for text in indexes[kind].get((namespace, name)) or ()]

    return children


async def start(rt: Runtime, indexes: Mapping[str, Any]) -> None:
    """The room's start (``startup.plug``): its state over the runtime and its indexes, and its
    work queue."""
    children = children_from({"Deployment": indexes["modelserve_deployments"], "Service": indexes["modelserve_services"],
                              "Job": indexes["modelserve_jobs"]})
    prometheus = PromApi(rt.settings.prometheus_url) if rt.settings.prometheus_url.strip() else None
    room = Room(rt=rt, modelserves=indexes["modelserves"], children=children, gate_pod=gate_pod(rt.settings),
                metering=metering(rt.settings), prometheus=prometheus)
    _state["room"] = room
    _state["queue"] = work_queue(room)


async def stop() -> None:
    _state.pop("queue", None)
    room = _state.pop("room", None)
    if room is not None and room.prometheus is not None:
        await room.prometheus.close()


startup.plug(start, stop)


@kopf.on.event(GROUP, VERSION, MS_PLURAL)
async def modelserve_event(*, type: str | None, namespace: str | None, name: str, uid: str, **_: Any) -> None:
    """Created, listed at start-up, edited, annotated, or our own status write (a cheap no-op pass)."""
    queue: WorkQueue[Key] = _state["queue"]
    if type == "DELETED":
        queue.forget((namespace or "", name))  # children go by owner-reference GC
        _state["room"].forget((namespace or "", name), uid)
        return
    queue.kick((namespace or "", name))


@kopf.on.event("apps", "v1", "deployments", labels=CHILD)
async def color_event(*, namespace: str | None, labels: kopf.Labels, **_: Any) -> None:
    _state["queue"].kick((namespace or "", labels[LABEL_MODELSERVE]))


@kopf.on.event("batch", "v1", "jobs", labels=CHILD)
async def gate_event(*, namespace: str | None, labels: kopf.Labels, **_: Any) -> None:
    _state["queue"].kick((namespace or "", labels[LABEL_MODELSERVE]))


@kopf.on.event(GROUP, VERSION, FTJ_PLURAL)
async def followed_finetunejob_event(*, namespace: str | None, name: str, **kwargs: Any) -> None:
    """A FineTuneJob's status changed: every ModelServe following it looks again."""
    for ms in kwargs["modelserves_by_finetunejob"].get((namespace or "", name), ()):
        _state["queue"].kick((namespace or "", ms))
