"""Fixtures for the local-cluster tests: the probe image built from tests/images/probe."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneforge_localcluster.testing import Cluster

PROBE_DIR = Path(__file__).resolve().parents[1] / "images" / "probe"


@pytest.fixture(scope="session")
def probe_image(cluster: Cluster) -> str:
    return cluster.image(PROBE_DIR, "probe")
