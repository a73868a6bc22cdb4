"""Kopf handlers: thin — each finds the FineTuneJob a change concerns and calls ``reconcile``.

Indexes (in-memory, filled before any handler runs) hold projections of FineTuneJobs and of the
Jobs/Pods labelled with ``tuneforge.dev/finetunejob``, so reconciling never lists the API and an
operator restart sees every existing child before it acts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
import kopf

from .. import FTJ_PLURAL, GROUP, VERSION, metrics
from ..kube import Kube, api_error_message
from ..leader import FENCE
from ..settings import Settings
from ..workqueue import Backoff, Outcome, WorkQueue
from . import ANNOTATION_RETRY, LABEL_FTJ
from .progress import parse_progress
from .reconcile import Context, Key, Packed, one, owned_children, pack, reconcile, unpack
from .builders.job import COMPLETION_INDEX_ANNOTATION, CONTAINER
from .builders.names import ROLE_TRAIN
from .status import EVALUATING, RUNNING, pod_rank

log = logging.getLogger(__name__)
CHILD = {LABEL_FTJ: kopf.PRESENT}
_state: dict[str, Any] = {}


class NoDiffBase(kopf.DiffBaseStorage):
    """Kopf's diff base ("last handled configuration") kept nowhere and never built.

    Kopf builds one for every watch event of every resource it watches — a deep copy of the whole
    body, twice, for the diff its change-detecting handlers (on.create/update/field, timers,
    daemons) would get — whether or not a resource has such handlers. Neither room has any
    (FineTuneJobs and ModelServes are reconciled from their spec and status; see ftj_event), so
    that copying was a sixth of the operator's CPU in a burst of FineTuneJobs, for a diff nobody
    reads. A test keeps the rooms free of change-detecting handlers; adding one means going back
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


def _project_ftj(body: kopf.Body) -> dict[str, Any]:
    m = body["metadata"]
    return {
        "apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
        "metadata": {"name": m["name"], "namespace": m["namespace"], "uid": m["uid"],
                     "generation": m.get("generation"), "deletionTimestamp": m.get("deletionTimestamp"),
                     "annotations": {k: v for k, v in (m.get("annotations") or {}).items() if k == ANNOTATION_RETRY}},
        "spec": body.get("spec"), "status": body.get("status"),
    }


# What the index keeps of a child is what status.py and reconcile.py read, nothing more: a
# thousand FineTuneJobs mean four thousand Jobs and Pods held in memory, and a full pod status
# (every condition, container image/ID/resources/mounts, IPs) is several times these fields.
_KEPT_LABELS = (GROUP + "/", "batch.kubernetes.io/job-name", "job-name")
_KEPT_CONDITION = ("type", "status", "reason", "message", "lastTransitionTime")


def _conditions(status: dict[str, Any], types: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    return [{k: c[k] for k in _KEPT_CONDITION if k in c}
            for c in status.get("conditions") or () if types is None or c.get("type") in types]


def _project_status(status: dict[str, Any], is_job: bool) -> dict[str, Any]:
    if is_job:
        out: dict[str, Any] = {k: status[k] for k in ("active", "succeeded", "failed", "startTime", "completionTime") if k in status}
        out["conditions"] = _conditions(status)
        return out
    return {
        "phase": status.get("phase"),
        # DisruptionTarget (and a kubelet eviction's reason): a gang failed by a disruption restarts.
        **({"reason": status["reason"]} if status.get("reason") else {}),
        "conditions": _conditions(status, ("PodScheduled", "DisruptionTarget")),
        # The trainer container's state (running/waiting/terminated with its termination message).
        "containerStatuses": [{"name": cs["name"], "state": cs.get("state") or {}}
                              for cs in status.get("containerStatuses") or () if cs.get("name") == CONTAINER],
    }


def _project_child(body: kopf.Body, is_job: bool) -> dict[str, Any]:
    m = body["metadata"]
    # The controller: a FineTuneJob for our Jobs, a Job for their pods. A label alone proves
    # nothing (a leftover Job of a deleted namesake, or anyone's, can carry it).
    controller = next((o for o in m.get("ownerReferences") or () if o.get("controller")), None)
    out: dict[str, Any] = {
        "metadata": {"name": m["name"], "uid": m.get("uid"),
                     "labels": {k: v for k, v in (m.get("labels") or {}).items() if k.startswith(_KEPT_LABELS)},
                     "deletionTimestamp": m.get("deletionTimestamp"),
                     "controllerUid": controller.get("uid") if controller else None},
        "status": _project_status(body.get("status") or {}, is_job),
    }
    if is_job:
        out["spec"] = {"suspend": (body.get("spec") or {}).get("suspend")}
        return out
    # A gang's worker: its node rank, where it runs and which of its pods is the newest.
    index = (m.get("annotations") or {}).get(COMPLETION_INDEX_ANNOTATION)
    if index is not None:
        out["metadata"]["annotations"] = {COMPLETION_INDEX_ANNOTATION: index}
        out["metadata"]["creationTimestamp"] = m.get("creationTimestamp")
        out["spec"] = {"nodeName": (body.get("spec") or {}).get("nodeName")}
    return out


# The index functions are async: Kopf runs a sync handler in its thread pool, which for every
# watch event of every FineTuneJob, Job and Pod would cost a thread hop, a context copy and a
# shielding task for a few microseconds of projection.
@kopf.index(GROUP, VERSION, FTJ_PLURAL)
async def ftj_index(*, namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Key, Packed]:
    return {(namespace or "", name): pack(_project_ftj(body))}


@kopf.index("batch", "v1", "jobs", labels=CHILD)
async def job_index(*, namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Key, Packed]:
    return {(namespace or "", labels[LABEL_FTJ]): pack(_project_child(body, is_job=True))}


@kopf.index("", "v1", "pods", labels=CHILD)
async def pod_index(*, namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Key, Packed]:
    return {(namespace or "", labels[LABEL_FTJ]): pack(_project_child(body, is_job=False))}


def _emit(body: Any, kind: str, reason: str, message: str) -> None:
    kopf.event(body, type=kind, reason=reason, message=message)


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


@kopf.on.startup()
async def startup(*, settings: kopf.OperatorSettings, **kwargs: Any) -> None:
    # Kopf passes every index to every handler by its function's name.
    ftj_index, job_index, pod_index = kwargs["ftj_index"], kwargs["job_index"], kwargs["pod_index"]
    ours = _state.get("settings") or Settings.from_env()
    configure(settings, ours)
    ctx = Context(settings=ours, kube=Kube(ours, _state.get("kubeconfig")), ftjs=ftj_index, jobs=job_index,
                  pods=pod_index, emit=_emit)
    _state["ctx"] = ctx
    _state["queue"] = work_queue(ctx)
    _start_poller(ctx)
    log.info("Tuneforge operator started with trainer image %s", ours.trainer_image)


def _start_poller(ctx: Context) -> None:
    """Start the progress poller, and start it again should it ever end by an exception."""
    task = asyncio.get_running_loop().create_task(_poll_progress(ctx))
    _state["poller"] = task
    _state["poller_beat"] = time.monotonic()

    def done(t: asyncio.Task[None]) -> None:
        if t.cancelled() or _state.get("poller") is not t:
            return
        exc = t.exception()
        log.error("Progress poller stopped, restarting it: %s", exc, exc_info=exc)
        metrics.RECONCILE_ERRORS.labels("ProgressPoller").inc()
        _start_poller(ctx)

    task.add_done_callback(done)


@kopf.on.probe(id="progressPoller")
async def poller_alive(**_: Any) -> float:
    """Liveness (/healthz): seconds since the progress poller last finished a round. A poller
    that is gone or stuck (rounds stopped) fails the probe, so the kubelet restarts the operator
    instead of /healthz staying green while no progress is read."""
    ctx: Context | None = _state.get("ctx")
    task: asyncio.Task[None] | None = _state.get("poller")
    if ctx is None or task is None:
        return 0.0
    age = time.monotonic() - float(_state.get("poller_beat") or 0.0)
    if task.done() or age > max(120.0, 10 * ctx.settings.progress_interval):
        raise kopf.PermanentError(f"the progress poller has not finished a round for {age:.0f} s")
    return round(age, 1)


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    poller = _state.pop("poller", None)
    if poller:
        poller.cancel()
    ctx = _state.pop("ctx", None)
    if ctx:
        await ctx.kube.close()


def work_queue(ctx: Context) -> WorkQueue[Key]:
    """The FineTuneJobs' work queue: every trigger (an event, a timer, the progress poller) runs
    ``reconcile`` through it, serialised and coalesced per FineTuneJob.

    Every failure is retried with exponential backoff and jitter: transient errors (throttling,
    conflicts, server and network trouble) quietly, any other error also as a Warning Event on the
    FineTuneJob (``kubectl describe`` shows it) — a bug or a forbidden call must not leave a job in
    a non-terminal phase forever. A FineTuneJob that waits for something (a missing PVC, say) is
    looked at again the same way; a reconcile that neither fails nor waits resets the backoff.
    """
    async def work(key: Key) -> Outcome:
        wait_left = await reconcile(ctx, key)
        return None if wait_left is None else Backoff(wait_left)

    def failed(key: Key, text: str) -> None:
        body = one(ctx.ftjs.get(key))
        if body is not None:
            ctx.emit(body, "Warning", "ReconcileFailed", text)

    return WorkQueue("FineTuneJob", work, retry_delay=ctx.settings.retry_delay,
                     retry_max_delay=ctx.settings.retry_max_delay, on_failure=failed)


def _kick(key: Key) -> None:
    """Reconcile in the background (coalesced with one in progress), so an event handler returns
    at once: Kopf's per-object worker then drops the event's body and frees its slot instead of
    holding both while the reconcile waits for the API. In a burst of thousands of events that
    backlog, not the reconciles, is what fills the memory.
    """
    _state["queue"].kick(key)


@kopf.on.event(GROUP, VERSION, FTJ_PLURAL)
async def ftj_event(*, type: str | None, namespace: str | None, name: str, uid: str, body: kopf.Body,
                    **_: Any) -> None:
    """A FineTuneJob appeared (listing at start-up, or created), changed or went away.

    Reconcile decides everything from the spec and the status (the spec's hash against the
    revision in status), so no Kopf change-detecting handlers are needed: those would patch a
    diff-base annotation onto every object and hold each event's body while its reconcile
    queued. Our own status writes come back as MODIFIED events whose status has caught up with
    the generation; only a new generation (a spec edit) needs a reconcile. (An event older than
    one of our writes may kick one reconcile too many, which finds nothing to do.)
    """
    ctx: Context = _state["ctx"]
    key = (namespace or "", name)
    if type == "DELETED":
        # Children go by owner-reference GC; the operator only drops its in-memory state. (No
        # on.delete handler: it would put a finalizer on every FineTuneJob for no benefit.)
        ctx.forget(key, uid)
        _state["queue"].forget(key)
        return
    if type in (None, "ADDED") or body.meta.get("generation") != body.status.get("observedGeneration") \
            or body.meta.annotations.get(ANNOTATION_RETRY, body.status.get("retryRequest")) != body.status.get("retryRequest"):
        _kick(key)


@kopf.on.event("batch", "v1", "jobs", labels=CHILD)
async def job_event(*, namespace: str | None, labels: kopf.Labels, **_: Any) -> None:
    _kick((namespace or "", labels[LABEL_FTJ]))


@kopf.on.event("", "v1", "pods", labels=CHILD)
async def pod_event(*, namespace: str | None, labels: kopf.Labels, **_: Any) -> None:
    _kick((namespace or "", labels[LABEL_FTJ]))


async def _poll_progress(ctx: Context) -> None:
    """One loop for all running trainers (not one timer per object): read log tails, reconcile.

    A single bounded loop keeps the cost flat in the number of FineTuneJobs and needs no
    finalizer on them (Kopf timers would add one).
    """
    sem = asyncio.Semaphore(ctx.settings.api_concurrency)

    async def poll(key: Key, pod: Any, uid: str, rev: int) -> None:
        async with sem:
            text = await ctx.kube.pod_log_tail(key[0], pod["metadata"]["name"], CONTAINER, ctx.settings.progress_tail_lines)
        progress = parse_progress(text, ctx.progress.get((uid, rev)))
        if progress is not None and progress != ctx.progress.get((uid, rev)):
            ctx.progress[(uid, rev)] = progress
            # Kicked, not awaited: the poller's own context (from startup) cannot post Events.
            _state["queue"].kick(key, take_context=False)

    while True:
        await asyncio.sleep(ctx.settings.progress_interval)
        try:
            await _poll_round(ctx, poll)
        except Exception as exc:  # noqa: BLE001 - one bad round (a bug, an odd object) must not end the loop
            metrics.RECONCILE_ERRORS.labels("ProgressPoller").inc()
            log.error("Progress poll round failed: %s", exc, exc_info=exc)
        _state["poller_beat"] = time.monotonic()


async def _poll_round(ctx: Context, poll: Any) -> None:
    """One pass over the running trainers: read each one's log tail (of pods of this
    FineTuneJob's own Jobs only, as reconcile reads them)."""
    tasks = []
    for key, store in list(ctx.ftjs.items()):
        body = one(store)
        if body is None:
            continue
        status = ctx.last_status(body)
        if status.get("phase") not in (RUNNING, EVALUATING):
            continue
        rev = int(status.get("revision") or 0)
        _, pods = owned_children(map(unpack, ctx.jobs.get(key) or ()), map(unpack, ctx.pods.get(key) or ()),
                                 body["metadata"]["uid"])
        for pod in pods:
            labels = pod["metadata"]["labels"]
            if labels.get("tuneforge.dev/role") == ROLE_TRAIN and labels.get("tuneforge.dev/revision") == str(rev) \
                    and (pod["status"] or {}).get("phase") == "Running" and pod_rank(pod) == 0:
                # Rank 0 alone reports progress (the ranks step in lockstep).
                tasks.append(poll(key, pod, body["metadata"]["uid"], rev))
    if tasks:
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for r in results:
            if isinstance(r, Exception):
                log.warning("Progress poll failed: %s", api_error_message(r))
