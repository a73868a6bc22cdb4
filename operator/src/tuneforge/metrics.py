"""Operator metrics (prometheus-client), served on /metrics by ``main``, for both kinds.

Shared by the rooms, so it imports none of them: a kind's phases are passed in. Names follow
Prometheus conventions: base units in the name (``_seconds``, ``_timestamp_seconds``), counters
end in ``_total`` (prometheus-client adds it to the samples), per-object series carry
``namespace``/``name`` and go when the object goes (``forget``). The alert rules in
charts/tuneforge/files/prometheus/alerts.yaml read these names.
"""

from __future__ import annotations

from typing import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

JOBS_BY_PHASE = Gauge("tuneforge_finetunejobs", "FineTuneJobs by phase", ["phase"], registry=REGISTRY)
RECONCILE_ERRORS = Counter("tuneforge_reconcile_errors_total", "Failed reconcile attempts", ["kind"], registry=REGISTRY)
RECONCILE_SECONDS = Histogram(
    "tuneforge_reconcile_duration_seconds", "Time spent in one reconcile", registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
TIME_TO_JOB = Histogram(
    "tuneforge_time_to_train_job_seconds", "From a revision's start to its training Job's creation",
    registry=REGISTRY, buckets=(1, 2, 5, 10, 30, 60, 120, 300, 600, 1800),
)
TRAINING_SECONDS = Histogram(
    "tuneforge_training_seconds", "Trainer container run time of finished revisions", registry=REGISTRY,
    buckets=(10, 30, 60, 300, 600, 1800, 3600, 7200, 21600, 86400),
)
GPU_SECONDS = Counter("tuneforge_gpu_seconds_total", "GPU-seconds of finished revisions", registry=REGISTRY)
LEADER = Gauge("tuneforge_leader", "1 while this operator replica holds the leader Lease (and reconciles), else 0",
               registry=REGISTRY)
EVAL_ACCURACY = Gauge(
    "tuneforge_eval_accuracy", "Held-out accuracy of the latest finished revision", ["namespace", "name"],
    registry=REGISTRY,
)
TRAINING_PROGRESS = Gauge(
    "tuneforge_training_progress_timestamp_seconds",
    "Unix time the operator last read a new training progress event of a running revision (absent otherwise)",
    ["namespace", "name"], registry=REGISTRY,
)
MODELSERVES_BY_PHASE = Gauge("tuneforge_modelserves", "ModelServes by phase", ["phase"], registry=REGISTRY)
GATE_EVALUATIONS = Counter(
    "tuneforge_gate_evaluations_total",
    "Judged quality gates: kind FineTuneJob (its evaluation gate) or ModelServe (its rollout gate); "
    "outcome Passed, Failed, or Error (the gate could not measure)",
    ["kind", "namespace", "name", "outcome"], registry=REGISTRY,
)
ROLLBACKS = Counter(
    "tuneforge_modelserve_rollbacks_total",
    "ModelServe rollbacks by reason: GateFailed, GateError, ProgressDeadlineExceeded or Aborted (a candidate "
    "rejected), RolledBack (a switch back to the warm previous color)",
    ["namespace", "name", "reason"], registry=REGISTRY,
)
ROLLOUT_STARTED = Gauge(
    "tuneforge_modelserve_rollout_started_timestamp_seconds",
    "Unix time the deadline-bound wait of the ModelServe rollout in flight began (absent when none waits)",
    ["namespace", "name"], registry=REGISTRY,
)
ROLLOUT_DEADLINE = Gauge(
    "tuneforge_modelserve_rollout_deadline_seconds",
    "Seconds that wait may last before the operator rolls back (absent when none waits)",
    ["namespace", "name"], registry=REGISTRY,
)
_PER_OBJECT: dict[str, tuple[Gauge, ...]] = {
    "FineTuneJob": (EVAL_ACCURACY, TRAINING_PROGRESS),
    "ModelServe": (ROLLOUT_STARTED, ROLLOUT_DEADLINE),
}


def seed_counters(kind: str, namespace: str, name: str, outcomes: Iterable[str], rollback_reasons: Iterable[str] = ()) -> None:
    """Create one object's labelled counters at 0 (idempotent; called on every reconcile).

    Prometheus's ``increase()`` and ``rate()`` see only changes between scraped samples: a series
    first scraped at 1 shows no increase, so an alert on its first failure would never fire.
    Created when the object is first reconciled, the series are scraped at 0 long before a gate
    is judged or a rollout rolls back."""
    for outcome in outcomes:
        GATE_EVALUATIONS.labels(kind, namespace, name, outcome)
    for reason in rollback_reasons:
        ROLLBACKS.labels(namespace, name, reason)


def drop(gauge: Gauge, namespace: str, name: str) -> None:
    """Remove one object's series of a gauge (absent, not zero); a series never set is fine."""
    try:
        gauge.remove(namespace, name)
    except KeyError:
        pass


def forget(kind: str, namespace: str, name: str) -> None:
    """An object was deleted: its gauges go (counters stay, so ``increase()`` still sees them)."""
    for gauge in _PER_OBJECT[kind]:
        drop(gauge, namespace, name)


class PhaseTally:
    """Phase of every known object of one kind, mirrored into its by-phase gauge
    (``JOBS_BY_PHASE`` for FineTuneJobs, ``MODELSERVES_BY_PHASE`` for ModelServes)."""

    def __init__(self, phases: Iterable[str], gauge: Gauge = JOBS_BY_PHASE) -> None:
        self._phase: dict[str, str] = {}
        self._gauge = gauge
        for p in phases:
            gauge.labels(p).set(0)

    def set(self, uid: str, phase: str | None) -> None:
        old = self._phase.pop(uid, None)
        if old:
            self._gauge.labels(old).dec()
        if phase:
            self._phase[uid] = phase
            self._gauge.labels(phase).inc()


# Appended (cost): finished revisions' estimated cost, status.cost.estimated, by currency.
FINETUNEJOB_COST = Counter(
    "tuneforge_finetunejob_cost", "Estimated cost of finished FineTuneJob revisions (GPU-seconds x price per "
    "GPU-hour), in the currency named", ["currency"], registry=REGISTRY,
)
MODELSERVE_GPU_SECONDS = Counter(
    "tuneforge_modelserve_gpu_seconds",
    "GPU-seconds held by a ModelServe's color pods (status.usage.gpuSeconds, added at each accounting point)",
    ["namespace", "name"], registry=REGISTRY,
)
MODELSERVE_COST = Counter(
    "tuneforge_modelserve_cost",
    "Estimated cost of a ModelServe's color pods' GPU-hours (GPU-seconds x price per GPU-hour), in the currency named",
    ["namespace", "name", "currency"], registry=REGISTRY,
)


def seed_cost(currency: str | None) -> None:
    """Create the FineTuneJob cost counter of ``currency`` at 0 (None: no price is set, no series)."""
    if currency is not None:
        FINETUNEJOB_COST.labels(currency)


def seed_serving(namespace: str, name: str, currency: str | None) -> None:
    """Create one ModelServe's GPU-seconds counter at 0, and its cost counter in ``currency``
    when the servers' GPUs have a price (None: no cost series, as no status.cost)."""
    MODELSERVE_GPU_SECONDS.labels(namespace, name)
    if currency is not None:
        MODELSERVE_COST.labels(namespace, name, currency)
