"""The operator's request count of a ModelServe (serve/served.py's PromQL through promapi.py)
against the real Prometheus (Debian's 2.42, ``tuneforge_localcluster.prometheus``), no cluster:
two stand-in color targets expose vLLM's ``vllm:request_success_total`` (one series per finish
reason) with the ``namespace`` and ``pod`` labels Prometheus' usual pod scraping gives a color pod;
the query counts one ModelServe's requests, across finish reasons and colors, and not another's."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

from tuneforge.promapi import PromApi
from tuneforge.runtime import now_iso
from tuneforge.serve.served import requests_query
from tuneforge_localcluster.prometheus import HOST_JOB, Prometheus, running
from tuneforge_localcluster.testing import wait_for


def _color() -> tuple[Counter, int, ThreadingHTTPServer]:
    """A stand-in color's /metrics: vLLM's counter, every finish reason created at 0 as vLLM does,
    always in the text format as vLLM serves it (prometheus-client's own server would answer
    Prometheus's OpenMetrics request with the colon escaped: ``vllm_request_success_total``)."""
    registry = CollectorRegistry()
    counter = Counter("vllm:request_success", "Count of successfully processed requests.",
                      ["model_name", "finished_reason"], registry=registry)
    for reason in ("stop", "length", "abort"):
        counter.labels("base", reason)

    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = generate_latest(registry)
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return counter, server.server_address[1], server


@pytest.fixture()
def prom(tmp_path: Path) -> Iterator[Prometheus]:
    with running(tmp_path / "prometheus", rule_files=[]) as p:
        yield p


def test_requests_served_counts_one_modelserves_colors_in_real_prometheus(prom: Prometheus) -> None:
    since = now_iso(dt.datetime.now(dt.timezone.utc))
    blue, blue_port, blue_server = _color()
    green, green_port, green_server = _color()
    other, other_port, other_server = _color()
    try:
        prom.set_host_targets([
            {"targets": [f"127.0.0.1:{blue_port}"], "labels": {"namespace": "ml", "pod": "intents-blue-7d9f8c6b5-x2k4q"}},
            {"targets": [f"127.0.0.1:{green_port}"], "labels": {"namespace": "ml", "pod": "intents-green-5c4b7d9f8-q7w2e"}},
            # ModelServe intents-blue: its pods' names start like intents' blue ones.
            {"targets": [f"127.0.0.1:{other_port}"], "labels": {"namespace": "ml", "pod": "intents-blue-blue-6f5d4-h8j9k"}},
        ])
        wait_for("three color targets scraped", lambda: len(prom.query(f'up{{job="{HOST_JOB}"}} == 1')) == 3, 30, 0.5,
                 prom.log)
        wait_for("a second scrape", lambda: prom.query(f'count_over_time(up{{job="{HOST_JOB}"}}[1m]) >= 2'), 30, 0.5)
        blue.labels("base", "stop").inc(6)
        blue.labels("base", "length").inc(2)
        green.labels("base", "stop").inc(3)
        other.labels("base", "stop").inc(500)
        wait_for("the new counts scraped", lambda: prom.query(
            'sum(vllm:request_success_total{namespace="ml"}) == 511'), 30, 0.5,
            lambda: repr(prom.query('count by (__name__) ({job="tuneforge-host"})')))

        now = dt.datetime.now(dt.timezone.utc)
        expr = requests_query("ml", "intents", since, now)
        assert expr is not None

        async def ask() -> float | None:
            api = PromApi(prom.url)
            try:
                return await api.scalar(expr, now)
            finally:
                await api.close()

        served = asyncio.run(ask())
        # The operator's answer is Prometheus's for that expression at that time.
        (sample,) = prom.api("query", query=expr, time=f"{now.timestamp():.3f}")["result"]
        assert served == float(sample["value"][1])
        # increase() extrapolates the rate seen to the window's end (up to a scrape interval past the
        # last sample): over these few seconds of 1 s scrapes that is tens of %, over a long-lived
        # ModelServe's window a fraction of one interval's requests. The other ModelServe's 500 never count.
        assert served is not None and 11 <= served < 22, served
        # No series for a ModelServe: None (absent in the status), not 0.
        async def none() -> float | None:
            api = PromApi(prom.url)
            try:
                return await api.scalar(requests_query("ml", "nothing", since, dt.datetime.now(dt.timezone.utc)) or "",
                                        dt.datetime.now(dt.timezone.utc))
            finally:
                await api.close()
        assert asyncio.run(none()) is None
    finally:
        for server in (blue_server, green_server, other_server):
            server.shutdown()
            server.server_close()
