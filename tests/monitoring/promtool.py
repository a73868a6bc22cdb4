"""promtool from Debian's ``prometheus`` package, pinned and cached outside the work tree
(fetched and unpacked by ``tuneforge_localcluster.prometheus``, which also runs the server)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tuneforge_localcluster import prometheus


def promtool() -> Path:
    return prometheus.binary("promtool")


def run(*args: str, input: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(promtool()), *args], input=input, cwd=cwd, capture_output=True, text=True, timeout=120)
