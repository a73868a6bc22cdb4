"""Requests a ModelServe served, as the Prometheus that scrapes its color pods counts them: the
PromQL expression (pure) for status.usage.requests. vLLM counts each finished request in
``vllm:request_success_total`` (one series per finish reason, per pod); the scrape labels a
color pod's series with its ``namespace`` and, from the pod's ``tuneforge.dev/modelserve``
label, ``modelserve`` (the relabelling the chart's dashboard groups by too). ``increase`` over
the usage's window adds up every pod's count, pods gone and counters reset included. Like every
``increase``, it extrapolates the rate it saw to the window's edges (at most about one scrape
interval's worth of requests), so the count is Prometheus's estimate, not an exact tally."""

from __future__ import annotations

import datetime as dt
import json

from ..runtime import parse_time

__all__ = ["REQUESTS_METRIC", "requests_query"]

REQUESTS_METRIC = "vllm:request_success_total"


def requests_query(namespace: str, name: str, since: str | None, now: dt.datetime) -> str | None:
    """``sum(increase(...))`` of the ModelServe's request counters from ``since`` (status.usage.since)
    to ``now``, or None when that window is under a second (nothing to ask)."""
    start = parse_time(since)
    if start is None:
        return None
    window = int((now - start).total_seconds())
    if window < 1:
        return None
    # Names are DNS labels; JSON quoting is a valid PromQL string literal for any of them.
    return (f"sum(increase({REQUESTS_METRIC}{{namespace={json.dumps(namespace)},modelserve={json.dumps(name)}}}"
            f"[{window}s]))")
