"""The operator runtime: the one object both rooms receive, and what their state shares.

``startup.py`` builds one ``Runtime`` per process (settings read once, one ``kube.Kube`` — one
API client with one request limiter for the whole operator — and Kopf's Event poster) and hands
it to each room's ``start``; a room keeps it in its ``Room`` (``finetune/reconcile.py``,
``serve/reconcile.py``), a ``RoomState`` with the room's indexes and caches added. Nothing here
imports Kopf or a room.

Status writes, one strategy for both kinds: a room computes the whole status with a pure
function (``status.py``) and, only when it differs from the last one known, **replaces** the
status subresource with it (``Kube.write_status``: a JSON patch adding ``/status``), then
remembers it by uid (``written``). Replace rather than a merge patch because the computed status
is the whole truth: a key the new status drops (a finished rollout, a workers Service gone) must
go, and a merge patch would keep it unless every dropped key at every depth were nulled by a diff
against a copy that may itself be stale. The payload is the same size (a merge patch of a full
status is the full status). No resourceVersion precondition: only the leader writes, and it
writes what it computed from everything it observed. ``written`` guards against the watch lagging
behind our own writes: ``last_status`` prefers it, so a pass never decides from a stale status
(which could start a revision or a rollout twice).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from typing import Any, Awaitable, Callable, ClassVar, Iterable, Mapping

from .kube import Kube
from .settings import Settings
from .workqueue import Outcome, WorkQueue

Obj = Mapping[str, Any]
Key = tuple[str, str]
"""(namespace, name) of a FineTuneJob or ModelServe: the work queues' and indexes' key."""
Packed = str
"""An index entry or a remembered status, as compact JSON text (see ``pack``)."""
EmitFn = Callable[[Obj, str, str, str], None]
"""(object, type, reason, message): post a Kubernetes Event about the object."""


def pack(obj: Obj) -> Packed:
    """Compact JSON text for what the operator keeps per object between events.

    A thousand FineTuneJobs with their Jobs and Pods stay in memory for as long as they exist;
    as Python dicts one FineTuneJob's defaulted spec alone is ~9 KB (1.2 KB as text), and the
    indexes and remembered statuses of 1,000 were ~30 MB. Text is decoded once per reconcile.
    """
    return json.dumps(obj, separators=(",", ":"))


def unpack(text: Packed) -> dict[str, Any]:
    return json.loads(text)  # type: ignore[no-any-return]


def one(store: Iterable[Packed] | None) -> dict[str, Any] | None:
    """The (single) object of an index entry, decoded."""
    for item in store or ():
        return unpack(item)
    return None


def log_extra(kind: str, namespace: str, name: str, uid: str | None = None,
              revision: int | None = None) -> dict[str, Any]:
    """The ``extra`` of a log record about one object, in Kopf's logging integration: Kopf's
    formatters read ``k8s_ref`` (an object reference), so a JSON line carries it as its
    ``object`` field and a text line is prefixed ``[namespace/name]`` (main.py picks the format);
    ``revision`` (a FineTuneJob's) becomes a field of its own."""
    from . import GROUP, VERSION

    extra: dict[str, Any] = {"k8s_ref": {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "namespace": namespace,
                                         "name": name, "uid": uid}}
    if revision is not None:
        extra["revision"] = revision
    return extra


@dataclasses.dataclass(frozen=True)
class Runtime:
    """What the one start-up gives both rooms: the operator's settings (read once), its one API
    door (one client, one request limiter) and Kopf's Event poster."""

    settings: Settings
    kube: Kube
    emit: EmitFn


@dataclasses.dataclass(kw_only=True)
class RoomState:
    """What every room's state holds: the runtime, and the status-write strategy (see the module
    docstring) — the status last written per uid, and the one way to write one."""

    KIND: ClassVar[str]
    """The kind this room reconciles (``FineTuneJob``, ``ModelServe``)."""
    rt: Runtime
    written: dict[str, Packed] = dataclasses.field(default_factory=dict)
    """The status this operator last wrote, by uid: the watch may lag behind our own writes."""

    @property
    def settings(self) -> Settings:
        return self.rt.settings

    @property
    def kube(self) -> Kube:
        return self.rt.kube

    def emit(self, body: Obj, type_: str, reason: str, message: str) -> None:
        self.rt.emit(body, type_, reason, message)

    def log(self, logger: logging.Logger, key: Key, revision: int | None = None) -> logging.LoggerAdapter[logging.Logger]:
        """``logger`` for lines about the object ``key``: every line names its kind, namespace,
        name and uid (and revision where given); see ``log_extra``."""
        return logging.LoggerAdapter(logger, self.log_extra(key, revision))

    def log_extra(self, key: Key, revision: int | None = None) -> dict[str, Any]:
        body = self.body(key)
        uid = body["metadata"].get("uid") if body is not None else None
        return log_extra(self.KIND, key[0], key[1], uid, revision)

    def body(self, key: Key) -> dict[str, Any] | None:
        """The object ``key`` as the room's index holds it (None: not known, or deleted); each
        room defines it over its own index."""
        raise NotImplementedError

    def work_queue(self, reconcile: Callable[[Any, Key], Awaitable[Outcome]]) -> WorkQueue[Key]:
        """The room's work queue: every trigger runs ``reconcile(room, key)`` through it,
        serialised and coalesced per object; failures retried with backoff, a non-transient one
        also posted as a Warning Event on the object."""

        async def work(key: Key) -> Outcome:
            return await reconcile(self, key)

        def failed(key: Key, text: str) -> None:
            body = self.body(key)
            if body is not None:
                self.emit(body, "Warning", "ReconcileFailed", text)

        return WorkQueue(self.KIND, work, retry_delay=self.settings.retry_delay,
                         retry_max_delay=self.settings.retry_max_delay, on_failure=failed,
                         log_extra=self.log_extra)

    def last_status(self, body: Obj) -> dict[str, Any]:
        """The newest status known for an object: ours if we wrote one, else the watch's."""
        mine = self.written.get(body["metadata"]["uid"])
        return unpack(mine) if mine is not None else dict(body.get("status") or {})

    async def write_status(self, body: Obj, status: dict[str, Any]) -> None:
        """Replace the object's status with ``status`` and remember it (callers write only a
        status that changed)."""
        meta = body["metadata"]
        await self.kube.write_status(self.KIND, meta["namespace"], meta["name"], status)
        self.written[meta["uid"]] = pack(status)

    def forget_status(self, uid: str | None) -> None:
        if uid:
            self.written.pop(uid, None)


def now_iso(now: dt.datetime) -> str:
    """A status timestamp: UTC, whole seconds, as Kubernetes writes them."""
    return now.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
