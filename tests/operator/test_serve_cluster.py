"""ModelServe against the real local cluster: the apiserver refuses every invalid manifest of
tests/operator/data/modelserve_invalid.yaml naming its field, and the operator's fast tier runs
blue/green rollouts on kwok nodes.

Fast-tier stand-ins (nothing real runs; what is exercised is the controller):
- color pods land on the kwok 8-GPU nodes (``spec.scheduling.nodeSelector``); kwok marks them
  Running and Ready, so the Deployments report ready replicas as the server's adapter probe would;
- a candidate that never becomes ready asks for more GPUs per pod than any node has;
- the gate Job's pod lands on the kwok CPU node (``TUNEFORGE_GATE_NODE_SELECTOR`` and
  ``_TOLERATIONS``) and ends, through our kwok pod-complete stage, with the measures the real gate
  writes as its termination message (``TUNEFORGE_GATE_POD_ANNOTATIONS``): accuracy 0.9, p99 40 ms.
  The operator reads them from the pod and judges them against the spec, so a gate with
  ``minAccuracy: 0.8`` passes and one with ``0.95`` fails.

Every namespace here enforces Pod Security ``restricted``: the color Deployments' pods and the
gate Job's pods are created only if the admission plugin admits them.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from operator_helpers import OperatorProcess, least_privilege_kubeconfig, refused_calls
from tuneforge_localcluster.testing import Cluster, kwok_serve_env, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.pod_security("restricted")]

INVALID = yaml.safe_load((Path(__file__).parent / "data" / "modelserve_invalid.yaml").read_text())
H100 = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
OPERATOR_ENV = {**kwok_serve_env(), "TUNEFORGE_RETRY_DELAY": "1", "TUNEFORGE_RETRY_MAX_DELAY": "5"}


def digest(n: int) -> str:
    return "sha256:" + f"{n:x}" * 64


def short(n: int) -> str:
    return digest(n).removeprefix("sha256:")[:12]


def ms_manifest(name: str, version: int, *, min_accuracy: float | None = 0.8, **spec: Any) -> dict[str, Any]:
    rollout = {"progressDeadlineSeconds": 60, "scaleDownDelaySeconds": 5}
    rollout.update(spec.pop("rollout", {}))
    if min_accuracy is not None:
        rollout["gate"] = {"minAccuracy": min_accuracy, "rows": 20, "datasetUri": "s3://gate/rows.jsonl"}
    body: dict[str, Any] = {
        "baseModel": {"uri": "/models/base"},
        "adapters": [{"name": "intents", "uri": f"/adapters/v{version}", "digest": digest(version)}],
        "resources": {"cpu": "1", "memory": "1Gi"},
        "scheduling": {"nodeSelector": H100},
        "rollout": rollout,
    }
    body.update(spec)
    return {"apiVersion": "tuneforge.dev/v1alpha1", "kind": "ModelServe", "metadata": {"name": name}, "spec": body}


def _ms(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    return cluster.get("modelserve", name, ns)


def _status(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    return dict(_ms(cluster, ns, name).get("status") or {})


def _wait(cluster: Cluster, ns: str, name: str, what: str, ok: Any, op: OperatorProcess, timeout: float = 120) -> dict[str, Any]:
    def probe() -> bool:
        op.check_alive()
        return bool(ok(_status(cluster, ns, name)))

    wait_for(f"ModelServe {name}: {what}", probe, timeout, 0.5,
             lambda: json.dumps(_status(cluster, ns, name), indent=1)[:3000] + "\n" + op.log())
    return _status(cluster, ns, name)


def _serving(color: str, n: int) -> Any:
    return lambda st: (st.get("phase") == "Healthy" and st.get("activeColor") == color
                       and (st.get("active") or {}).get("digest") == digest(n))


def _selector(cluster: Cluster, ns: str, service: str) -> str:
    return str(cluster.get("service", service, ns)["spec"]["selector"]["tuneforge.dev/color"])


def _deployments(cluster: Cluster, ns: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in cluster.list("deployments", ns, "tuneforge.dev/modelserve")}


def _reasons(cluster: Cluster, ns: str, name: str) -> list[str]:
    items = cluster.list("events", ns)
    return [e.get("reason", "") for e in sorted(items, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
            if e.get("involvedObject", {}).get("name") == name and e.get("involvedObject", {}).get("kind") == "ModelServe"]


def _first_deploy(cluster: Cluster, ns: str, name: str, op: OperatorProcess, **spec: Any) -> dict[str, Any]:
    cluster.apply(ms_manifest(name, 1, **spec), ns)
    return _wait(cluster, ns, name, "blue serves v1", _serving("blue", 1), op)


# --- the apiserver ----------------------------------------------------------------------------

@pytest.mark.parametrize("case", INVALID, ids=[c["name"] for c in INVALID])
def test_invalid_modelserve_rejected_naming_the_field(cluster: Cluster, crds: None, case: dict[str, Any]) -> None:
    manifest = {"apiVersion": "tuneforge.dev/v1alpha1", "kind": "ModelServe",
                "metadata": {"name": case.get("metadataName") or case["name"][:40]}, "spec": case["spec"]}
    res = cluster.kubectl("create", "--dry-run=server", "--validate=strict", "-n", "default", "-f", "-",
                          input=json.dumps(manifest), check=False)
    assert res.returncode != 0, f"{case['name']}: accepted"
    assert case["field"] in res.stderr, res.stderr


def test_valid_modelserve_accepted_with_defaults(cluster: Cluster, crds: None) -> None:
    out = cluster.kubectl("create", "--dry-run=server", "--validate=strict", "-n", "default", "-o", "json", "-f", "-",
                          input=json.dumps(ms_manifest("valid", 1)))
    spec = json.loads(out.stdout)["spec"]
    assert spec["rollout"]["autoPromotion"] is True and spec["rollout"]["gate"]["concurrency"] == 8
    assert spec["scheduling"]["nodeSelector"] == H100


# --- the operator -----------------------------------------------------------------------------

def test_full_promotion_sequence(cluster: Cluster, namespace: str, run_operator: Any) -> None:
    op = run_operator(**OPERATOR_ENV)
    st = _first_deploy(cluster, namespace, "intents", op)
    assert st["gate"]["outcome"] == "Passed" and st["gate"]["accuracy"] == 0.9, st
    assert _selector(cluster, namespace, "intents") == "blue"
    assert st["endpoints"]["active"] == f"http://intents.{namespace}.svc:8000/v1"
    blue_uid = _deployments(cluster, namespace)["intents-blue"]["metadata"]["uid"]

    cluster.apply(ms_manifest("intents", 2), namespace)
    seen: set[tuple[str | None, str | None]] = set()

    def switched(s: dict[str, Any]) -> bool:
        seen.add((s.get("phase"), (s.get("preview") or {}).get("color")))
        if s.get("previewColor") == "green":
            # While the candidate is gated, traffic stays on blue.
            assert _selector(cluster, namespace, "intents") == "blue"
        return bool(_serving("green", 2)(s))

    st = _wait(cluster, namespace, "intents", "green serves v2", switched, op)
    assert ("Progressing", "green") in seen, seen
    assert _selector(cluster, namespace, "intents") == "green" and _selector(cluster, namespace, "intents-preview") == "green"
    assert st["rollout"]["previousColor"] == "blue" and st["gate"]["shortDigest"] == short(2)
    wait_for("blue scaled down after 5 s",
             lambda: _deployments(cluster, namespace)["intents-blue"]["spec"]["replicas"] == 0, 60, 0.5, op.log)
    deps = _deployments(cluster, namespace)
    assert sorted(deps) == ["intents-blue", "intents-green"] and deps["intents-blue"]["metadata"]["uid"] == blue_uid
    assert deps["intents-green"]["metadata"]["annotations"]["tuneforge.dev/version"] == digest(2)
    # A gate Job belongs to one rollout attempt: v1's went when v2's rollout began; v2's (the last) stays.
    wait_for("only the last attempt's gate Job", lambda: sorted(j["metadata"]["name"] for j in cluster.list("jobs", namespace))
             == [f"intents-gate-{short(2)}-{st['gate']['attempt']}"], 30, 1)
    assert {"PodDisruptionBudget"} <= {o["kind"] for o in cluster.list("pdb", namespace)}
    st = _status(cluster, namespace, "intents")
    hashes = [h["version"]["templateHash"] for h in st["history"]]
    assert st["active"]["templateHash"] == hashes[-1] and len(set(hashes)) == 2
    wait_for("version ConfigMaps (named by template hash)",
             lambda: {c["metadata"]["name"] for c in cluster.list("configmaps", namespace, "tuneforge.dev/version")}
             == {f"intents-{h}" for h in hashes}, 30, 1)
    assert [h["outcome"] for h in st["history"]] == ["Promoted", "Promoted"]
    assert {c["type"]: c["status"] for c in st["conditions"]}["Available"] == "True"
    assert all(c["observedGeneration"] == 2 for c in st["conditions"])
    row = cluster.kubectl("get", "ms", "intents", "-n", namespace, "--no-headers").stdout.split()
    assert row[1:4] == ["Healthy", "green", short(2)], row
    reasons = _reasons(cluster, namespace, "intents")
    for step in ("RolloutStarted", "GateStarted", "GatePassed", "Promoted", "ScaledDown"):
        assert step in reasons, reasons


def test_candidate_never_ready_rolls_back_stable_untouched(cluster: Cluster, namespace: str, run_operator: Any) -> None:
    op = run_operator(**OPERATOR_ENV)
    _first_deploy(cluster, namespace, "stuck", op)
    blue = _deployments(cluster, namespace)["stuck-blue"]
    # 16 GPUs per pod: no node has them, the candidate's pod never schedules, so never gets ready.
    cluster.apply(ms_manifest("stuck", 2, gpus=16, rollout={"progressDeadlineSeconds": 30}), namespace)
    st = _wait(cluster, namespace, "stuck", "rolled back", lambda s: (s.get("rejected") or {}).get("digest") == digest(2), op, 120)
    assert st["rejected"]["reason"] == "ProgressDeadlineExceeded" and st["phase"] == "Degraded", st
    assert st["activeColor"] == "blue" and st["active"]["digest"] == digest(1)
    assert _selector(cluster, namespace, "stuck") == "blue"
    wait_for("green scaled down", lambda: _deployments(cluster, namespace)["stuck-green"]["spec"]["replicas"] == 0, 30, 0.5)
    now = _deployments(cluster, namespace)["stuck-blue"]
    assert (now["metadata"]["uid"], now["metadata"]["generation"]) == (blue["metadata"]["uid"], blue["metadata"]["generation"])
    assert now["status"].get("readyReplicas") == 1
    assert "ProgressDeadlineExceeded" in _reasons(cluster, namespace, "stuck")


def test_failing_gate_rolls_back(cluster: Cluster, namespace: str, run_operator: Any) -> None:
    op = run_operator(**OPERATOR_ENV)
    _first_deploy(cluster, namespace, "strict", op)
    cluster.apply(ms_manifest("strict", 2, min_accuracy=0.95), namespace)  # the gate measures 0.9
    st = _wait(cluster, namespace, "strict", "gate failed", lambda s: (s.get("rejected") or {}).get("digest") == digest(2), op)
    assert st["rejected"]["reason"] == "GateFailed" and "accuracy 0.900 < 0.95" in st["rejected"]["message"], st
    assert st["gate"]["outcome"] == "Failed" and st["activeColor"] == "blue" and st["active"]["digest"] == digest(1)
    assert _selector(cluster, namespace, "strict") == "blue"
    assert {c["type"]: c for c in st["conditions"]}["GatePassed"]["status"] == "False"
    time.sleep(3)  # a rejected version is not tried again by itself
    # The failed attempt's Job stays (the last attempt's, for its logs); no other one is created.
    assert [j["metadata"]["name"] for j in cluster.list("jobs", namespace)] == [f"strict-gate-{short(2)}-{st['gate']['attempt']}"]
    assert _status(cluster, namespace, "strict")["activeColor"] == "blue"


def test_manual_promotion_waits_then_promotes_on_the_annotation(cluster: Cluster, namespace: str, run_operator: Any) -> None:
    op = run_operator(**OPERATOR_ENV)
    _first_deploy(cluster, namespace, "manual", op, rollout={"autoPromotion": False})  # a first deploy never waits
    cluster.apply(ms_manifest("manual", 2, rollout={"autoPromotion": False}), namespace)
    st = _wait(cluster, namespace, "manual", "paused at the gate", lambda s: s.get("phase") == "Paused", op)
    assert st["reason"] == "WaitingForPromotion" and st["gate"]["outcome"] == "Passed" and st["previewColor"] == "green"
    time.sleep(3)
    assert _status(cluster, namespace, "manual")["phase"] == "Paused" and _selector(cluster, namespace, "manual") == "blue"
    assert _selector(cluster, namespace, "manual-preview") == "green"
    cluster.kubectl("annotate", "modelserve", "manual", "-n", namespace, f"tuneforge.dev/promote={short(2)}", "--overwrite")
    _wait(cluster, namespace, "manual", "green serves v2", _serving("green", 2), op)
    assert _selector(cluster, namespace, "manual") == "green"


def test_manual_rollback_while_warm_is_a_selector_switch(cluster: Cluster, namespace: str, run_operator: Any) -> None:
    op = run_operator(**OPERATOR_ENV)
    _first_deploy(cluster, namespace, "back", op, rollout={"scaleDownDelaySeconds": 600})
    cluster.apply(ms_manifest("back", 2, rollout={"scaleDownDelaySeconds": 600}), namespace)
    _wait(cluster, namespace, "back", "green serves v2", _serving("green", 2), op)
    blue = _deployments(cluster, namespace)["back-blue"]
    assert blue["spec"]["replicas"] == 1  # warm
    cluster.apply(ms_manifest("back", 1, rollout={"scaleDownDelaySeconds": 600}), namespace)  # the spec points back
    st = _wait(cluster, namespace, "back", "blue serves v1 again", _serving("blue", 1), op, 60)
    assert st["history"][-1]["outcome"] == "RolledBack" and _selector(cluster, namespace, "back") == "blue"
    now = _deployments(cluster, namespace)["back-blue"]
    assert (now["metadata"]["uid"], now["metadata"]["generation"]) == (blue["metadata"]["uid"], blue["metadata"]["generation"])
    # The abort action on the active version while the previous color is warm: back to green.
    cluster.kubectl("annotate", "modelserve", "back", "-n", namespace, f"tuneforge.dev/abort={short(1)}", "--overwrite")
    # The spec still asks for the aborted v1: Degraded (green serves v2) until the spec moves on.
    st = _wait(cluster, namespace, "back", "green serves v2 after abort",
               lambda s: s.get("activeColor") == "green" and (s.get("active") or {}).get("digest") == digest(2), op, 60)
    assert st["rejected"]["digest"] == digest(1) and st["phase"] == "Degraded", st
    assert _selector(cluster, namespace, "back") == "green"


def test_operator_sigkill_mid_rollout_converges(cluster: Cluster, namespace: str, run_operator: Any) -> None:
    first = run_operator(**OPERATOR_ENV)
    _first_deploy(cluster, namespace, "crash", first)
    cluster.apply(ms_manifest("crash", 2), namespace)
    wait_for("green deployed", lambda: "crash-green" in _deployments(cluster, namespace), 60, 0.2, first.log)
    first.kill(signal.SIGKILL)
    assert _selector(cluster, namespace, "crash") == "blue"
    second = run_operator(**OPERATOR_ENV)
    st = _wait(cluster, namespace, "crash", "green serves v2", _serving("green", 2), second)
    assert sorted(_deployments(cluster, namespace)) == ["crash-blue", "crash-green"]
    assert _selector(cluster, namespace, "crash") == "green"
    assert [h["shortDigest"] for h in st["history"]] == [short(1), short(2)], st["history"]
    assert [h["outcome"] for h in st["history"]] == ["Promoted", "Promoted"]
    gates = sorted(j["metadata"]["name"] for j in cluster.list("jobs", namespace))
    assert gates == [f"crash-gate-{short(2)}-{st['gate']['attempt']}"], gates  # v1's attempt's Job went with it
    # Killed again right after a switch, before the old color's scale-down: nothing switches back.
    second.kill(signal.SIGKILL)
    third = run_operator(**OPERATOR_ENV)
    wait_for("blue scaled down", lambda: _deployments(cluster, namespace)["crash-blue"]["spec"]["replicas"] == 0, 60, 0.5, third.log)
    assert _status(cluster, namespace, "crash")["activeColor"] == "green" and _selector(cluster, namespace, "crash") == "green"


def test_rollout_under_least_privilege_rbac(cluster: Cluster, namespace: str, run_operator: Any, tmp_path: Path) -> None:
    """A first deploy and a blue/green rollout with exactly the ClusterRole of
    operator/deploy/operator.yaml: every child (Deployments, Services, PDB, HPA, ConfigMaps, the
    gate Job and its pod's termination message, Events, the status) within the role."""
    with least_privilege_kubeconfig(cluster, namespace, tmp_path) as kubeconfig:
        op = run_operator(**OPERATOR_ENV, KUBECONFIG_OVERRIDE=str(kubeconfig))
        _first_deploy(cluster, namespace, "least-priv", op, hpa={"maxReplicas": 2})
        cluster.apply(ms_manifest("least-priv", 2, hpa={"maxReplicas": 2}), namespace)
        _wait(cluster, namespace, "least-priv", "green serves v2", _serving("green", 2), op)
        hpa = cluster.get("hpa", "least-priv", namespace)
        assert hpa["spec"]["scaleTargetRef"]["name"] == "least-priv-green", hpa["spec"]
        assert refused_calls(op.log()) == []
