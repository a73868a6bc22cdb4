"""Kopf handlers of the FineTuneJob room: thin — each finds the FineTuneJob an event concerns and
runs its reconcile in the background (serialised and coalesced per FineTuneJob). The room plugs
into the one start-up (``startup.plug``): its ``start`` gets the runtime and Kopf's indexes.

Indexes (in-memory, filled before any handler runs) hold projections of FineTuneJobs and of the
Jobs/Pods labelled with ``tuneforge.dev/finetunejob``, so reconciling never lists the API and an
operator restart sees every existing child before it acts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Mapping

import kopf

from .. import FTJ_PLURAL, GROUP, VERSION, metrics, startup
from ..kube import api_error_message
from ..runtime import Key, Packed, Runtime, one, pack, unpack
from ..workqueue import Outcome, WorkQueue
from . import ANNOTATION_RETRY, LABEL_FTJ
from .progress import parse_progress
from .reconcile import Room, owned_children, reconcile
from .builders.job import COMPLETION_INDEX_ANNOTATION, CONTAINER
from .builders.names import ROLE_TRAIN
from .status import EVALUATING, RUNNING, pod_rank

log = logging.getLogger(__name__)
CHILD = {LABEL_FTJ: kopf.PRESENT}
_state: dict[str, Any] = {}


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


# Kueue's Workload of a queued training Job (the CRD may be absent: Kopf then watches nothing).
# Kueue labels it with its Job's uid; its conditions say why the Job waits or was evicted.
KUEUE_JOB_UID = "kueue.x-k8s.io/job-uid"
_KUEUE_CONDITIONS = ("QuotaReserved", "Admitted", "Evicted", "Preempted")


@kopf.index("kueue.x-k8s.io", "v1beta2", "workloads", labels={KUEUE_JOB_UID: kopf.PRESENT})
async def workload_index(*, namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Key, Packed]:
    return {(namespace or "", labels[KUEUE_JOB_UID]): pack({
        "metadata": {"name": body["metadata"]["name"]},
        "status": {"conditions": _conditions(body.get("status") or {}, _KUEUE_CONDITIONS)}})}


async def start(rt: Runtime, indexes: Mapping[str, Any]) -> None:
    """The room's start (``startup.plug``): its state over the runtime and its indexes, its work
    queue, and the progress poller."""
    room = Room(rt=rt, ftjs=indexes["ftj_index"], jobs=indexes["job_index"], pods=indexes["pod_index"],
                workloads=indexes["workload_index"])
    _state["room"] = room
    _state["queue"] = work_queue(room)
    _start_poller(room)


async def stop() -> None:
    poller = _state.pop("poller", None)
    if poller:
        poller.cancel()
    _state.pop("queue", None)
    _state.pop("room", None)


startup.plug(start, stop)


def _start_poller(room: Room) -> None:
    """Start the progress poller, and start it again should it ever end by an exception."""
    task = asyncio.get_running_loop().create_task(_poll_progress(room))
    _state["poller"] = task
    _state["poller_beat"] = time.monotonic()

    def done(t: asyncio.Task[None]) -> None:
        if t.cancelled() or _state.get("poller") is not t:
            return
        exc = t.exception()
        log.error("Progress poller stopped, restarting it: %s", exc, exc_info=exc)
        metrics.RECONCILE_ERRORS.labels("ProgressPoller").inc()
        _start_poller(room)

    task.add_done_callback(done)


@kopf.on.probe(id="progressPoller")
async def poller_alive(**_: Any) -> float:
    """Liveness (/healthz): seconds since the progress poller last finished a round. A poller
    that is gone or stuck (rounds stopped) fails the probe, so the kubelet restarts the operator
    instead of /healthz staying green while no progress is read."""
    room: Room | None = _state.get("room")
    task: asyncio.Task[None] | None = _state.get("poller")
    if room is None or task is None:
        return 0.0
    age = time.monotonic() - float(_state.get("poller_beat") or 0.0)
    if task.done() or age > max(120.0, 10 * room.settings.progress_interval):
        raise kopf.PermanentError(f"the progress poller has not finished a round for {age:.0f} s")
    return round(age, 1)


def work_queue(room: Room) -> WorkQueue[Key]:
    """The FineTuneJobs' work queue: every trigger (an event, a timer, the progress poller) runs
    ``reconcile`` through it, serialised and coalesced per FineTuneJob.

    Every failure is retried with exponential backoff and jitter: transient errors (throttling,
    conflicts, server and network trouble) quietly, any other error also as a Warning Event on the
    FineTuneJob (``kubectl describe`` shows it) — a bug or a forbidden call must not leave a job in
    a non-terminal phase forever. A FineTuneJob that waits for something (a missing PVC, say) is
    looked at again the same way; a reconcile that neither fails nor waits resets the backoff.
    """
    return room.work_queue(reconcile)


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
    room: Room = _state["room"]
    key = (namespace or "", name)
    if type == "DELETED":
        # Children go by owner-reference GC; the operator only drops its in-memory state. (No
        # on.delete handler: it would put a finalizer on every FineTuneJob for no benefit.)
        room.forget(key, uid)
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


@kopf.on.event("kueue.x-k8s.io", "v1beta2", "workloads", labels={KUEUE_JOB_UID: kopf.PRESENT})
async def workload_event(*, namespace: str | None, labels: kopf.Labels, **_: Any) -> None:
    """Kueue changed a Workload (quota reserved or not, evicted): reconcile the FineTuneJob whose
    Job it queues, found by the Job's uid among the namespace's indexed Jobs."""
    room: Room = _state["room"]
    key = room.job_owner(namespace or "", labels[KUEUE_JOB_UID])
    if key is not None:
        _kick(key)


async def _poll_progress(room: Room) -> None:
    """One loop for all running trainers (not one timer per object): read log tails, reconcile.

    A single bounded loop keeps the cost flat in the number of FineTuneJobs and needs no
    finalizer on them (Kopf timers would add one).
    """
    sem = asyncio.Semaphore(room.settings.api_concurrency)

    async def poll(key: Key, pod: Any, uid: str, rev: int) -> None:
        async with sem:
            text = await room.kube.pod_log_tail(key[0], pod["metadata"]["name"], CONTAINER, room.settings.progress_tail_lines)
        progress = parse_progress(text, room.progress.get((uid, rev)))
        if progress is not None and progress != room.progress.get((uid, rev)):
            room.progress[(uid, rev)] = progress
            metrics.TRAINING_PROGRESS.labels(*key).set(time.time())
            # Kicked, not awaited: the poller's own context (from startup) cannot post Events.
            _state["queue"].kick(key, take_context=False)

    while True:
        await asyncio.sleep(room.settings.progress_interval)
        try:
            await _poll_round(room, poll)
        except Exception as exc:  # noqa: BLE001 - one bad round (a bug, an odd object) must not end the loop
            metrics.RECONCILE_ERRORS.labels("ProgressPoller").inc()
            log.error("Progress poll round failed: %s", exc, exc_info=exc)
        _state["poller_beat"] = time.monotonic()


async def _poll_round(room: Room, poll: Any) -> None:
    """One pass over the running trainers: read each one's log tail (of pods of this
    FineTuneJob's own Jobs only, as reconcile reads them)."""
    tasks, keys = [], []
    for key, store in list(room.ftjs.items()):
        body = one(store)
        if body is None:
            continue
        status = room.last_status(body)
        if status.get("phase") not in (RUNNING, EVALUATING):
            continue
        rev = int(status.get("revision") or 0)
        _, pods = owned_children(map(unpack, room.jobs.get(key) or ()), map(unpack, room.pods.get(key) or ()),
                                 body["metadata"]["uid"])
        for pod in pods:
            labels = pod["metadata"]["labels"]
            if labels.get("tuneforge.dev/role") == ROLE_TRAIN and labels.get("tuneforge.dev/revision") == str(rev) \
                    and (pod["status"] or {}).get("phase") == "Running" and pod_rank(pod) == 0:
                # Rank 0 alone reports progress (the ranks step in lockstep).
                tasks.append(poll(key, pod, body["metadata"]["uid"], rev))
                keys.append((key, rev))
    if tasks:
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for (key, rev), r in zip(keys, results):
            if isinstance(r, Exception):
                room.log(log, key, rev).warning("Progress poll of FineTuneJob %s/%s failed: %s", *key, api_error_message(r))
