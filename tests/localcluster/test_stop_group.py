"""``testing.stop_group``: stopping a launcher stops what it started. The shape of the leak it
fixes: a leader that exits on SIGTERM and a child of it that outlives it (vLLM's engine core under
the server launcher, reparented to init); ``Popen.terminate`` alone leaves the child running."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tuneforge_localcluster.testing import stop_group

LEADER = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                          "print('ready', flush=True); time.sleep(300)"], stdout=sys.stdout)
print(child.pid, flush=True)
time.sleep(300)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie is gone; only its exit status waits to be read


def _start() -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen([sys.executable, "-c", LEADER], stdout=subprocess.PIPE, start_new_session=True)
    assert proc.stdout is not None
    child = int(proc.stdout.readline())
    assert proc.stdout.readline().strip() == b"ready"  # its SIGTERM handler is set
    return proc, child


@pytest.mark.parametrize(("stop", "child_survives"), [
    (lambda proc: stop_group(proc, grace=10), False),
    (lambda proc: (proc.terminate(), proc.wait(10)), True),  # what the fixtures did before
])
def test_stopping_the_leader_stops_the_child_it_left(stop: object, child_survives: bool) -> None:
    proc, child = _start()
    try:
        stop(proc)  # type: ignore[operator]
        assert proc.poll() is not None
        deadline = time.monotonic() + 5
        while _alive(child) and not child_survives and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _alive(child) == child_survives
    finally:
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass


def test_a_group_already_gone_is_not_an_error() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    proc.wait(10)
    stop_group(proc, grace=1)
