"""A ModelServe's usage and cost (serve/status.py ``usage_status``, ``cost_status``, ``usage_due``),
the PromQL of its requests served (serve/served.py), the Prometheus door (promapi.py), and how a
reconcile carries them into the status and the metrics. Pure and table-driven, but for the
Prometheus door, which answers a local HTTP server speaking Prometheus's query API."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
from typing import Any

import pytest
from aiohttp import web

from tuneforge import metrics
from tuneforge.promapi import PromApi, QueryError, parse_scalar
from tuneforge.runtime import Runtime
from tuneforge.serve.builders import GatePod
from tuneforge.serve.plan import Requests, plan
from tuneforge.serve.reconcile import Room, count_usage, metering, reconcile
from tuneforge.serve.served import color_pods_regex, requests_query
from tuneforge.serve.source import Resolution, ServedAdapter, ServedVersion
from tuneforge.serve.spec import parse_spec
from tuneforge.serve.status import ColorState, Metering, Observed, cost_status, gpus_held, usage_due, usage_status
from tuneforge.settings import Settings

from test_serve_reconcile import FakeKube, body

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
S0 = "2026-01-01T00:00:00Z"
PRICED = Metering(gpu_hour_price=2.5, currency="EUR", refresh_seconds=300)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def stamp(seconds: int) -> str:
    return (T0 + dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def seen(*colors: tuple[int, int], requests: float | None = None) -> Observed:
    """Colors as (pods, GPUs per pod); ``requests``: what Prometheus answered at this point."""
    names = ("blue", "green")
    return Observed({names[i]: ColorState(version=None, replicas=pods, total=pods, gpus=gpus)
                     for i, (pods, gpus) in enumerate(colors)}, requests_served=requests)


def usage(since: int, counted: int, gpus: int, gpu_seconds: float, requests: int | None = None) -> dict[str, Any]:
    u: dict[str, Any] = {"since": stamp(since), "countedAt": stamp(counted), "gpus": gpus, "gpuSeconds": gpu_seconds}
    if requests is not None:
        u["requests"] = requests
    return u


@pytest.mark.parametrize(("case", "prior", "observed", "seconds", "refresh", "want"), [
    ("first pass: the count starts", None, seen((1, 2)), 0, 300, usage(0, 0, 2, 0.0)),
    ("first pass with nothing running", None, seen(), 0, 300, usage(0, 0, 0, 0.0)),
    ("same GPUs, before the refresh: unchanged", usage(0, 0, 2, 0.0), seen((1, 2)), 120, 300, usage(0, 0, 2, 0.0)),
    ("same GPUs, refresh due: 2 GPUs x 300 s", usage(0, 0, 2, 0.0), seen((1, 2)), 300, 300, usage(0, 300, 2, 600.0)),
    ("a color scales up: the time before at the old count", usage(0, 0, 2, 10.0), seen((2, 2)), 30, 300,
     usage(0, 30, 4, 70.0)),
    ("a rollout's candidate starts beside the active color", usage(0, 100, 1, 0.0), seen((1, 1), (1, 1)), 160, 300,
     usage(0, 160, 2, 60.0)),
    ("the last pod goes: counted up to now, then nothing", usage(0, 0, 4, 0.0), seen(), 50, 300, usage(0, 50, 0, 200.0)),
    ("nothing running, long after: unchanged (nothing to count)", usage(0, 50, 0, 200.0), seen(), 5000, 300,
     usage(0, 50, 0, 200.0)),
    ("CPU serving: pods without GPUs refresh (requests), no GPU-seconds", usage(0, 0, 0, 0.0), seen((2, 0), requests=41.6),
     300, 300, usage(0, 300, 0, 0.0, 42)),
    ("refresh 0: only a change counts", usage(0, 0, 2, 0.0), seen((1, 2)), 9000, 0, usage(0, 0, 2, 0.0)),
    ("requests not read at this point: the prior count stays", usage(0, 0, 1, 0.0, 7), seen((1, 1)), 300, 300,
     usage(0, 300, 1, 300.0, 7)),
    ("requests read: Prometheus's count replaces it (rounded)", usage(0, 0, 1, 0.0, 7), seen((1, 1), requests=1499.5),
     300, 300, usage(0, 300, 1, 300.0, 1500)),
    ("a fraction of a second: intervals run between whole-second stamps", usage(0, 10, 1, 0.0), seen((2, 1)), 20.7, 300,
     usage(0, 20, 2, 10.0)),
])
def test_usage_status(case: str, prior: dict[str, Any] | None, observed: Observed, seconds: float, refresh: float,
                      want: dict[str, Any]) -> None:
    got = usage_status(prior, observed, at(seconds), Metering(refresh_seconds=refresh))
    assert got == want, case


@pytest.mark.parametrize(("prior", "observed", "seconds", "refresh", "want"), [
    (None, seen(), 0, 300, 0.0),
    (usage(0, 0, 2, 0.0), seen((1, 2)), 100, 300, 200.0),
    (usage(0, 0, 2, 0.0), seen((1, 2)), 400, 300, 0.0),
    (usage(0, 0, 2, 0.0), seen((1, 4)), 1, 300, 0.0),
    (usage(0, 0, 0, 0.0), seen(), 100, 300, None),
    (usage(0, 0, 0, 0.0), seen((1, 0)), 100, 300, 200.0),
    (usage(0, 0, 2, 0.0), seen((1, 2)), 100, 0, None),
])
def test_usage_due(prior: dict[str, Any] | None, observed: Observed, seconds: float, refresh: float, want: float | None) -> None:
    assert usage_due(prior, observed, at(seconds), refresh) == want


def test_gpus_held_counts_every_pod_ready_or_not() -> None:
    observed = Observed({"blue": ColorState(version=None, replicas=2, ready=1, total=3, gpus=2),
                         "green": ColorState(version=None, replicas=1, ready=0, total=1, gpus=1)})
    assert gpus_held(observed) == (7, 4)


@pytest.mark.parametrize(("u", "m", "want"), [
    (usage(0, 0, 1, 7200.0), Metering(gpu_hour_price=None), None),
    (usage(0, 0, 1, 7200.0), PRICED, {"estimated": 5.0, "currency": "EUR", "gpuHourPrice": 2.5, "display": "5.00 EUR"}),
    # No request served yet: no cost per request (not a division by zero, not zero).
    (usage(0, 0, 1, 7200.0, 0), PRICED, {"estimated": 5.0, "currency": "EUR", "gpuHourPrice": 2.5, "display": "5.00 EUR"}),
    (usage(0, 0, 1, 7200.0, 2000), PRICED, {"estimated": 5.0, "currency": "EUR", "gpuHourPrice": 2.5, "display": "5.00 EUR",
                                           "per1kRequests": 2.5, "per1kRequestsDisplay": "2.5000 EUR"}),
    (usage(0, 0, 1, 36.0, 3), Metering(gpu_hour_price=4.0), {"estimated": 0.04, "currency": "USD", "gpuHourPrice": 4.0,
                                                             "display": "0.04 USD", "per1kRequests": 13.333333,
                                                             "per1kRequestsDisplay": "13.3333 USD"}),
    ({}, PRICED, None),
])
def test_cost_status(u: dict[str, Any], m: Metering, want: dict[str, Any] | None) -> None:
    assert cost_status(u, m) == want


@pytest.mark.parametrize(("since", "seconds", "want"), [
    (S0, 3600, 'sum(increase(vllm:request_success_total{namespace="ml",pod=~"intents-(blue|green)-[a-z0-9]+-[a-z0-9]+"}[3600s]))'),
    (S0, 90.9, 'sum(increase(vllm:request_success_total{namespace="ml",pod=~"intents-(blue|green)-[a-z0-9]+-[a-z0-9]+"}[90s]))'),
    (S0, 0.5, None),
    (None, 3600, None),
])
def test_requests_query(since: str | None, seconds: float, want: str | None) -> None:
    assert requests_query("ml", "intents", since, at(seconds)) == want


@pytest.mark.parametrize(("pod", "matches"), [
    ("intents-blue-7d9f8c6b5-x2k4q", True),
    ("intents-green-5c4b7d9f8-abcde", True),
    ("intents-blue-7d9f8c6b5", False),  # not a pod name of a Deployment
    ("intents-gate-1-abcde", False),  # the gate Job's pod
    ("intents-blue-blue-7d9f8c6b5-x2k4q", False),  # ModelServe intents-blue's pod
    ("my-intents-blue-7d9f8c6b5-x2k4q", False),
])
def test_color_pods_regex_matches_only_this_modelserves_color_pods(pod: str, matches: bool) -> None:
    # Prometheus anchors =~ at both ends, as fullmatch does.
    assert bool(re.fullmatch(color_pods_regex("intents"), pod)) is matches


@pytest.mark.parametrize(("doc", "want"), [
    ({"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1.7e9, "1234.5"]}]}}, 1234.5),
    ({"status": "success", "data": {"resultType": "vector", "result": []}}, None),
    ({"status": "success", "data": {"resultType": "scalar", "result": [1.7e9, "3"]}}, 3.0),
])
def test_parse_scalar(doc: dict[str, Any], want: float | None) -> None:
    assert parse_scalar(doc) == want


@pytest.mark.parametrize(("doc", "message"), [
    ({"status": "error", "errorType": "bad_data", "error": "parse error at char 5"}, "bad_data: parse error"),
    ({"status": "success", "data": {"resultType": "vector", "result": [{"value": [1, "1"]}, {"value": [1, "2"]}]}},
     "one sample, got 2"),
    ({"status": "success", "data": {"resultType": "matrix", "result": []}}, "'matrix'"),
    ([], "JSON object"),
])
def test_parse_scalar_refuses_what_is_not_one_number(doc: Any, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        parse_scalar(doc)


def test_prom_api_queries_at_a_time_and_answers_none_on_failure() -> None:
    """Against a local server speaking the query API: the query and time are sent as Prometheus
    reads them; an error answer (HTTP 400 with an error document), a non-JSON answer and a server
    that is not there each answer None instead of raising into the reconcile."""
    asked: list[dict[str, str]] = []

    async def query(request: web.Request) -> web.Response:
        asked.append(dict(request.query))
        q = request.query["query"]
        if q == "bad(":
            return web.json_response({"status": "error", "errorType": "bad_data", "error": "unexpected end"}, status=400)
        if q == "html":
            return web.Response(text="<html>proxy error</html>", status=502)
        return web.json_response({"status": "success", "data": {"resultType": "vector",
                                                                "result": [{"metric": {}, "value": [0, "42"]}]}})

    async def main() -> list[float | None]:
        app = web.Application()
        app.router.add_get("/api/v1/query", query)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        prom = PromApi(f"http://127.0.0.1:{port}/")
        gone = PromApi("http://127.0.0.1:9", timeout=2)
        try:
            return [await prom.scalar("sum(up)", at(60)), await prom.scalar("bad(", at(0)),
                    await prom.scalar("html", at(0)), await gone.scalar("sum(up)", at(0))]
        finally:
            await prom.close()
            await gone.close()
            await runner.cleanup()

    assert asyncio.run(main()) == [42.0, None, None, None]
    assert asked[0] == {"query": "sum(up)", "time": f"{at(60).timestamp():.3f}"}


# --- through plan and reconcile ---------------------------------------------------------------

V1 = ServedVersion("s3://models/base", (ServedAdapter("intents", "s3://runs/r1/adapter", "sha256:" + "1" * 64),))


def test_plan_carries_usage_and_cost_and_a_pass_that_is_no_point_changes_nothing() -> None:
    spec = parse_spec({"adapter": {"fineTuneJob": "intents"}})
    desired = Resolution(V1, "Test", "desired")
    prior = {"usage": usage(0, 0, 1, 0.0, 0)}
    p = plan(spec, 1, desired, seen((1, 1), requests=1000.0), prior, Requests(), at(3600), metering=PRICED)
    assert p.status["usage"] == usage(0, 3600, 1, 3600.0, 1000)
    assert p.status["cost"]["per1kRequests"] == 2.5 and p.status["cost"]["estimated"] == 2.5
    assert p.requeue_after is not None and p.requeue_after <= 300
    # The pass after our own status write (same GPUs, a second later): the same status.
    again = plan(spec, 1, desired, seen((1, 1)), p.status, Requests(), at(3601), metering=PRICED)
    assert again.status["usage"] == p.status["usage"] and again.status["cost"] == p.status["cost"]
    # Without a metering (tests of the rollout alone), no usage and no cost.
    assert "usage" not in plan(spec, 1, desired, seen((1, 1)), {}, Requests(), at(0)).status


def test_metering_from_settings_prices_the_servers_gpu_resource() -> None:
    s = Settings(gpu_hour_prices='{"nvidia.com/gpu": 3.0, "amd.com/gpu": 1.0}', cost_currency="EUR", serve_usage_interval=60)
    assert metering(s) == Metering(3.0, "EUR", 60.0)
    assert metering(Settings(gpu_hour_prices='{"amd.com/gpu": 1.0}')).gpu_hour_price is None


class FakeProm:
    def __init__(self, answer: float | None) -> None:
        self.answer = answer
        self.asked: list[tuple[str, dt.datetime]] = []

    async def scalar(self, expr: str, when: dt.datetime) -> float | None:
        self.asked.append((expr, when))
        return self.answer


def _value(name: str, labels: dict[str, str]) -> float:
    v = metrics.REGISTRY.get_sample_value(name, labels)
    return 0.0 if v is None else v


def test_reconcile_writes_usage_asks_prometheus_at_points_only_and_counts_the_metrics_once() -> None:
    kube = FakeKube()
    prom = FakeProm(2000.0)
    rt = Runtime(Settings(server_image="server:1"), kube, lambda *a: None)  # type: ignore[arg-type]
    room = Room(rt=rt, modelserves={}, children=kube.children, gate_pod=GatePod("operator:1"),
                metering=Metering(2.5, "EUR", 300), prometheus=prom)  # type: ignore[arg-type]
    b = body()
    b["metadata"]["namespace"] = "ns-usage"
    key = ("ns-usage", "intents")
    room.modelserves = {key: [json.dumps(b)]}
    labels = {"namespace": "ns-usage", "name": "intents"}
    gpu0 = _value("tuneforge_modelserve_gpu_seconds_total", labels)

    def run(seconds: float) -> dict[str, Any]:
        asyncio.run(reconcile(room, key, at(seconds)))
        return kube.status_writes[-1]

    st = run(0)  # first pass: blue created (its pod not started yet), the count starts
    assert st["usage"] == usage(0, 0, 0, 0.0) and "per1kRequests" not in st["cost"]
    assert prom.asked == []  # no window yet
    assert _value("tuneforge_modelserve_cost_total", {**labels, "currency": "EUR"}) == 0.0  # seeded
    kube.ready("blue")  # its one pod (1 GPU) runs: the Deployment's status changes, a pass
    st = run(10)
    assert st["usage"] == usage(0, 10, 1, 0.0, 2000) and st["phase"] == "Healthy"
    assert prom.asked[-1] == ('sum(increase(vllm:request_success_total{namespace="ns-usage",'
                              'pod=~"intents-(blue|green)-[a-z0-9]+-[a-z0-9]+"}[10s]))', at(10))
    writes, asked = len(kube.status_writes), len(prom.asked)
    asyncio.run(reconcile(room, key, at(11)))  # the pass after our own write: no point, no query, no write
    assert (len(kube.status_writes), len(prom.asked)) == (writes, asked)
    st = run(3610)  # the refresh timer: an hour on one GPU
    assert st["usage"] == usage(0, 3610, 1, 3600.0, 2000)
    assert st["cost"] == {"estimated": 2.5, "currency": "EUR", "gpuHourPrice": 2.5, "display": "2.50 EUR",
                          "per1kRequests": 1.25, "per1kRequestsDisplay": "1.2500 EUR"}
    assert _value("tuneforge_modelserve_gpu_seconds_total", labels) - gpu0 == 3600.0
    assert _value("tuneforge_modelserve_cost_total", {**labels, "currency": "EUR"}) == pytest.approx(2.5)
    prom.answer = None  # Prometheus down at the next point: the last count stays, nothing faked
    kube.objs[("Deployment", "intents-blue")]["status"]["replicas"] = 2
    st = run(3620)
    assert st["usage"] == usage(0, 3620, 2, 3610.0, 2000)


def test_count_usage_adds_only_growth_and_restarts_with_a_new_window() -> None:
    labels = {"namespace": "ns-count", "name": "m"}
    before = _value("tuneforge_modelserve_gpu_seconds_total", labels)
    count_usage("ns-count", "m", {}, {"usage": usage(0, 0, 1, 0.0)}, PRICED)
    count_usage("ns-count", "m", {"usage": usage(0, 0, 1, 0.0)}, {"usage": usage(0, 100, 1, 100.0)}, PRICED)
    count_usage("ns-count", "m", {"usage": usage(0, 100, 1, 100.0)}, {"usage": usage(0, 100, 1, 100.0)}, PRICED)
    # A status written afresh (its usage restarted): all of its GPU-seconds are new.
    count_usage("ns-count", "m", {"usage": usage(0, 100, 1, 100.0)}, {"usage": usage(200, 260, 1, 60.0)}, PRICED)
    assert _value("tuneforge_modelserve_gpu_seconds_total", labels) - before == 160.0
    assert _value("tuneforge_modelserve_cost_total", {**labels, "currency": "EUR"}) == pytest.approx(160 / 3600 * 2.5)
