"""Operator metrics (prometheus-client), served on /metrics by ``main``.

Shared by the rooms, so it imports none of them: a kind's phases are passed in.
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


class PhaseTally:
    """Phase of every known FineTuneJob, mirrored into the JOBS_BY_PHASE gauge."""

    def __init__(self, phases: Iterable[str]) -> None:
        self._phase: dict[str, str] = {}
        for p in phases:
            JOBS_BY_PHASE.labels(p).set(0)

    def set(self, uid: str, phase: str | None) -> None:
        old = self._phase.pop(uid, None)
        if old:
            JOBS_BY_PHASE.labels(old).dec()
        if phase:
            self._phase[uid] = phase
            JOBS_BY_PHASE.labels(phase).inc()

# Appended (cost): finished revisions' estimated cost, status.cost.estimated, by currency.
FINETUNEJOB_COST = Counter(
    "tuneforge_finetunejob_cost", "Estimated cost of finished FineTuneJob revisions (GPU-seconds x price per "
    "GPU-hour), in the currency named", ["currency"], registry=REGISTRY,
)
