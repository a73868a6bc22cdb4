"""Probes: readiness means "this pod serves these adapters", liveness means "the server answers".

Readiness asks the local server's ``/v1/models`` and passes only when every configured served
name is listed, so a Service never sends a request to a pod that would answer with a model-not-
found error. Run as an exec probe (``tuneforge-server probe``): no shell, no curl in the image.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Sequence

__all__ = ["ProbeResult", "check_health", "check_ready", "listed_models"]

ProbeResult = tuple[bool, str]


def _get(url: str, key: str | None, timeout: float) -> bytes:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - loopback URL built here
        return resp.read()


def listed_models(body: bytes) -> list[str]:
    """Model ids in an OpenAI ``/v1/models`` response."""
    data = json.loads(body)
    return [m["id"] for m in data.get("data", []) if isinstance(m, dict) and "id" in m]


def check_ready(port: int, names: Sequence[str], key: str | None = None, timeout: float = 3.0, host: str = "127.0.0.1") -> ProbeResult:
    """Whether the server on ``port`` lists every name in ``names``."""
    try:
        listed = listed_models(_get(f"http://{host}:{port}/v1/models", key, timeout))
    except (OSError, ValueError, urllib.error.URLError) as e:
        return False, f"/v1/models: {e}"
    missing = [n for n in names if n not in listed]
    if missing:
        return False, f"not served yet: {', '.join(missing)} (listed: {', '.join(listed) or 'none'})"
    return True, f"serving {', '.join(names)}"


def check_health(port: int, timeout: float = 3.0, host: str = "127.0.0.1") -> ProbeResult:
    """Whether ``/health`` answers 200."""
    try:
        _get(f"http://{host}:{port}/health", None, timeout)
    except (OSError, urllib.error.URLError) as e:
        return False, f"/health: {e}"
    return True, "healthy"


def api_key(env_name: str | None) -> str | None:
    """The API key from the environment variable the config names (None when none is set)."""
    return os.environ.get(env_name) or None if env_name else None
