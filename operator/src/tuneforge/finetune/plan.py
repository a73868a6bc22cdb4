"""What to create, patch or delete next for a FineTuneJob: a pure function of what exists.

Every action is idempotent (creating treats AlreadyExists as success, deleting NotFound), so
running a plan twice — after an operator restart, say — never duplicates a child.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from .builders.job import train_job_suspended
from .search import search_pending, summaries_to_read, trials_to_start
from .spec import FineTuneJobSpec
from .status import TERMINAL, job_finished

Obj = Mapping[str, Any]


# --- outputs: typed actions (as the ModelServe room's), applied in order by reconcile ----------

@dataclasses.dataclass(frozen=True)
class CreateConfigMap:
    """The revision's trainer config ConfigMap."""


@dataclasses.dataclass(frozen=True)
class CreateValidateJob:
    """The revision's validation Job."""


@dataclasses.dataclass(frozen=True)
class CreateTrainJob:
    """The training Job of the current attempt (``status.restarts``), with the search winner's
    config and a gang's workers Service first where the spec asks for them."""


@dataclasses.dataclass(frozen=True)
class CreateSummaryJob:
    """The summary reader of the training result (its pod was gone before it was read)."""


@dataclasses.dataclass(frozen=True)
class CreateTrial:
    """Search trial ``index`` of status.search (its Job ``name``, config first)."""

    name: str
    index: int


@dataclasses.dataclass(frozen=True)
class CreateTrialSummaryJob:
    """The summary reader ``name`` of search trial ``index``."""

    name: str
    index: int


@dataclasses.dataclass(frozen=True)
class SetSuspend:
    name: str
    suspend: bool


@dataclasses.dataclass(frozen=True)
class DeleteJob:
    name: str


@dataclasses.dataclass(frozen=True)
class DeleteService:
    name: str


Action = (CreateConfigMap | CreateValidateJob | CreateTrainJob | CreateSummaryJob | CreateTrial | CreateTrialSummaryJob
          | SetSuspend | DeleteJob | DeleteService)
CREATES_JOB = (CreateValidateJob, CreateTrainJob, CreateTrial)
"""Actions that create a Job whose own watch event follows at once."""


def plan(
    spec: FineTuneJobSpec,
    phase: str,
    validate_job: Obj | None,
    train_job: Obj | None,
    stale_jobs: Sequence[Obj],
    preflight_failed: bool,
    read_summary: bool = False,
    restart: bool = False,
    earlier_attempts: Sequence[Obj] = (),
    services: tuple[str | None, str | None] = (None, None),
    search: Obj | None = None,
    trial_jobs: Sequence[Obj] = (),
) -> list[Action]:
    """The next actions for the current revision (``phase`` is the freshly computed one;
    ``read_summary``: the training result must be read from the output store; ``restart``: the
    gang in ``train_job`` failed by a disruption and starts again as the next attempt;
    ``earlier_attempts``: this revision's training Jobs before ``train_job``; ``services``: the
    workers Service the last status named and the one the new status names; ``search``: the
    freshly computed status.search of a revision with spec.search; ``trial_jobs``: its trials' Jobs
    and their summary readers)."""
    actions: list[Action] = []
    # The workers Service of a revision that ended or was superseded: nobody resolves it any more.
    named, naming = services
    if named and named != naming:
        actions.append(DeleteService(named))
    # A restarted gang's earlier Jobs: finished, but their pods may still hold GPUs while they
    # checkpoint, and their status is history the FineTuneJob's status.restarts keeps.
    for job in earlier_attempts:
        if not (job.get("metadata") or {}).get("deletionTimestamp"):
            actions.append(DeleteJob(job["metadata"]["name"]))
    # Jobs of earlier revisions that still run hold GPUs for a spec nobody wants any more.
    for job in stale_jobs:
        if job_finished(job) is None:
            actions.append(DeleteJob(job["metadata"]["name"]))
    if phase in TERMINAL or preflight_failed:
        # A failed revision releases what it still holds (e.g. a pod stuck on a missing Secret).
        for maybe in (validate_job, train_job, *trial_jobs):
            if maybe is not None and job_finished(maybe) is None:
                actions.append(DeleteJob(maybe["metadata"]["name"]))
        return actions
    if validate_job is None:
        return actions + [CreateConfigMap(), CreateValidateJob()]
    if job_finished(validate_job) != "Complete":
        return actions
    if train_job is None and search is not None and search_pending(search):
        # The training Job waits for the winner; trials start in index order, at most
        # spec.search.parallelism at a time.
        assert spec.search is not None
        trials = search["trials"]
        readers = {t.get("summaryJob") for t in trials}
        for job in trial_jobs:
            if job_finished(job) is None and job["metadata"]["name"] not in readers:
                actions += _suspend_actions(spec, job)
        existing = {j["metadata"]["name"] for j in trial_jobs}
        actions += [CreateTrialSummaryJob(trials[i]["summaryJob"], i)
                    for i in summaries_to_read(search, existing)]
        return actions + [CreateTrial(trials[i]["job"], i)
                          for i in trials_to_start(search, spec.search.parallelism)]
    if train_job is None or restart:
        return actions + [CreateTrainJob()]
    if read_summary:
        return actions + [CreateSummaryJob()]
    if job_finished(train_job) is None:
        actions += _suspend_actions(spec, train_job)
    return actions


def _suspend_actions(spec: FineTuneJobSpec, job: Obj) -> list[Action]:
    """Keep a running Job's spec.suspend in line with the FineTuneJob's."""
    suspended = bool((job.get("spec") or {}).get("suspend"))
    if spec.queue_name:
        # Kueue owns unsuspension; the user can still pause a queued or running Job.
        if spec.suspend and not suspended:
            return [SetSuspend(job["metadata"]["name"], True)]
    elif suspended != train_job_suspended(spec):
        return [SetSuspend(job["metadata"]["name"], train_job_suspended(spec))]
    return []
