"""promtool from Debian's ``prometheus`` package, pinned and cached outside the work tree.

The package is fetched with ``apt-get download`` and unpacked with ``dpkg-deb -x`` into
``$TUNEFORGE_CACHE/pkgs/prometheus-<version>/`` rather than installed: installing it would
enable and start a Prometheus service on the host, and the tests need only the static binaries
(``promtool``, and ``prometheus`` for a server the tests start themselves).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

# bookworm's prometheus (2.42); a pin change unpacks a new folder beside the old one.
VERSION = "2.42.0+ds-5+deb12u1"


def cache_root() -> Path:
    return Path(os.environ.get("TUNEFORGE_CACHE") or Path.home() / ".cache" / "tuneforge")


def prometheus_dir() -> Path:
    """The unpacked package (``usr/bin/promtool``, ``usr/bin/prometheus``), fetched on first use."""
    target = cache_root() / "pkgs" / f"prometheus-{VERSION}"
    if (target / ".complete").exists():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        def download() -> subprocess.CompletedProcess[str]:
            return subprocess.run(["apt-get", "download", f"prometheus={VERSION}"], cwd=tmp,
                                  capture_output=True, text=True)
        res = download()
        if res.returncode != 0:  # no package lists yet on a fresh machine
            subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True, text=True)
            res = download()
        if res.returncode != 0:
            raise RuntimeError(f"apt-get download prometheus={VERSION} failed: {res.stderr.strip()}")
        deb = next(Path(tmp).glob("prometheus_*.deb"))
        unpack = Path(tmp) / "x"
        subprocess.run(["dpkg-deb", "-x", str(deb), str(unpack)], check=True)
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(unpack), str(target))
    (target / ".complete").touch()
    return target


def promtool() -> Path:
    return prometheus_dir() / "usr" / "bin" / "promtool"


def run(*args: str, input: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(promtool()), *args], input=input, cwd=cwd, capture_output=True, text=True, timeout=120)
