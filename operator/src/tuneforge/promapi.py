"""The operator's door to a Prometheus server's HTTP API (``/api/v1/query``, an instant query):
what the operator reads from the metrics others expose rather than scraping pods itself (the
ModelServe's requests served, from vLLM's counters on its color pods). Prometheus already finds
the pods, survives their restarts (``increase`` handles a counter reset) and keeps the series of
pods that are gone; the operator needs no route into the pod network and no ``pods/proxy`` right.

One ``aiohttp`` session per operator (Kopf's HTTP library, already installed); a failed or
refused query is logged and answers None (the status field it feeds stays as it was), never an
exception in a reconcile. Parsing the API's JSON (:func:`parse_scalar`) is pure.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any, Mapping

import aiohttp

__all__ = ["PromApi", "QueryError", "parse_scalar"]

log = logging.getLogger(__name__)


class QueryError(ValueError):
    """Prometheus answered, but not with a result of the expected shape."""


def parse_scalar(doc: Mapping[str, Any]) -> float | None:
    """The value of an instant query's answer that is one number: a ``scalar``, or a ``vector``
    of at most one sample (an aggregation such as ``sum(...)``); None for an empty vector (no
    series matched: nothing to count yet). An error answer or another shape raises QueryError."""
    if not isinstance(doc, Mapping):
        raise QueryError(f"expected a JSON object, got {type(doc).__name__}")
    if doc.get("status") != "success":
        raise QueryError(f"Prometheus answered {doc.get('errorType') or doc.get('status')}: {doc.get('error') or doc}")
    data = doc.get("data") or {}
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar" and isinstance(result, list) and len(result) == 2:
        return float(result[1])
    if kind == "vector" and isinstance(result, list):
        if not result:
            return None
        if len(result) > 1:
            raise QueryError(f"expected one sample, got {len(result)} (aggregate the query)")
        return float(result[0]["value"][1])
    raise QueryError(f"expected a scalar or a vector, got {kind!r}")


class PromApi:
    """Instant queries against one Prometheus server (``url``: its base, e.g. ``http://prometheus:9090``)."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def scalar(self, expr: str, at: dt.datetime) -> float | None:
        """The one number ``expr`` evaluates to at ``at`` (see :func:`parse_scalar`); None also
        when the server cannot be reached or refuses the query (logged)."""
        if self._session is None:  # made in the running event loop, on first use
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.get(f"{self.url}/api/v1/query",
                                         params={"query": expr, "time": f"{at.timestamp():.3f}"}) as res:
                # Prometheus answers a bad query with 400 and the same JSON error document.
                doc = await res.json(content_type=None)
            return parse_scalar(doc)
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError, IndexError) as exc:
            log.warning("Prometheus query at %s failed: %s (%s)", self.url, exc, expr)
            return None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
