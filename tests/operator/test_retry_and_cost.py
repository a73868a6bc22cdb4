"""A Failed FineTuneJob retried by the ``tuneforge.dev/retry`` annotation, and status.cost.

decide_revision and compute_status as a table (which request starts a revision, which is recorded
and ignored), then through reconcile (indexes in, API calls out, no cluster): the retry creates the
next revision's ConfigMap and validation Job once, keeps the failed revision in status.history, and
the priced GPU-seconds appear as status.cost and in the cost metric.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
from typing import Any

import pytest

from ftj_helpers import MINIMAL_SPEC, defaulted_spec
from k8s_objects import finished, job, pod, summary
from test_gang_reconcile import FakeKube
from tuneforge import metrics
from tuneforge.finetune.reconcile import Room, reconcile
from tuneforge.finetune.spec import parse_spec
from tuneforge.finetune.status import Observed, Revision, compute_status, cost_status, decide_revision
from tuneforge.runtime import Runtime, pack
from tuneforge.settings import Settings

NOW = dt.datetime(2026, 1, 1, 0, 10, tzinfo=dt.timezone.utc)
FAILED = {"revision": 2, "specHash": "h", "phase": "Failed", "reason": "GateFailed", "observedGeneration": 1,
          "evaluation": {"accuracy": 0.7}, "gate": {"outcome": "Failed"}, "startTime": "a", "completionTime": "b"}


@pytest.mark.parametrize("name, prior, retry, number, is_new", [
    ("failed, first request", FAILED, "1", 3, True),
    ("failed, request already handled", {**FAILED, "retryRequest": "1"}, "1", 2, False),
    ("failed, a new value after a handled one", {**FAILED, "retryRequest": "1"}, "2", 3, True),
    ("failed, annotation removed", {**FAILED, "retryRequest": "1"}, None, 2, False),
    ("failed, no annotation", FAILED, None, 2, False),
    ("succeeded: recorded, ignored", {**FAILED, "phase": "Succeeded"}, "1", 2, False),
    ("running: recorded, ignored", {**FAILED, "phase": "Running"}, "1", 2, False),
    ("suspended: recorded, ignored", {**FAILED, "phase": "Suspended"}, "1", 2, False),
    ("no status yet", {}, "1", 1, True),
])
def test_decide_revision_on_a_retry_request(name: str, prior: dict[str, Any], retry: str | None, number: int,
                                            is_new: bool) -> None:
    rev = decide_revision("h", 1, prior, retry=retry)
    assert (rev.number, rev.is_new, rev.retry_request) == (number, is_new, retry), name
    if number == 3:
        # The failed revision is history (a ModelServe never picks it: its gate failed).
        assert rev.history[-1] == {"revision": 2, "specHash": "h", "phase": "Failed", "reason": "GateFailed",
                                   "accuracy": 0.7, "gate": "Failed", "startTime": "a", "completionTime": "b"}


def test_a_retried_revision_starts_afresh_and_records_the_request() -> None:
    spec = parse_spec(defaulted_spec(copy.deepcopy(MINIMAL_SPEC)))
    rev = decide_revision("h", 1, FAILED, retry="7")
    st = compute_status(spec, 1, FAILED, rev, Observed(), NOW, {}, "x")
    assert (st["phase"], st["revision"], st["retryRequest"]) == ("Pending", 3, "7")
    assert "completionTime" not in st and "evaluation" not in st and st["startTime"] == "2026-01-01T00:10:00Z"
    # The next pass: the request is handled, the revision stays.
    assert decide_revision("h", 1, st, retry="7") == Revision(3, "h", False, rev.history, "7")
    # A request on a finished revision that is not Failed is written down (it never fires later).
    done = {**FAILED, "phase": "Succeeded"}
    kept = compute_status(spec, 1, done, decide_revision("h", 1, done, retry="7"), Observed(), NOW, {}, "x")
    assert kept["retryRequest"] == "7" and kept["phase"] == "Succeeded" and kept["revision"] == 2


@pytest.mark.parametrize("gpu_seconds, price, currency, expected", [
    (7200.0, 2.5, "USD", {"estimated": 5.0, "currency": "USD", "gpuHourPrice": 2.5, "display": "5.00 USD"}),
    (90.0, 3.0, "EUR", {"estimated": 0.075, "currency": "EUR", "gpuHourPrice": 3.0, "display": "0.07 EUR"}),
    (0.0, 2.5, "USD", {"estimated": 0.0, "currency": "USD", "gpuHourPrice": 2.5, "display": "0.00 USD"}),
    (7200.0, None, "USD", None),
])
def test_cost_status(gpu_seconds: float, price: float | None, currency: str, expected: dict[str, Any] | None) -> None:
    assert cost_status(gpu_seconds, price, currency) == expected


def test_cost_in_status_counts_the_search_trials() -> None:
    """2 GPUs x 600 s of training plus 1,800 GPU-seconds of trials = 3,000 GPU-seconds."""
    spec = parse_spec(defaulted_spec({**copy.deepcopy(MINIMAL_SPEC), "resources": {"gpus": 2}}))
    t = "intent-train-1"
    obs = Observed(validate_job=job("intent-validate-1", complete=True), train_job=job(t, complete=True),
                   train_pods=[pod(t, phase="Succeeded", terminated=finished(0, summary()))],
                   search={"trials": [{"gpuSeconds": 1200.0}, {"gpuSeconds": 600.0}]})
    st = compute_status(spec, 1, {}, Revision(1, "h", True, ()), obs, NOW, {}, "x", gpu_hour_price=3.6, currency="USD")
    assert st["gpuSeconds"] == 3000.0
    assert st["cost"] == {"estimated": 3.0, "currency": "USD", "gpuHourPrice": 3.6, "display": "3.00 USD"}
    assert "cost" not in compute_status(spec, 1, {}, Revision(1, "h", True, ()), obs, NOW, {}, "x")


@pytest.mark.parametrize("raw, error", [
    ('["nvidia.com/gpu"]', "must be a JSON object"),
    ('{"nvidia.com/gpu": "2.5"}', "TUNEFORGE_GPU_HOUR_PRICES['nvidia.com/gpu']: expected a number >= 0"),
    ('{"amd.com/gpu": -1}', "TUNEFORGE_GPU_HOUR_PRICES['amd.com/gpu']"),
])
def test_bad_prices_fail_at_startup_naming_the_resource(raw: str, error: str) -> None:
    with pytest.raises(ValueError, match=error.replace("[", r"\[").replace("]", r"\]")):
        Settings.from_env({"TUNEFORGE_GPU_HOUR_PRICES": raw})


def test_prices_by_resource_name() -> None:
    s = Settings.from_env({"TUNEFORGE_GPU_HOUR_PRICES": '{"nvidia.com/gpu": 2.5, "amd.com/gpu": 2}',
                           "TUNEFORGE_COST_CURRENCY": "EUR"})
    assert (s.gpu_hour_price("nvidia.com/gpu"), s.gpu_hour_price("amd.com/gpu"), s.gpu_hour_price("x/y")) == (2.5, 2.0, None)
    assert s.cost_currency == "EUR" and Settings().gpu_hour_price("nvidia.com/gpu") is None


# --- through reconcile ----------------------------------------------------------------------------

NS, NAME, UID = "team-a", "intent", "ftj-uid"


class PreflightKube(FakeKube):
    """FakeKube whose cluster has every PersistentVolumeClaim a new revision's preflight asks for."""

    async def pvc_exists(self, namespace: str, name: str) -> bool:
        self.calls.append(("get PersistentVolumeClaim", name))
        return True


def _owned(obj: dict[str, Any], controller: str, revision: int) -> dict[str, Any]:
    obj["metadata"].update(controllerUid=controller, uid=f"uid-{obj['metadata']['name']}",
                           labels={**obj["metadata"].get("labels", {}), "tuneforge.dev/revision": str(revision)})
    return obj


def test_retry_through_reconcile_starts_the_next_revision_once() -> None:
    raw = copy.deepcopy(MINIMAL_SPEC)
    raw["evaluation"] = {"gate": {"minAccuracy": 0.99}}
    body: dict[str, Any] = {"metadata": {"name": NAME, "namespace": NS, "uid": UID, "generation": 1},
                            "spec": defaulted_spec(raw)}
    vjob = _owned(job("intent-validate-1", complete=True), UID, 1)
    tjob = _owned(job("intent-train-1", complete=True), UID, 1)
    tpod = _owned(pod("intent-train-1", phase="Succeeded", terminated=finished(
        0, summary(accuracy=0.9), "2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z")), tjob["metadata"]["uid"], 1)
    kube = PreflightKube()
    ctx = Room(rt=Runtime(Settings(trainer_image="t:1", gpu_hour_prices='{"nvidia.com/gpu": 2.5}'), kube,  # type: ignore[arg-type]
                          lambda *a: None), ftjs={}, jobs={}, pods={})
    cost = metrics.FINETUNEJOB_COST.labels("USD")
    before = cost._value.get()

    jobs = [vjob, tjob]

    def run(annotations: dict[str, str]) -> dict[str, Any]:
        ctx.ftjs = {(NS, NAME): [pack({**body, "metadata": {**body["metadata"], "annotations": annotations},
                                       "status": kube.status})]}
        ctx.jobs = {(NS, NAME): [pack(j) for j in jobs]}
        ctx.pods = {(NS, NAME): [pack(tpod)]}
        kube.calls.clear()
        asyncio.run(reconcile(ctx, (NS, NAME)))
        return kube.status

    st = run({})
    assert (st["phase"], st["reason"], st["revision"]) == ("Failed", "GateFailed", 1)
    # One GPU for one hour at 2.5 per GPU-hour.
    assert st["cost"] == {"estimated": 2.5, "currency": "USD", "gpuHourPrice": 2.5, "display": "2.50 USD"}
    assert cost._value.get() == before + 2.5
    assert kube.calls == []
    st = run({"tuneforge.dev/retry": "1"})
    assert (st["phase"], st["revision"], st["retryRequest"]) == ("Pending", 2, "1")
    assert st["history"][-1]["phase"] == "Failed" and st["history"][-1]["revision"] == 1
    # The new revision's preflight looks for its claims again, then creates its first children.
    assert [c for c in kube.calls if c[0].startswith("create")] == [("create ConfigMap", "intent-config-2"),
                                                                   ("create Job", "intent-validate-2")]
    assert ("get PersistentVolumeClaim", "data") in kube.calls
    # The next pass sees revision 2 validating: the request is not acted on twice, and revision 1's
    # finished Jobs are left alone.
    jobs.append(_owned(job("intent-validate-2"), UID, 2))
    st = run({"tuneforge.dev/retry": "1"})
    assert (st["phase"], st["revision"]) == ("Validating", 2) and kube.calls == []
