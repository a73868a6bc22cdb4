"""FineTuneJob status, computed by pure functions from what exists.

``decide_revision`` says which revision the spec runs (a user's spec edit — a new generation
whose hash differs — starts the next one); ``compute_status`` turns the revision's children
(Jobs, Pods), the latest log progress and the trainer's summary into the whole ``status`` dict.
The reconcile layer writes it only when it differs from what is stored.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any, Mapping, Sequence

from ..runtime import now_iso, parse_time
from ..endpoint_secrets import SECRET_NOT_ALLOWED, SECRET_NOT_FOUND
from .gate import evaluate_gate
from .progress import Progress
from .builders.job import COMPLETION_INDEX_ANNOTATION as COMPLETION_INDEX, CONTAINER
from .results import Summary, parse_summary
from .spec import FineTuneJobSpec

PENDING, VALIDATING, QUEUED, RUNNING = "Pending", "Validating", "Queued", "Running"
EVALUATING, SUCCEEDED, FAILED, SUSPENDED = "Evaluating", "Succeeded", "Failed", "Suspended"
PHASES = (PENDING, VALIDATING, QUEUED, RUNNING, EVALUATING, SUCCEEDED, FAILED, SUSPENDED)
TERMINAL = (SUCCEEDED, FAILED)
CONDITION_TYPES = ("DependenciesFound", "Validated", "Admitted", "Trained", "GatePassed", "Succeeded", "Failed")
# The phases a run moves through, in order: a revision never moves back along this line (a pod
# status lagging behind its Job, or a retry, shows in reason and message, not as a phase going
# backwards). Suspended and the terminal phases stand outside it.
FORWARD = (PENDING, VALIDATING, QUEUED, RUNNING, EVALUATING)
# Reasons of a revision that waits for (then fails on) something the spec names but the cluster
# lacks; all of them can appear moments later with GitOps.
DEPENDENCY_REASONS = ("PersistentVolumeClaimNotFound", "ConfigMapNotFound", "ConfigMapKeyNotFound",
                      "PriorityClassNotFound", "CreateContainerConfigError", SECRET_NOT_FOUND, SECRET_NOT_ALLOWED)

Obj = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Revision:
    """Which run of the spec the status describes."""

    number: int
    spec_hash: str
    is_new: bool
    history: tuple[Mapping[str, Any], ...]
    # The retry request (annotation value) this status records as handled, acted on or not.
    retry_request: str | None = None


@dataclasses.dataclass(frozen=True)
class Observed:
    """What exists for the current revision, as the operator last saw it."""

    validate_job: Obj | None = None
    validate_pods: Sequence[Obj] = ()
    train_job: Obj | None = None
    train_pods: Sequence[Obj] = ()
    progress: Progress | None = None
    preflight_error: tuple[str, str] | None = None  # (reason, message naming the field)
    # The reader of <output>/summary.json, run when the training pods' termination message is gone.
    summary_job: Obj | None = None
    summary_pods: Sequence[Obj] = ()
    # Times the gang (nodes > 1) was restarted: ``train_job`` is this attempt's Job.
    restarts: int = 0
    # status.search of a revision with spec.search (``search.compute_search``), else None.
    search: Mapping[str, Any] | None = None
    # Kueue's Workload of the training Job (its conditions only), when Kueue queues it.
    workload: Obj | None = None


@dataclasses.dataclass(frozen=True)
class PhaseInfo:
    phase: str
    reason: str
    message: str
    summary: Summary | None = None
    gate_reasons: tuple[str, ...] = ()
    gate_passed: bool | None = None
    waiting: bool = False  # for a dependency (DEPENDENCY_REASONS) within the bounded wait
    restart: bool = False  # the failed gang starts again (as attempt ``restarts + 1``)


def decide_revision(current_hash: str, generation: int, prior: Obj, history_limit: int = 20,
                    retry: str | None = None) -> Revision:
    """Keep the revision unless the user wrote a spec that defines another run, or asked for a
    Failed revision to run again.

    ``retry`` is the value of the ``tuneforge.dev/retry`` annotation: a value other than the one
    status.retryRequest recorded is a new request. On a Failed revision it starts the next
    revision with the same spec (new child names, the failed one kept in status.history, as a
    spec edit would); on any other phase it is recorded and ignored, so it cannot fire later
    when that revision fails.

    A new run needs both a new ``metadata.generation`` (only a write of the spec moves it) and a
    different hash of the spec (a write of ``suspend`` alone does not count). The hash alone is
    not enough: the spec the operator sees is defaulted by the apiserver, so a CRD upgrade that
    adds a defaulted field changes every hash without anyone writing anything. Such a change —
    same generation, new hash — is taken into the current revision's hash instead, so a later
    ``suspend`` edit does not look like a new spec.
    """
    history = tuple(prior.get("history") or ())
    number = prior.get("revision")
    if not number:
        return Revision(1, current_hash, True, history, retry)
    phase = prior.get("phase")
    retried = retry is not None and retry != prior.get("retryRequest") and phase == FAILED
    seen = prior.get("observedGeneration")
    if not retried and (prior.get("specHash") == current_hash or (isinstance(seen, int) and generation <= seen)):
        return Revision(int(number), current_hash, False, history, retry)
    entry = {k: v for k, v in {
        "revision": int(number),
        "specHash": prior.get("specHash"),
        "phase": phase if phase in TERMINAL else "Superseded",
        "reason": prior.get("reason"),
        "accuracy": (prior.get("evaluation") or {}).get("accuracy"),
        "gate": (prior.get("gate") or {}).get("outcome"),
        "adapterDigest": (prior.get("adapter") or {}).get("digest"),
        # Where its adapter is and what it was trained on: a ModelServe can roll back to (or
        # start on) a superseded revision from the history alone.
        "adapterUri": (prior.get("adapter") or {}).get("uri"),
        "baseModel": (prior.get("adapter") or {}).get("baseModel"),
        # Its scored held-out rows: a ModelServe's gate for that revision asks them again.
        "evalRowsUri": (prior.get("artifacts") or {}).get("predictions"),
        "startTime": prior.get("startTime"),
        "completionTime": prior.get("completionTime"),
    }.items() if v is not None}
    return Revision(int(number) + 1, current_hash, True, (history + (entry,))[-history_limit:], retry)


# --- reading Kubernetes objects -------------------------------------------------------------

def job_condition(job: Obj | None, kind: str) -> Obj | None:
    for c in ((job or {}).get("status") or {}).get("conditions") or ():
        if c.get("type") == kind and c.get("status") == "True":
            return c
    return None


def job_finished(job: Obj | None) -> str | None:
    """'Complete', 'Failed' or None."""
    if job_condition(job, "Complete"):
        return "Complete"
    if job_condition(job, "Failed"):
        return "Failed"
    return None


def _container_status(pod: Obj) -> Obj | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or ():
        if cs.get("name") == CONTAINER:
            return cs
    return None


def termination_message(pods: Sequence[Obj], want_exit_zero: bool | None = None) -> str | None:
    """The newest trainer termination message among the pods (optionally by exit code)."""
    best: tuple[str, str] | None = None
    for pod in pods:
        cs = _container_status(pod)
        term = ((cs or {}).get("state") or {}).get("terminated")
        if not term or not term.get("message"):
            continue
        if want_exit_zero is not None and (term.get("exitCode") == 0) != want_exit_zero:
            continue
        key = term.get("finishedAt") or ""
        if best is None or key >= best[0]:
            best = (key, term["message"])
    return best[1] if best else None


def results_seen(pods: Sequence[Obj], exit_zero: bool) -> bool:
    """Whether a pod's terminated trainer container (of that outcome) is visible yet.

    A Job's Complete/Failed condition and its pod's final status arrive on different watch
    streams; the Job can be seen finished while the pod still looks Running. Results are read
    only once the pod's termination is visible, unless the pods are gone altogether.
    """
    if not pods:
        return True
    for pod in pods:
        term = _terminated(pod)
        if term and (term.get("exitCode") == 0) == exit_zero:
            return True
    return False


def _terminated(pod: Obj) -> Obj | None:
    """The trainer container's terminated state, if it has ended."""
    return ((_container_status(pod) or {}).get("state") or {}).get("terminated")


def pod_rank(pod: Obj) -> int:
    """A training pod's node rank: its Indexed Job completion index (0 for a one-pod Job)."""
    meta = pod.get("metadata") or {}
    value = (meta.get("annotations") or {}).get(COMPLETION_INDEX) or (meta.get("labels") or {}).get(COMPLETION_INDEX)
    try:
        return int(value) if value is not None else 0
    except ValueError:
        return 0


def _worker_failure(pods: Sequence[Obj], world: int) -> str | None:
    """Which worker of a gang failed first, where, and how (None when no pod shows a failure)."""
    first: tuple[str, Obj, Obj] | None = None
    for pod in pods:
        term = _terminated(pod) or {}
        failed = term.get("exitCode") not in (None, 0) or (pod.get("status") or {}).get("phase") == "Failed"
        if failed and (first is None or (term.get("finishedAt") or "") < first[0]):
            first = (term.get("finishedAt") or "", pod, term)
    if first is None:
        return None
    _, pod, term = first
    where = (pod.get("spec") or {}).get("nodeName")
    detail = term.get("message") or term.get("reason") or (pod.get("status") or {}).get("reason") or "failed"
    summary = parse_summary(detail) if term.get("message") else None
    if summary and summary.message:
        detail = summary.message
    code = f"exit code {term['exitCode']}: " if term.get("exitCode") not in (None, 0) else ""
    return (f"worker rank {pod_rank(pod)} of {world} (pod {pod['metadata']['name']}"
            f"{f' on node {where}' if where else ''}) failed: {code}{_first_line(detail)}")


# Exit codes no restart fixes (tuneforge_trainer.cli: bad config, bad data).
FATAL_EXIT_CODES = (2, 3)
# A pod the node took away: kubelet eviction (node pressure), node shutdown, preemption.
DISRUPTED_POD_REASONS = ("Evicted", "Preempting", "Terminated", "Shutdown", "NodeShutdown")
SIGTERM_EXIT = 143


def _disruption(pod: Obj) -> str | None:
    """How a pod was disrupted, if it was: a DisruptionTarget condition (preemption, Eviction API
    as in a drain, taint eviction, PodGC) or a kubelet eviction; None otherwise."""
    for c in (pod.get("status") or {}).get("conditions") or ():
        if c.get("type") == "DisruptionTarget" and c.get("status") == "True":
            return c.get("reason") or "DisruptionTarget"
    reason = (pod.get("status") or {}).get("reason")
    return reason if reason in DISRUPTED_POD_REASONS else None


def _gang_disruption(pods: Sequence[Obj], world: int) -> str | None:
    """Why a failed gang may start again, naming the worker (None: the failure is the trainer's).

    The first failure by time is often a consequence: an evicted worker checkpoints for up to its
    grace period while its peers already died of the broken collective (exit 1). So a disruption
    of any worker counts, unless a worker exited with a code no retry fixes. Without a disruption,
    a worker whose trainer was the first to end, with 143 (SIGTERM from outside, e.g. a deleted
    pod), counts; when a worker's own error came first, the Job controller's removal of its
    peers (also 143) does not.
    """
    if _fatal_exit(pods):
        return None
    ended = [(t.get("finishedAt") or "", p, t) for p in pods if (t := _terminated(p) or {})]
    for pod in sorted(pods, key=pod_rank):
        how = _disruption(pod)
        if how:
            return f"worker rank {pod_rank(pod)} of {world} (pod {pod['metadata']['name']}) was disrupted: {how}"
    failed = sorted((e for e in ended if e[2].get("exitCode") not in (None, 0)), key=lambda e: e[0])
    if failed and failed[0][2].get("exitCode") == SIGTERM_EXIT:
        pod = failed[0][1]
        return f"worker rank {pod_rank(pod)} of {world} (pod {pod['metadata']['name']}) was stopped: exit code 143 (SIGTERM)"
    return None


def _fatal_exit(pods: Sequence[Obj]) -> bool:
    """A worker exited with a code no retry fixes (bad config or data)."""
    return any((_terminated(p) or {}).get("exitCode") in FATAL_EXIT_CODES for p in pods)


def _job_disruption(job: Obj | None) -> str | None:
    """The same, from the Job's own record, for when the pods are gone (an evicted pod is deleted
    as soon as it has ended, often before the operator sees it): the Job controller names the pod
    and the matching rule of the pod failure policy in its Failed condition's message ("Pod ns/p
    has condition DisruptionTarget matching FailJob rule at index 0", "Container trainer for pod
    ns/p failed with exit code 143 matching FailJob rule at index 1")."""
    cond = job_condition(job, "Failed") or {}
    message = str(cond.get("message") or "")
    if cond.get("reason") != "PodFailurePolicy":
        return None
    if "condition DisruptionTarget" in message:
        return f"a worker was disrupted ({message})"
    if f"exit code {SIGTERM_EXIT} " in message:
        return f"a worker was stopped ({message})"
    return None


def workers(pods: Sequence[Obj]) -> list[dict[str, Any]]:
    """status.workers: the newest pod of each node rank."""
    newest: dict[int, Obj] = {}
    for pod in pods:
        r = pod_rank(pod)
        stamp = (pod.get("metadata") or {}).get("creationTimestamp") or ""
        if r not in newest or stamp >= ((newest[r].get("metadata") or {}).get("creationTimestamp") or ""):
            newest[r] = pod
    out = []
    for r, pod in sorted(newest.items()):
        st = pod.get("status") or {}
        entry: dict[str, Any] = {"rank": r, "pod": pod["metadata"]["name"], "phase": st.get("phase") or "Pending"}
        if (pod.get("spec") or {}).get("nodeName"):
            entry["node"] = pod["spec"]["nodeName"]
        waiting, unscheduled = _waiting(pod), _unscheduled(pod)
        term = _terminated(pod)
        reason = (unscheduled or {}).get("reason") or (waiting or {}).get("reason") or (term or {}).get("reason")
        if reason:
            entry["reason"] = reason
        out.append(entry)
    return out


def _pod_active(pod: Obj) -> bool:
    return (pod.get("status") or {}).get("phase") in (None, "Pending", "Running") and not pod.get("metadata", {}).get("deletionTimestamp")


def _unscheduled(pod: Obj) -> Obj | None:
    for c in (pod.get("status") or {}).get("conditions") or ():
        if c.get("type") == "PodScheduled" and c.get("status") == "False":
            return c
    return None


def _scheduled(pod: Obj) -> bool:
    for c in (pod.get("status") or {}).get("conditions") or ():
        if c.get("type") == "PodScheduled" and c.get("status") == "True":
            return True
    return False


def _waiting(pod: Obj) -> Obj | None:
    cs = _container_status(pod)
    return ((cs or {}).get("state") or {}).get("waiting")


def _is_running(pod: Obj) -> bool:
    cs = _container_status(pod)
    return bool(((cs or {}).get("state") or {}).get("running"))


# Waiting reasons that no amount of waiting fixes: the spec names something that is not there.
CONFIG_ERRORS = ("CreateContainerConfigError", "InvalidImageName", "ErrImageNeverPull")


def secret_field(spec: FineTuneJobSpec, message: str) -> str:
    """Name the spec field whose Secret a kubelet error message is about."""
    refs = [
        ("spec.baseModel.tokenSecretRef", spec.hf_token),
        ("spec.s3.accessKeyIdSecretRef", spec.s3_access_key),
        ("spec.s3.secretAccessKeySecretRef", spec.s3_secret_key),
    ] + [("spec.evaluation.baselines[openai].apiKeySecretRef", b.api_key) for b in spec.baselines or () if b.api_key]
    for field, ref in refs:
        if ref is not None and (f'"{ref.name}"' in message or f"'{ref.name}'" in message):
            return field
    return "spec"


READING_SUMMARY = "ReadingSummary"


def _saved_summary(observed: Observed) -> Summary | PhaseInfo:
    """The summary from the reader Job of <output>/summary.json, or the phase while there is none."""
    sjob = observed.summary_job
    done = job_finished(sjob)
    if sjob is None or done is None or not results_seen(observed.summary_pods, exit_zero=done == "Complete"):
        return PhaseInfo(EVALUATING, READING_SUMMARY,
                               "The training pod's result is gone; reading summary.json from the output")
    raw = termination_message(observed.summary_pods, want_exit_zero=done == "Complete")
    summary = parse_summary(raw) if done == "Complete" else None
    if summary is None:
        detail = _first_line(raw) if raw else "the reader left no message"
        return PhaseInfo(FAILED, "SummaryMissing",
                               f"The trainer exited 0; its termination message is gone and summary.json could not be read: {detail}")
    return summary


def _first_failure(search: Mapping[str, Any]) -> str:
    for t in search.get("trials") or ():
        if t.get("phase") == "Failed":
            return f"trial {t.get('index')} ({t.get('job')}): {t.get('message') or 'failed'}"
    return "no trial was scored"


def _config_error(spec: FineTuneJobSpec, phase: str, waiting: Obj, waited: float, wait_limit: float) -> PhaseInfo:
    """A pod the kubelet cannot start: a missing Secret (CreateContainerConfigError) may yet
    appear and the kubelet retries it by itself; a bad image name never will."""
    msg = waiting.get("message") or waiting["reason"]
    message = f"{secret_field(spec, msg)}: {msg}"
    if waiting["reason"] == "CreateContainerConfigError":
        return _dependency(phase, waiting["reason"], message, waited, wait_limit)
    return PhaseInfo(FAILED, waiting["reason"], message)


def _first_line(text: str, limit: int = 1000) -> str:
    return (text.strip().splitlines() or [""])[0][:limit]


def _dependency(phase: str, reason: str, message: str, waited: float, wait_limit: float) -> PhaseInfo:
    """Wait (bounded) for something the spec names; then fail, naming the field."""
    if waited < wait_limit:
        return PhaseInfo(phase, reason, f"{message} (waiting up to {wait_limit:g} s for it)", waiting=True)
    return PhaseInfo(FAILED, reason, f"{message} (waited {waited:.0f} s)")


def derive_phase(spec: FineTuneJobSpec, observed: Observed, waited: float = 0.0, wait_limit: float = 0.0) -> PhaseInfo:
    """The phase, reason and message of the current revision. ``waited``: seconds this revision
    has been missing a PVC, Secret or PriorityClass; it fails once that reaches ``wait_limit``."""
    if observed.preflight_error:
        reason, message = observed.preflight_error
        return _dependency(PENDING, reason, message, waited, wait_limit)

    vjob = observed.validate_job
    if vjob is None:
        return PhaseInfo(PENDING, "Creating", "Creating the data validation Job")
    vdone = job_finished(vjob)
    if vdone == "Failed" and not results_seen(observed.validate_pods, exit_zero=False):
        return PhaseInfo(VALIDATING, "CollectingResults", "The validation Job failed; reading its pod's result")
    if vdone == "Failed":
        summary = parse_summary(termination_message(observed.validate_pods, want_exit_zero=False))
        cond = job_condition(vjob, "Failed") or {}
        if summary and summary.message:
            message = _first_line(summary.message)
        else:
            raw = termination_message(observed.validate_pods, want_exit_zero=False)
            message = _first_line(raw) if raw else (cond.get("message") or "the validation pod failed")
        return PhaseInfo(FAILED, "DataValidationFailed", message, summary=summary)
    if vdone != "Complete":
        for pod in observed.validate_pods:
            waiting = _waiting(pod)
            if waiting and waiting.get("reason") in CONFIG_ERRORS:
                return _config_error(spec, VALIDATING, waiting, waited, wait_limit)
        return PhaseInfo(VALIDATING, "ValidatingData", "Checking the data on a CPU before a GPU is requested")

    tjob = observed.train_job
    search = observed.search
    if tjob is None and search is not None and not search.get("winner"):
        if search["done"] == search["total"]:
            return PhaseInfo(FAILED, "SearchFailed", f"Every one of the {search['total']} search trials failed; "
                             f"the first: {_first_failure(search)}")
        if spec.suspend:
            return PhaseInfo(SUSPENDED, "Suspended", f"spec.suspend is true: the search's trials are suspended "
                             f"({search['done']} of {search['total']} done)")
        trials = search.get("trials") or ()
        running = sum(1 for t in trials if t.get("phase") == "Running")
        started = sum(1 for t in trials if t.get("phase") in ("Pending", "Running"))
        return PhaseInfo(RUNNING if running or search["done"] else QUEUED, "Searching",
                         f"Search: {search['done']} of {search['total']} trials done ({search['failed']} failed), "
                         f"{started} started; scored on validation rows only")
    if tjob is None:
        return PhaseInfo(PENDING, "DataValidated", "Creating the training Job" + (
            f" of the search's winner (trial {search['winner']['index']})" if search else ""))
    tdone = job_finished(tjob)
    # Rank 0 alone writes the result (a one-pod Job's pod is rank 0).
    rank0 = [p for p in observed.train_pods if pod_rank(p) == 0]
    if spec.nodes > 1 and tdone == "Failed":
        # A deadline is the user's limit, not a disruption: no restart.
        # The pods left may not show a disruption: an evicted worker's pod is deleted as soon as
        # it has ended, while its peer, stopped by the Job controller, may exit 1 (torchrun under
        # SIGTERM). The Job's Failed condition names the pod and rule that failed it first.
        deadline = (job_condition(tjob, "Failed") or {}).get("reason") == "DeadlineExceeded"
        pods = observed.train_pods
        disrupted = None if deadline or _fatal_exit(pods) else (
            _gang_disruption(pods, spec.world_size) or _job_disruption(tjob))
        if disrupted and observed.restarts < spec.max_restarts:
            return PhaseInfo(RUNNING, "GangRestarting", f"{disrupted}; restarting the gang from its last checkpoint "
                             f"(restart {observed.restarts + 1} of {spec.max_restarts})", restart=True)
        if disrupted:
            return PhaseInfo(FAILED, "RestartLimitReached", f"{disrupted}; the gang already used its "
                             f"{spec.max_restarts} restarts (spec.scheduling.maxRestarts)")
        failure = _worker_failure(observed.train_pods, spec.world_size)
        if failure:
            return PhaseInfo(FAILED, "WorkerFailed", failure, summary=parse_summary(
                termination_message(rank0, want_exit_zero=False)))
    if tdone is not None and not results_seen(rank0, exit_zero=tdone == "Complete"):
        return PhaseInfo(EVALUATING if tdone == "Complete" else RUNNING, "CollectingResults",
                         "The training Job finished; reading its pod's result")
    if tdone == "Failed":
        cond = job_condition(tjob, "Failed") or {}
        raw = termination_message(rank0, want_exit_zero=False)
        summary = parse_summary(raw)
        detail = _first_line(summary.message if summary and summary.message else (raw or ""))
        reason = cond.get("reason") or "TrainingFailed"
        reason = {"BackoffLimitExceeded": "TrainingFailed", "PodFailurePolicy": "TrainingFailed"}.get(reason, reason)
        message = detail or cond.get("message") or "the training Job failed"
        return PhaseInfo(FAILED, reason, message, summary=summary)
    if tdone == "Complete":
        summary = parse_summary(termination_message(rank0, want_exit_zero=True))
        if summary is None:
            # The pods are gone (PodGC, node scaled away, operator down) or the message is: read
            # the copy the trainer saved beside the artifacts.
            saved = _saved_summary(observed)
            if isinstance(saved, PhaseInfo):
                return saved
            summary = saved
        if summary.status != "succeeded":
            return PhaseInfo(FAILED, "TrainingFailed", _first_line(summary.message) or f"trainer status {summary.status}", summary=summary)
        outcome = evaluate_gate(spec.gate, summary)
        if outcome.passed:
            return PhaseInfo(SUCCEEDED, "GatePassed", "; ".join(outcome.reasons), summary, outcome.reasons, True)
        return PhaseInfo(FAILED, "GateFailed", "; ".join(outcome.reasons), summary, outcome.reasons, False)

    if (tjob.get("spec") or {}).get("suspend"):
        if spec.suspend:
            return PhaseInfo(SUSPENDED, "Suspended", "spec.suspend is true")
        if spec.queue_name:
            return kueue_wait(spec.queue_name, observed.workload)
        return PhaseInfo(SUSPENDED, "JobSuspended", "The training Job is suspended")

    active = [p for p in observed.train_pods if _pod_active(p)]
    if not active:
        failed = int(((tjob.get("status") or {}).get("failed")) or 0)
        if failed:
            return PhaseInfo(RUNNING, "Retrying", f"Training pod failed {failed} time(s); the Job retries")
        return PhaseInfo(QUEUED, "CreatingPod", "Waiting for the training pod")
    # A gang is as far as its least advanced worker: queued while any pod waits for a node.
    active.sort(key=pod_rank)
    gang = f"worker rank {{}} of {spec.world_size}: " if spec.nodes > 1 else ""
    for pod in active:
        if not _scheduled(pod):
            unscheduled = _unscheduled(pod)
            if unscheduled:
                return PhaseInfo(QUEUED, "WaitingForGPU", gang.format(pod_rank(pod)) + (
                    unscheduled.get("message") or "The training pod is not scheduled yet"))
            return PhaseInfo(QUEUED, "Scheduling", "The training pod is being scheduled")
    pod = next((p for p in active if _waiting(p) and not _is_running(p)), active[0])
    waiting = _waiting(pod)
    if waiting and not _is_running(pod) and waiting.get("reason") in CONFIG_ERRORS:
        return _config_error(spec, RUNNING, waiting, waited, wait_limit)
    if waiting and not _is_running(pod):
        reason = waiting.get("reason") or "ContainerCreating"
        return PhaseInfo(RUNNING, reason, waiting.get("message") or "Starting the trainer")
    progress = observed.progress
    if progress is not None and progress.stage in ("evaluate", "done"):
        return PhaseInfo(EVALUATING, "Evaluating", "Scoring the adapter and baselines on held-out rows")
    return PhaseInfo(RUNNING, "Training", "The trainer is running")


def kueue_wait(queue: str, workload: Obj | None) -> PhaseInfo:
    """Queued on Kueue, in Kueue's own words: the Workload's QuotaReserved condition while it waits
    for quota (e.g. "couldn't assign flavors to pod set main: insufficient unused quota for
    nvidia.com/gpu ..."), its Evicted condition when it was preempted and waits to be admitted again."""
    conds = {c.get("type"): c for c in ((workload or {}).get("status") or {}).get("conditions") or ()}
    reserved, evicted = conds.get("QuotaReserved"), conds.get("Evicted")
    waiting = ""
    if reserved and reserved.get("status") == "False" and reserved.get("message"):
        waiting = f"{reserved.get('reason') or 'Pending'}: {reserved['message']}"
    if evicted and evicted.get("status") == "True":
        why = evicted.get("reason") or "Evicted"
        message = f"Kueue evicted the Job ({why}: {evicted.get('message') or 'no message'})"
        return PhaseInfo(QUEUED, "PreemptedByKueue" if why == "Preempted" else "EvictedByKueue",
                         f"{message}; waiting to be admitted again from queue {queue}" + (f" ({waiting})" if waiting else ""))
    if waiting:
        return PhaseInfo(QUEUED, "WaitingForKueue", f"Kueue queue {queue}: {waiting}")
    if reserved and reserved.get("status") == "True":
        return PhaseInfo(QUEUED, "WaitingForKueue", f"Kueue reserved quota in queue {queue}; admitting the Job")
    return PhaseInfo(QUEUED, "WaitingForKueue", f"Waiting for Kueue to admit the Job from queue {queue}")


# --- status assembly ------------------------------------------------------------------------

def gpu_seconds(pods: Sequence[Obj], gpus: int, now: dt.datetime) -> float:
    """GPU-seconds the trainer containers held: GPUs x (end or now - start), summed over pods."""
    total = 0.0
    for pod in pods:
        state = (_container_status(pod) or {}).get("state") or {}
        run = state.get("running") or state.get("terminated") or {}
        start = parse_time(run.get("startedAt"))
        if start is None:
            continue
        end = parse_time((state.get("terminated") or {}).get("finishedAt")) or now
        total += max(0.0, (end - start).total_seconds()) * gpus
    return round(total, 1)


def cost_status(gpu_seconds: float, gpu_hour_price: float | None, currency: str) -> dict[str, Any] | None:
    """status.cost: GPU-seconds x the price of one GPU-hour (None without a price)."""
    if gpu_hour_price is None:
        return None
    amount = round(gpu_seconds / 3600.0 * gpu_hour_price, 4)
    return {"estimated": amount, "currency": currency, "gpuHourPrice": gpu_hour_price,
            "display": f"{amount:.2f} {currency}"}


def _condition(prior: Mapping[str, Obj], kind: str, status: str, reason: str, message: str,
               generation: int, now: str) -> dict[str, Any]:
    old = prior.get(kind)
    since = old.get("lastTransitionTime") if old and old.get("status") == status else None
    return {
        "type": kind, "status": status, "reason": reason, "message": message,
        "lastTransitionTime": since or now, "observedGeneration": generation,
    }


def _conditions(info: PhaseInfo, observed: Observed, prior: Sequence[Obj], generation: int, now: str) -> list[dict[str, Any]]:
    old = {c.get("type", ""): c for c in prior or ()}
    p = info.phase
    if info.waiting and observed.train_job is None:
        validated = ("Unknown", info.reason, info.message)
    elif observed.preflight_error or info.reason == "DataValidationFailed" or (info.reason in CONFIG_ERRORS and observed.train_job is None):
        validated = ("False", info.reason, info.message)
    elif job_finished(observed.validate_job) == "Complete":
        validated = ("True", "DataValidated", "The data passed validation")
    else:
        validated = ("Unknown", "Validating", "Validation has not finished")
    if p in (RUNNING, EVALUATING) or job_finished(observed.train_job) or (p == FAILED and observed.train_pods):
        admitted = ("True", "Scheduled", "The training pod was scheduled")
    elif p in (QUEUED, SUSPENDED):
        admitted = ("False", info.reason, info.message)
    else:
        admitted = ("Unknown", "NotStarted", "No training pod yet")
    tdone = job_finished(observed.train_job)
    if tdone == "Complete":
        trained = ("True", "TrainingComplete", "The trainer finished")
    elif tdone == "Failed":
        trained = ("False", info.reason, info.message)
    else:
        trained = ("Unknown", "NotFinished", "Training has not finished")
    if info.gate_passed is True:
        gate = ("True", "GatePassed", info.message)
    elif info.gate_passed is False:
        gate = ("False", "GateFailed", info.message)
    else:
        gate = ("Unknown", "NotEvaluated", "The adapter has not been evaluated")
    if info.waiting or (p == FAILED and info.reason in DEPENDENCY_REASONS):
        found = ("False", info.reason, info.message)
    else:
        found = ("True", "Found", "Every PersistentVolumeClaim, ConfigMap, Secret and PriorityClass named was found (or is not needed yet)")
    rows = [
        ("DependenciesFound",) + found,
        ("Validated",) + validated, ("Admitted",) + admitted, ("Trained",) + trained, ("GatePassed",) + gate,
        ("Succeeded", "True" if p == SUCCEEDED else "False", info.reason if p == SUCCEEDED else "NotSucceeded",
         info.message if p == SUCCEEDED else f"Phase {p}"),
        ("Failed", "True" if p == FAILED else "False", info.reason if p == FAILED else "NotFailed",
         info.message if p == FAILED else f"Phase {p}"),
    ]
    return [_condition(old, k, s, r, m, generation, now) for k, s, r, m in rows]


def _evaluation(summary: Summary) -> dict[str, Any]:
    ev: dict[str, Any] = {k: v for k, v in {
        "accuracy": summary.accuracy, "macroF1": summary.macro_f1, "exactMatch": summary.exact_match,
        "evalLoss": summary.eval_loss, "evalRows": summary.n_eval,
    }.items() if v is not None}
    if summary.worst_classes:
        ev["worstClasses"] = [{"label": c.label, "f1": c.f1} for c in summary.worst_classes]
    return ev


def _progress(progress: Progress | None, phase: str, now: str) -> dict[str, Any] | None:
    if phase == SUCCEEDED:
        out: dict[str, Any] = {"display": "100%", "percent": 100.0}
        if progress is not None and progress.total_steps:
            out.update(step=progress.total_steps, totalSteps=progress.total_steps)
        return out
    if progress is None:
        return None
    out = {k: v for k, v in {
        "percent": progress.percent, "step": progress.step, "totalSteps": progress.total_steps,
        "epoch": progress.epoch, "etaSeconds": progress.eta_seconds, "trainLoss": progress.train_loss,
        "evalLoss": progress.eval_loss, "stage": progress.stage,
    }.items() if v is not None}
    out["display"] = f"{progress.percent:g}%" if progress.percent is not None else progress.stage
    out["updatedAt"] = now
    return out


def adapter_status(summary: Summary, revision: int) -> dict[str, Any]:
    """``status.adapter``: the URI and content digest of the adapter this revision wrote, and
    what it was trained on, so anyone (a ModelServe, a human) can tell which bytes it produced."""
    a = summary.adapter
    assert a is not None
    out: dict[str, Any] = {"uri": a.uri, "digest": a.digest, "shortDigest": a.digest.removeprefix("sha256:")[:12], "revision": revision}
    if a.base_model_uri:
        out["baseModel"] = {k: v for k, v in {"uri": a.base_model_uri, "digest": a.base_model_digest}.items() if v}
    if a.dataset_uri:
        out["dataset"] = {k: v for k, v in {"uri": a.dataset_uri, "digest": a.dataset_digest}.items() if v}
    return out


def compute_status(
    spec: FineTuneJobSpec,
    generation: int,
    prior: Obj,
    revision: Revision,
    observed: Observed,
    now: dt.datetime,
    children: Mapping[str, str],
    artifact_uri: str,
    wait_limit: float = 600.0,
    summary_job: str | None = None,
    gpu_hour_price: float | None = None,
    currency: str = "USD",
) -> dict[str, Any]:
    """The whole status of a FineTuneJob. Terminal phases stick for their revision, and within a
    revision the phase never moves back along FORWARD.

    ``children`` are always listed; ``summary_job`` (the reader of <output>/summary.json) joins
    them once it exists or is about to be created — most runs never need one. ``gpu_hour_price``
    (in ``currency``) prices the GPU-seconds as status.cost."""
    if not revision.is_new and prior.get("phase") in TERMINAL and prior.get("revision") == revision.number:
        kept = dict(prior)
        kept["observedGeneration"] = generation
        kept["specHash"] = revision.spec_hash
        if revision.retry_request is not None:
            kept["retryRequest"] = revision.retry_request
        return kept
    stamp = now_iso(now)
    base = {} if revision.is_new else prior
    info = derive_phase(spec, observed, _waited(base, now), wait_limit)
    old_phase = base.get("phase")
    if old_phase in FORWARD and info.phase in FORWARD and FORWARD.index(info.phase) < FORWARD.index(old_phase):
        info = dataclasses.replace(info, phase=old_phase)
    progress = observed.progress
    if progress is None and not revision.is_new and prior.get("progress") and info.phase in (RUNNING, EVALUATING):
        progress_out: dict[str, Any] | None = dict(prior["progress"])
    else:
        progress_out = _progress(progress, info.phase, stamp)
    status: dict[str, Any] = {
        "phase": info.phase,
        "reason": info.reason,
        "message": info.message,
        "observedGeneration": generation,
        "revision": revision.number,
        "specHash": revision.spec_hash,
        "startTime": base.get("startTime") or stamp,
        "conditions": _conditions(info, observed, base.get("conditions") or (), generation, stamp),
        "children": _children(children, summary_job, observed, info),
        "artifacts": {"output": artifact_uri},
        # A searched revision's cost includes its trials'.
        "gpuSeconds": round(gpu_seconds(observed.train_pods, spec.gpus, now) + sum(
            float(t.get("gpuSeconds") or 0.0) for t in (observed.search or {}).get("trials") or ()), 1),
        "worldSize": spec.world_size,
        "gate": {"outcome": "Pending", "reasons": []},
    }
    cost = cost_status(status["gpuSeconds"], gpu_hour_price, currency)
    if cost is not None:
        status["cost"] = cost
    if revision.retry_request is not None:
        status["retryRequest"] = revision.retry_request
    if info.phase in TERMINAL:
        status["completionTime"] = stamp
    if spec.nodes > 1 and observed.train_pods:
        status["workers"] = workers(observed.train_pods)
    if spec.nodes > 1 and (observed.restarts or info.restart):
        status["restarts"] = observed.restarts + int(info.restart)
    if progress_out:
        status["progress"] = progress_out
    if observed.search is not None:
        status["search"] = dict(observed.search)
    summary = info.summary
    if summary is not None:
        ev = _evaluation(summary)
        if ev:
            status["evaluation"] = ev
        if summary.baselines:
            status["baselines"] = [
                {k: v for k, v in {"name": b.name, "shots": b.shots, "model": b.model, "accuracy": b.accuracy,
                                   "macroF1": b.macro_f1}.items() if v is not None}
                for b in summary.baselines
            ]
        if summary.artifacts:
            status["artifacts"].update(summary.artifacts)
        if summary.adapter is not None:
            status["adapter"] = adapter_status(summary, revision.number)
    if info.gate_passed is not None:
        status["gate"] = {"outcome": "Passed" if info.gate_passed else "Failed", "reasons": list(info.gate_reasons)}
    elif info.phase == FAILED:
        status["gate"] = {"outcome": "NotEvaluated", "reasons": []}
    if revision.history:
        status["history"] = [dict(h) for h in revision.history]
    return status


def _children(children: Mapping[str, str], summary_job: str | None, observed: Observed, info: PhaseInfo) -> dict[str, str]:
    out = dict(children)
    # Named while it may exist: it is deleted once the revision ends (or is superseded), and the
    # name's absence from the status then tells the next pass it is gone.
    if info.phase in TERMINAL or job_finished(observed.validate_job) != "Complete":
        out.pop("workersService", None)
    if summary_job and (observed.summary_job is not None or info.reason == READING_SUMMARY):
        out["summaryJob"] = summary_job
    return out


def _waited(prior: Obj, now: dt.datetime) -> float:
    """Seconds the revision has been missing a dependency (DependenciesFound False since)."""
    for c in prior.get("conditions") or ():
        if c.get("type") == "DependenciesFound" and c.get("status") == "False":
            since = parse_time(c.get("lastTransitionTime"))
            return max(0.0, (now - since).total_seconds()) if since else 0.0
    return 0.0


def status_changed(old: Obj, new: Obj) -> bool:
    """Whether writing ``new`` would change anything but timestamps of progress reads."""
    def strip(s: Obj) -> dict[str, Any]:
        out = dict(s)
        if isinstance(out.get("progress"), dict):
            out["progress"] = {k: v for k, v in out["progress"].items() if k != "updatedAt"}
        return out
    return strip(old) != strip(new)
