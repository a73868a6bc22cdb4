"""The e2e tests' one operator: the demo's release (the chart, 2 replicas in the cluster, watching
the demo's namespace), installed by the demo FineTuneJob's run with every image the e2e tests
need and kept running through them, instead of a values change and a scale-down to zero around
each test (each cost ~30-60 s of operator pods stopping and starting on the 2-core node). It is
scaled to zero after the last e2e test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from shared_demo import load_demo
from tuneforge_localcluster.testing import Cluster


@pytest.fixture(scope="package")
def _demo_release(cluster: Cluster) -> Iterator[dict[str, str]]:
    """The images of the demo's release (as ``demo_finetunejob``'s run installs it); the
    operator is scaled to zero when the e2e package is done."""
    demo = load_demo()
    yield {"trainer_image": cluster.image(demo.ROOT / "trainer-image", "trainer"), **demo.serving_images(cluster)}
    operator = demo.InClusterOperator(cluster)
    operator.terminate()
    operator.wait(30)


@pytest.fixture
def demo_operator(cluster: Cluster, _demo_release: dict[str, str]) -> Any:
    """The running in-cluster operator (``hack/demo.py``'s ``InClusterOperator``) with the
    trainer, server and gate images. ``start_operator`` with unchanged values is a ``helm
    upgrade`` that changes nothing and returns once both replicas are Ready: seconds, and a test
    after one that left the operator stopped or broken still gets a running one."""
    return load_demo().start_operator(cluster, **_demo_release)
