"""Every response names the adapter digests that answered it (the blue/green switch test reads it)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tuneforge_server.args import build_vllm_args
from tuneforge_server.config import parse_config
from tuneforge_server.headers import ENV, HEADER, AdapterDigestHeader, header_value

D1, D2 = "sha256:" + "a" * 64, "sha256:" + "b" * 64


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b"{}"})


def _run(scope_type: str) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    asyncio.run(AdapterDigestHeader(_app)({"type": scope_type}, receive, send))  # type: ignore[arg-type]
    return sent


def test_the_header_names_every_served_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, header_value({"b-adapter": D2, "a-adapter": D1}))
    start, body = _run("http")
    assert (HEADER, f"a-adapter={D1},b-adapter={D2}".encode()) in start["headers"]
    assert (b"content-type", b"application/json") in start["headers"] and body["body"] == b"{}"


def test_nothing_added_without_digests_or_outside_http(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    assert all(h[0] != HEADER for h in _run("http")[0]["headers"])
    monkeypatch.setenv(ENV, header_value({"a": D1}))
    assert all(h[0] != HEADER for h in _run("lifespan")[0]["headers"])


def test_vllm_loads_the_middleware_by_its_import_path() -> None:
    cfg = parse_config({"model": {"uri": "/m", "name": "base"}, "adapters": [{"name": "a", "uri": "/a"}]})
    args = build_vllm_args(cfg, __import__("pathlib").Path("/m"), [], "cpu", "merged")
    path = args[args.index("--middleware") + 1]
    module, _, name = path.rpartition(".")
    assert getattr(__import__(module, fromlist=[name]), name) is AdapterDigestHeader
