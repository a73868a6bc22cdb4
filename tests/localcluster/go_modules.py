"""The source of an optional component's Go module (Kueue's, KEDA's), for the tests that read
upstream's manifests from it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tuneforge_localcluster import binaries


def go_module_source(module: str) -> Path:
    """The extracted source of ``module@version`` (downloaded into the Go module cache); a test
    that needs it fails, naming the module, where there is no Go toolchain or proxy."""
    try:
        return binaries.module_dir(module)
    except (OSError, subprocess.CalledProcessError) as err:
        pytest.fail(f"the Go module {module} is not available: {err}")
