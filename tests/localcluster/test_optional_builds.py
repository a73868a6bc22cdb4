"""tests/optional_builds.py: a test that needs an optional component (Kueue, KEDA) waits for its
background build before its own time limit starts, so a cold build longer than that limit no
longer errors the test. Checked by real pytest runs (a subprocess, pytest-timeout loaded as in
``make test``): a 1-second test whose fixture's build takes 4 s passes with the hook and times
out with the wait inside the fixture, as before."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]

CONFTEST = """
import time
import pytest
import optional_builds
{hook}

def pytest_collection_finish(session):
    optional_builds.start(session, {{"component": lambda: time.sleep(4) or "built",
                                     "unused": lambda: time.sleep(60)}})

@pytest.fixture(scope="session")
def component():
    return optional_builds.BUILDS["component"].result()
"""

TEST = """
import optional_builds
import pytest

@pytest.mark.timeout(1)
def test_uses_the_component(component):
    assert component == "built"

def test_without_it_nothing_is_waited_for():
    assert "unused" not in optional_builds.BUILDS
"""


def _run(tmp_path: Path, hook: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text(textwrap.dedent(CONFTEST.format(hook=hook)))
    (tmp_path / "test_it.py").write_text(textwrap.dedent(TEST))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--junitxml", str(tmp_path / "junit.xml"),
         "-o", "junit_logging=no", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": str(TESTS), "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize(("hook", "passes"), [
    ("from optional_builds import pytest_runtest_protocol", True),  # tests/operator/conftest.py
    ("", False),  # the wait inside the fixture, under the test's limit (before 2026-12-07)
])
def test_a_test_waits_for_its_build_before_its_time_limit(tmp_path: Path, hook: str, passes: bool) -> None:
    run = _run(tmp_path, hook)
    out = run.stdout + run.stderr
    if passes:
        assert run.returncode == 0 and "2 passed" in out, out
        report = (tmp_path / "junit.xml").read_text()
        assert 'name="optional build wait (s)" value="' in report, report
    else:
        assert run.returncode == 1 and "Timeout" in out and "1 passed, 1 error" in out, out  # errored in its setup
