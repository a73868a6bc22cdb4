"""Reconcile one FineTuneJob: observe its children, compute status, run the plan, write status.

Called from every trigger (the FineTuneJob's own watch events, events of its Jobs and Pods,
retries, the progress poller); serialised per object by a lock, so triggers may overlap freely.
What exists comes from Kopf's in-memory indexes (no list calls per reconcile); what changes goes
through ``kube.Kube``; the status is written as runtime.py says (replaced, only when changed).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import time
from typing import Any, Iterable, Mapping

from .. import metrics
from ..kube import ForeignChild, Kube
from ..runtime import Key, Obj, Packed, RoomState, one, unpack
from ..workqueue import Backoff, Outcome
from . import ANNOTATION_RETRY, LABEL_REVISION
from .builders.configmap import build_config_map
from .builders.job import build_summary_job, build_trainer_job, build_trial_job, build_validate_job, build_workers_service
from .builders.names import (
    Owner, config_map_name, summary_job_name, train_attempt, train_job_name, trial_job_name, trial_summary_job_name,
    validate_job_name, winner_config_map_name, workers_service_name,
)
from .plan import (
    CREATES_JOB, Action, CreateConfigMap, CreateSummaryJob, CreateTrainJob, CreateTrial, CreateTrialSummaryJob,
    CreateValidateJob, DeleteJob, DeleteService, SetSuspend, plan,
)
from .search import apply_params, compute_search, trial_params, winner_selection, winner_spec
from .progress import Progress
from ..endpoint_secrets import refusal
from .spec import FineTuneJobSpec, config_map_sources, endpoint_secrets, parse_spec, pvc_claims, spec_hash
from .status import (
    EVALUATING, FAILED, PENDING, PHASES, READING_SUMMARY, RUNNING, SUCCEEDED, TERMINAL, Observed, compute_status, decide_revision,
    job_finished, status_changed,
)
from .trainer_config import artifact_uri

_log = logging.getLogger(__name__)


@dataclasses.dataclass(kw_only=True)
class Room(RoomState):
    """The FineTuneJob room's state: the runtime, Kopf's indexes of FineTuneJobs and their
    Jobs/Pods, and what the operator keeps between passes."""

    KIND = "FineTuneJob"
    ftjs: Mapping[Key, Iterable[Packed]]
    jobs: Mapping[Key, Iterable[Packed]]
    pods: Mapping[Key, Iterable[Packed]]
    # Kueue's Workloads by (namespace, their Job's uid); empty where Kueue is not installed.
    workloads: Mapping[tuple[str, str], Iterable[Packed]] = dataclasses.field(default_factory=dict)
    locks: dict[Key, asyncio.Lock] = dataclasses.field(default_factory=dict)
    progress: dict[tuple[str, int], Progress] = dataclasses.field(default_factory=dict)
    tally: metrics.PhaseTally = dataclasses.field(default_factory=lambda: metrics.PhaseTally(PHASES))
    # Reconciles in flight at once (the rest wait here holding nothing but their key): each one
    # builds its children's bodies, so this bounds the memory of a burst, not only the threads.
    slots: asyncio.Semaphore = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.slots = asyncio.Semaphore(self.settings.reconcile_concurrency)

    def body(self, key: Key) -> dict[str, Any] | None:
        return one(self.ftjs.get(key))

    def job_owner(self, namespace: str, job_uid: str) -> Key | None:
        """The FineTuneJob whose indexed Job has ``job_uid`` (a Kueue Workload names only that)."""
        for key, store in self.jobs.items():
            if key[0] == namespace and any((unpack(j).get("metadata") or {}).get("uid") == job_uid for j in store):
                return key
        return None

    def lock(self, key: Key) -> asyncio.Lock:
        return self.locks.setdefault(key, asyncio.Lock())

    def forget(self, key: Key, uid: str | None) -> None:
        self.locks.pop(key, None)
        self.forget_status(uid)
        if uid:
            self.tally.set(uid, None)
            for k in [k for k in self.progress if k[0] == uid]:
                del self.progress[k]
        metrics.forget("FineTuneJob", *key)


def owned_children(jobs: Iterable[Obj], pods: Iterable[Obj], uid: str) -> tuple[list[Obj], list[Obj]]:
    """The Jobs whose controller is the FineTuneJob ``uid``, and the pods whose controller is one
    of those Jobs. A child with the right label and name but another (or no) controller — a
    leftover of a deleted namesake, say — is never read: it must not supply a summary."""
    mine = [j for j in jobs if (j.get("metadata") or {}).get("controllerUid") == uid]
    job_uids = {j["metadata"].get("uid") for j in mine} - {None}
    return mine, [p for p in pods if (p.get("metadata") or {}).get("controllerUid") in job_uids]


def _revision_of(obj: Obj) -> int:
    try:
        return int(((obj.get("metadata") or {}).get("labels") or {}).get(LABEL_REVISION, "0"))
    except ValueError:
        return 0


async def preflight(kube: Kube, namespace: str, spec: FineTuneJobSpec) -> tuple[str, str] | None:
    """Checks that need cluster state (the schema cannot see it): (reason, message) or None."""
    fields = {"spec.baseModel.uri": spec.base_model_uri, "spec.dataset.uri": spec.dataset_uri,
              "spec.dataset.evalUri": spec.eval_uri, "spec.output.uri": spec.output_uri,
              "spec.hub.cacheUri": spec.hub_cache_uri}
    for claim in pvc_claims(spec):
        if not await kube.pvc_exists(namespace, claim):
            field = next(f for f, u in fields.items() if u and u.startswith(f"pvc://{claim}"))
            return "PersistentVolumeClaimNotFound", f"{field}: PersistentVolumeClaim {claim!r} not found in namespace {namespace}"
    for field, name, key in config_map_sources(spec):
        keys = await kube.config_map_keys(namespace, name)
        if keys is None:
            return "ConfigMapNotFound", f"{field}: ConfigMap {name!r} not found in namespace {namespace}"
        if key not in keys:
            return "ConfigMapKeyNotFound", f"{field}: ConfigMap {name!r} has no key {key!r}"
    for ref in endpoint_secrets(spec):
        # Before any pod exists: a pod would send the value to the endpoint (review OP-2).
        refused = refusal(ref, await kube.secret_annotations(namespace, ref.secret), namespace)
        if refused:
            return refused
    if spec.priority_class_name and not await kube.priority_class_exists(spec.priority_class_name):
        return "PriorityClassNotFound", f"spec.scheduling.priorityClassName: PriorityClass {spec.priority_class_name!r} not found"
    return None


async def reconcile(room: Room, key: Key, now: dt.datetime | None = None) -> Outcome:
    """Bring one FineTuneJob one step closer to done; safe to call any time, any number of times.

    ``Backoff`` when it waits for something no watch event announces (a missing PVC, Secret or
    PriorityClass; a child name taken by another object): the work queue looks again with
    backoff, at the latest when the bounded wait for a dependency ends; else None.
    """
    async with room.lock(key), room.slots:
        started = time.monotonic()
        try:
            waiting = await _reconcile(room, key, now or dt.datetime.now(dt.timezone.utc))
            return None if waiting is None else Backoff(waiting)
        finally:
            metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)


async def _reconcile(room: Room, key: Key, now: dt.datetime) -> float | None:
    body = room.body(key)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    namespace, name = key
    metrics.seed_counters("FineTuneJob", namespace, name, GATE_OUTCOMES)
    metrics.seed_cost(room.settings.cost_currency if room.settings.gpu_hour_price_map() else None)
    meta = body["metadata"]
    owner = Owner(name=name, namespace=namespace, uid=meta["uid"])
    raw_spec = body.get("spec") or {}
    spec = parse_spec(raw_spec)
    prior = room.last_status(body)
    generation = int(meta.get("generation") or 0)
    retry = (meta.get("annotations") or {}).get(ANNOTATION_RETRY)
    revision = decide_revision(spec_hash(raw_spec), generation, prior, room.settings.history_limit, retry)
    rev = revision.number

    jobs, pods = owned_children(map(unpack, room.jobs.get(key) or ()), map(unpack, room.pods.get(key) or ()), owner.uid)
    by_name = {j["metadata"]["name"]: j for j in jobs}
    vjob = by_name.get(validate_job_name(name, rev))
    # A restarted gang: the newest attempt the status counted or the index shows (a restart's
    # Job may be created before the status that counts it is written, or the other way round).
    attempts = {a: j for j in jobs if _revision_of(j) == rev
                and (a := train_attempt(name, rev, j["metadata"]["name"])) is not None}
    counted = int(prior.get("restarts") or 0) if not revision.is_new and prior.get("revision") == rev else 0
    attempt = max([counted, *attempts])
    tjob = attempts.get(attempt)
    earlier = [j for a, j in attempts.items() if a < attempt]
    sjob = by_name.get(summary_job_name(name, rev))
    stale = [j for j in jobs if _revision_of(j) != rev]
    vpods = [p for p in pods if _pod_job(p) == validate_job_name(name, rev)]
    tpods = [p for p in pods if _pod_job(p) == train_job_name(name, rev, attempt)]
    spods = [p for p in pods if _pod_job(p) == summary_job_name(name, rev)]

    sticky = not revision.is_new and prior.get("phase") in TERMINAL
    pre = None
    if vjob is None and not sticky:
        pre = await preflight(room.kube, namespace, spec)
    # spec.search: every trial's state from its Job and pods (and its summary reader's, when its
    # pod was gone), with the results the status already holds: a restart re-runs no finished trial.
    trial_names = {n for i in range(len(trial_params(spec.search)) if spec.search else 0)
                   for n in (trial_job_name(name, rev, i), trial_summary_job_name(name, rev, i))}
    trial_jobs = [j for n, j in by_name.items() if n in trial_names]
    prior_search = prior.get("search") if not revision.is_new and prior.get("revision") == rev else None
    search = compute_search(spec, name, rev, prior_search, by_name,
                            [p for p in pods if _pod_job(p) in trial_names], now)
    workload = one(room.workloads.get((namespace, tjob["metadata"].get("uid") or ""))) if tjob else None
    observed = Observed(vjob, vpods, tjob, tpods, room.progress.get((owner.uid, rev)), pre, sjob, spods, attempt, search,
                        workload)
    children = {"configMap": config_map_name(name, rev), "validateJob": validate_job_name(name, rev),
                "trainJob": train_job_name(name, rev, attempt)}
    if spec.nodes > 1:
        children["workersService"] = workers_service_name(name, rev)
    status = compute_status(spec, generation, prior, revision, observed, now, children,
                            artifact_uri(spec, namespace, name, owner.uid, rev), room.settings.dependency_wait_seconds,
                            summary_job_name(name, rev), room.settings.gpu_hour_price(spec.gpu_resource_name),
                            room.settings.cost_currency)
    waiting = _wait_left(status, now, room.settings.dependency_wait_seconds)

    read_summary = status.get("reason") == READING_SUMMARY and sjob is None
    restart = int(status.get("restarts") or 0) > attempt
    services = ((prior.get("children") or {}).get("workersService"), status["children"].get("workersService"))
    actions = plan(spec, status["phase"], vjob, tjob, stale, pre is not None, read_summary, restart, earlier, services,
                   status.get("search"), trial_jobs)
    conflict: ForeignChild | None = None
    try:
        for action in actions:
            await _execute(room, action, owner, spec, rev, status)
    except ForeignChild as exc:
        # Not adopted and not overwritten: the run waits (with backoff) until the name is free.
        conflict, waiting = exc, room.settings.retry_max_delay
        status = {**status, "reason": "ChildConflict", "message": str(exc)}

    # "Pending: creating a Job" lasts until the Job's own event arrives a moment later; writing
    # it would cost a status patch and an Event per FineTuneJob for a state nobody sees.
    creating = any(isinstance(a, CREATES_JOB) for a in actions)
    transient = creating and status["phase"] == PENDING and bool(prior.get("phase")) and prior.get("revision") == rev
    if conflict is not None:
        transient = False
    if not transient and status_changed(prior, status):
        await room.write_status(body, status)
        _after_write(room, body, key, prior, status, tpods, spec.gpus)
        if conflict is not None:
            room.emit(body, "Warning", "ChildConflict", str(conflict)[:1000])
    room.tally.set(owner.uid, status["phase"])
    _restore_gauge(key, status)
    if status["phase"] not in (RUNNING, EVALUATING):
        metrics.drop(metrics.TRAINING_PROGRESS, *key)  # no trainer runs: nothing can stall
    return waiting


def _wait_left(status: Obj, now: dt.datetime, limit: float) -> float | None:
    """Seconds left of the bounded wait for a missing dependency, or None when not waiting."""
    if status.get("phase") in TERMINAL:
        return None
    for c in status.get("conditions") or ():
        if c["type"] == "DependenciesFound" and c["status"] == "False":
            since = dt.datetime.strptime(c["lastTransitionTime"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
            return max(0.0, limit - (now - since).total_seconds())
    return None


def _restore_gauge(key: Key, status: Obj) -> None:
    """The accuracy gauge of a finished revision, set again after an operator restart (the
    transition that first set it is long past; only the status remembers the value)."""
    if status.get("phase") in TERMINAL:
        acc = (status.get("evaluation") or {}).get("accuracy")
        if isinstance(acc, (int, float)):
            metrics.EVAL_ACCURACY.labels(*key).set(acc)


def _pod_job(pod: Obj) -> str | None:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return labels.get("batch.kubernetes.io/job-name") or labels.get("job-name")


async def _execute(room: Room, action: Action, owner: Owner, spec: FineTuneJobSpec, rev: int, status: Obj) -> None:
    s = room.settings
    log = room.log(_log, (owner.namespace, owner.name), rev)
    # The model card's cost (a search trial's config has none: a trial's card is not the result).
    price, currency = s.gpu_hour_price(spec.gpu_resource_name), s.cost_currency
    if isinstance(action, CreateConfigMap):
        await room.kube.create(build_config_map(owner, spec, rev, gpu_hour_price=price, currency=currency))
    elif isinstance(action, CreateValidateJob):
        if await room.kube.create(build_validate_job(owner, spec, rev, s)):
            log.info("Created validation Job %s/%s", owner.namespace, validate_job_name(owner.name, rev))
    elif isinstance(action, CreateTrial):
        trial = apply_params(spec, status["search"]["trials"][action.index]["params"])
        # The config first: the pod mounts it.
        await room.kube.create(build_config_map(owner, trial, rev, action.name, action.index))
        if await room.kube.create(build_trial_job(owner, trial, rev, s, action.index)):
            log.info("Created search trial Job %s/%s", owner.namespace, action.name)
    elif isinstance(action, CreateTrialSummaryJob):
        if await room.kube.create(build_summary_job(owner, spec, rev, s, trial=action.index)):
            log.info("Created summary reader Job %s/%s", owner.namespace, action.name)
    elif isinstance(action, CreateTrainJob):
        attempt = int(status.get("restarts") or 0)
        config_map = None
        if spec.search is not None:
            # The winner's settings, trained again and scored once on the test rows.
            spec = winner_spec(spec, status.get("search"))
            config_map = winner_config_map_name(owner.name, rev)
            await room.kube.create(build_config_map(owner, spec, rev, config_map,
                                                    selection=winner_selection(status.get("search")),
                                                    gpu_hour_price=price, currency=currency))
        if spec.nodes > 1:
            # Before the Job: pod 0's DNS name must resolve when the workers start.
            await room.kube.create(build_workers_service(owner, spec, rev))
        if await room.kube.create(build_trainer_job(owner, spec, rev, s, attempt, config_map)):
            log.info("Created training Job %s/%s", owner.namespace, train_job_name(owner.name, rev, attempt))
            started = status.get("startTime")
            if started:
                since = dt.datetime.strptime(started, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
                metrics.TIME_TO_JOB.observe(max(0.0, (dt.datetime.now(dt.timezone.utc) - since).total_seconds()))
    elif isinstance(action, CreateSummaryJob):
        if await room.kube.create(build_summary_job(owner, spec, rev, s)):
            log.info("Created summary reader Job %s/%s", owner.namespace, summary_job_name(owner.name, rev))
    elif isinstance(action, SetSuspend):
        await room.kube.set_job_suspend(owner.namespace, action.name, action.suspend)
        log.info("Set suspend=%s on Job %s/%s", action.suspend, owner.namespace, action.name)
    elif isinstance(action, DeleteJob):
        await room.kube.delete_job(owner.namespace, action.name)
        log.info("Deleted Job %s/%s", owner.namespace, action.name)
    elif isinstance(action, DeleteService):
        await room.kube.delete("Service", owner.namespace, action.name)
        log.info("Deleted workers Service %s/%s", owner.namespace, action.name)


GATE_OUTCOMES = ("Passed", "Failed")
"""The outcomes ``gate_judged`` counts."""


def gate_judged(prior: Obj, status: Obj) -> str | None:
    """The gate outcome (Passed / Failed) this status write records for the first time for its
    revision, or None: what ``tuneforge_gate_evaluations_total`` counts, once per judged revision."""
    outcome = (status.get("gate") or {}).get("outcome")
    if outcome not in ("Passed", "Failed"):
        return None
    same_revision = prior.get("revision") == status.get("revision")
    return None if same_revision and (prior.get("gate") or {}).get("outcome") == outcome else str(outcome)


def _after_write(room: Room, body: Obj, key: Key, prior: Obj, status: Obj, tpods: list[Obj], gpus: int) -> None:
    """Events and metrics for a transition."""
    old_phase = prior.get("phase") if prior.get("revision") == status.get("revision") else None
    phase = status["phase"]
    if phase != old_phase:
        kind = "Warning" if phase == FAILED else "Normal"
        text = f"Revision {status['revision']}: {phase}" + (f" ({status['reason']}): {status['message']}" if status.get("message") else "")
        room.emit(body, kind, phase, text[:1000])
    gate = gate_judged(prior, status)
    if gate is not None:
        metrics.GATE_EVALUATIONS.labels("FineTuneJob", *key, gate).inc()
    if phase in TERMINAL and old_phase not in TERMINAL:
        acc = (status.get("evaluation") or {}).get("accuracy")
        if acc is not None:
            metrics.EVAL_ACCURACY.labels(*key).set(acc)
        metrics.GPU_SECONDS.inc(float(status.get("gpuSeconds") or 0.0))
        cost = status.get("cost")
        if cost:
            metrics.FINETUNEJOB_COST.labels(cost["currency"]).inc(float(cost["estimated"]))
        if phase == SUCCEEDED and gpus:
            metrics.TRAINING_SECONDS.observe(float(status.get("gpuSeconds") or 0.0) / gpus)


__all__ = ["Room", "gate_judged", "reconcile", "owned_children", "preflight", "job_finished"]
