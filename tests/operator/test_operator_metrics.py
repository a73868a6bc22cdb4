"""Metrics of both kinds (metrics.py): the ModelServe's gate results, rollbacks and rollout clock
driven through serve/reconcile.py against the in-memory API door, ModelServes by phase, the
FineTuneJob's gate results counted once per judged revision, and per-object gauges gone with
their object. Names and labels are the ones the alert rules read (alerts.yaml)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from test_serve_reconcile import D1, D2, T0, FakeKube, body, run, runtime
from test_serve_rollout import GATE, at, finish_gates

from tuneforge import metrics
from tuneforge.finetune.reconcile import gate_judged
from tuneforge.serve.status import GATE_SLACK_SECONDS, rollout_clock
from tuneforge.serve.spec import parse_spec

FAILING = json.dumps({"rows": 10, "correct": 1, "errors": 0, "accuracy": 0.1, "p50Ms": 5, "p99Ms": 9})


def sample(metric: str, /, **labels: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(metric, labels)


def count(metric: str, /, **labels: str) -> float:
    return sample(metric, **labels) or 0.0


def test_a_failed_gate_counts_a_gate_result_and_a_rollback_and_the_clock_follows_the_rollout() -> None:
    kube = FakeKube()
    rt, _ = runtime(kube)
    ms = {"namespace": "ns", "name": "intents"}
    gates = {o: count("tuneforge_gate_evaluations_total", kind="ModelServe", outcome=o, **ms) for o in ("Passed", "Failed")}
    rolled = count("tuneforge_modelserve_rollbacks_total", reason="GateFailed", **ms)
    b = body(D1, rollout={"gate": GATE, "progressDeadlineSeconds": 600})
    run(rt, b, T0)
    # Waiting for blue to be ready: the progress deadline runs from the rollout's start.
    assert sample("tuneforge_modelserve_rollout_started_timestamp_seconds", **ms) == T0.timestamp()
    assert sample("tuneforge_modelserve_rollout_deadline_seconds", **ms) == 600
    assert count("tuneforge_modelserves", phase="Progressing") >= 1
    kube.ready("blue")
    run(rt, b, at(5))
    # Gating: the gate's own timeout (and slack) from the gate's start.
    timeout = parse_spec(b["spec"]).rollout.gate.timeout_seconds  # type: ignore[union-attr]
    assert sample("tuneforge_modelserve_rollout_started_timestamp_seconds", **ms) == at(5).timestamp()
    assert sample("tuneforge_modelserve_rollout_deadline_seconds", **ms) == timeout + GATE_SLACK_SECONDS
    finish_gates(kube)
    run(rt, b, at(6))
    assert kube.status_writes[-1]["phase"] == "Healthy"
    assert sample("tuneforge_modelserve_rollout_started_timestamp_seconds", **ms) is None, "no rollout: absent"
    assert count("tuneforge_gate_evaluations_total", kind="ModelServe", outcome="Passed", **ms) == gates["Passed"] + 1
    b2 = body(D2, rollout={"gate": GATE})
    run(rt, b2, at(10))
    kube.ready("green")
    run(rt, b2, at(11))
    finish_gates(kube, FAILING)
    run(rt, b2, at(12))
    run(rt, b2, at(13))  # a pass with nothing new counts nothing
    assert kube.status_writes[-1]["reason"] == "GateFailed"
    assert count("tuneforge_gate_evaluations_total", kind="ModelServe", outcome="Failed", **ms) == gates["Failed"] + 1
    assert count("tuneforge_modelserve_rollbacks_total", reason="GateFailed", **ms) == rolled + 1
    assert sample("tuneforge_modelserve_rollout_started_timestamp_seconds", **ms) is None
    assert count("tuneforge_modelserves", phase="Degraded") >= 1
    degraded = count("tuneforge_modelserves", phase="Degraded")
    rt.forget(("ns", "intents"), "uid-ms")
    assert count("tuneforge_modelserves", phase="Degraded") == degraded - 1


def test_the_rollout_clock_is_absent_while_paused_for_promotion() -> None:
    spec = parse_spec(body()["spec"])
    paused = {"phase": "Paused", "preview": {"digest": D2}, "rollout": {"startedAt": "2026-01-01T00:00:00Z",
                                                                          "readyAt": "2026-01-01T00:01:00Z"}}
    assert rollout_clock(spec, paused) is None
    lost = {**paused, "phase": "Progressing",
            "rollout": {**paused["rollout"], "notReadySince": "2026-01-01T00:05:00Z"}}
    assert rollout_clock(spec, lost) == (T0.timestamp() + 300, float(spec.rollout.progress_deadline_seconds))


@pytest.mark.parametrize("prior, status, counted", [
    ({}, {"revision": 1, "gate": {"outcome": "Pending"}}, None),
    ({"revision": 1, "gate": {"outcome": "Pending"}}, {"revision": 1, "gate": {"outcome": "Passed"}}, "Passed"),
    ({"revision": 1, "gate": {"outcome": "Passed"}}, {"revision": 1, "gate": {"outcome": "Passed"}}, None),
    ({"revision": 1, "gate": {"outcome": "Passed"}}, {"revision": 2, "gate": {"outcome": "Failed"}}, "Failed"),
    ({"revision": 1, "gate": {"outcome": "Running"}}, {"revision": 1, "gate": {"outcome": "NotEvaluated"}}, None),
])
def test_a_fine_tune_jobs_gate_is_counted_once_per_judged_revision(prior: dict, status: dict, counted: str | None) -> None:
    assert gate_judged(prior, status) == counted


def test_per_object_gauges_go_with_their_object_and_counters_stay() -> None:
    metrics.TRAINING_PROGRESS.labels("ml", "gone").set(1.0)
    metrics.EVAL_ACCURACY.labels("ml", "gone").set(0.9)
    metrics.GATE_EVALUATIONS.labels("FineTuneJob", "ml", "gone", "Passed").inc()
    metrics.forget("FineTuneJob", "ml", "gone")
    metrics.forget("FineTuneJob", "ml", "never-seen")  # nothing to remove is fine
    assert sample("tuneforge_training_progress_timestamp_seconds", namespace="ml", name="gone") is None
    assert sample("tuneforge_eval_accuracy", namespace="ml", name="gone") is None
    assert count("tuneforge_gate_evaluations_total", kind="FineTuneJob", namespace="ml", name="gone", outcome="Passed") >= 1


def test_the_progress_poller_stamps_each_new_progress_event() -> None:
    """tuneforge_training_progress_timestamp_seconds: set when a poll round reads a new progress
    event of a running revision, not again for the same one."""
    import asyncio
    import dataclasses
    import time

    from tuneforge.finetune import handlers
    from tuneforge.finetune.reconcile import Room
    from tuneforge.runtime import Runtime, pack
    from tuneforge.settings import Settings

    key = ("ml", "stalls")
    tail = {"text": json.dumps({"event": "step", "step": 3, "max_steps": 10})}

    class Logs:
        async def pod_log_tail(self, namespace: str, pod: str, container: str, lines: int) -> str:
            return tail["text"]

    labels = {"tuneforge.dev/role": "train", "tuneforge.dev/revision": "1", "job-name": "stalls-train-1"}
    settings = dataclasses.replace(Settings(), progress_interval=0.05)
    room = Room(rt=Runtime(settings, Logs(), lambda *a: None), ftjs={}, jobs={}, pods={})  # type: ignore[arg-type]
    room.ftjs = {key: [pack({"metadata": {"name": "stalls", "namespace": "ml", "uid": "u-st"},
                             "status": {"phase": "Running", "revision": 1}})]}
    room.jobs = {key: [pack({"metadata": {"name": "stalls-train-1", "uid": "j1", "controllerUid": "u-st", "labels": labels}})]}
    room.pods = {key: [pack({"metadata": {"name": "stalls-train-1-x", "uid": "p1", "controllerUid": "j1", "labels": labels},
                             "status": {"phase": "Running"}})]}
    kicked: list[Any] = []
    handlers._state["queue"] = type("Queue", (), {"kick": lambda self, k, take_context=True: kicked.append(k)})()

    async def rounds(n: int) -> None:
        """The real poller loop, for ``n`` rounds of its (shortened) interval."""
        task = asyncio.get_running_loop().create_task(handlers._poll_progress(room))
        await asyncio.sleep(n * room.settings.progress_interval + 0.05)
        task.cancel()

    try:
        before = time.time()
        asyncio.run(rounds(2))
        stamp = sample("tuneforge_training_progress_timestamp_seconds", namespace="ml", name="stalls")
        assert stamp is not None and stamp >= before and kicked == [key]
        asyncio.run(rounds(2))  # the same event again: no new progress, no new stamp
        assert sample("tuneforge_training_progress_timestamp_seconds", namespace="ml", name="stalls") == stamp
        tail["text"] += "\n" + json.dumps({"event": "step", "step": 4, "max_steps": 10})
        asyncio.run(rounds(2))
        newer = sample("tuneforge_training_progress_timestamp_seconds", namespace="ml", name="stalls")
        assert newer is not None and newer > stamp
    finally:
        handlers._state.pop("queue", None)


def test_a_revision_with_no_trainer_running_has_no_progress_stamp() -> None:
    """The stalled-training alert reads the stamp only while a trainer runs: reconcile drops it
    in any other phase (here a revision still creating its training Job)."""
    import asyncio
    import copy

    from ftj_helpers import MINIMAL_SPEC, defaulted_spec
    from test_gang_reconcile import FakeKube, _job
    from tuneforge.finetune.reconcile import Room, reconcile
    from tuneforge.runtime import Runtime, pack
    from tuneforge.settings import Settings

    key = ("team-a", "gang")
    body = {"metadata": {"name": "gang", "namespace": "team-a", "uid": "ftj-uid", "generation": 1},
            "spec": defaulted_spec(copy.deepcopy(MINIMAL_SPEC)), "status": {}}
    kube = FakeKube()
    room = Room(rt=Runtime(Settings(trainer_image="t:1"), kube, lambda *a: None), ftjs={}, jobs={}, pods={})  # type: ignore[arg-type]
    room.ftjs = {key: [pack(body)]}
    room.jobs = {key: [pack(_job("gang-validate-1", "v", "Complete"))]}
    metrics.TRAINING_PROGRESS.labels(*key).set(1.0)  # left from an earlier revision
    asyncio.run(reconcile(room, key))
    assert kube.status["phase"] not in ("Running", "Evaluating"), kube.status
    assert sample("tuneforge_training_progress_timestamp_seconds", namespace="team-a", name="gang") is None


def test_a_modelserves_counters_are_born_at_zero_on_its_first_reconcile() -> None:
    """Prometheus's increase() sees only changes between scraped samples: a counter first scraped
    at 1 shows none, and the gate-failed and rollback alerts would never fire on a first failure."""
    kube = FakeKube()
    room, _ = runtime(kube)
    b = body(D1)
    b["metadata"] = {**b["metadata"], "name": "fresh", "uid": "uid-fresh"}
    run(room, b, T0)
    ms = {"namespace": "ns", "name": "fresh"}
    for outcome in ("Passed", "Failed", "Error"):
        assert sample("tuneforge_gate_evaluations_total", kind="ModelServe", outcome=outcome, **ms) == 0.0, outcome
    for reason in ("GateFailed", "GateError", "ProgressDeadlineExceeded", "Aborted", "RolledBack"):
        assert sample("tuneforge_modelserve_rollbacks_total", reason=reason, **ms) == 0.0, reason


def test_seed_counters_creates_the_series_at_zero_and_keeps_counts() -> None:
    metrics.seed_counters("FineTuneJob", "ml", "seeded", ("Passed", "Failed"))
    assert sample("tuneforge_gate_evaluations_total", kind="FineTuneJob", namespace="ml", name="seeded", outcome="Failed") == 0.0
    metrics.GATE_EVALUATIONS.labels("FineTuneJob", "ml", "seeded", "Failed").inc()
    metrics.seed_counters("FineTuneJob", "ml", "seeded", ("Passed", "Failed"))  # every reconcile: no reset
    assert sample("tuneforge_gate_evaluations_total", kind="FineTuneJob", namespace="ml", name="seeded", outcome="Failed") == 1.0
