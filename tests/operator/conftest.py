"""Fixtures for the operator's cluster tests: CRDs applied, the stand-in trainer image, and
operator processes (``python -m tuneforge``) run against the local cluster's kubeconfig."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from operator_helpers import ROOT, STANDIN_DIR, OperatorProcess


@pytest.fixture(scope="session")
def crds(cluster: Any) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/finetunejobs.tuneforge.dev", "crd/modelserves.tuneforge.dev")


@pytest.fixture(scope="session")
def standin_image(cluster: Any) -> str:
    return str(cluster.image(STANDIN_DIR, "trainer-standin"))


@pytest.fixture
def run_operator(cluster: Any, namespace: str, crds: None, request: pytest.FixtureRequest) -> Iterator[Callable[..., OperatorProcess]]:
    started: list[OperatorProcess] = []

    def start(**env: str) -> OperatorProcess:
        op = OperatorProcess(cluster, namespace, env, f"{request.node.name}-{len(started)}").start()
        started.append(op)
        return op

    yield start
    for op in started:
        op.kill(signal.SIGTERM)


@pytest.fixture(scope="session")
def operator_image(cluster: Any) -> str:
    return str(cluster.image(ROOT / "operator", "operator"))
