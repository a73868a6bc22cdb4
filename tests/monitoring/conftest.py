"""Fixtures of the monitoring tests."""

from __future__ import annotations

import socket
import urllib.request

import pytest


@pytest.fixture(scope="session")
def exposition() -> str:
    """The operator's /metrics as main.py serves it (prometheus-client's server on REGISTRY), with
    every family given a sample the way reconcile gives it one."""
    from prometheus_client import start_http_server

    from tuneforge import metrics
    from tuneforge.finetune.status import PHASES

    tally = metrics.PhaseTally(PHASES)
    tally.set("uid-1", "Running")
    tally.set("uid-1", "Succeeded")
    metrics.RECONCILE_ERRORS.labels("ApiError").inc()
    metrics.RECONCILE_SECONDS.observe(0.02)
    metrics.TIME_TO_JOB.observe(3)
    metrics.TRAINING_SECONDS.observe(120)
    metrics.GPU_SECONDS.inc(120)
    metrics.seed_cost("USD")
    metrics.FINETUNEJOB_COST.labels("USD").inc(0.08)
    metrics.seed_serving("ml", "intents", "USD")
    metrics.MODELSERVE_GPU_SECONDS.labels("ml", "intents").inc(3600)
    metrics.MODELSERVE_COST.labels("ml", "intents", "USD").inc(2.5)
    metrics.EVAL_ACCURACY.labels("ml", "intent").set(0.93)
    metrics.TRAINING_PROGRESS.labels("ml", "intent").set(1.7e9)
    metrics.PhaseTally(("Progressing", "Healthy"), metrics.MODELSERVES_BY_PHASE).set("uid-2", "Healthy")
    metrics.GATE_EVALUATIONS.labels("ModelServe", "ml", "intents", "Failed").inc()
    metrics.ROLLBACKS.labels("ml", "intents", "GateFailed").inc()
    metrics.ROLLOUT_STARTED.labels("ml", "intents").set(1.7e9)
    metrics.ROLLOUT_DEADLINE.labels("ml", "intents").set(600)
    metrics.LEADER.set(1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server, thread = start_http_server(port, addr="127.0.0.1", registry=metrics.REGISTRY)
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        server.shutdown()
        thread.join(5)
