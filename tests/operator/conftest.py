"""Fixtures for the operator's cluster tests: CRDs applied, the stand-in trainer image, operator
processes (``python -m tuneforge``) run against the local cluster's kubeconfig, the real Kueue
with queues for a test's namespace, and the real KEDA."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import optional_builds
from kueue_helpers import KueueQueues
from optional_builds import pytest_runtest_protocol  # noqa: F401 - the wait outside a test's time limit
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


# --- Kueue -----------------------------------------------------------------------------------
# The real Kueue manager (localcluster/kueue.py) is optional: only tests that ask for the
# ``kueue`` fixture build (cold: minutes, once per machine) and start it. Its build starts in the
# background as soon as collection shows such a test, while the cluster and images come up, and a
# test waits for it before its time limit starts (tests/optional_builds.py).


def pytest_collection_finish(session: pytest.Session) -> None:
    from tuneforge_localcluster import keda as lc_keda
    from tuneforge_localcluster import kueue as lc_kueue
    from tuneforge_localcluster import settings as lc_settings

    optional_builds.start(session, {"kueue": lambda: lc_kueue.build(lc_settings.load()),
                                    "keda": lambda: lc_keda.build(lc_settings.load())})


@pytest.fixture(scope="session")
def kueue(cluster: Any) -> float:
    """Kueue's CRDs, webhooks and manager in the local cluster; the seconds its start took."""
    from tuneforge_localcluster import kueue as lc_kueue

    future = optional_builds.BUILDS.get("kueue")
    if future is not None:
        future.result()
    return lc_kueue.ensure(cluster.settings)


# --- KEDA ------------------------------------------------------------------------------------
# Optional like Kueue (localcluster/keda.py): its operator and metrics API server are built in the
# background once collection shows a test that asks for the ``keda`` fixture.


@pytest.fixture(scope="session")
def keda(cluster: Any) -> float:
    """KEDA's CRDs, operator and metrics API server (the external metrics API Available); the
    seconds its start took."""
    from tuneforge_localcluster import keda as lc_keda

    future = optional_builds.BUILDS.get("keda")
    if future is not None:
        future.result()
    return lc_keda.ensure(cluster.settings)


@pytest.fixture
def kueue_queues(cluster: Any, kueue: float, namespace: str) -> Iterator[KueueQueues]:
    """Puts the test's namespace under Kueue and creates queues in it (removed afterwards)."""
    queues = KueueQueues(cluster, namespace)
    yield queues
    queues.delete()
