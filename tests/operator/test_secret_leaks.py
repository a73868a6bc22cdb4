"""No planted secret leaks (issue 18, deliverable 7): known values for the Hub token, both S3 keys
and the ModelServe API key are put in Secrets; after FineTuneJobs (one Succeeded, one failed in
training, one failed on S3) and ModelServes (a blue/green rollout, a server and a gate that fail on
S3), none of them appears in any object of the namespace but the Secrets themselves — status,
Events, ConfigMaps, Job/Pod/Deployment specs (secret env is a ``secretKeyRef``, never a literal),
termination messages — nor in any container's log (trainer, server, gate), nor in the operator's.

Two operator runs in one namespace that enforces Pod Security ``restricted``:

1. Stand-ins (the pod specs and the operator's own handling are what matter): the stand-in trainer
   on the real node (validation, and a training run that fails), training on a kwok GPU node, a
   rollout v1 -> v2 on kwok with the stand-in gate.
2. The real images on the real node where their logs and error messages matter, each made to fail
   on S3 with the planted keys in seconds (no model is loaded): the trainer's validation, the
   server's launcher (its fetch), the gate (its rows). Their failure messages travel into the
   objects' status, so an S3 error that echoed a key would show there.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest

from operator_helpers import OUTPUT, ROOT, OperatorProcess, ftj_manifest, pvc_manifest, summary_annotation
from tuneforge.endpoint_secrets import ANNOTATION_ALLOWED_ENDPOINTS
from tuneforge_localcluster.testing import Cluster, kwok_serve_env, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.pod_security("restricted")]

S3_HOST = "s3.tuneforge-system.svc.cluster.local"
S3 = {"endpoint": f"http://{S3_HOST}:9000",
      "accessKeyIdSecretRef": {"name": "s3", "key": "id"}, "secretAccessKeySecretRef": {"name": "s3", "key": "secret"}}
HUB = {"tokenSecretRef": {"name": "hub", "key": "token"}}
API_KEY = {"secretRef": {"name": "api", "key": "key"}}
KWOK_GPU = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
REAL_NODE = {"tuneforge.dev/node-kind": "real"}
# S3's error codes for keys it does not accept (AWS's, and the local cluster's versitygw's).
S3_REFUSALS = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "XAdminUserNotFound")
# The variables the builders fill from Secrets (both rooms): never a literal value.
SECRET_ENV = {"HF_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "TUNEFORGE_API_KEY", "OPENAI_API_KEY"}


def _planted() -> dict[str, str]:
    tag = uuid.uuid4().hex[:12]
    return {"hub token": f"hf_TfLeakHub{tag}", "S3 access key id": f"TFLEAKKEYID{tag.upper()}",
            "S3 secret key": f"tfLeak/S3+secret{tag}", "API key": f"tfleak-api-key-{tag}"}


def _secrets(planted: dict[str, str]) -> list[dict[str, Any]]:
    def secret(name: str, data: dict[str, str], annotations: dict[str, str] | None = None) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "annotations": annotations or {}},
                "stringData": data}
    return [secret("hub", {"token": planted["hub token"]}),
            secret("s3", {"id": planted["S3 access key id"], "secret": planted["S3 secret key"]},
                   {ANNOTATION_ALLOWED_ENDPOINTS: S3_HOST}),
            secret("api", {"key": planted["API key"]})]


def _ms(name: str, n: int, node: dict[str, str], gate_rows: str | None, **spec: Any) -> dict[str, Any]:
    digest = "sha256:" + f"{n:x}" * 64
    # On the real node the launcher must start and fail its fetch (more than once) within the deadline,
    # and this test runs beside the e2e tests, whose colours and training can hold all of the real
    # node's CPU requests for minutes: at 90 s the pod once stayed unscheduled (Insufficient cpu) until
    # the rollback, and no server log was read.
    rollout: dict[str, Any] = {"progressDeadlineSeconds": 300 if node == REAL_NODE else 30, "scaleDownDelaySeconds": 5}
    if gate_rows:
        rollout["gate"] = {"minAccuracy": 0.8, "rows": 20, "datasetUri": gate_rows}
    body = {"baseModel": {"uri": "s3://tuneforge-demo/models/smollm2-135m-instruct"},
            "adapters": [{"name": "intents", "uri": f"s3://tuneforge-demo/leak/adapter-v{n}", "digest": digest}],
            # A GPU on the kwok GPU nodes (only GPU servers tolerate their taint); a CPU server on the real node.
            "gpus": 0 if node == REAL_NODE else 1, "resources": {"cpu": "100m", "memory": "2Gi"}, "scheduling": {"nodeSelector": node},
            "apiKey": API_KEY, "s3": S3, "rollout": rollout, **spec}
    return {"apiVersion": "tuneforge.dev/v1alpha1", "kind": "ModelServe", "metadata": {"name": name}, "spec": body}


def _status(cluster: Cluster, kind: str, ns: str, name: str) -> dict[str, Any]:
    return dict(cluster.get(kind, name, ns).get("status") or {})


def _wait(cluster: Cluster, kind: str, ns: str, name: str, what: str, ok: Any, op: OperatorProcess,
          timeout: float = 240, logs: dict[str, str] | None = None) -> dict[str, Any]:
    """Wait for ``ok(status)``; with ``logs``, keep every real container's logs meanwhile (a
    rolled-back color's pods are gone by the time the rollback shows)."""
    def probe() -> bool:
        op.check_alive()
        if logs is not None:
            _keep(logs, _logs(cluster, ns))
        return bool(ok(_status(cluster, kind, ns, name)))
    wait_for(f"{kind} {name}: {what}", probe, timeout, 1,
             lambda: json.dumps(_status(cluster, kind, ns, name), indent=1)[:3000] + "\n" + op.log())
    return _status(cluster, kind, ns, name)


def _finished(st: dict[str, Any]) -> bool:
    return st.get("phase") in ("Succeeded", "Failed")


def _rejected(st: dict[str, Any]) -> bool:
    return bool((st.get("rejected") or {}).get("reason"))


def _namespaced_kinds(cluster: Cluster) -> list[str]:
    out = cluster.kubectl("api-resources", "--namespaced=true", "--verbs=list", "-o", "name").stdout.split()
    return sorted(k for k in out if k.split(".")[0] != "secrets")


def _logs(cluster: Cluster, ns: str) -> dict[str, str]:
    """Every log of every container (init containers and earlier restarts too) of every pod that
    ran on a real node (kwok's pods run nothing), keyed ``pod/container[/previous]``."""
    logs: dict[str, str] = {}
    for pod in cluster.list("pods", ns):
        if pod["spec"].get("nodeName", "").startswith("kwok-") or not pod["spec"].get("nodeName"):
            continue
        name = pod["metadata"]["name"]
        statuses = {s["name"]: s for s in [*pod["status"].get("initContainerStatuses", []),
                                           *pod["status"].get("containerStatuses", [])]}
        for c, st in statuses.items():
            if "waiting" in st.get("state", {}) and not st.get("restartCount") and not st.get("lastState"):
                continue  # never started: nothing was written
            logs[f"{name}/{c}"] = cluster.kubectl("logs", name, "-c", c, "-n", ns, check=False).stdout
            if st.get("restartCount"):
                logs[f"{name}/{c}/previous"] = cluster.kubectl("logs", name, "-c", c, "-n", ns, "--previous",
                                                               check=False).stdout
    return logs


def _keep(logs: dict[str, str], now: dict[str, str]) -> None:
    """Merge ``now`` into ``logs`` keeping the longer text: a pod being deleted (a rolled-back
    color) or a container waiting to restart answers with no log at all."""
    for key, text in now.items():
        if len(text) >= len(logs.get(key, "")):
            logs[key] = text


def _hits(planted: dict[str, str], texts: dict[str, str]) -> list[str]:
    forms = {what: (value, base64.b64encode(value.encode()).decode()) for what, value in planted.items()}
    return [f"{what} in {where}" for where, text in texts.items() for what, values in forms.items()
            if any(v in text for v in values)]


def _literal_secret_env(objects: list[dict[str, Any]]) -> list[str]:
    found = []
    for obj in objects:
        spec = obj.get("spec") or {}
        pod = spec.get("template", {}).get("spec") if "template" in spec else spec if obj.get("kind") == "Pod" else None
        for c in [*(pod or {}).get("initContainers", []), *(pod or {}).get("containers", [])]:
            for e in c.get("env", []):
                if e["name"] in SECRET_ENV and "secretKeyRef" not in (e.get("valueFrom") or {}):
                    found.append(f"{obj['kind']} {obj['metadata']['name']} container {c['name']}: {e['name']}")
    return found


def test_no_planted_secret_leaks(cluster: Cluster, namespace: str, run_operator: Any, standin_image: str,
                                 operator_image: str) -> None:
    ns = namespace
    planted = _planted()
    cluster.apply(_secrets(planted), ns)
    cluster.apply(pvc_manifest(), ns)
    ops: list[OperatorProcess] = []

    # 1. Stand-ins: a FineTuneJob that succeeds (trained on kwok), one whose training fails on the
    #    real node, and a ModelServe rolled out v1 -> v2 on kwok through the (stand-in) gate.
    trainer_image = cluster.image(ROOT / "trainer-image", "trainer")
    server_image = cluster.image(ROOT / "server-image", "server", target="cpu")
    # kwok never pulls it; the same image in both runs, so the second renders the same server
    # template and starts no new rollout of the first run's ModelServe.
    op = run_operator(TUNEFORGE_TRAINER_IMAGE=standin_image, TUNEFORGE_POD_ANNOTATIONS=summary_annotation(0.95),
                      **{**kwok_serve_env(), "TUNEFORGE_SERVER_IMAGE": server_image})
    ops.append(op)
    cluster.apply(ftj_manifest("trained", baseModel={"uri": "hf://org/model", **HUB}, s3=S3,
                               output={"uri": "s3://tuneforge-demo/leak-runs"},
                               scheduling={"nodeSelector": KWOK_GPU}), ns)
    cluster.apply(ftj_manifest("crashed", baseModel={"uri": "hf://org/model", **HUB}, s3=S3,
                               dataset={"uri": "/standin/fail=1/steps=4/step_s=0.5/train.jsonl"},
                               scheduling={"nodeSelector": REAL_NODE}), ns)
    cluster.apply(_ms("rollout", 1, KWOK_GPU, "s3://tuneforge-demo/leak/rows.jsonl"), ns)
    st = _wait(cluster, "finetunejob", ns, "trained", "finished", _finished, op)
    assert st["phase"] == "Succeeded", st
    st = _wait(cluster, "finetunejob", ns, "crashed", "finished", _finished, op)
    assert st["phase"] == "Failed" and "out of memory (stand-in)" in st["message"], st
    _wait(cluster, "modelserve", ns, "rollout", "v1 serves", lambda s: s.get("phase") == "Healthy", op)
    cluster.apply(_ms("rollout", 2, KWOK_GPU, "s3://tuneforge-demo/leak/rows.jsonl"), ns)
    _wait(cluster, "modelserve", ns, "rollout", "v2 serves",
          lambda s: s.get("phase") == "Healthy" and (s.get("active") or {}).get("digest") == "sha256:" + "2" * 64, op)
    op.kill()

    # 2. The real images on the real node, each failing on S3 with the planted keys.
    op = run_operator(TUNEFORGE_TRAINER_IMAGE=trainer_image, TUNEFORGE_SERVER_IMAGE=server_image,
                      TUNEFORGE_GATE_IMAGE=operator_image, TUNEFORGE_GATE_NODE_SELECTOR=json.dumps(REAL_NODE),
                      TUNEFORGE_DEPENDENCY_WAIT_SECONDS="30")
    ops.append(op)
    # Validation reads only the data (never the hf:// model): S3 refuses it before anything else.
    cluster.apply(ftj_manifest("s3-denied", baseModel={"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct", **HUB},
                               dataset={"uri": "s3://tuneforge-demo/leak/train.csv", "format": "csv"}, s3=S3,
                               output={"uri": "s3://tuneforge-demo/leak-runs"}), ns)
    cluster.apply(_ms("server-denied", 3, REAL_NODE, None), ns)
    cluster.apply(_ms("gate-denied", 4, KWOK_GPU, "s3://tuneforge-demo/leak/rows.jsonl"), ns)
    logs: dict[str, str] = {}
    trainer = _wait(cluster, "finetunejob", ns, "s3-denied", "finished", _finished, op, 300, logs)
    server = _wait(cluster, "modelserve", ns, "server-denied", "rolled back", _rejected, op, 480, logs)
    gate = _wait(cluster, "modelserve", ns, "gate-denied", "gate failed", _rejected, op, 300, logs)
    op.kill()
    # Each really used the planted keys and was refused by S3 (the failure is S3's answer).
    assert trainer["phase"] == "Failed" and trainer["reason"] == "DataValidationFailed", trainer
    assert gate["rejected"]["reason"] == "GateError", gate
    assert server["rejected"]["reason"] == "ProgressDeadlineExceeded", server

    kinds = _namespaced_kinds(cluster)
    objects = json.loads(cluster.kubectl("get", ",".join(kinds), "-n", ns, "-o", "json").stdout)["items"]
    _keep(logs, _logs(cluster, ns))
    OUTPUT.mkdir(parents=True, exist_ok=True)
    (OUTPUT / f"{ns}-logs.json").write_text(json.dumps(logs, indent=1))  # what was scanned, for a failure's reader
    texts = {f"{o['kind']} {o['metadata']['name']}": json.dumps(o) for o in objects}
    texts.update({f"log {k}": v for k, v in logs.items()})
    texts.update({f"operator log {o.log_path.name}": o.log_path.read_text(errors="replace") for o in ops})
    assert _hits(planted, texts) == []
    assert _literal_secret_env(objects) == []
    assert {o["kind"] for o in objects} >= {"FineTuneJob", "ModelServe", "Event", "ConfigMap", "Job", "Pod", "Deployment"}
    # Logs of every real container kind were read — trainer (validation and training), server,
    # gate — and each of them was refused by S3 with the planted keys (so they were really used).
    assert {key.split("/")[1] for key in logs} >= {"trainer", "server", "gate"}, sorted(logs)
    refused = {k.split("/")[1] for k, text in logs.items() if any(code in text for code in S3_REFUSALS)}
    assert refused >= {"trainer", "server", "gate"}, {k: v[-600:] for k, v in logs.items()}
    secret_env = sum(1 for o in objects if o["kind"] == "Pod" for c in o["spec"]["containers"] for e in c.get("env", [])
                     if e["name"] in SECRET_ENV)
    assert secret_env >= 4, "the pods were given the planted Secrets"
