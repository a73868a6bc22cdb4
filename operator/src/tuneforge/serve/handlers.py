"""Kopf handlers of the ModelServe room: thin — each finds the ModelServe an event concerns and
runs its reconcile in the background (serialised and coalesced per ModelServe).

Triggers: the ModelServe's own events (spec, promote/abort/retry annotations), its color
Deployments and gate Jobs (labelled ``tuneforge.dev/modelserve``), the FineTuneJob it follows
(the ``modelserves_by_finetunejob`` index maps a FineTuneJob to its followers, so a new passing
revision rolls out at once), and timers: a reconcile that returns a delay is run
again after it; any other failure is retried with backoff and a Warning Event.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import random
from typing import Any

import kopf

from .. import FTJ_PLURAL, GROUP, MS_PLURAL, VERSION, metrics
from ..kube import Kube, api_error_message, is_transient
from ..settings import Settings
from .builders import GatePod
from .names import ANNOTATION_ABORT, ANNOTATION_PROMOTE, ANNOTATION_RETRY, LABEL_MODELSERVE
from .reconcile import Runtime, reconcile

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


class Runner:
    """Per-ModelServe serialisation, coalescing and timers (no Kopf timers: they would put a
    finalizer on every ModelServe)."""

    def __init__(self, rt: Runtime, bodies: Any, settings: Settings) -> None:
        self.rt, self.bodies, self.settings = rt, bodies, settings
        self.busy: set[Key] = set()
        self.dirty: set[Key] = set()
        self.timers: dict[Key, asyncio.TimerHandle] = {}
        self.attempts: dict[Key, int] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.context: contextvars.Context | None = None
        """Taken in the first handler: it holds Kopf's Event-posting queue."""

    def kick(self, key: Key) -> None:
        if self.context is None:
            self.context = contextvars.copy_context()
        task = asyncio.get_running_loop().create_task(self._run(key), context=self.context.copy())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def later(self, key: Key, delay: float) -> None:
        loop = asyncio.get_running_loop()
        old = self.timers.get(key)
        if old is not None and old.when() <= loop.time() + delay:
            return
        if old is not None:
            old.cancel()
        self.timers[key] = loop.call_later(delay, self._fire, key)

    def _fire(self, key: Key) -> None:
        self.timers.pop(key, None)
        self.kick(key)

    def forget(self, key: Key, uid: str | None) -> None:
        timer = self.timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self.attempts.pop(key, None)
        if uid:
            self.rt.written.pop(uid, None)

    async def _run(self, key: Key) -> None:
        if key in self.busy:
            self.dirty.add(key)
            return
        self.busy.add(key)
        try:
            while True:
                self.dirty.discard(key)
                packed = next(iter(self.bodies.get(key) or ()), None)
                if packed is None:
                    return
                await self._once(key, json.loads(packed))
                if key not in self.dirty:
                    return
        finally:
            self.busy.discard(key)

    async def _once(self, key: Key, body: dict[str, Any]) -> None:
        try:
            _, requeue_after = await reconcile(self.rt, body)
            self.attempts.pop(key, None)
            if requeue_after is not None:  # "not yet": a timer of the rollout
                self.later(key, float(requeue_after or self.settings.retry_delay))
        except Exception as exc:  # noqa: BLE001 - a background reconcile has no retries of its own
            metrics.RECONCILE_ERRORS.labels(type(exc).__name__).inc()
            attempt = self.attempts.get(key, 0)
            self.attempts[key] = attempt + 1
            delay = min(self.settings.retry_max_delay, self.settings.retry_delay * 2 ** attempt) * random.uniform(0.8, 1.2)
            message = api_error_message(exc)
            self.later(key, delay)
            if is_transient(exc):
                log.warning("Reconcile of ModelServe %s/%s failed, retrying in %.0f s: %s", *key, delay, message)
            else:
                log.error("Reconcile of ModelServe %s/%s failed, retrying in %.0f s: %s", *key, delay, message, exc_info=exc)
                self.rt.emit(body, "Warning", "ReconcileFailed", f"{message[:900]} (retrying in {delay:.0f} s)")


_state: dict[str, Any] = {}


@kopf.index(GROUP, VERSION, MS_PLURAL)
async def modelserves(*, namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Key, str]:
    return {(namespace or "", name): _project(body)}


@kopf.index(GROUP, VERSION, MS_PLURAL)
async def modelserves_by_finetunejob(*, namespace: str | None, name: str, spec: kopf.Spec, **_: Any) -> dict[Key, str] | None:
    job = (spec.get("adapter") or {}).get("fineTuneJob")
    return {(namespace or "", job): name} if job else None


def _emit(body: Any, type_: str, reason: str, message: str) -> None:
    kopf.event(body, type=type_, reason=reason, message=message)


@kopf.on.startup()
async def serve_startup(**kwargs: Any) -> None:
    # Kopf passes every index to every handler by its function's name.
    modelserves_index = kwargs["modelserves"]
    settings = Settings.from_env()
    selector, tolerations, annotations = settings.gate_placement()
    gate = GatePod(settings.gate_image, settings.image_pull_policy, selector, tuple(tolerations), annotations)
    rt = Runtime(Kube(settings), settings.server_image, gate, _emit)
    _state["runner"] = Runner(rt, modelserves_index, settings)
    log.info("ModelServe controller started with server image %s, gate image %s", settings.server_image, settings.gate_image)


@kopf.on.cleanup()
async def serve_cleanup(**_: Any) -> None:
    runner: Runner | None = _state.pop("runner", None)
    if runner is not None:
        await runner.rt.kube.close()


@kopf.on.event(GROUP, VERSION, MS_PLURAL)
async def modelserve_event(*, type: str | None, namespace: str | None, name: str, uid: str, **_: Any) -> None:
    """Created, listed at start-up, edited, annotated, or our own status write (a cheap no-op pass)."""
    runner: Runner = _state["runner"]
    if type == "DELETED":
        runner.forget((namespace or "", name), uid)  # children go by owner-reference GC
        return
    runner.kick((namespace or "", name))


@kopf.on.event("apps", "v1", "deployments", labels=CHILD)
async def color_event(*, namespace: str | None, labels: kopf.Labels, **_: Any) -> None:
    _state["runner"].kick((namespace or "", labels[LABEL_MODELSERVE]))


@kopf.on.event("batch", "v1", "jobs", labels=CHILD)
async def gate_event(*, namespace: str | None, labels: kopf.Labels, **_: Any) -> None:
    _state["runner"].kick((namespace or "", labels[LABEL_MODELSERVE]))


@kopf.on.event(GROUP, VERSION, FTJ_PLURAL)
async def followed_finetunejob_event(*, namespace: str | None, name: str, **kwargs: Any) -> None:
    """A FineTuneJob's status changed: every ModelServe following it looks again."""
    for ms in kwargs["modelserves_by_finetunejob"].get((namespace or "", name), ()):
        _state["runner"].kick((namespace or "", ms))
