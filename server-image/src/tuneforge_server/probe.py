"""Probes: readiness means "this pod serves these adapters", liveness means "the server answers".

Readiness asks the local server's ``/v1/models`` and passes only when every configured served
name is listed, so a Service never sends a request to a pod that would answer with a model-not-
found error. The pod runs it as an exec probe, ``python -S -m tuneforge_server.probe``: this module
imports the standard library only and ``-S`` skips site-packages, so a try costs a bare
interpreter start (no pydantic, no YAML) and stays inside its timeout on a saturated CPU. An
httpGet probe cannot do this job: it cannot send the API key (its headers are literals, not
Secrets) and a 200 from ``/v1/models`` does not say which adapters are loaded.

What to check comes from the launcher: at start it writes the port, the served names (they
depend on the resolved device and mode) and the name of the API key's variable to
``$TMPDIR/tuneforge-ready.json`` (``write``); the probe reads that file. No file: not started.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

__all__ = ["READY_FILE", "ProbeResult", "check_health", "check_ready", "listed_models", "main", "ready_file", "write"]

ProbeResult = tuple[bool, str]
READY_FILE = "tuneforge-ready.json"


def ready_file(tmp: str | Path | None = None) -> Path:
    """Where the launcher leaves what readiness checks: in ``$TMPDIR`` (a per-pod emptyDir; the
    cache may be a volume that other pods share)."""
    return Path(tmp if tmp is not None else os.environ.get("TMPDIR") or "/tmp") / READY_FILE


def write(port: int, names: Sequence[str], api_key_env: str | None, tmp: str | Path | None = None) -> Path:
    """Record what readiness checks (the key's variable name, never the key)."""
    path = ready_file(tmp)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_suffix(".part")
    part.write_text(json.dumps({"port": port, "names": list(names), "apiKeyEnv": api_key_env}), encoding="utf-8")
    part.replace(path)
    return path


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


def main(argv: Sequence[str] | None = None) -> int:
    """The readiness probe: 0 when every served name is listed, 1 otherwise (one line on stdout)."""
    p = argparse.ArgumentParser(prog="python -S -m tuneforge_server.probe", description="Tuneforge server readiness probe")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds for the HTTP request")
    args = p.parse_args(argv)
    try:
        want = json.loads(ready_file().read_text(encoding="utf-8"))
    except FileNotFoundError:
        print(f"not started: the launcher has not written {ready_file()} yet")
        return 1
    except (OSError, ValueError) as e:
        print(f"{ready_file()}: {e}")
        return 1
    ok, msg = check_ready(int(want["port"]), list(want["names"]), api_key(want.get("apiKeyEnv")), args.timeout)
    print(msg)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
