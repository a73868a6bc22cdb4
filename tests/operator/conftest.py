"""Fixtures for the operator's cluster tests: CRDs applied, the stand-in trainer image, operator
processes (``python -m tuneforge``) run against the local cluster's kubeconfig, and the real
Kueue with queues for a test's namespace."""

from __future__ import annotations

import concurrent.futures
import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kueue_helpers import KueueQueues
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
# background as soon as collection shows such a test, while the cluster and images come up.

_kueue_build: dict[str, Any] = {}


def pytest_collection_finish(session: pytest.Session) -> None:
    if not any("kueue" in getattr(item, "fixturenames", ()) for item in session.items):
        return
    from tuneforge_localcluster import kueue as lc_kueue
    from tuneforge_localcluster import settings as lc_settings

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="kueue-build")
    _kueue_build["future"] = pool.submit(lc_kueue.build, lc_settings.load())
    pool.shutdown(wait=False)


@pytest.fixture(scope="session")
def kueue(cluster: Any) -> float:
    """Kueue's CRDs, webhooks and manager in the local cluster; the seconds its start took."""
    from tuneforge_localcluster import kueue as lc_kueue

    future = _kueue_build.get("future")
    if future is not None:
        future.result()
    return lc_kueue.ensure(cluster.settings)


@pytest.fixture
def kueue_queues(cluster: Any, kueue: float, namespace: str) -> Iterator[KueueQueues]:
    """Puts the test's namespace under Kueue and creates queues in it (removed afterwards)."""
    queues = KueueQueues(cluster, namespace)
    yield queues
    queues.delete()
