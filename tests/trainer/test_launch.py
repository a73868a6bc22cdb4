"""The torchrun launcher's exit code when the pod is stopped (DT-4): 128 + signal, not 1."""

from __future__ import annotations

import signal

import pytest

from tuneforge_trainer import launch


def test_a_stopped_torchrun_exits_143(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.distributed.elastic.multiprocessing.api import SignalException

    def stopped(argv: list[str]) -> None:
        assert argv == ["--nproc-per-node=2", "-m", "tuneforge_trainer"]
        raise SignalException("Process 1 got signal: 15", sigval=signal.SIGTERM)

    monkeypatch.setattr("torch.distributed.run.main", stopped)
    assert launch.main(["--nproc-per-node=2", "-m", "tuneforge_trainer"]) == 143


def test_a_finished_torchrun_exits_0(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("torch.distributed.run.main", lambda argv: None)
    assert launch.main([]) == 0
    assert launch.exit_code(ValueError("x")) is None
