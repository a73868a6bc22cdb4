"""spec.search: the trials of a revision, their status and the winner — pure functions.

A search runs before the revision's training Job. Each trial is a training Job of its own
(``<name>-trial-<revision>-<i>``, its config in the ConfigMap of the same name) with one point of
the grid applied to the spec, scored on the **validation rows only** (the trainer's
``eval.split: validation``; no baselines, no test rows). When every trial has ended, the winner
is chosen by the one-standard-error rule (``selection``): among the trials whose validation
accuracy is within one standard error of the best, the cheapest — the fewest measured
GPU-seconds (the trainer container's run time x GPUs; a CPU-only trial counts as one device),
then the higher accuracy, the lower validation loss, the lower index. The revision's training Job
is then the winner's settings, trained again and scored once on the test rows, so the job's
adapter, evaluation, gate and serving are the winner's, exactly as without a search.

State lives in the cluster, never in the operator's memory: ``compute_search`` derives every
trial's phase from its Job and pods, keeping the result a finished trial already wrote to
``status.search`` (so a Job or pod cleaned up later, or an operator restart, re-runs nothing);
a trial whose Job completed after its pod was gone is read from its summary.json by a reader Job
(``<trial job>-summary``), as the revision's own result is.
Trials start in index order, so the trials created are always a prefix of the list and
``trials_to_start`` keeps at most ``parallelism`` running even when the Job index lags.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import random
from typing import Any, Mapping, Sequence

from .builders.names import trial_job_name, trial_summary_job_name
from .results import parse_summary
from .selection import Candidate, one_standard_error
from .spec import FineTuneJobSpec, SearchSpec
from .status import gpu_seconds, job_condition, job_finished, parse_time, results_seen, termination_message

Obj = Mapping[str, Any]

# A trial's phase: Waiting (no Job yet), Pending (Job created, pod not running), Running,
# Succeeded (scored on the validation rows) or Failed.
WAITING, PENDING, RUNNING, SUCCEEDED, FAILED = "Waiting", "Pending", "Running", "Succeeded", "Failed"
TRIAL_DONE = (SUCCEEDED, FAILED)
# The dimensions, in the grid's nesting order (the last varies fastest), as spec.search.space names them.
DIMENSIONS = ("head", "loraRank", "maxSteps", "epochs", "learningRate")


def grid(search: SearchSpec) -> list[dict[str, Any]]:
    """Every combination of the space's values, in a fixed order."""
    axes = [(key, values) for key, values in (
        ("head", search.heads), ("loraRank", search.lora_ranks), ("maxSteps", search.max_steps),
        ("epochs", search.epochs), ("learningRate", search.learning_rates),
    ) if values]
    return [dict(zip([k for k, _ in axes], combo)) for combo in itertools.product(*[v for _, v in axes])]


def trial_params(search: SearchSpec) -> list[dict[str, Any]]:
    """The trials' settings: the whole grid (``grid``; the CRD keeps it within maxTrials) or
    ``maxTrials`` distinct points drawn from it with ``seed`` (``random``), in grid order."""
    points = grid(search)
    if search.strategy == "random" and len(points) > search.max_trials:
        picked = sorted(random.Random(search.seed).sample(range(len(points)), search.max_trials))
        return [points[i] for i in picked]
    return points[: search.max_trials]


def apply_params(spec: FineTuneJobSpec, params: Mapping[str, Any]) -> FineTuneJobSpec:
    """The spec with one trial's settings in place of the spec's own."""
    training = dict(spec.training)
    if "learningRate" in params:
        training["learningRate"] = params["learningRate"]
    if "maxSteps" in params:
        training["maxSteps"] = params["maxSteps"]
    if "epochs" in params:
        training["epochs"] = params["epochs"]
        training.pop("maxSteps", None)  # the CRD refuses epochs in the space with training.maxSteps
    changes: dict[str, Any] = {"training": training}
    if "head" in params:
        changes["task_head"] = params["head"]
    if "loraRank" in params:
        changes["lora_r"] = params["loraRank"]
    return dataclasses.replace(spec, **changes)


def _trial(index: int, job_name: str, params: Mapping[str, Any], prior: Obj | None, job: Obj | None,
           pods: Sequence[Obj], gpus: int, now: dt.datetime, reader_name: str = "", reader: Obj | None = None,
           reader_pods: Sequence[Obj] = ()) -> dict[str, Any]:
    """One trial's status entry from its Job and pods (a finished entry in ``prior`` sticks).
    ``reader``: the Job reading the trial's summary.json, needed when the trial's Job completed
    and its pod (with the termination message) is gone; the entry then names it (summaryJob)."""
    if prior is not None and prior.get("phase") in TRIAL_DONE:
        return dict(prior)
    entry: dict[str, Any] = {"index": index, "job": job_name, "params": dict(params)}
    if prior is not None and prior.get("gpuSeconds") and not pods:
        entry["gpuSeconds"] = prior["gpuSeconds"]  # measured while its pod was there
    # GPU-seconds of the search's cost: a CPU-only trial counts its run time as one device's.
    # Without its pod (gone before the operator saw it end), the Job's own start and completion
    # times bound it (they include the pod's start-up).
    cost = gpu_seconds(pods, max(gpus, 1), now) or _job_seconds(job) * max(gpus, 1)
    if cost:
        entry["gpuSeconds"] = round(cost, 1)
    if job is None:
        return {**entry, "phase": WAITING}
    done = job_finished(job)
    if done is None:
        running = any(((p.get("status") or {}).get("phase")) == "Running" for p in pods)
        return {**entry, "phase": RUNNING if running else PENDING}
    if not results_seen(pods, exit_zero=done == "Complete"):
        return {**entry, "phase": RUNNING, "message": "The trial's Job finished; reading its pod's result"}
    raw = termination_message(pods, want_exit_zero=done == "Complete")
    summary = parse_summary(raw)
    if done == "Failed":
        detail = (summary.message if summary and summary.message else raw) or (
            (job_condition(job, "Failed") or {}).get("message") or "the trial's Job failed")
        return {**entry, "phase": FAILED, "message": _first_line(detail)}
    if summary is None and pods:
        return {**entry, "phase": FAILED, "message": "The trial's trainer exited 0 without a summary: no validation score"}
    if summary is None:
        # The pod is gone (PodGC, the operator down meanwhile): read the copy beside its artifacts.
        entry["summaryJob"] = reader_name
        rdone = job_finished(reader)
        if reader is None or rdone is None or not results_seen(reader_pods, exit_zero=rdone == "Complete"):
            return {**entry, "phase": RUNNING, "message": "The trial's pod is gone; reading its summary.json"}
        summary = parse_summary(termination_message(reader_pods, want_exit_zero=True)) if rdone == "Complete" else None
        if summary is None:
            return {**entry, "phase": FAILED, "message": "The trial's pod is gone and its summary.json could not be read: no validation score"}
    if summary.status != "succeeded" or summary.accuracy is None:
        return {**entry, "phase": FAILED, "message": _first_line(summary.message or f"trainer status {summary.status}")}
    scored = {"validationAccuracy": summary.accuracy, "validationLoss": summary.eval_loss,
              "validationRows": summary.n_eval, "steps": summary.steps}
    return {**entry, "phase": SUCCEEDED, **{k: v for k, v in scored.items() if v is not None}}


def _job_seconds(job: Obj | None) -> float:
    st = (job or {}).get("status") or {}
    start, end = parse_time(st.get("startTime")), parse_time(st.get("completionTime"))
    return max(0.0, (end - start).total_seconds()) if start and end else 0.0


def _first_line(text: str, limit: int = 500) -> str:
    return (text.strip().splitlines() or [""])[0][:limit]


def compute_search(spec: FineTuneJobSpec, ftj: str, revision: int, prior: Obj | None,
                   jobs: Mapping[str, Obj], pods: Sequence[Obj], now: dt.datetime) -> dict[str, Any] | None:
    """``status.search`` of a revision: every trial (params, phase, validation accuracy and loss,
    GPU-seconds), how many are done, and the winner once all have ended (kept once chosen).
    ``prior``: the revision's last status.search; ``jobs``: Jobs by name; ``pods``: their pods."""
    search = spec.search
    if search is None:
        return None
    prior = prior or {}
    before = {t.get("index"): t for t in prior.get("trials") or ()}
    by_job: dict[str, list[Obj]] = {}
    for pod in pods:
        labels = (pod.get("metadata") or {}).get("labels") or {}
        by_job.setdefault(labels.get("batch.kubernetes.io/job-name") or labels.get("job-name") or "", []).append(pod)
    trials = []
    for i, params in enumerate(trial_params(search)):
        name, reader = trial_job_name(ftj, revision, i), trial_summary_job_name(ftj, revision, i)
        trials.append(_trial(i, name, params, before.get(i), jobs.get(name), by_job.get(name, []), spec.gpus, now,
                             reader, jobs.get(reader), by_job.get(reader, [])))
    done = sum(1 for t in trials if t["phase"] in TRIAL_DONE)
    out: dict[str, Any] = {
        "strategy": search.strategy,
        "total": len(trials),
        "done": done,
        "failed": sum(1 for t in trials if t["phase"] == FAILED),
        "display": f"{done}/{len(trials)}",
        "trials": trials,
    }
    winner = prior.get("winner") or (choose_winner(trials) if done == len(trials) else None)
    if winner:
        out["winner"] = dict(winner)
    return out


def choose_winner(trials: Sequence[Obj]) -> dict[str, Any] | None:
    """The one-standard-error choice among the trials that were scored (None: none was)."""
    candidates = [
        # A trial whose cost was never measured is never the cheap one.
        Candidate(key=int(t["index"]), accuracy=float(t["validationAccuracy"]), rows=int(t.get("validationRows") or 0),
                  cost=(float(t.get("gpuSeconds") or float("inf")),), loss=t.get("validationLoss"))
        for t in trials if t.get("phase") == SUCCEEDED and t.get("validationAccuracy") is not None
    ]
    choice = one_standard_error(candidates)
    if choice is None:
        return None
    chosen = next(t for t in trials if t["index"] == choice.key)
    return {
        "index": choice.key,
        "job": chosen["job"],
        "params": dict(chosen["params"]),
        "validationAccuracy": chosen["validationAccuracy"],
        "bestValidationAccuracy": choice.best_accuracy,
        "standardError": round(choice.standard_error, 6),
        "gpuSeconds": chosen.get("gpuSeconds", 0.0),
        "rule": (f"cheapest (GPU-seconds) of the trials with validation accuracy >= "
                 f"{choice.threshold:.4f} (best {choice.best_accuracy:.4f} - one standard error {choice.standard_error:.4f})"),
    }


def search_pending(search: Obj | None) -> bool:
    """Trials are still running or to be started (the revision's training Job must wait)."""
    return search is not None and not search.get("winner") and search["done"] < search["total"]


def trials_to_start(search: Obj, parallelism: int) -> list[int]:
    """The next trials to create: the first Waiting ones, as many as keep at most ``parallelism``
    trials Pending or Running."""
    trials = search.get("trials") or ()
    active = sum(1 for t in trials if t["phase"] in (PENDING, RUNNING))
    waiting = [int(t["index"]) for t in trials if t["phase"] == WAITING]
    return waiting[: max(0, parallelism - active)]


def summaries_to_read(search: Obj, existing: set[str]) -> list[int]:
    """Trials whose summary.json must be read by a reader Job that does not exist yet."""
    return [int(t["index"]) for t in search.get("trials") or ()
            if t["phase"] not in TRIAL_DONE and t.get("summaryJob") and t["summaryJob"] not in existing]


def winner_spec(spec: FineTuneJobSpec, search: Obj | None) -> FineTuneJobSpec:
    """The spec the revision's training Job runs: the winner's settings applied (the spec itself
    without a search)."""
    winner = (search or {}).get("winner")
    return apply_params(spec, winner["params"]) if winner else spec


def winner_selection(search: Obj | None) -> dict[str, Any] | None:
    """The trainer config's ``selection`` block for a searched revision's winner retrain: every
    trial with its validation score and cost, the winner and the rule, for the model card (None
    before a winner is chosen, or without a search)."""
    winner = (search or {}).get("winner")
    if not search or not winner:
        return None
    trials = []
    for t in search.get("trials") or ():
        entry: dict[str, Any] = {"index": int(t["index"]), "params": dict(t.get("params") or {}),
                                 "phase": str(t.get("phase") or "")}
        for ours, theirs in (("validation_accuracy", "validationAccuracy"), ("validation_rows", "validationRows"),
                             ("gpu_seconds", "gpuSeconds")):
            if t.get(theirs) is not None:
                entry[ours] = t[theirs]
        trials.append(entry)
    return {"trials": trials, "winner": int(winner["index"]), "rule": str(winner.get("rule") or "")}
