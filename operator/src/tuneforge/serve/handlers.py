"""Kopf handlers of the ModelServe room: thin — each finds the ModelServe an event concerns and
runs its reconcile in the background (serialised and coalesced per ModelServe).

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

import json
import logging
from typing import Any

import kopf

from .. import FTJ_PLURAL, GROUP, MS_PLURAL, VERSION
from ..kube import Kube
from ..settings import Settings
from ..workqueue import Outcome, WorkQueue
from .builders import GatePod
from .names import ANNOTATION_ABORT, ANNOTATION_PROMOTE, ANNOTATION_RETRY, LABEL_MODELSERVE
from .observe import project_child
from .reconcile import ChildrenFn, Runtime, reconcile

log = logging.getLogger(__name__)
Key = tuple[str, str]
CHILD = {LABEL_MODELSERVE: kopf.PRESENT}
_REQUESTS = (ANNOTATION_PROMOTE, ANNOTATION_ABORT, ANNOTATION_RETRY)


def _project(body: kopf.Body) -> str:
    """What the index keeps of a ModelServe (JSON text): what reconcile reads, nothing more."""
    m = body["metadata"]
    return json.dumps({
        "apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
        "metadata": {"name": m["name"], "namespace": m["namespace"], "uid": m["uid"], "generation": m.get("generation"),
                     "annotations": {k: v for k, v in (m.get("annotations") or {}).items() if k in _REQUESTS}},
        "spec": body.get("spec"), "status": body.get("status"),
    }, separators=(",", ":"))


def work_queue(rt: Runtime, bodies: Any, settings: Settings) -> WorkQueue[Key]:
    """The ModelServes' work queue: every trigger runs ``reconcile`` of the ModelServe's indexed
    body through it, serialised and coalesced per ModelServe; a rollout's "not yet" comes back
    as a timer, any failure is retried with backoff (a non-transient one posts a Warning Event)."""

    def body(key: Key) -> dict[str, Any] | None:
        packed = next(iter(bodies.get(key) or ()), None)
        return None if packed is None else json.loads(packed)  # type: ignore[no-any-return]

    async def work(key: Key) -> Outcome:
        ms = body(key)
        if ms is None:
            return None
        _, requeue_after = await reconcile(rt, ms)
        return None if requeue_after is None else float(requeue_after or settings.retry_delay)

    def failed(key: Key, text: str) -> None:
        ms = body(key)
        if ms is not None:
            rt.emit(ms, "Warning", "ReconcileFailed", text)

    return WorkQueue("ModelServe", work, retry_delay=settings.retry_delay,
                     retry_max_delay=settings.retry_max_delay, on_failure=failed)


_state: dict[str, Any] = {}


@kopf.index(GROUP, VERSION, MS_PLURAL)
async def modelserves(*, namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Key, str]:
    return {(namespace or "", name): _project(body)}


@kopf.index(GROUP, VERSION, MS_PLURAL)
async def modelserves_by_finetunejob(*, namespace: str | None, name: str, spec: kopf.Spec, **_: Any) -> dict[Key, str] | None:
    job = (spec.get("adapter") or {}).get("fineTuneJob")
    return {(namespace or "", job): name} if job else None


def _child(kind: str, namespace: str | None, labels: kopf.Labels, body: kopf.Body) -> dict[Key, str]:
    return {(namespace or "", labels[LABEL_MODELSERVE]): json.dumps(project_child(kind, body), separators=(",", ":"))}


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
        return [json.loads(text) for text in indexes[kind].get((namespace, name)) or ()]

    return children


def _emit(body: Any, type_: str, reason: str, message: str) -> None:
    kopf.event(body, type=type_, reason=reason, message=message)


@kopf.on.startup()
async def serve_startup(**kwargs: Any) -> None:
    # Kopf passes every index to every handler by its function's name.
    modelserves_index = kwargs["modelserves"]
    children = children_from({"Deployment": kwargs["modelserve_deployments"], "Service": kwargs["modelserve_services"],
                              "Job": kwargs["modelserve_jobs"]})
    settings = Settings.from_env()
    selector, tolerations, annotations = settings.gate_placement()
    gate = GatePod(settings.gate_image, settings.image_pull_policy, selector, tuple(tolerations), annotations)
    rt = Runtime(Kube(settings), settings.server_image, gate, _emit, children)
    _state["rt"] = rt
    _state["queue"] = work_queue(rt, modelserves_index, settings)
    log.info("ModelServe controller started with server image %s, gate image %s", settings.server_image, settings.gate_image)


@kopf.on.cleanup()
async def serve_cleanup(**_: Any) -> None:
    _state.pop("queue", None)
    rt: Runtime | None = _state.pop("rt", None)
    if rt is not None:
        await rt.kube.close()


@kopf.on.event(GROUP, VERSION, MS_PLURAL)
async def modelserve_event(*, type: str | None, namespace: str | None, name: str, uid: str, **_: Any) -> None:
    """Created, listed at start-up, edited, annotated, or our own status write (a cheap no-op pass)."""
    queue: WorkQueue[Key] = _state["queue"]
    if type == "DELETED":
        queue.forget((namespace or "", name))  # children go by owner-reference GC
        _state["rt"].forget(namespace or "", name, uid)
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
