"""spec.search, pure: the one-standard-error rule as a table, the trials a space makes, each
trial's config through the trainer's own parser (validation rows only), the search's status from
observed Jobs (parallelism, a failed trial, all failed, a restart recomputing from what exists),
and the plan's actions."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import pytest
import yaml

from ftj_helpers import MINIMAL_SPEC, defaulted_spec
from k8s_objects import finished, job, pod, summary
from tuneforge.finetune.builders.configmap import build_config_map
from tuneforge.finetune.builders.job import build_summary_job, build_trainer_job, build_trial_job
from tuneforge.finetune.builders.names import Owner, trial_job_name, winner_config_map_name
from tuneforge.finetune.plan import Action, CreateTrainJob, CreateTrial, CreateTrialSummaryJob, DeleteJob, SetSuspend, plan
from tuneforge.finetune.search import (
    FAILED, PENDING, RUNNING, SUCCEEDED, WAITING, apply_params, choose_winner, compute_search, grid, trial_params,
    trials_to_start, winner_selection, winner_spec,
)
from tuneforge.finetune.selection import Candidate, one_standard_error, standard_error
from tuneforge.finetune.spec import SearchSpec, parse_spec
from tuneforge.finetune.status import Observed, Revision, compute_status
from tuneforge.finetune.trainer_config import render_trainer_config
from tuneforge.settings import Settings
from tuneforge_trainer import config as trainer_config

NOW = dt.datetime(2026, 1, 1, 0, 20, tzinfo=dt.timezone.utc)
OWNER = Owner(name="intent", namespace="team-a", uid="uid-1")


# --- the selection rule ---------------------------------------------------------------------

def c(key: str, acc: float, rows: int = 80, cost: float = 100.0, loss: float | None = None) -> Candidate[str]:
    return Candidate(key, acc, rows, (cost,), loss)


@pytest.mark.parametrize(
    ("candidates", "chosen"),
    [
        # se of 0.95 on 80 rows = 0.0244: 0.93 is within it, so the cheaper 0.93 wins.
        ([c("best", 0.95, cost=300), c("cheap", 0.93, cost=100)], "cheap"),
        # 0.90 is not within one SE of 0.95 (threshold 0.9256): the best wins although dearer.
        ([c("best", 0.95, cost=300), c("cheap", 0.90, cost=100)], "best"),
        # Exactly one SE below the best counts as within it (k/n arithmetic): 0.5 - sqrt(.25/4) = 0.25.
        ([c("best", 0.5, rows=4, cost=2), c("edge", 0.25, rows=4, cost=1)], "edge"),
        # More rows shrink the SE: 0.93 is no longer within it of 0.95 on 2,000 rows.
        ([c("best", 0.95, rows=2000, cost=300), c("cheap", 0.93, rows=2000, cost=100)], "best"),
        # A perfect best has SE 0: only equal accuracies tie; the cheapest of them wins.
        ([c("a", 1.0, cost=50), c("b", 0.99, cost=10), c("c", 1.0, cost=20)], "c"),
        # Equal cost: the higher accuracy, then the lower loss, then the earlier candidate.
        ([c("lo", 0.94, cost=100), c("hi", 0.95, cost=100)], "hi"),
        ([c("lossy", 0.95, cost=100, loss=0.4), c("tight", 0.95, cost=100, loss=0.2)], "tight"),
        ([c("first", 0.95, cost=100), c("second", 0.95, cost=100)], "first"),
        ([c("no-loss", 0.95, cost=100), c("loss", 0.95, cost=100, loss=0.3)], "loss"),
        # One candidate.
        ([c("only", 0.5)], "only"),
    ],
)
def test_one_standard_error_rule(candidates: list[Candidate[str]], chosen: str) -> None:
    choice = one_standard_error(candidates)
    assert choice is not None and choice.key == chosen


def test_one_standard_error_reports_its_threshold_and_handles_nothing() -> None:
    assert one_standard_error([]) is None
    choice = one_standard_error([c("a", 0.95), c("b", 0.80)])
    assert choice is not None
    assert choice.standard_error == pytest.approx(standard_error(0.95, 80)) == pytest.approx(0.024367, abs=1e-6)
    assert choice.threshold == pytest.approx(0.95 - choice.standard_error)
    assert standard_error(0.9, 0) == pytest.approx(0.3)  # no rows counted: n taken as 1


def test_the_bench_sweep_chooses_with_the_same_rule() -> None:
    import importlib.util
    import pathlib
    import sys

    bench = pathlib.Path(__file__).resolve().parents[2] / "bench"
    sys.path.insert(0, str(bench))
    try:
        spec = importlib.util.spec_from_file_location("hparam_sweep", bench / "hparam_sweep.py")
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(bench))
    rows = [{"steps": 150, "lr": 1e-3, "validation_accuracy": 0.95, "validation_loss": 0.2, "n_validation": 80},
            {"steps": 50, "lr": 1e-3, "validation_accuracy": 0.93, "validation_loss": 0.3, "n_validation": 80},
            {"steps": 50, "lr": 2e-3, "validation_accuracy": 0.80, "validation_loss": 0.5, "n_validation": 80}]
    assert mod.choose(rows) is rows[1]


# --- the trials a space makes ---------------------------------------------------------------

def test_grid_nests_head_rank_steps_lr_and_random_draws_a_seeded_subset() -> None:
    search = SearchSpec(heads=("lm", "classifier"), learning_rates=(5e-4, 1e-3), max_steps=(50,), max_trials=8)
    assert trial_params(search) == [
        {"head": "lm", "maxSteps": 50, "learningRate": 5e-4}, {"head": "lm", "maxSteps": 50, "learningRate": 1e-3},
        {"head": "classifier", "maxSteps": 50, "learningRate": 5e-4}, {"head": "classifier", "maxSteps": 50, "learningRate": 1e-3},
    ]
    rand = SearchSpec(strategy="random", max_trials=3, seed=7, heads=("lm", "classifier"),
                      learning_rates=(1e-4, 5e-4, 1e-3), lora_ranks=(8, 16))
    drawn = trial_params(rand)
    assert len(drawn) == 3 and len({tuple(sorted(p.items())) for p in drawn}) == 3
    assert all(p in grid(rand) for p in drawn)
    assert drawn == trial_params(rand)  # the same seed draws the same trials (a restart agrees)
    assert drawn != trial_params(SearchSpec(**{**rand.__dict__, "seed": 8}))
    # random with fewer points than maxTrials runs them all.
    assert len(trial_params(SearchSpec(strategy="random", max_trials=8, heads=("lm", "classifier")))) == 2


def _spec(**parts: Any) -> Any:
    raw = copy.deepcopy(MINIMAL_SPEC)
    raw.update(parts)
    return parse_spec(defaulted_spec(raw))


SEARCH = {"space": {"head": ["lm", "classifier"], "learningRate": [5e-4, 1e-3]}, "parallelism": 2}


def test_apply_params_sets_head_rank_steps_and_lr_and_epochs_drop_the_spec_steps() -> None:
    spec = _spec(training={"maxSteps": 100, "learningRate": 2e-4})
    out = apply_params(spec, {"head": "classifier", "loraRank": 8, "maxSteps": 50, "learningRate": 1e-3})
    assert (out.task_head, out.lora_r, out.training["maxSteps"], out.training["learningRate"]) == ("classifier", 8, 50, 1e-3)
    assert spec.task_head == "lm" and spec.training["maxSteps"] == 100  # the spec itself is untouched
    assert "maxSteps" not in apply_params(_spec(), {"epochs": 2.0}).training


def test_a_trials_config_is_scored_on_validation_rows_only_in_its_own_folder() -> None:
    spec = _spec(search=SEARCH, evaluation={"baselines": [{"type": "tfidf-logreg"}]}, output={"uri": "pvc://artifacts/runs", "mergeAdapter": True})
    params = trial_params(spec.search)[3]
    raw = render_trainer_config(apply_params(spec, params), "team-a", "intent", "uid-1", 2, trial=3)
    cfg = trainer_config.parse_config(raw)  # the contract: the trainer's own parser
    assert cfg.eval.split == "validation"
    assert (cfg.eval.baselines.zero_shot, cfg.eval.baselines.few_shot, cfg.eval.baselines.tfidf_lr) == (False, 0, False)
    assert cfg.output.dir == "/mnt/pvc/artifacts/runs/team-a/intent/uid-1/r2/trials/3"
    assert cfg.output.run_id == "uid-1/r2/trial-3" and cfg.output.merge is False
    assert (cfg.task.head, cfg.training.learning_rate) == ("classifier", 1e-3)
    # The revision's own config (the winner's, trained again) scores the test rows with the baselines.
    final = trainer_config.parse_config(render_trainer_config(winner_spec(spec, {"winner": {"params": params}}), "team-a", "intent", "uid-1", 2))
    assert final.eval.split == "test" and final.eval.baselines.tfidf_lr and final.output.dir.endswith("/r2")
    assert final.task.head == "classifier"


def test_a_trial_job_mounts_its_own_config_and_the_winner_job_the_winners() -> None:
    spec = _spec(search=SEARCH, resources={"gpus": 1}, scheduling={"queueName": "gpu"})
    s = Settings(trainer_image="t:1")
    trial = build_trial_job(OWNER, spec, 2, s, 3)
    assert trial["metadata"]["name"] == trial_job_name("intent", 2, 3) == "intent-trial-2-3"
    assert trial["metadata"]["labels"]["tuneforge.dev/role"] == "trial"
    assert trial["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu" and trial["spec"]["suspend"] is True
    pod_spec = trial["spec"]["template"]["spec"]
    assert pod_spec["volumes"][0] == {"name": "config", "configMap": {"name": "intent-trial-2-3"}}
    assert pod_spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    cm = build_config_map(OWNER, spec, 2, "intent-trial-2-3", 3)
    assert cm["metadata"]["name"] == "intent-trial-2-3" and "trials/3" in cm["data"]["config.yaml"]
    reader = build_summary_job(OWNER, spec, 2, s, trial=3)
    assert reader["metadata"]["name"] == "intent-trial-2-3-summary"
    assert reader["spec"]["template"]["spec"]["containers"][0]["command"][-1] == \
        "/mnt/pvc/artifacts/runs/team-a/intent/uid-1/r2/trials/3"
    final = build_trainer_job(OWNER, spec, 2, s, 0, winner_config_map_name("intent", 2))
    assert final["metadata"]["name"] == "intent-train-2"
    assert final["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"] == "intent-config-2-winner"


# --- the search's status from what exists -----------------------------------------------------

def _trial_job(i: int, **kw: Any) -> dict[str, Any]:
    return job(trial_job_name("intent", 1, i), **kw)


def _ok_pod(i: int, acc: float, started: str = "2026-01-01T00:00:00Z", ended: str = "2026-01-01T00:10:00Z") -> dict[str, Any]:
    msg = summary(accuracy=acc, eval_loss=0.3, n_eval=80, steps=50, baselines=[], artifacts={})
    return pod(trial_job_name("intent", 1, i), phase="Succeeded", terminated=finished(0, msg, started, ended))


def _failed_pod(i: int) -> dict[str, Any]:
    msg = summary(status="failed", message="CUDA out of memory", accuracy=None)
    return pod(trial_job_name("intent", 1, i), phase="Failed", terminated=finished(1, msg))


def _search(spec: Any, jobs: list[dict[str, Any]], pods: list[dict[str, Any]], prior: dict[str, Any] | None = None) -> dict[str, Any]:
    out = compute_search(spec, "intent", 1, prior, {j["metadata"]["name"]: j for j in jobs}, pods, NOW)
    assert out is not None
    return out


def phases(search: dict[str, Any]) -> list[str]:
    return [t["phase"] for t in search["trials"]]


def test_parallelism_bounds_the_trials_started() -> None:
    spec = _spec(search=SEARCH)
    s = _search(spec, [], [])
    assert phases(s) == [WAITING] * 4 and (s["done"], s["total"], s["display"]) == (0, 4, "0/4")
    assert trials_to_start(s, 2) == [0, 1]
    s = _search(spec, [_trial_job(0), _trial_job(1)], [pod(trial_job_name("intent", 1, 0), phase="Running", running_since="2026-01-01T00:00:00Z")])
    assert phases(s) == [RUNNING, PENDING, WAITING, WAITING] and trials_to_start(s, 2) == []
    s = _search(spec, [_trial_job(0, complete=True), _trial_job(1)], [_ok_pod(0, 0.9)])
    assert phases(s) == [SUCCEEDED, PENDING, WAITING, WAITING] and trials_to_start(s, 2) == [2]
    assert s["trials"][0] | {} == {
        "index": 0, "job": "intent-trial-1-0", "params": {"head": "lm", "learningRate": 5e-4}, "phase": SUCCEEDED,
        "gpuSeconds": 600.0, "validationAccuracy": 0.9, "validationLoss": 0.3, "validationRows": 80, "steps": 50}
    assert "winner" not in s


def test_a_failed_trial_does_not_fail_the_search_and_the_winner_follows_the_rule() -> None:
    spec = _spec(search=SEARCH)
    jobs = [_trial_job(0, complete=True), _trial_job(1, failed="BackoffLimitExceeded"), _trial_job(2, complete=True),
            _trial_job(3, complete=True)]
    pods = [_ok_pod(0, 0.95, ended="2026-01-01T00:10:00Z"), _failed_pod(1),
            _ok_pod(2, 0.94, ended="2026-01-01T00:04:00Z"), _ok_pod(3, 0.80, ended="2026-01-01T00:01:00Z")]
    s = _search(spec, jobs, pods)
    assert phases(s) == [SUCCEEDED, FAILED, SUCCEEDED, SUCCEEDED] and (s["done"], s["failed"]) == (4, 1)
    assert s["trials"][1]["message"] == "CUDA out of memory"
    # 0.94 is within one SE (0.0244) of 0.95 and cost 240 GPU-seconds to trial 0's 600; 0.80 is not within it.
    w = s["winner"]
    assert (w["index"], w["params"], w["validationAccuracy"], w["bestValidationAccuracy"]) == (
        2, {"head": "classifier", "learningRate": 5e-4}, 0.94, 0.95)
    assert w["gpuSeconds"] == 240.0 and "one standard error" in w["rule"]
    assert winner_spec(spec, s).task_head == "classifier"


def test_the_winner_retrain_is_refit_on_validation_rows_and_its_card_lists_the_trials() -> None:
    """The winner is trained again on the training + validation rows (the standard refit after
    model selection; test rows untouched) and its config carries the trials for the model card,
    through the trainer's own parser (the contract). Without a winner there is nothing to add."""
    spec = _spec(search=SEARCH)
    jobs = [_trial_job(i, complete=True) for i in range(4)]
    pods = [_ok_pod(0, 0.95, ended="2026-01-01T00:10:00Z"), _ok_pod(1, 0.90),
            _ok_pod(2, 0.94, ended="2026-01-01T00:04:00Z"), _ok_pod(3, 0.80, ended="2026-01-01T00:01:00Z")]
    s = _search(spec, jobs, pods)
    sel = winner_selection(s)
    assert sel is not None and sel["winner"] == 2 and "one standard error" in sel["rule"]
    assert sel["trials"][2] == {"index": 2, "params": {"head": "classifier", "learningRate": 5e-4}, "phase": SUCCEEDED,
                                "validation_accuracy": 0.94, "validation_rows": 80, "gpu_seconds": 240.0}
    cm = build_config_map(OWNER, winner_spec(spec, s), 1, winner_config_map_name("intent", 1), selection=sel)
    cfg = trainer_config.parse_config(yaml.safe_load(cm["data"]["config.yaml"]))
    assert cfg.data.train_on_validation and cfg.eval.split == "test" and cfg.task.head == "classifier"
    assert cfg.selection is not None and cfg.selection.winner == 2 and len(cfg.selection.trials) == 4
    # A spec that selects on validation rows itself keeps them (no refit), the card still lists the trials.
    own = _spec(search=SEARCH, training={"loadBestModel": True, "evalSteps": 10, "saveSteps": 10})
    kept = trainer_config.parse_config(render_trainer_config(winner_spec(own, s), "team-a", "intent", "uid-1", 1, selection=sel))
    assert not kept.data.train_on_validation and kept.selection is not None
    # A spec asking for the refit itself: its trials still score (and never train on) the validation rows.
    refit = _spec(search=SEARCH, dataPrep={"validationFraction": 0.1, "trainOnValidation": True})
    trial = trainer_config.parse_config(render_trainer_config(apply_params(refit, trial_params(refit.search)[0]), "team-a", "intent", "uid-1", 1, trial=0))
    assert trial.eval.split == "validation" and not trial.data.train_on_validation
    # No search, or no winner yet: no selection, no refit.
    assert winner_selection(None) is None and winner_selection({**s, "winner": None}) is None
    plain = trainer_config.parse_config(render_trainer_config(spec, "team-a", "intent", "uid-1", 1))
    assert not plain.data.train_on_validation and plain.selection is None


def test_all_trials_failed() -> None:
    spec = _spec(search={"space": {"learningRate": [1e-3, 2e-3]}})
    jobs = [_trial_job(0, failed="BackoffLimitExceeded"), _trial_job(1, failed="DeadlineExceeded")]
    s = _search(spec, jobs, [_failed_pod(0)])
    assert phases(s) == [FAILED, FAILED] and "winner" not in s
    assert s["trials"][1]["message"] == "Job has reached DeadlineExceeded"  # no pod: the Job's own word
    st = _status(spec, s)
    assert (st["phase"], st["reason"]) == ("Failed", "SearchFailed")
    assert st["message"].startswith("Every one of the 2 search trials failed; the first: trial 0 (intent-trial-1-0): CUDA out of memory")


def test_a_restart_recomputes_from_the_jobs_and_keeps_finished_results() -> None:
    spec = _spec(search=SEARCH)
    before = _search(spec, [_trial_job(0, complete=True), _trial_job(1, complete=True)], [_ok_pod(0, 0.9), _ok_pod(1, 0.7)])
    # After a restart the pods of the finished trials are gone (PodGC) and trial 1's Job too:
    # the results come from the status, nothing is started again but the next trials.
    after = _search(spec, [_trial_job(0, complete=True)], [], prior=before)
    assert after["trials"][:2] == before["trials"][:2] and phases(after)[2:] == [WAITING, WAITING]
    assert trials_to_start(after, 2) == [2, 3]
    # Without a status (a lost write), an existing finished Job is read again from its pod.
    assert _search(spec, [_trial_job(0, complete=True)], [_ok_pod(0, 0.9)])["trials"][0]["validationAccuracy"] == 0.9
    # A finished trial whose pod is gone and that no status recorded: its summary.json is read by
    # a reader Job (the plan creates it once), then scored as usual.
    lost = _search(spec, [_trial_job(0, complete=True)], [])
    assert lost["trials"][0] | {} == {"index": 0, "job": "intent-trial-1-0", "params": {"head": "lm", "learningRate": 5e-4},
                                      "phase": RUNNING, "summaryJob": "intent-trial-1-0-summary",
                                      "message": "The trial's pod is gone; reading its summary.json"}
    jobs = [_trial_job(0, complete=True)]
    assert _plan(spec, lost, jobs)[0] == CreateTrialSummaryJob("intent-trial-1-0-summary", 0)
    reader = job("intent-trial-1-0-summary", complete=True)
    msg = summary(accuracy=0.88, eval_loss=0.3, n_eval=80, steps=50, baselines=[], artifacts={})
    read = _search(spec, [*jobs, reader], [pod("intent-trial-1-0-summary", phase="Succeeded", terminated=finished(0, msg))])
    assert read["trials"][0]["phase"] == SUCCEEDED and read["trials"][0]["validationAccuracy"] == 0.88
    assert CreateTrialSummaryJob("intent-trial-1-0-summary", 0) not in _plan(spec, lost, [*jobs, reader])
    unreadable = _search(spec, [*jobs, job("intent-trial-1-0-summary", failed="BackoffLimitExceeded")],
                         [pod("intent-trial-1-0-summary", phase="Failed", terminated=finished(1, "no such key"))])
    assert unreadable["trials"][0]["phase"] == FAILED and "summary.json could not be read" in unreadable["trials"][0]["message"]
    # A pod that exited 0 without a summary: failed, no score.
    empty = _search(spec, jobs, [pod("intent-trial-1-0", phase="Succeeded", terminated=finished(0, None))])["trials"][0]
    assert empty["phase"] == FAILED and "without a summary" in empty["message"]
    # A chosen winner sticks.
    done = {**before, "winner": {"index": 1, "job": "intent-trial-1-1", "params": {"head": "lm", "learningRate": 1e-3}}}
    assert _search(spec, [], [], prior=done)["winner"]["index"] == 1


def test_choose_winner_ignores_failed_and_unscored_trials() -> None:
    assert choose_winner([{"index": 0, "phase": FAILED}, {"index": 1, "phase": RUNNING}]) is None


# --- status and plan ---------------------------------------------------------------------------

def _status(spec: Any, search: dict[str, Any], train_job: dict[str, Any] | None = None, train_pods: tuple[Any, ...] = ()) -> dict[str, Any]:
    observed = Observed(validate_job=job("intent-validate-1", complete=True), train_job=train_job, train_pods=train_pods, search=search)
    return compute_status(spec, 1, {}, Revision(1, "h", True, ()), observed, NOW, {"trainJob": "intent-train-1"}, "pvc://artifacts/runs/x")


def test_status_while_searching_then_training_the_winner() -> None:
    spec = _spec(search=SEARCH)
    s = _search(spec, [_trial_job(0, complete=True), _trial_job(1)], [_ok_pod(0, 0.9)])
    st = _status(spec, s)
    assert (st["phase"], st["reason"]) == ("Running", "Searching") and st["search"]["display"] == "1/4"
    assert st["message"] == "Search: 1 of 4 trials done (0 failed), 1 started; scored on validation rows only"
    assert st["gpuSeconds"] == 600.0  # the trials' cost counts
    assert (_status(spec, _search(spec, [], []))["phase"]) == "Queued"
    paused = _spec(search=SEARCH, suspend=True)
    st = _status(paused, _search(paused, [_trial_job(0, complete=True)], [_ok_pod(0, 0.9)]))
    assert (st["phase"], st["message"]) == ("Suspended", "spec.suspend is true: the search's trials are suspended (1 of 4 done)")
    jobs = [_trial_job(i, complete=True) for i in range(4)]
    done = _search(spec, jobs, [_ok_pod(i, 0.9) for i in range(4)])
    st = _status(spec, done)
    assert (st["phase"], st["reason"]) == ("Pending", "DataValidated") and "winner (trial 0)" in st["message"]
    msg = summary(accuracy=0.96, adapter={"uri": "/mnt/pvc/artifacts/runs/x/adapter", "digest": "sha256:" + "a" * 64})
    final = _status(spec, done, job("intent-train-1", complete=True),
                    (pod("intent-train-1", phase="Succeeded", terminated=finished(0, msg)),))
    assert final["phase"] == "Succeeded" and final["evaluation"]["accuracy"] == 0.96
    assert final["adapter"]["shortDigest"] == "a" * 12 and final["search"]["winner"]["index"] == 0


def _plan(spec: Any, search: dict[str, Any], trial_jobs: list[dict[str, Any]], phase: str = "Running",
          train_job: dict[str, Any] | None = None) -> list[Action]:
    return plan(spec, phase, job("intent-validate-1", complete=True), train_job, [], False, search=search, trial_jobs=trial_jobs)


def test_plan_starts_trials_in_order_then_the_winner_and_stops_trials_of_a_failed_revision() -> None:
    spec = _spec(search=SEARCH)
    assert _plan(spec, _search(spec, [], []), []) == [
        CreateTrial("intent-trial-1-0", 0), CreateTrial("intent-trial-1-1", 1)]
    jobs = [_trial_job(0, complete=True), _trial_job(1)]
    assert _plan(spec, _search(spec, jobs, [_ok_pod(0, 0.9)]), jobs) == [CreateTrial("intent-trial-1-2", 2)]
    jobs = [_trial_job(i, complete=True) for i in range(4)]
    done = _search(spec, jobs, [_ok_pod(i, 0.9) for i in range(4)])
    assert _plan(spec, done, jobs) == [CreateTrainJob()]
    assert _plan(spec, done, jobs, train_job=job("intent-train-1")) == []
    # A revision that failed (or a spec edit) stops what still runs.
    running = [_trial_job(0), _trial_job(1, complete=True)]
    assert _plan(spec, _search(spec, running, []), running, phase="Failed") == [DeleteJob("intent-trial-1-0")]
    # spec.suspend reaches running trials as it reaches the training Job.
    paused = _spec(search=SEARCH, suspend=True)
    actions = _plan(paused, _search(paused, [_trial_job(0)], []), [_trial_job(0)])
    assert actions[0] == SetSuspend("intent-trial-1-0", True)


def test_a_trial_without_its_pod_costs_its_jobs_run_time_and_an_unmeasured_one_is_never_cheapest() -> None:
    spec = _spec(search={"space": {"maxSteps": [2, 8]}}, resources={"gpus": 2})
    gone = _trial_job(1, complete=True)
    gone["status"].update(startTime="2026-01-01T00:00:00Z", completionTime="2026-01-01T00:00:30Z")
    msg = summary(accuracy=0.93, eval_loss=0.3, n_eval=40, steps=8, baselines=[], artifacts={})
    reader = job("intent-trial-1-1-summary", complete=True)
    s = _search(spec, [_trial_job(0, complete=True), gone, reader],
                [_ok_pod(0, 0.90, ended="2026-01-01T00:01:00Z"),
                 pod("intent-trial-1-1-summary", phase="Succeeded", terminated=finished(0, msg))])
    assert [t.get("gpuSeconds") for t in s["trials"]] == [120.0, 60.0]  # 2 GPUs x 60 s; 2 GPUs x the Job's 30 s
    assert s["winner"]["index"] == 1  # 0.93 is the best and (by the Job's times) the cheaper
    # No pod and no Job times: nothing measured, so within one SE the measured trial wins.
    unmeasured = [{"index": 0, "job": "a", "params": {}, "phase": SUCCEEDED, "validationAccuracy": 0.93, "validationRows": 40},
                  {"index": 1, "job": "b", "params": {}, "phase": SUCCEEDED, "validationAccuracy": 0.92, "validationRows": 40,
                   "gpuSeconds": 500.0}]
    assert choose_winner(unmeasured)["index"] == 1
