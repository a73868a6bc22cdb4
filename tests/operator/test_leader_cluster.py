"""Two operator processes against the real apiserver with leader election on (the chart's default
durations: lease 15 s, renew deadline 10 s, retry 2 s), under the operator's least-privilege RBAC
(the ClusterRole and the Lease Role of operator/deploy/operator.yaml): exactly one leads and only it
acts; a leader stopped cleanly (SIGTERM) hands the Lease over at once; a leader frozen with SIGSTOP
past its lease is replaced (both takeovers are measured); thawed, it exits without a single write. Pod-based takeover (deleting the leader pod of the chart's
Deployment) is the chart's test."""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.request
from typing import Any

import pytest
import yaml

from operator_helpers import OUTPUT, ROOT, OperatorProcess, least_privilege_kubeconfig, summary_annotation
from test_operator_cluster import S3_SECRET, _wait_phase, kwok_ftj
from tuneforge_localcluster.testing import Cluster, wait_for

pytestmark = pytest.mark.cluster

EXIT_LOST = 3  # tuneforge.leader.EXIT_LOST


def _leader_gauge(op: OperatorProcess) -> float | None:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{op.metrics_port}/metrics", timeout=2).read().decode()
    except OSError:
        return None
    found = re.search(r"^tuneforge_leader (\S+)$", text, re.M)
    return float(found.group(1)) if found else None


def _identity(op: OperatorProcess) -> str:
    found = re.search(r'Leader election on: Lease \S+, identity ([^\s"]+)', op.log_path.read_text(errors="replace"))
    assert found, op.log()
    return found.group(1)


def _requests(log: str) -> list[str]:
    """The API requests an operator's lightkube client sent (httpx2 logs each one with --verbose)."""
    return re.findall(r"HTTP Request: (\w+ \S+)", log)


def _written_state(cluster: Cluster, namespace: str) -> dict[str, str]:
    """resourceVersion of everything the operator writes in the namespace (FineTuneJobs and
    their status, Jobs, ConfigMaps, Services, its Events, the Lease): any write changes one."""
    items = cluster.list("finetunejobs,jobs,configmaps,services,leases,events", namespace)
    return {f'{o["kind"]}/{o["metadata"]["name"]}': o["metadata"]["resourceVersion"] for o in items
            if o["kind"] != "Event" or o.get("reportingComponent") == "tuneforge-operator"}


def test_one_leader_acts_frozen_leader_replaced_and_fenced(cluster: Cluster, namespace: str, crds: None,
                                                           standin_image: str, tmp_path: Any) -> None:
    docs = list(yaml.safe_load_all((ROOT / "operator" / "deploy" / "operator.yaml").read_text()))
    role, binding = (next(d for d in docs if d["kind"] == k) for k in ("Role", "RoleBinding"))
    role["metadata"]["namespace"] = binding["metadata"]["namespace"] = namespace
    binding["subjects"] = [{"kind": "ServiceAccount", "name": "operator", "namespace": namespace}]
    started: list[OperatorProcess] = []
    with least_privilege_kubeconfig(cluster, namespace, tmp_path) as kubeconfig:
        try:
            cluster.apply([role, binding])
            env = {"TUNEFORGE_TRAINER_IMAGE": standin_image, "TUNEFORGE_POD_ANNOTATIONS": summary_annotation(),
                   "TUNEFORGE_LEADER_ELECT": "true", "TUNEFORGE_LEADER_ELECTION_NAMESPACE": namespace,
                   "KUBECONFIG_OVERRIDE": str(kubeconfig)}

            def start(name: str) -> OperatorProcess:
                op = OperatorProcess(cluster, namespace, env, f"leader-{name}", args=("--verbose",)).start()
                started.append(op)
                return op

            a = start("a")
            wait_for("a leads", lambda: _leader_gauge(a) == 1.0, 60, 0.2, a.log)
            b = start("b")
            wait_for("b follows", lambda: _leader_gauge(b) == 0.0, 60, 0.2, b.log)
            # The follower is alive and Ready (its own /healthz) and idle: Kopf never started.
            def health() -> dict[str, Any]:
                return dict(json.loads(urllib.request.urlopen(f"http://127.0.0.1:{b.liveness_port}/healthz",
                                                              timeout=5).read()))
            wait_for("b names the leader", lambda: health() == {"leader": False, "holder": _identity(a)}, 30, 0.2,
                     lambda: f"{health()}\n{b.log()}")
            lease = cluster.get("lease", "tuneforge-operator", namespace)["spec"]
            assert lease["holderIdentity"] == _identity(a) and lease["leaseDurationSeconds"] == 15

            cluster.apply(S3_SECRET, namespace)
            cluster.apply(kwok_ftj("before"), namespace)
            _wait_phase(cluster, namespace, "before", ("Succeeded",), 180, a)
            follower_requests = _requests(b.log_path.read_text(errors="replace"))
            assert follower_requests and all("/leases/tuneforge-operator" in r for r in follower_requests), \
                follower_requests
            assert "Tuneforge operator started" not in b.log_path.read_text(errors="replace")

            # A clean stop (SIGTERM: a rolling update, a drained node) hands the Lease over at once.
            assert a.proc is not None and b.proc is not None
            a.proc.send_signal(signal.SIGTERM)
            stopped = time.monotonic()
            assert a.proc.wait(30) == 0, a.log()
            wait_for("b takes the released Lease", lambda: _leader_gauge(b) == 1.0, 30, 0.1, b.log)
            handover = time.monotonic() - stopped
            assert "Leader Lease released" in a.log()
            c = start("c")
            wait_for("c follows", lambda: _leader_gauge(c) == 0.0, 60, 0.2, c.log)
            assert c.proc is not None

            # Freeze the leader (as a stalled node or a stopped container would be).
            b.proc.send_signal(signal.SIGSTOP)
            frozen = time.monotonic()
            cluster.apply(kwok_ftj("during"), namespace)
            wait_for("c takes over", lambda: _leader_gauge(c) == 1.0, 40, 0.1, c.log)
            takeover = time.monotonic() - frozen
            wait_for("c creates the new FineTuneJob's first child", lambda: cluster.list("jobs", namespace,
                     "tuneforge.dev/finetunejob=during"), 60, 0.2, c.log)
            first_action = time.monotonic() - frozen
            lease = cluster.get("lease", "tuneforge-operator", namespace)["spec"]
            assert lease["holderIdentity"] == _identity(c) and lease["leaseTransitions"] == 2, lease
            _wait_phase(cluster, namespace, "during", ("Succeeded",), 180, c)
            jobs = sorted(j["metadata"]["name"] for j in cluster.list("jobs", namespace))
            assert jobs == ["before-train-1", "before-validate-1", "during-train-1", "during-validate-1"]

            # Stop c too, so nothing else writes; then thaw b: it must exit on its own clock
            # before sending anything — not even a Lease renewal.
            c.proc.send_signal(signal.SIGKILL)
            c.proc.wait(15)
            time.sleep(2)
            before = _written_state(cluster, namespace)
            b_log_frozen = b.log_path.read_text(errors="replace")
            b.proc.send_signal(signal.SIGCONT)
            thawed = time.monotonic()
            code = b.proc.wait(20)
            exit_after = time.monotonic() - thawed
            time.sleep(2)
            after = _written_state(cluster, namespace)
            assert code == EXIT_LOST, b.log()
            tail = b.log_path.read_text(errors="replace")[len(b_log_frozen):]
            assert "not renewed in time" in tail and _requests(tail) == [], tail
            assert after == before, {k: (before.get(k), after.get(k)) for k in set(before) | set(after)
                                     if before.get(k) != after.get(k)}
            assert cluster.get("lease", "tuneforge-operator", namespace)["spec"]["holderIdentity"] == _identity(c)
            for op in (a, b, c):
                assert "Forbidden" not in op.log_path.read_text(errors="replace")
            result = {"takeover_after_freeze_s": round(takeover, 1),
                      "first_child_after_freeze_s": round(first_action, 1),
                      "handover_after_sigterm_s": round(handover, 1), "thawed_leader_exit_s": round(exit_after, 2),
                      "lease_duration_s": 15, "renew_deadline_s": 10, "retry_period_s": 2}
            OUTPUT.mkdir(parents=True, exist_ok=True)
            (OUTPUT / "leader-takeover.json").write_text(json.dumps(result, indent=1))
            print("leader election:", result)
            assert takeover <= 20 and handover <= 5, result
        finally:
            for op in started:
                if op.proc is not None and op.proc.poll() is None:
                    op.proc.send_signal(signal.SIGCONT)
                op.kill(signal.SIGKILL)
            cluster.kubectl("delete", "-n", namespace, "rolebinding,role", "--all", check=False)
