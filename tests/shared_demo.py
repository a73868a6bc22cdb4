"""hack/demo.py as a module (it is a script, not a package), for the tests that share its run."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def load_hack(name: str, module: str) -> Any:
    """``hack/<name>`` (a script, not a package) imported as ``module``."""
    spec = importlib.util.spec_from_file_location(module, ROOT / "hack" / name)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load_demo() -> Any:
    return load_hack("demo.py", "tuneforge_demo")
