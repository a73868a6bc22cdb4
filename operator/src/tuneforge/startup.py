"""The operator's one start-up, in Kopf: its settings, the login, and the ``Runtime`` both rooms
plug into (``runtime.py``).

Each room's handlers module registers its Kopf handlers and calls ``plug(start, stop)`` when
imported (``main`` imports both); at Kopf's start-up this module reads the settings once (as
``main`` gave them), configures Kopf, builds one ``Runtime`` — one ``kube.Kube``, so one API
client and one request limiter for the whole operator — and calls every room's ``start`` with it
and Kopf's indexes; at clean-up every room's ``stop``, then the client is closed once. Kopf's own
client (its watches and Event posts) comes from the login here, fenced by the leader Lease.
Imports no room.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Awaitable, Callable, Mapping

import aiohttp
import kopf

from . import GROUP
from .kube import Kube
from .leader import FENCE
from .runtime import Obj, Runtime
from .settings import Settings

log = logging.getLogger(__name__)
StartFn = Callable[[Runtime, Mapping[str, Any]], Awaitable[None]]
"""A room's start: the runtime and Kopf's indexes by their function's name."""
StopFn = Callable[[], Awaitable[None]]


@dataclasses.dataclass
class _Process:
    settings: Settings | None = None
    kubeconfig: str | None = None
    rooms: list[tuple[StartFn, StopFn]] = dataclasses.field(default_factory=list)
    runtime: Runtime | None = None


_process = _Process()


def given(settings: Settings, kubeconfig: str | None) -> None:
    """The settings ``main`` read (once, before Kopf starts) and its ``--kubeconfig``."""
    _process.settings, _process.kubeconfig = settings, kubeconfig


def plug(start: StartFn, stop: StopFn) -> None:
    """A room plugs in: ``start`` runs at Kopf's start-up with the runtime, ``stop`` at clean-up."""
    if (start, stop) not in _process.rooms:
        _process.rooms.append((start, stop))


class NoDiffBase(kopf.DiffBaseStorage):
    """Kopf's diff base ("last handled configuration") kept nowhere and never built.

    Kopf builds one for every watch event of every resource it watches — a deep copy of the whole
    body, twice, for the diff its change-detecting handlers (on.create/update/field, timers,
    daemons) would get — whether or not a resource has such handlers. Neither room has any
    (FineTuneJobs and ModelServes are reconciled from their spec and status; see finetune/handlers.ftj_event), so
    that copying was a sixth of the operator's CPU in a burst of FineTuneJobs, for a diff nobody
    reads. A test
    keeps the rooms free of change-detecting handlers; adding one means going back
    to ``kopf.AnnotationsDiffBaseStorage(prefix=GROUP)``.
    """

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        pass


def configure(settings: kopf.OperatorSettings, ours: Settings) -> None:
    """Kopf tuned for a real cluster (called from the startup handler)."""
    # Kopf's own state lives under our group wherever it writes any (its change-detecting
    # handlers; neither room has any, see ftj_event and NoDiffBase).
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = NoDiffBase()
    # Watch streams can stall silently behind proxies/load balancers: bound them on both ends.
    settings.watching.server_timeout = ours.watch_server_timeout
    settings.watching.client_timeout = ours.watch_client_timeout
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = ours.request_timeout
    settings.networking.connect_timeout = 10
    # Our own status patches go through the status subresource, which Kopf does not wait for;
    # this bounds its wait for any annotation patches of its own (then it proceeds).
    settings.persistence.consistency_timeout = ours.consistency_timeout
    # Kopf 1.45 names the bound on concurrent per-object workers queueing.worker_limit (None: none).
    settings.queueing.worker_limit = ours.worker_limit or None
    # An idle per-object worker keeps its slot (and its last event's body) until this passes;
    # Kopf's 5 s default caps a burst of thousands of child objects at worker_limit / 5 per second.
    settings.queueing.idle_timeout = ours.worker_idle_timeout
    settings.queueing.error_delays = (1, 2, 5, 10, 20, 30, 60)  # framework errors: retry soon, cap at 1 min
    # Kopf turns its own log records of this level and above into k8s Events; at INFO every
    # "Handler succeeded" on every Pod/Job event would become an Event (an API write). Our phase
    # transitions are posted explicitly with kopf.event(), which this level does not filter.
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "tuneforge-operator"
    settings.execution.max_workers = 1  # no sync handlers (the login is async): one idle thread at most
    settings.peering.standalone = True  # one replica (Deployment strategy Recreate)
    # Watching named namespaces leaves nothing to discover: no namespace list/watch (for patterns)
    # and no CRD watch cluster-wide (the kinds come from API discovery, which needs no RBAC), so the
    # chart's namespaced mode grants neither. Without this Kopf retries the forbidden namespace
    # list for about a minute, logging errors, before it falls back to the names it was given.
    if ours.namespace_list():
        settings.scanning.disabled = True


@kopf.on.login()
async def login(**kwargs: Any) -> kopf.AiohttpSession | None:
    """The service account in a pod, else KUBECONFIG / ~/.kube/config — Kopf's own client-free
    logins, named here so Kopf never falls back to logging in through the ``kubernetes`` client
    where one happens to be installed (a host venv): the operator behaves as in its image. Not
    covered: kubeconfig exec plugins (cloud CLIs) when running outside the cluster. Kopf's
    session checks the leader fence before each request (leader.py)."""
    info = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
    return await fenced_session(info)


async def fenced_session(info: kopf.ConnectionInfo | None) -> kopf.AiohttpSession | None:
    """Kopf's own API client (its watches and Event posts), built as Kopf builds it from the
    credentials but with the leader fence checked before every request (leader.py)."""
    if info is None:
        return None

    async def fenced(request: aiohttp.ClientRequest, handler: Any) -> aiohttp.ClientResponse:
        FENCE.check()
        response: aiohttp.ClientResponse = await handler(request)
        return response

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ssl=info.as_ssl_context()), headers=info.as_http_headers(),
        proxy=info.proxy_url, trust_env=info.trust_env, middlewares=(fenced,))
    return kopf.AiohttpSession(aiohttp_session=session, server=info.server, default_namespace=info.default_namespace,
                               priority=info.priority, expiration=info.expiration)


def emit(body: Obj, type_: str, reason: str, message: str) -> None:
    """Post an Event about ``body`` (a Kopf body or the rooms' projection of one: Kopf reads its
    apiVersion, kind and metadata)."""
    kopf.event(body, type=type_, reason=reason, message=message)  # type: ignore[arg-type]


@kopf.on.startup()
async def startup(*, settings: kopf.OperatorSettings, **kwargs: Any) -> None:
    ours = _process.settings or Settings.from_env()  # main gives them; read here only without main
    configure(settings, ours)
    rt = Runtime(ours, Kube(ours, _process.kubeconfig), emit)
    _process.runtime = rt
    # Kopf passes every index to every handler by its function's name.
    indexes = {k: v for k, v in kwargs.items() if isinstance(v, kopf.Index)}
    for start, _ in _process.rooms:
        await start(rt, indexes)
    log.info("Tuneforge operator started with trainer image %s, server image %s, gate image %s",
             ours.trainer_image, ours.server_image, ours.gate_image)


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    for _start, stop in reversed(_process.rooms):
        await stop()
    rt, _process.runtime = _process.runtime, None
    if rt is not None:
        await rt.kube.close()
