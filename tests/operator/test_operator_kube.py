"""The operator's API door: which errors are retried, what message a user sees, and what the
operator process imports (its image has no ``kubernetes`` client)."""

from __future__ import annotations

import subprocess

import httpx2
import pytest
from lightkube import ApiError
from lightkube.models.meta_v1 import Status
from tuneforge.kube import api_error_message, is_transient
from tuneforge.runtime import pack, unpack
from tuneforge_localcluster.testing import operator_python

from operator_helpers import ROOT


def api_error(code: int, message: str | None = "boom", reason: str | None = None) -> ApiError:
    return ApiError(status=Status(code=code, message=message, reason=reason))


@pytest.mark.parametrize(("exc", "transient"), [
    (api_error(409), True),   # conflict: re-read and retry
    (api_error(429), True),   # throttled
    (api_error(500), True),
    (api_error(503), True),
    (api_error(0), True),     # no HTTP status at all
    (api_error(400), False),
    (api_error(403), False),  # RBAC: a retry cannot fix it
    (api_error(404), False),
    (api_error(422), False),  # invalid object: our bug or the spec's, not the network's
    (httpx2.ConnectError("refused"), True),
    (httpx2.ReadTimeout("slow"), True),
    (ConnectionResetError(), True),
    (TimeoutError(), True),
    (ValueError("bad spec"), False),
    (KeyError("x"), False),
])
def test_is_transient(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


@pytest.mark.parametrize(("exc", "message"), [
    (api_error(422, 'Job.batch "x" is invalid: spec.template.spec.containers[0].image: Required value'),
     'Job.batch "x" is invalid: spec.template.spec.containers[0].image: Required value'),
    (api_error(403, None, "Forbidden"), "Forbidden"),
    (httpx2.ReadError(""), "ReadError"),
    (ValueError("spec.dataset.uri: unsupported scheme"), "spec.dataset.uri: unsupported scheme"),
])
def test_api_error_message(exc: BaseException, message: str) -> None:
    assert api_error_message(exc) == message


def test_pack_round_trip_is_compact() -> None:
    obj = {"metadata": {"name": "a", "labels": {"k": "v"}}, "status": {"phase": None, "n": [1, 2.5, True]}}
    text = pack(obj)
    assert unpack(text) == obj
    assert " " not in text


def test_operator_process_never_imports_the_kubernetes_client() -> None:
    """The operator's venv is operator/requirements.txt only, and nothing the operator imports
    pulls the official client in (it would cost ~45 MB of RSS, and break in the image)."""
    code = "import sys, tuneforge.main, tuneforge.finetune.handlers; print(sorted(m for m in sys.modules if m.split('.')[0] == 'kubernetes'))"
    out = subprocess.run([operator_python(), "-c", code], cwd=ROOT, env={"PYTHONPATH": str(ROOT / "operator" / "src")},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
    missing = subprocess.run([operator_python(), "-c", "import kubernetes"], capture_output=True, text=True)
    assert missing.returncode != 0 and "No module named 'kubernetes'" in missing.stderr


# --- ownership and retries --------------------------------------------------------------------

def _child(name: str, uid: str, controller: str | None) -> dict[str, object]:
    return {"metadata": {"name": name, "uid": uid, "controllerUid": controller, "labels": {}}}


def test_only_children_controlled_by_this_object_are_read() -> None:
    from tuneforge.finetune.reconcile import owned_children
    jobs = [_child("intent-train-1", "job-a", "ftj-new"),
            _child("intent-validate-1", "job-old", "ftj-deleted"),   # a namesake's leftover
            _child("intent-train-9", "job-orphan", None)]             # orphaned: no controller
    pods = [_child("intent-train-1-x", "p1", "job-a"), _child("intent-validate-1-y", "p2", "job-old"),
            _child("intent-train-9-z", "p3", "job-orphan"), _child("stray", "p4", None)]
    mine, my_pods = owned_children(jobs, pods, "ftj-new")
    assert [j["metadata"]["name"] for j in mine] == ["intent-train-1"]
    assert [p["metadata"]["name"] for p in my_pods] == ["intent-train-1-x"]


def test_backoff_is_exponential_capped_and_jittered() -> None:
    from tuneforge.workqueue import backoff_delay
    top = [backoff_delay(a, 10, 300, rand=lambda: 1.0) for a in range(8)]
    assert top == [10, 20, 40, 80, 160, 300, 300, 300]
    assert backoff_delay(3, 10, 300, rand=lambda: 0.0) == 40
    assert backoff_delay(100, 10, 300) <= 300


def test_foreign_child_message_names_it() -> None:
    from tuneforge.kube import ForeignChild
    msg = str(ForeignChild("Job", "ns", "intent-train-1", None))
    assert "Job ns/intent-train-1 already exists and has no controller" in msg and "delete it" in msg


def test_foreign_child_message_names_the_owner_kind() -> None:
    """A ModelServe's conflicting Service is not reported as a FineTuneJob's (MS-11)."""
    from tuneforge.kube import ForeignChild
    msg = str(ForeignChild("Service", "ns", "chat", "uid-x", "ModelServe"))
    assert "is controlled by another object (uid uid-x), not this ModelServe" in msg and "rename the ModelServe" in msg
    assert "FineTuneJob" not in msg


# --- the progress poller and the accuracy gauge -----------------------------------------------

def test_progress_poller_survives_errors_is_restarted_and_probed(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio
    import dataclasses
    from types import SimpleNamespace

    import kopf
    from tuneforge.finetune import handlers
    from tuneforge.settings import Settings

    class Broken(dict):  # an index that fails every round
        def items(self):  # type: ignore[override]
            raise RuntimeError("odd object")

    async def main() -> None:
        ctx = SimpleNamespace(settings=dataclasses.replace(Settings(), progress_interval=0.01), ftjs=Broken())
        monkeypatch.setitem(handlers._state, "room", ctx)
        handlers._start_poller(ctx)  # type: ignore[arg-type]
        first = handlers._state["poller"]
        await asyncio.sleep(0.1)
        assert not first.done()  # failing rounds are logged, the loop goes on
        assert await handlers.poller_alive() < 1
        first.cancel()
        await asyncio.sleep(0)
        # A poller that dies by an exception is started again.
        calls: list[int] = []

        async def dies_once(_: object) -> None:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("boom")
            await asyncio.sleep(3600)

        monkeypatch.setattr(handlers, "_poll_progress", dies_once)
        handlers._start_poller(ctx)  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        assert len(calls) == 2 and not handlers._state["poller"].done()
        # A stuck poller (no round finished for long) fails the liveness probe.
        handlers._state["poller_beat"] -= 1000
        with pytest.raises(kopf.PermanentError):
            await handlers.poller_alive()
        handlers._state.pop("poller").cancel()

    asyncio.run(main())


def test_accuracy_gauge_restored_from_status() -> None:
    from tuneforge import metrics
    from tuneforge.finetune.reconcile import _restore_gauge
    _restore_gauge(("ns-gauge", "old"), {"phase": "Succeeded", "evaluation": {"accuracy": 0.91}})
    _restore_gauge(("ns-gauge", "running"), {"phase": "Running", "evaluation": {"accuracy": 0.5}})
    assert metrics.REGISTRY.get_sample_value("tuneforge_eval_accuracy", {"namespace": "ns-gauge", "name": "old"}) == 0.91
    assert metrics.REGISTRY.get_sample_value("tuneforge_eval_accuracy", {"namespace": "ns-gauge", "name": "running"}) is None


def test_any_failed_reconcile_is_retried_with_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """A non-transient error (a bug, a forbidden call) used to post one Warning and never retry,
    leaving the job in a non-terminal phase for good; now it is retried with growing delays, and
    a reconcile that succeeds resets the backoff."""
    import asyncio
    import dataclasses
    from tuneforge.finetune import handlers
    from tuneforge.finetune.reconcile import Room
    from tuneforge.runtime import Runtime
    from tuneforge.settings import Settings

    key = ("ns", "intent")
    calls: list[int] = []
    events: list[tuple[object, ...]] = []
    fail = [True]

    async def flaky(room: object, k: object) -> float | None:
        calls.append(1)
        if fail[0]:
            raise ValueError("a bug")
        return None

    async def main() -> None:
        settings = dataclasses.replace(Settings(), retry_delay=0.01, retry_max_delay=0.04)
        ctx = Room(rt=Runtime(settings, None, lambda *a: events.append(a)),  # type: ignore[arg-type]
                   ftjs={key: [pack({"metadata": {"name": "intent", "namespace": "ns", "uid": "u"}})]}, jobs={}, pods={})
        monkeypatch.setattr(handlers, "reconcile", flaky)
        queue = handlers.work_queue(ctx)  # type: ignore[arg-type]
        await queue.run(key)
        await asyncio.sleep(0.3)
        assert len(calls) >= 5 and queue.attempts[key] >= 5  # retried again and again, capped delays
        assert events[0][2] == "ReconcileFailed" and "a bug" in str(events[0][3])
        fail[0] = False
        await asyncio.sleep(0.1)
        assert key not in queue.attempts and not queue.timers  # success: backoff reset, nothing pending

    asyncio.run(main())


def test_a_waiting_job_is_looked_at_when_its_wait_ends() -> None:
    """The backoff never sleeps past the end of a dependency's bounded wait."""
    import datetime as dt

    from tuneforge.finetune.reconcile import _wait_left
    now = dt.datetime(2026, 1, 1, 0, 10, tzinfo=dt.timezone.utc)
    waiting = {"phase": "Pending", "conditions": [
        {"type": "DependenciesFound", "status": "False", "lastTransitionTime": "2026-01-01T00:05:00Z"}]}
    assert _wait_left(waiting, now, 600) == 300
    assert _wait_left(waiting, now, 60) == 0
    assert _wait_left({**waiting, "phase": "Failed"}, now, 600) is None
    assert _wait_left({"phase": "Running", "conditions": []}, now, 600) is None


def test_a_retried_gate_jobs_message_comes_from_its_succeeded_pod() -> None:
    """A gate pod evicted by a drain leaves its log tail as its message (FallbackToLogsOnError);
    the Job retries it, and the measures are the Succeeded pod's (MS-8)."""
    import asyncio
    from tuneforge.kube import Kube

    def pod(phase: str, message: str) -> dict[str, object]:
        return {"status": {"phase": phase, "containerStatuses": [
            {"name": "gate", "state": {"terminated": {"message": message}}}]}}

    kube = Kube.__new__(Kube)

    async def list_labelled(kind: str, namespace: str, labels: dict[str, str | None]) -> list[dict[str, object]]:
        return [pod("Failed", "Terminated by SIGTERM"), pod("Succeeded", '{"rows": 1}')]

    kube.list_labelled = list_labelled  # type: ignore[method-assign]
    assert asyncio.run(kube.job_termination_message("ns", "g", "gate")) == '{"rows": 1}'


# --- what Kopf does per watch event ------------------------------------------------------------

def test_kopf_copies_no_body_per_watch_event(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kopf builds a diff base (a deep copy of the whole body, for change-detecting handlers)
    on every event of every watched resource; with none to feed it is a sixth of the operator's
    CPU in a burst (bench/operator_throughput.py under py-spy), so ours builds and stores none."""
    import copy

    import kopf
    from tuneforge import startup
    from tuneforge.settings import Settings

    import k8s_objects

    settings = kopf.OperatorSettings()
    startup.configure(settings, Settings())
    storage = settings.persistence.diffbase_storage
    body = kopf.Body(k8s_objects.pod("intent-train-1", phase="Running"))
    copies: list[object] = []
    real = copy.deepcopy
    monkeypatch.setattr(copy, "deepcopy", lambda x, *a: copies.append(x) or real(x, *a))
    patch = kopf.Patch()
    assert storage.build(body=body) == {} and storage.fetch(body=body) is None
    storage.store(body=body, patch=patch, essence=storage.build(body=body))
    assert copies == [] and not patch


def test_no_room_has_change_detecting_handlers() -> None:
    """What makes NoDiffBase safe: no on.create/update/resume/delete/field, timer or daemon in
    either room (they would read the diff base Kopf no longer keeps)."""
    import kopf
    from tuneforge.finetune import handlers as _finetune  # noqa: F401 - registers its handlers
    from tuneforge.serve import handlers as _serve  # noqa: F401

    registry = kopf.get_default_registry()
    assert registry._indexing.get_all_handlers() and registry._watching.get_all_handlers()  # both rooms registered
    assert not registry._changing.get_all_handlers()
    assert not registry._spawning.get_all_handlers()


def test_named_namespaces_need_no_cluster_wide_discovery() -> None:
    """With TUNEFORGE_NAMESPACES set, Kopf neither lists namespaces nor watches CRDs (the chart's
    namespaced RBAC grants neither); cluster-wide it watches CRDs as before."""
    import kopf
    from tuneforge import startup
    from tuneforge.settings import Settings

    for namespaces, disabled in (("", False), ("team-a,team-b", True)):
        settings = kopf.OperatorSettings()
        startup.configure(settings, Settings(namespaces=namespaces))
        assert settings.scanning.disabled is disabled, namespaces
