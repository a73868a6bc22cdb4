"""Shared fixtures: the local Kubernetes cluster (started once per session, torn down even
after failures, component logs kept under test-output/) and a fresh namespace per test."""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared_demo import load_demo
from tuneforge_localcluster import cluster as lc
from tuneforge_localcluster import settings as lc_settings
from tuneforge_localcluster.testing import Cluster, pod_security_labels, start_or_reuse

OUTPUT = Path(__file__).resolve().parents[1] / "test-output"


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The running local cluster; started (and finally stopped) here unless already up."""
    settings = lc_settings.load()
    handle, started = start_or_reuse(settings)
    try:
        yield handle
    finally:
        handle.collect_logs(OUTPUT / "cluster-logs")
        if started and os.environ.get("TUNEFORGE_KEEP_CLUSTER") != "1":
            with lc.locked(settings):
                lc.down(settings)


@pytest.fixture(scope="module", autouse=True)
def _cluster_share(request: pytest.FixtureRequest) -> Iterator[None]:
    """``make test`` runs two cluster groups at once: the slow tests with the ``exclusive`` ones in
    the foreground, the other cluster tests (kwok nodes, stand-ins) beside them. An exclusive test
    changes what the others share (the CRDs, an operator watching every namespace, the demo
    release), so its module holds this lock exclusively, and every module of the other group holds
    it shared (its module fixtures included): the two never overlap. The slow tests take no lock;
    the group beside them works in namespaces of its own. Alone (one pytest), nothing waits."""
    selected = [i for i in request.session.items if i.module is request.module and i.get_closest_marker("cluster")]
    if any(i.get_closest_marker("exclusive") for i in selected):
        mode = fcntl.LOCK_EX
    elif any(not i.get_closest_marker("slow") for i in selected):
        mode = fcntl.LOCK_SH
    else:
        yield
        return
    path = lc_settings.load().runtime / "tests-share.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, mode)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def demo_finetunejob(cluster: Cluster) -> dict[str, Any]:
    """The demo's BANKING77 FineTuneJob, trained once per session on the real node through the
    operator (~5 min on 2 idle cores); the e2e test checks it and the serving tests serve its
    adapter. The release is installed as ``make demo`` installs it, with the server and gate images
    too, so the e2e tests' shared operator (``demo_operator``) finds it unchanged and running."""
    return dict(load_demo().run(cluster, timeout=3600, serving=True))


@pytest.fixture(scope="session")
def lm_finetunejob(cluster: Cluster, demo_finetunejob: dict[str, Any]) -> dict[str, Any]:
    """An lm-head adapter, for the tests that ask a served adapter through chat completions (the
    demo trains the classifier head, asked through /classify): examples/finetunejob-banking77-lm.yaml
    (the demo's intents at 50 training rows each, 100 steps), trained once per session through the
    demo's release after the demo's own run (which staged the inputs and installed it). Its
    baselines are left out, nothing here reads them; its gate keeps a floor on accuracy."""
    demo = load_demo()
    manifest = yaml.safe_load((demo.ROOT / "examples" / "finetunejob-banking77-lm.yaml").read_text())
    manifest["spec"]["evaluation"] = {"baselines": [], "gate": {"minAccuracy": 0.8}}
    path = OUTPUT / "finetunejob-banking77-lm.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return dict(demo.run(cluster, manifest=path, timeout=3600, serving=True))


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace named after the test, deleted afterwards (without waiting). A test (or
    module) marked ``pod_security("restricted")`` gets it with that Pod Security level enforced."""
    marker = request.node.get_closest_marker("pod_security")
    labels = pod_security_labels(marker.args[0]) if marker else None
    name = cluster.new_namespace("t-" + re.sub(r"[^a-z0-9-]", "-", request.node.name.lower()), labels)
    yield name
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        events = cluster.kubectl("get", "events", "-n", name, "--sort-by=.lastTimestamp", check=False).stdout
        (OUTPUT / "events").mkdir(parents=True, exist_ok=True)
        (OUTPUT / "events" / f"{name}.txt").write_text(events)
    cluster.delete_namespace(name)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Tests that use the cluster fixture are marked so `-m "not cluster"` runs the pure ones.
    for item in items:
        if "cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)
