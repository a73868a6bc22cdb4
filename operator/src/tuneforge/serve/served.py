"""Requests a ModelServe served, as the Prometheus that scrapes its color pods counts them: the
PromQL expression (pure) for status.usage.requests. vLLM counts each finished request in
``vllm:request_success_total`` (one series per finish reason, per pod); Prometheus' usual pod
scraping labels a pod's series with its ``namespace`` and ``pod`` (as the KEDA trigger's query
assumes), and the color Deployments' pods are named ``<name>-<color>-<replicaset hash>-<suffix>``.
``increase`` over the usage's window adds up every pod's count, pods gone and counters reset
included. Like every ``increase``, it extrapolates the rate it saw to the window's edges (at most
about one scrape interval's worth of requests), so the count is Prometheus's estimate, not an
exact tally."""

from __future__ import annotations

import datetime as dt
import json

from ..runtime import parse_time
from .names import COLORS

__all__ = ["REQUESTS_METRIC", "color_pods_regex", "deployment_pods_regex", "requests_query"]

REQUESTS_METRIC = "vllm:request_success_total"


def deployment_pods_regex(deployment: str) -> str:
    """The names of a Deployment's pods (``<deployment>-<ReplicaSet hash>-<suffix>``; Prometheus
    anchors a regex match, and a hash and a suffix hold no ``-``, so ModelServe ``a`` never matches
    the pods of ModelServe ``a-blue``). ``deployment`` may itself be a regex."""
    return f"{deployment}-[a-z0-9]+-[a-z0-9]+"


def color_pods_regex(name: str) -> str:
    """The names of the pods of ModelServe ``name``'s color Deployments."""
    return deployment_pods_regex(f"{name}-({'|'.join(COLORS)})")


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
    return (f"sum(increase({REQUESTS_METRIC}{{namespace={json.dumps(namespace)},pod=~{json.dumps(color_pods_regex(name))}}}"
            f"[{window}s]))")
