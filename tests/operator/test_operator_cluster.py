"""FineTuneJob against the real local cluster: schema rejection, and the operator's fast tier
(validation and training pods run the stand-in trainer on the real node, or are simulated by
kwok on fake 8-GPU nodes). Every namespace here enforces Pod Security ``restricted``, as a
platform team's do: each pod the operator creates (validation, training with a gang's init
container, the summary reader) and the operator's own pod must pass the admission plugin."""

from __future__ import annotations

import copy
import json
import signal
import time
import urllib.request
from typing import Any

import pytest

from kueue_helpers import KWOK_H100, KueueQueues
from operator_helpers import ROOT, OperatorProcess, ftj_manifest, least_privilege_kubeconfig, pvc_manifest, refused_calls, summary_annotation
from tuneforge.pod_security import container_security_context, pod_security_context
from tuneforge_localcluster.testing import Cluster, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.pod_security("restricted")]

VALID: dict[str, Any] = ftj_manifest("valid")


def _mutate(path: str, value: Any) -> dict[str, Any]:
    obj = copy.deepcopy(VALID)
    node = obj
    parts = path.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    if value is _DELETE:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value
    return obj


_DELETE = object()


def _edits(changes: dict[str, Any]) -> dict[str, Any]:
    obj = copy.deepcopy(VALID)
    for path, value in changes.items():
        node = obj
        *parents, last = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return obj

# (mistake, manifest, what the apiserver's answer must contain)
INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("missing baseModel", _mutate("spec.baseModel", _DELETE), "spec.baseModel: Required value"),
    ("bad model scheme", _mutate("spec.baseModel.uri", "ftp://host/model"), "spec.baseModel.uri"),
    ("wrong type", _mutate("spec.lora.r", "sixteen"), "spec.lora.r: Invalid value"),
    ("out of range", _mutate("spec.lora.r", 0), "spec.lora.r"),
    ("enum", _mutate("spec.quantization", "2bit"), "spec.quantization: Unsupported value"),
    ("4bit without adapter", _mutate("spec.lora", {"enabled": False}) | {}, "spec.quantization"),
    ("unknown field (strict)", _mutate("spec.lora.rank", 8), 'unknown field "spec.lora.rank"'),
    ("bad quantity", _mutate("spec.resources.memory", "lots"), "spec.resources.memory"),
    ("gate baseline not listed", _mutate("spec.evaluation", {"gate": {"mustBeatBaseline": "tfidf-logreg"}}),
     "spec.evaluation.gate.mustBeatBaseline"),
    ("s3 without credentials", _mutate("spec.output.uri", "s3://bucket/runs"), "spec.s3"),
    ("openai baseline without url", _mutate("spec.evaluation", {"baselines": [{"type": "openai"}]}),
     "spec.evaluation.baselines[0]"),
    ("duplicate baseline", _mutate("spec.evaluation", {"baselines": [{"type": "zero-shot"}, {"type": "zero-shot"}]}),
     "spec.evaluation.baselines[1]"),
    ("template without {text}", _mutate("spec.dataset", {"uri": "/d.csv", "format": "csv", "promptTemplate": "Classify:"}),
     "spec.dataset.promptTemplate"),
    ("earlyStopping without loadBestModel", _mutate("spec.training", {"evalSteps": 5, "earlyStoppingPatience": 2}),
     "spec.training.earlyStoppingPatience"),
    ("loadBestModel steps mismatch", _mutate("spec.training", {"evalSteps": 7, "saveSteps": 10, "loadBestModel": True}),
     "spec.training.saveSteps"),
    ("labels for generation", _mutate("spec.task", {"type": "generation", "labels": ["a", "b"]}), "spec.task.labels"),
    ("includeLabels not in labels", _mutate("spec.task", {"labels": ["a", "b"]}) | {}, "spec.dataset.includeLabels"),
    ("name too long", _mutate("metadata.name", "x" * 41), "metadata.name must be at most 40 characters"),
    ("revision for non-hf model", _mutate("spec.baseModel", {"uri": "pvc://models/m", "revision": "main"}),
     "spec.baseModel.revision"),
    ("evalFraction too large", _mutate("spec.dataPrep", {"evalFraction": 0.9}), "spec.dataPrep.evalFraction"),
    # Integers against fractional minimums: the schema's own check truncates 0.01 to 0.
    ("integer epochs 0", _mutate("spec.training", {"epochs": 0}), "spec.training.epochs: Invalid value"),
    ("integer evalFraction 0", _mutate("spec.dataPrep", {"evalFraction": 0}), "spec.dataPrep.evalFraction: Invalid value"),
    ("integer learningRate 0", _mutate("spec.training", {"learningRate": 0}), "spec.training.learningRate"),
    # A .. segment in any URI could read or write outside the claim, bucket prefix or repository.
    ("dataset uri with ..", _mutate("spec.dataset", {"uri": "pvc://data/../../etc/passwd"}),
     "spec.dataset.uri: Invalid value"),
    ("evalUri with ..", _mutate("spec.dataset", {"uri": "/d.jsonl", "evalUri": "s3://bucket/eval/../../x"}),
     "spec.dataset.evalUri: Invalid value"),
    ("model uri with ..", _mutate("spec.baseModel", {"uri": "/../root/model"}), "spec.baseModel.uri: Invalid value"),
    ("output uri with ..", _mutate("spec.output", {"uri": "pvc://artifacts/runs/.."}), "spec.output.uri: Invalid value"),
    # configmap://<name>/<key>: each mistake named on its field.
    ("configmap name not DNS-1123", _mutate("spec.dataset", {"uri": "configmap://Intents/train.csv"}),
     "the ConfigMap name must be a DNS-1123 subdomain"),
    ("configmap key invalid", _mutate("spec.dataset", {"uri": "/d.csv", "evalUri": "configmap://held-out/test data.csv"}),
     "the ConfigMap key must be a valid key"),
    ("configmap without key", _mutate("spec.dataset", {"uri": "configmap://intents"}), "configmap://<name>/<key>"),
    # Distributed training: the combinations the libraries do not support, on their fields.
    ("fsdp with one process", _mutate("spec.training", {"strategy": "fsdp"}), "spec.training.strategy"),
    ("fsdp with 8-bit weights", _edits({"spec.training": {"strategy": "fsdp"}, "spec.resources": {"gpus": 2},
                                        "spec.quantization": "8bit"}), "cannot shard bitsandbytes 8-bit"),
    ("fsdp on CPU processes", _edits({"spec.training": {"strategy": "fsdp"}, "spec.resources": {"gpus": 0, "nodes": 2}}),
     "fsdp needs GPUs"),
    ("fsdp fp16 with 4-bit weights", _edits({"spec.training": {"strategy": "fsdp", "precision": "fp16"},
                                             "spec.resources": {"gpus": 2}, "spec.quantization": "4bit"}),
     "spec.training.precision"),
    ("zero nodes", _mutate("spec.resources", {"nodes": 0}), "spec.resources.nodes"),
    ("multi-node name not a DNS label", _edits({"metadata.name": "7b-intents", "spec.resources": {"nodes": 2}}),
     "must start with a letter"),
    ("best model without validation rows", _mutate("spec.dataPrep", {"validationFraction": 0}),
     "spec.dataPrep.validationFraction"),
]
# Second-level edits that _mutate cannot express in one step.
INVALID[5][1]["spec"]["quantization"] = "4bit"
INVALID[16][1]["spec"]["dataset"]["includeLabels"] = ["a", "c"]
INVALID[-1][1]["spec"].setdefault("training", {})["loadBestModel"] = True


def test_valid_manifest_accepted_with_defaults(cluster: Cluster, crds: None) -> None:
    out = cluster.kubectl("create", "--dry-run=server", "-n", "default", "-o", "json", "-f", "-", input=json.dumps(VALID))
    spec = json.loads(out.stdout)["spec"]
    assert spec["lora"]["r"] == 16 and spec["resources"]["gpus"] == 1 and spec["quantization"] == "auto"
    explain = cluster.kubectl("explain", "finetunejob.spec.evaluation.gate.minAccuracy").stdout
    assert "Minimum held-out accuracy" in explain


@pytest.mark.parametrize("mistake,manifest,expected", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_manifest_rejected(cluster: Cluster, crds: None, mistake: str, manifest: dict[str, Any], expected: str) -> None:
    res = cluster.kubectl("create", "--dry-run=server", "--validate=strict", "-n", "default", "-f", "-",
                          input=json.dumps(manifest), check=False)
    assert res.returncode != 0, f"{mistake}: accepted"
    assert expected in res.stderr, res.stderr


def test_near_misses_accepted(cluster: Cluster, crds: None) -> None:
    """The new rules reject only what they mean to: fractional epochs and dotted names pass."""
    manifest = _mutate("spec.training", {"epochs": 0.5})
    manifest["spec"]["dataPrep"] = {"evalFraction": 0.01}
    manifest["spec"]["dataset"] = {"uri": "pvc://data/v1..2/train..old.jsonl"}
    cluster.kubectl("create", "--dry-run=server", "--validate=strict", "-n", "default", "-f", "-", input=json.dumps(manifest))
    manifest["spec"]["dataset"] = {"uri": "configmap://intents.v2/train.csv", "evalUri": "configmap://intents.v2/test_1.csv"}
    cluster.kubectl("create", "--dry-run=server", "--validate=strict", "-n", "default", "-f", "-", input=json.dumps(manifest))
    # What the distributed rules allow: QLoRA with FSDP over 2 GPUs, a DDP gang of 2 x 8 GPUs.
    for changes in ({"spec.training": {"strategy": "fsdp"}, "spec.resources": {"gpus": 2}, "spec.quantization": "4bit"},
                    {"spec.resources": {"gpus": 8, "nodes": 2}, "metadata.name": "intents-7b"}):
        cluster.kubectl("create", "--dry-run=server", "--validate=strict", "-n", "default", "-f", "-",
                        input=json.dumps(_edits(changes)))


# --- the operator ---------------------------------------------------------------------------

def _ftj(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    return cluster.get("finetunejob", name, ns)


def _phase(cluster: Cluster, ns: str, name: str) -> str | None:
    return _ftj(cluster, ns, name).get("status", {}).get("phase")


def _wait_phase(cluster: Cluster, ns: str, name: str, phases: tuple[str, ...], timeout: float, op: OperatorProcess | None = None) -> dict[str, Any]:
    def describe() -> str:
        return json.dumps(_ftj(cluster, ns, name).get("status"), indent=1)[:3000] + ("\n" + op.log() if op else "")

    def probe() -> bool:
        if op is not None:
            op.check_alive()
        return _phase(cluster, ns, name) in phases
    wait_for(f"FineTuneJob {name} in {phases}", probe, timeout, 1, describe)
    return _ftj(cluster, ns, name)


def _events(cluster: Cluster, ns: str, name: str) -> list[str]:
    items = cluster.list("events", ns)
    return [e.get("reason", "") for e in sorted(items, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
            if e.get("involvedObject", {}).get("name") == name and e.get("involvedObject", {}).get("kind") == "FineTuneJob"]


def test_fast_tier_real_node_standin(cluster: Cluster, namespace: str, run_operator: Any, standin_image: str) -> None:
    op = run_operator(TUNEFORGE_TRAINER_IMAGE=standin_image)
    cluster.apply(pvc_manifest(), namespace)
    manifest = ftj_manifest("intent", dataset={"uri": "/standin/accuracy=0.93/steps=8/step_s=1.5/train.jsonl"},
                            evaluation={"baselines": [{"type": "zero-shot"}, {"type": "tfidf-logreg"}],
                                        "gate": {"minAccuracy": 0.9, "mustBeatBaseline": "zero-shot"}})
    cluster.apply(manifest, namespace)
    seen: dict[str, Any] = {"phases": set(), "progress": []}

    def probe() -> bool:
        op.check_alive()
        st = _ftj(cluster, namespace, "intent").get("status", {})
        seen["phases"].add(st.get("phase"))
        if st.get("phase") == "Running" and st.get("progress", {}).get("percent") is not None:
            seen["progress"].append(st["progress"]["percent"])
        return st.get("phase") in ("Succeeded", "Failed")
    wait_for("intent finished", probe, 240, 0.5, lambda: op.log())
    ftj = _ftj(cluster, namespace, "intent")
    st = ftj["status"]
    assert st["phase"] == "Succeeded", st
    assert st["evaluation"]["accuracy"] == 0.93 and st["gate"]["outcome"] == "Passed"
    assert {b["name"] for b in st["baselines"]} == {"zero-shot", "tfidf-logreg"}
    # The stand-in reports the /mnt/pvc path it wrote to; status names it as the user does (MS-3).
    assert st["artifacts"]["output"].startswith("pvc://") and st["artifacts"]["adapter"] == st["artifacts"]["output"] + "/adapter"
    assert st["gpuSeconds"] > 0 and st["completionTime"] and st["observedGeneration"] == 1
    assert {"Validating", "Running"} <= seen["phases"], seen
    assert seen["progress"] and min(seen["progress"]) < 100, seen  # live progress from the log
    # Children: deterministic names, owner references, the GPU request.
    cm = cluster.get("configmap", "intent-config-1", namespace)
    assert "api_version: tuneforge.dev/trainer-config/v1" in cm["data"]["config.yaml"]
    job = cluster.get("job", "intent-train-1", namespace)
    res = job["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert res["limits"]["nvidia.com/gpu"] == "1"
    assert job["metadata"]["ownerReferences"][0]["uid"] == ftj["metadata"]["uid"]
    row = cluster.kubectl("get", "ftj", "intent", "-n", namespace, "--no-headers").stdout.split()
    assert row[1:5] == ["Succeeded", "0.93", "Passed", "100%"], row
    reasons = _events(cluster, namespace, "intent")
    assert "Validating" in reasons and "Succeeded" in reasons, reasons
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{op.metrics_port}/metrics", timeout=5).read().decode()
    assert f'tuneforge_eval_accuracy{{name="intent",namespace="{namespace}"}} 0.93' in metrics
    assert 'tuneforge_finetunejobs{phase="Succeeded"} 1.0' in metrics
    assert urllib.request.urlopen(f"http://127.0.0.1:{op.liveness_port}/healthz", timeout=5).status == 200


def test_data_validation_failure_before_any_gpu_pod(cluster: Cluster, namespace: str, run_operator: Any, standin_image: str) -> None:
    op = run_operator(TUNEFORGE_TRAINER_IMAGE=standin_image)
    cluster.apply(pvc_manifest(), namespace)
    cluster.apply(ftj_manifest("bad-data", dataset={"uri": "/standin/invalid=1/train.jsonl"}), namespace)
    st = _wait_phase(cluster, namespace, "bad-data", ("Failed", "Succeeded"), 180, op)["status"]
    assert st["phase"] == "Failed" and st["reason"] == "DataValidationFailed", st
    assert "row 17: label 'refund_requested'" in st["message"]
    assert cluster.list("jobs", namespace, "tuneforge.dev/role=train") == []
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Validated"]["status"] == "False"


def test_missing_pvc_waits_then_fails_naming_the_field_and_creates_nothing(cluster: Cluster, namespace: str,
                                                                            run_operator: Any, standin_image: str) -> None:
    """GitOps applies the PVC moments after the job: a missing claim is waited for (with backoff),
    and only after the bounded wait is it a Failed naming the field."""
    op = run_operator(TUNEFORGE_TRAINER_IMAGE=standin_image, TUNEFORGE_DEPENDENCY_WAIT_SECONDS="25",
                      TUNEFORGE_RETRY_DELAY="1", TUNEFORGE_RETRY_MAX_DELAY="4")
    cluster.apply(ftj_manifest("no-pvc", output={"uri": "pvc://never/runs"}), namespace)
    cluster.apply(ftj_manifest("late-pvc"), namespace)
    for name in ("no-pvc", "late-pvc"):
        st = _wait_phase(cluster, namespace, name, ("Pending",), 60, op)["status"]
        wait_for(f"{name} waits for its claim",
                 lambda: _ftj(cluster, namespace, name)["status"].get("reason") == "PersistentVolumeClaimNotFound", 30, 0.5)
    st = _ftj(cluster, namespace, "late-pvc")["status"]
    assert "waiting up to 25 s" in st["message"], st
    assert {c["type"]: c["status"] for c in st["conditions"]}["DependenciesFound"] == "False"
    assert cluster.list("jobs", namespace) == [] and cluster.list("configmaps", namespace, "tuneforge.dev/finetunejob") == []
    cluster.apply(pvc_manifest(), namespace)  # the claim lands late: the waiting job goes on by itself
    assert _wait_phase(cluster, namespace, "late-pvc", ("Succeeded", "Failed"), 180, op)["status"]["phase"] == "Succeeded"
    st = _wait_phase(cluster, namespace, "no-pvc", ("Failed",), 60, op)["status"]
    assert st["reason"] == "PersistentVolumeClaimNotFound"
    assert st["message"].startswith("spec.output.uri: PersistentVolumeClaim 'never' not found"), st
    assert cluster.list("jobs", namespace, "tuneforge.dev/finetunejob=no-pvc") == []


def test_retry_annotation_runs_a_failed_job_again_and_cost_is_shown(cluster: Cluster, namespace: str, run_operator: Any,
                                                                     standin_image: str) -> None:
    """A job fails on a claim GitOps applied too late; the claim lands; ``tuneforge.dev/retry``
    (the Argo CD retry action's request) runs revision 2 on the stand-in trainer, which succeeds.
    The same request again, or one on a Succeeded job, starts nothing. Priced GPU-seconds are
    status.cost, the Cost column and the cost metric."""
    op = run_operator(TUNEFORGE_TRAINER_IMAGE=standin_image, TUNEFORGE_DEPENDENCY_WAIT_SECONDS="3",
                      TUNEFORGE_RETRY_DELAY="1", TUNEFORGE_RETRY_MAX_DELAY="2",
                      TUNEFORGE_GPU_HOUR_PRICES='{"nvidia.com/gpu": 3600}', TUNEFORGE_COST_CURRENCY="EUR")
    cluster.apply(ftj_manifest("late", dataset={"uri": "/standin/accuracy=0.93/steps=6/step_s=1/train.jsonl"}), namespace)
    st = _wait_phase(cluster, namespace, "late", ("Failed",), 90, op)["status"]
    assert (st["reason"], st["revision"]) == ("PersistentVolumeClaimNotFound", 1), st
    cluster.apply(pvc_manifest(), namespace)
    time.sleep(2)
    assert _ftj(cluster, namespace, "late")["status"]["phase"] == "Failed"  # a Failed revision stays failed
    cluster.kubectl("annotate", "ftj", "late", "-n", namespace, "tuneforge.dev/retry=1")
    wait_for("revision 2", lambda: _ftj(cluster, namespace, "late")["status"].get("revision") == 2, 30, 0.5, op.log)
    st = _wait_phase(cluster, namespace, "late", ("Succeeded", "Failed"), 180, op)["status"]
    assert (st["phase"], st["revision"], st["retryRequest"]) == ("Succeeded", 2, "1"), st
    assert [(h["revision"], h["phase"], h["reason"]) for h in st["history"]] == [(1, "Failed", "PersistentVolumeClaimNotFound")]
    names = sorted(j["metadata"]["name"] for j in cluster.list("jobs", namespace))
    assert names == ["late-train-2", "late-validate-2"], names
    # One GPU at 3,600 EUR per GPU-hour costs 1 EUR a second.
    assert st["gpuSeconds"] > 0 and st["cost"] == {"estimated": round(st["gpuSeconds"], 4), "currency": "EUR",
                                                    "gpuHourPrice": 3600.0, "display": f"{st['gpuSeconds']:.2f} EUR"}, st
    header, row = cluster.kubectl("get", "ftj", "late", "-n", namespace).stdout.splitlines()
    assert row[header.index("COST"):].split()[:2] == [f"{st['gpuSeconds']:.2f}", "EUR"], (header, row)
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{op.metrics_port}/metrics", timeout=5).read().decode()
    assert f'tuneforge_finetunejob_cost_total{{currency="EUR"}} {st["cost"]["estimated"]}' in metrics, metrics
    # The same request again, and a new one on a Succeeded revision: recorded, nothing started.
    cluster.kubectl("annotate", "ftj", "late", "-n", namespace, "tuneforge.dev/retry=2", "--overwrite")
    wait_for("retry 2 recorded", lambda: _ftj(cluster, namespace, "late")["status"].get("retryRequest") == "2", 30, 0.5, op.log)
    time.sleep(2)
    st = _ftj(cluster, namespace, "late")["status"]
    assert (st["phase"], st["revision"]) == ("Succeeded", 2)
    assert sorted(j["metadata"]["name"] for j in cluster.list("jobs", namespace)) == names


H100 = {"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}}
# Opted in for the endpoint kwok_ftj names (tuneforge.dev/allowed-endpoints, review OP-2).
S3_SECRET = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3", "annotations": {"tuneforge.dev/allowed-endpoints": "127.0.0.1:9000"}},
             "stringData": {"id": "test", "secret": "test"}}


def kwok_ftj(name: str, **spec: Any) -> dict[str, Any]:
    """A FineTuneJob whose training pod lands on a kwok 8-GPU node. Its output is an s3:// URI:
    a local-path PVC would pin the pod to the real node where validation first mounted it."""
    spec.setdefault("scheduling", H100)
    return ftj_manifest(name, output={"uri": "s3://artifacts/runs"}, s3={
        "endpoint": "http://127.0.0.1:9000",
        "accessKeyIdSecretRef": {"name": "s3", "key": "id"},
        "secretAccessKeySecretRef": {"name": "s3", "key": "secret"},
    }, **spec)


def test_fake_gpu_nodes_scheduling_and_queueing(cluster: Cluster, namespace: str, run_operator: Any, standin_image: str) -> None:
    op = run_operator(TUNEFORGE_TRAINER_IMAGE=standin_image, TUNEFORGE_POD_ANNOTATIONS=summary_annotation(0.95))
    cluster.apply(S3_SECRET, namespace)
    cluster.apply(kwok_ftj("four-gpus", resources={"gpus": 4, "cpu": "8", "memory": "64Gi"},
                           evaluation={"gate": {"minAccuracy": 0.9}}), namespace)
    cluster.apply(kwok_ftj("too-big", resources={"gpus": 16}), namespace)
    st = _wait_phase(cluster, namespace, "four-gpus", ("Succeeded", "Failed"), 180, op)["status"]
    assert st["phase"] == "Succeeded" and st["evaluation"]["accuracy"] == 0.95, st
    pods = cluster.list("pods", namespace, "tuneforge.dev/finetunejob=four-gpus,tuneforge.dev/role=train")
    assert pods and pods[0]["spec"]["nodeName"].startswith("kwok-gpu-")
    big = _wait_phase(cluster, namespace, "too-big", ("Queued",), 120, op)
    wait_for("too-big waits for a GPU", lambda: _ftj(cluster, namespace, "too-big")["status"].get("reason") == "WaitingForGPU", 60, 1)
    assert "nvidia.com/gpu" in _ftj(cluster, namespace, "too-big")["status"]["message"]
    assert big["status"]["gate"]["outcome"] == "Pending"


def _gone(cluster: Cluster, namespace: str, kind: str, name: str) -> bool:
    return not cluster.kubectl("get", kind, name, "-n", namespace, "--ignore-not-found", "-o", "name").stdout.strip()


def test_two_by_eight_gang_on_fake_gpu_nodes(cluster: Cluster, namespace: str, run_operator: Any, standin_image: str) -> None:
    """resources 2 nodes x 8 GPUs: an Indexed Job with its headless Service, one worker on each
    fake 8-GPU node, world size 16; worker 1 is evicted (Eviction API, as a drain does): the gang
    restarts whole as a new Job of the same revision (status.restarts 1); then the new worker 1
    fails: the whole gang fails with the worker named, no worker is left running, and the
    revision's workers Service is deleted."""
    # The kwok workers stay Running (a long simulated run) until the test fails one.
    op = run_operator(TUNEFORGE_TRAINER_IMAGE=standin_image,
                      TUNEFORGE_POD_ANNOTATIONS=json.dumps({
                          # kwok draws the delay between the two (the jitter bound defaults to 2 s).
                          "pod-complete.stage.kwok.x-k8s.io/delay": "900s",
                          "pod-complete.stage.kwok.x-k8s.io/jitter-delay": "901s"}))
    cluster.apply(S3_SECRET, namespace)
    cluster.apply(kwok_ftj("gang", resources={"nodes": 2, "gpus": 8, "cpu": "8", "memory": "64Gi"}), namespace)

    def both_running() -> bool:
        st = _ftj(cluster, namespace, "gang").get("status") or {}
        return st.get("phase") == "Running" and [w.get("phase") for w in st.get("workers") or ()] == ["Running", "Running"]

    wait_for("both workers running", both_running, 180, 1, describe=lambda: json.dumps(
        _ftj(cluster, namespace, "gang").get("status"), indent=1)[:3000] + "\n" + op.log())
    st = _ftj(cluster, namespace, "gang")["status"]
    assert st["worldSize"] == 16 and [w["rank"] for w in st["workers"]] == [0, 1]
    nodes = {w["node"] for w in st["workers"]}
    assert len(nodes) == 2 and all(n.startswith("kwok-gpu-") for n in nodes), st["workers"]

    job = cluster.get("job", "gang-train-1", namespace)
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["parallelism"] == job["spec"]["completions"] == 2
    svc = cluster.get("service", "gang-train-1", namespace)
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    pods = {p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]: p
            for p in cluster.list("pods", namespace, "tuneforge.dev/finetunejob=gang,tuneforge.dev/role=train")}
    assert set(pods) == {"0", "1"}
    for index, p in pods.items():
        # The Job controller names each worker's host <job>-<index> under the Service's subdomain.
        assert p["spec"]["hostname"] == f"gang-train-1-{index}" and p["spec"]["subdomain"] == "gang-train-1"
        assert p["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
    slices = cluster.list("endpointslices", namespace, "kubernetes.io/service-name=gang-train-1")
    assert sorted(e.get("hostname") for s in slices for e in s.get("endpoints") or ()) == ["gang-train-1-0", "gang-train-1-1"]

    # Worker 1 is evicted: the apiserver marks it DisruptionTarget and deletes it (kwok then ends
    # it Failed, as a kubelet would). The gang restarts, same revision, as gang-train-1-1.
    evicted = pods["1"]
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction",
                "metadata": {"name": evicted["metadata"]["name"], "namespace": namespace}}
    cluster.kubectl("create", "--raw", f"/api/v1/namespaces/{namespace}/pods/{evicted['metadata']['name']}/eviction",
                    "-f", "-", input=json.dumps(eviction))

    def restarted() -> bool:
        st = _ftj(cluster, namespace, "gang").get("status") or {}
        return (st.get("restarts") == 1 and st.get("phase") == "Running"
                and [w.get("phase") for w in st.get("workers") or ()] == ["Running", "Running"])

    wait_for("the gang restarted whole", restarted, 180, 1, describe=lambda: json.dumps(
        _ftj(cluster, namespace, "gang").get("status"), indent=1)[:3000] + "\n" + json.dumps(
        [(p["metadata"]["name"], p["status"]) for p in cluster.list("pods", namespace, "tuneforge.dev/role=train")])[:4000])
    st = _ftj(cluster, namespace, "gang")["status"]
    assert st["revision"] == 1 and st["children"]["trainJob"] == "gang-train-1-1", st
    assert st["children"]["workersService"] == "gang-train-1"
    wait_for("the evicted attempt's Job is deleted", lambda: _gone(cluster, namespace, "job", "gang-train-1"), 60, 1)
    pods = {p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]: p
            for p in cluster.list("pods", namespace, "tuneforge.dev/finetunejob=gang,tuneforge.dev/role=train")
            if p["metadata"]["labels"].get("job-name") == "gang-train-1-1"}
    assert set(pods) == {"0", "1"}
    for index, p in pods.items():
        assert p["spec"]["hostname"] == f"gang-train-1-1-{index}" and p["spec"]["subdomain"] == "gang-train-1"

    # Worker 1's trainer dies (as a kubelet reports it: the container terminated with exit code 1).
    worker = pods["1"]
    status = {"status": {"phase": "Failed", "containerStatuses": [{
        "name": "trainer", "image": worker["spec"]["containers"][0]["image"], "imageID": "", "ready": False,
        "restartCount": 0, "state": {"terminated": {
            "exitCode": 1, "reason": "Error", "message": "RuntimeError: Connection closed by peer",
            "startedAt": worker["status"]["startTime"], "finishedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }}}]}}
    cluster.kubectl("patch", "pod", worker["metadata"]["name"], "-n", namespace, "--subresource=status",
                    "--type=merge", "-p", json.dumps(status))
    # The Job fails once every worker has ended: worker 0 is removed by the Job controller and
    # ended by kwok, which under a busy shared cluster took up to its 120 s grace period.
    st = _wait_phase(cluster, namespace, "gang", ("Failed", "Succeeded"), 240, op)["status"]
    assert st["phase"] == "Failed" and st["reason"] == "WorkerFailed", st
    assert st["message"].startswith(f"worker rank 1 of 16 (pod {worker['metadata']['name']} on node "), st["message"]
    assert "Connection closed by peer" in st["message"]

    def none_running() -> bool:
        return not [p for p in cluster.list("pods", namespace, "tuneforge.dev/finetunejob=gang,tuneforge.dev/role=train")
                    if p["status"].get("phase") in ("Pending", "Running") and not p["metadata"].get("deletionTimestamp")]

    wait_for("no worker left running", none_running, 60, 1)
    assert "WorkerFailed" in cluster.describe("finetunejob", "gang", namespace)
    assert st["restarts"] == 1 and "workersService" not in st["children"], st
    wait_for("the workers Service is deleted", lambda: _gone(cluster, namespace, "service", "gang-train-1"), 60, 1)


def test_kueue_queue_name_suspends_and_resumes(cluster: Cluster, namespace: str, kueue_queues: KueueQueues,
                                               run_operator: Any, standin_image: str) -> None:
    """The training Job is created suspended with Kueue's queue label; the real Kueue admits it
    (unsuspends it, placing the pod by its ResourceFlavor) and the run finishes."""
    op = run_operator(TUNEFORGE_TRAINER_IMAGE=standin_image, TUNEFORGE_POD_ANNOTATIONS=summary_annotation())
    cluster.apply(S3_SECRET, namespace)
    cluster.apply(kwok_ftj("queued", scheduling={"queueName": "gpu-queue"}), namespace)
    st = _wait_phase(cluster, namespace, "queued", ("Queued",), 180, op)["status"]
    assert st["reason"] == "WaitingForKueue", st
    # Kueue's own word for why: the LocalQueue named in the spec does not exist (yet).
    wait_for("Kueue's reason in the status", lambda: "Inadmissible: LocalQueue gpu-queue doesn't exist" in
             _ftj(cluster, namespace, "queued")["status"]["message"], 60, 0.5,
             lambda: json.dumps(_ftj(cluster, namespace, "queued")["status"]) + op.log()[-3000:])
    job = cluster.get("job", "queued-train-1", namespace)
    assert job["spec"]["suspend"] is True and job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    # The queue appears after the job (GitOps order does not matter): Kueue admits it then.
    kueue_queues.queue("gpu-queue", gpus=8, node_labels=KWOK_H100)
    _wait_phase(cluster, namespace, "queued", ("Succeeded",), 120, op)
    (pod,) = cluster.list("pods", namespace, "tuneforge.dev/finetunejob=queued,tuneforge.dev/role=train")
    # Kueue's ResourceFlavor put the pod on a kwok H100 node (the FineTuneJob named no node).
    assert pod["spec"]["nodeSelector"] == KWOK_H100 and pod["spec"]["nodeName"].startswith("kwok-gpu-")


def test_spec_edit_after_success_starts_new_revision(cluster: Cluster, namespace: str, run_operator: Any, standin_image: str) -> None:
    op = run_operator(TUNEFORGE_TRAINER_IMAGE=standin_image, TUNEFORGE_POD_ANNOTATIONS=summary_annotation())
    cluster.apply(S3_SECRET, namespace)
    cluster.apply(kwok_ftj("gitops"), namespace)
    _wait_phase(cluster, namespace, "gitops", ("Succeeded",), 180, op)
    # suspend alone does not start a revision
    cluster.kubectl("patch", "ftj", "gitops", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":true}}')
    time.sleep(3)
    assert _ftj(cluster, namespace, "gitops")["status"]["revision"] == 1
    cluster.kubectl("patch", "ftj", "gitops", "-n", namespace, "--type=merge",
                    "-p", '{"spec":{"suspend":false,"lora":{"r":8}}}')
    wait_for("revision 2", lambda: _ftj(cluster, namespace, "gitops")["status"].get("revision") == 2, 60, 1, op.log)
    st = _wait_phase(cluster, namespace, "gitops", ("Succeeded",), 180, op)["status"]
    assert st["revision"] == 2 and st["history"][0]["revision"] == 1 and st["history"][0]["phase"] == "Succeeded"
    names = sorted(j["metadata"]["name"] for j in cluster.list("jobs", namespace))
    assert names == ["gitops-train-1", "gitops-train-2", "gitops-validate-1", "gitops-validate-2"]
    assert "r: 8" in cluster.get("configmap", "gitops-config-2", namespace)["data"]["config.yaml"]


def test_operator_sigkill_restart_no_duplicates(cluster: Cluster, namespace: str, run_operator: Any, standin_image: str) -> None:
    env = {"TUNEFORGE_TRAINER_IMAGE": standin_image, "TUNEFORGE_POD_ANNOTATIONS": summary_annotation()}
    first = run_operator(**env)
    cluster.apply(S3_SECRET, namespace)
    names = [f"kill-{i}" for i in range(4)]
    cluster.apply([kwok_ftj(n) for n in names], namespace)
    wait_for("some children exist", lambda: cluster.list("jobs", namespace), 60, 0.2, first.log)
    first.kill(signal.SIGKILL)
    second = run_operator(**env)
    for n in names:
        _wait_phase(cluster, namespace, n, ("Succeeded",), 240, second)
    jobs = sorted(j["metadata"]["name"] for j in cluster.list("jobs", namespace))
    assert jobs == sorted([f"{n}-validate-1" for n in names] + [f"{n}-train-1" for n in names])
    assert len(cluster.list("configmaps", namespace, "tuneforge.dev/finetunejob")) == len(names)
    assert all(_ftj(cluster, namespace, n)["status"]["revision"] == 1 for n in names)


def test_operator_runs_with_least_privilege_rbac(cluster: Cluster, namespace: str, run_operator: Any, standin_image: str,
                                                 tmp_path: Any) -> None:
    """The operator works with exactly the ClusterRole in operator/deploy/operator.yaml."""
    with least_privilege_kubeconfig(cluster, namespace, tmp_path) as kubeconfig:
        # A named Secret's opt-in may be read (get); Secrets are never listed.
        denied = cluster.kubectl("--kubeconfig", str(kubeconfig), "get", "secrets", "-n", namespace, check=False)
        assert denied.returncode != 0 and "forbidden" in denied.stderr
        op = run_operator(TUNEFORGE_TRAINER_IMAGE=standin_image, KUBECONFIG_OVERRIDE=str(kubeconfig))
        cluster.apply(pvc_manifest(), namespace)
        cluster.apply(ftj_manifest("least-priv"), namespace)
        st = _wait_phase(cluster, namespace, "least-priv", ("Succeeded", "Failed"), 180, op)["status"]
        assert st["phase"] == "Succeeded", st
        assert refused_calls(op.log()) == []


def test_missing_secret_fails_naming_the_field(cluster: Cluster, namespace: str, run_operator: Any, standin_image: str) -> None:
    """The operator cannot read Secrets (least privilege); the validation pod finds out first."""
    op = run_operator(TUNEFORGE_TRAINER_IMAGE=standin_image, TUNEFORGE_DEPENDENCY_WAIT_SECONDS="20",
                      TUNEFORGE_RETRY_DELAY="1", TUNEFORGE_RETRY_MAX_DELAY="4")
    cluster.apply(pvc_manifest(), namespace)
    cluster.apply(ftj_manifest("no-secret", baseModel={"uri": "hf://org/model", "tokenSecretRef": {"name": "hf-token", "key": "token"}}),
                  namespace)
    wait_for("waiting for the Secret", lambda: _ftj(cluster, namespace, "no-secret").get("status", {}).get("reason")
             == "CreateContainerConfigError", 120, 0.5, op.log)
    waiting = _ftj(cluster, namespace, "no-secret")["status"]
    if waiting["phase"] != "Failed":  # a slow machine may see the wait end before this poll
        assert waiting["phase"] == "Validating" and "waiting up to 20 s" in waiting["message"], waiting
    st = _wait_phase(cluster, namespace, "no-secret", ("Failed",), 120, op)["status"]
    assert st["reason"] == "CreateContainerConfigError", st
    assert st["message"].startswith("spec.baseModel.tokenSecretRef: ") and "hf-token" in st["message"]
    wait_for("stuck validation Job deleted", lambda: cluster.list("jobs", namespace) == [], 30, 1)
    assert cluster.list("jobs", namespace, "tuneforge.dev/role=train") == []


@pytest.mark.exclusive  # in-cluster operator pods on the real node: starved beside a training run
def test_operator_image_as_deployment(cluster: Cluster, namespace: str, crds: None, operator_image: str,
                                      standin_image: str) -> None:
    """operator/Dockerfile + operator/deploy/operator.yaml: in-cluster credentials, least-privilege
    RBAC, liveness and readiness probes, read-only root filesystem, two replicas of which the
    holder of the Lease in their own namespace acts — and a FineTuneJob to Succeeded."""
    import yaml
    docs = list(yaml.safe_load_all((ROOT / "operator" / "deploy" / "operator.yaml").read_text()))
    by_kind = {d["kind"]: d for d in docs}
    sa, role, binding, deploy = (by_kind[k] for k in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment"))
    lease_role, lease_binding = by_kind["Role"], by_kind["RoleBinding"]
    cluster_name = f"tuneforge-operator-{namespace}"
    for obj in (sa, deploy, lease_role, lease_binding):
        obj["metadata"]["namespace"] = namespace
    lease_binding["subjects"][0]["namespace"] = namespace
    role["metadata"]["name"] = binding["metadata"]["name"] = binding["roleRef"]["name"] = cluster_name
    binding["subjects"][0]["namespace"] = namespace
    pod = deploy["spec"]["template"]["spec"]
    pod["nodeSelector"] = {"tuneforge.dev/node-kind": "real"}
    (c,) = pod["containers"]
    c["image"] = operator_image
    c["resources"]["requests"]["cpu"] = "0"  # the real node's 2 CPUs are shared with training runs
    c["env"] = [{"name": "TUNEFORGE_TRAINER_IMAGE", "value": standin_image},
                {"name": "TUNEFORGE_NAMESPACES", "value": namespace},
                {"name": "TUNEFORGE_VALIDATE_CPU", "value": "0"},
                {"name": "TUNEFORGE_VALIDATE_MEMORY", "value": "64Mi"},
                {"name": "TUNEFORGE_PROGRESS_INTERVAL", "value": "2"},
                {"name": "TUNEFORGE_LEADER_ELECT", "value": "true"}]
    cluster.apply([sa, role, binding, lease_role, lease_binding, deploy])
    try:
        cluster.apply(pvc_manifest(), namespace)
        cluster.apply(ftj_manifest("in-cluster"), namespace)
        st = _wait_phase(cluster, namespace, "in-cluster", ("Succeeded", "Failed"), 240)["status"]
        assert st["phase"] == "Succeeded", st
        cluster.kubectl("wait", "--for=condition=Available", "deployment/tuneforge-operator", "-n", namespace, "--timeout=60s")
        cluster.kubectl("wait", "--for=condition=Ready", "pod", "-l", "app.kubernetes.io/name=tuneforge-operator",
                        "-n", namespace, "--timeout=60s")  # the follower is Ready too
        op_pods = cluster.list("pods", namespace, "app.kubernetes.io/name=tuneforge-operator")
        assert len(op_pods) == 2 and all(p["status"]["containerStatuses"][0]["restartCount"] == 0 for p in op_pods)
        holder = cluster.get("lease", "tuneforge-operator", namespace)["spec"]["holderIdentity"]
        assert holder.rsplit("_", 1)[0] in {p["metadata"]["name"] for p in op_pods}, holder
    finally:
        cluster.kubectl("delete", "clusterrolebinding,clusterrole", cluster_name, check=False)


# --- identity and ownership ------------------------------------------------------------------

def test_leftover_child_is_never_adopted(cluster: Cluster, namespace: str, run_operator: Any, standin_image: str) -> None:
    """A Job named like this FineTuneJob's child, with its label but another controller (here
    none: left over by an orphaning delete of a namesake), is neither adopted nor read: the job
    waits with ChildConflict and a Warning Event until the leftover is gone, then runs."""
    op = run_operator(TUNEFORGE_TRAINER_IMAGE=standin_image, TUNEFORGE_RETRY_DELAY="1", TUNEFORGE_RETRY_MAX_DELAY="3")
    cluster.apply(pvc_manifest(), namespace)
    leftover = {"apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"name": "reborn-validate-1", "labels": {"tuneforge.dev/finetunejob": "reborn",
                                                                     "tuneforge.dev/revision": "1"}},
                "spec": {"suspend": True, "template": {"spec": {"restartPolicy": "Never", "containers": [
                    {"name": "trainer", "image": standin_image, "command": ["true"]}]}}}}
    cluster.apply(leftover, namespace)
    cluster.apply(ftj_manifest("reborn"), namespace)
    wait_for("ChildConflict", lambda: _ftj(cluster, namespace, "reborn").get("status", {}).get("reason") == "ChildConflict",
             60, 0.5, op.log)
    st = _ftj(cluster, namespace, "reborn")["status"]
    assert "Job " + namespace + "/reborn-validate-1 already exists and has no controller" in st["message"], st
    assert st["phase"] == "Pending"
    wait_for("ChildConflict event", lambda: "ChildConflict" in _events(cluster, namespace, "reborn"), 30, 1)
    assert cluster.get("job", "reborn-validate-1", namespace)["metadata"].get("ownerReferences") is None  # not adopted
    cluster.kubectl("delete", "job", "reborn-validate-1", "-n", namespace, "--wait=true")
    st = _wait_phase(cluster, namespace, "reborn", ("Succeeded", "Failed"), 180, op)["status"]
    assert st["phase"] == "Succeeded", st
    uid = _ftj(cluster, namespace, "reborn")["metadata"]["uid"]
    assert st["artifacts"]["output"] == f"pvc://artifacts/runs/{namespace}/reborn/{uid}/r1"  # keyed by uid
    assert cluster.get("job", "reborn-validate-1", namespace)["metadata"]["ownerReferences"][0]["uid"] == uid


@pytest.mark.exclusive  # replaces the shared FineTuneJob CRD for a while
def test_crd_upgrade_with_a_new_default_restarts_nothing(cluster: Cluster, namespace: str, run_operator: Any,
                                                         standin_image: str) -> None:
    """A CRD upgrade that adds a defaulted field changes every defaulted spec (and so its hash)
    without a write: neither a finished nor a running job may start a new revision, across an
    operator restart, and a later suspend-only edit must not either."""
    import yaml
    env = {"TUNEFORGE_TRAINER_IMAGE": standin_image}
    op = run_operator(**env)
    cluster.apply(pvc_manifest(), namespace)
    cluster.apply(ftj_manifest("done"), namespace)
    done = _wait_phase(cluster, namespace, "done", ("Succeeded", "Failed"), 180, op)["status"]
    assert done["phase"] == "Succeeded", done
    cluster.apply(ftj_manifest("busy", dataset={"uri": "/standin/accuracy=0.93/steps=45/step_s=1/train.jsonl"}), namespace)
    wait_for("busy trains", lambda: _ftj(cluster, namespace, "busy").get("status", {}).get("reason") == "Training", 180, 0.5, op.log)
    busy_job_uid = cluster.get("job", "busy-train-1", namespace)["metadata"]["uid"]

    original = yaml.safe_load((ROOT / "crds" / "finetunejob.yaml").read_text())
    upgraded = copy.deepcopy(original)
    training = upgraded["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["training"]
    training["properties"]["upgradeProbe"] = {"type": "integer", "default": 7, "description": "A field added by an upgrade."}
    try:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(upgraded))
        wait_for("the new default is served", lambda: _ftj(cluster, namespace, "done")["spec"]["training"].get("upgradeProbe") == 7,
                 60, 1)
        time.sleep(3)  # the running operator's reconciles of both jobs
        op.kill(signal.SIGKILL)
        op = run_operator(**env)  # a startup sees every job with the new default
        time.sleep(8)
        op.check_alive()
        st = _ftj(cluster, namespace, "done")["status"]
        assert (st["revision"], st["phase"], st["completionTime"]) == (1, "Succeeded", done["completionTime"]), st
        assert _ftj(cluster, namespace, "busy")["status"]["revision"] == 1
        assert cluster.get("job", "busy-train-1", namespace)["metadata"]["uid"] == busy_job_uid
        # Suspend alone, after the upgrade: still no new revision.
        cluster.kubectl("patch", "ftj", "done", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":true}}')
        time.sleep(3)
        assert _ftj(cluster, namespace, "done")["status"]["revision"] == 1
        st = _wait_phase(cluster, namespace, "busy", ("Succeeded", "Failed"), 180, op)["status"]
        assert st["phase"] == "Succeeded" and st["revision"] == 1, st
        names = sorted(j["metadata"]["name"] for j in cluster.list("jobs", namespace))
        assert names == ["busy-train-1", "busy-validate-1", "done-train-1", "done-validate-1"], names
    finally:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds" / "finetunejob.yaml"))


@pytest.mark.exclusive  # a stand-in training Job on the real node within a deadline: starved beside a training run
def test_result_read_from_summary_json_when_the_pod_is_gone(cluster: Cluster, namespace: str, run_operator: Any,
                                                            standin_image: str) -> None:
    """The operator is down while the training Job finishes and its pod is cleaned up (PodGC):
    the termination message is gone, so the result comes from <output>/summary.json (written
    here by a helper pod, as the trainer writes it beside the artifacts) through a reader Job."""
    env = {"TUNEFORGE_TRAINER_IMAGE": standin_image}
    op = run_operator(**env)
    cluster.apply(pvc_manifest(), namespace)
    cluster.apply(ftj_manifest("gone", dataset={"uri": "/standin/accuracy=0.93/steps=6/train.jsonl"},
                               evaluation={"gate": {"minAccuracy": 0.5}}), namespace)
    wait_for("training Job", lambda: cluster.list("jobs", namespace, "tuneforge.dev/role=train"), 180, 0.5, op.log)
    op.kill(signal.SIGKILL)
    cluster.kubectl("wait", "--for=condition=Complete", "job/gone-train-1", "-n", namespace, "--timeout=180s")
    cluster.kubectl("delete", "pods", "-n", namespace, "-l", "job-name=gone-train-1", "--wait=true")
    uid = _ftj(cluster, namespace, "gone")["metadata"]["uid"]
    saved = json.loads(summary_annotation(0.77))["kwok.tuneforge.dev/termination-message"]
    folder = f"/mnt/runs/{namespace}/gone/{uid}/r1"
    writer = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "write-summary"}, "spec": {
        "restartPolicy": "Never", "securityContext": pod_security_context(),
        "containers": [{"name": "w", "image": standin_image, "command": ["python3", "-c",
                        f"import os; os.makedirs({folder!r}, exist_ok=True); open({folder!r} + '/summary.json', 'w').write({saved!r})"],
                        "securityContext": container_security_context(),
                        "volumeMounts": [{"name": "out", "mountPath": "/mnt"}]}],
        "volumes": [{"name": "out", "persistentVolumeClaim": {"claimName": "artifacts"}}]}}
    cluster.apply(writer, namespace)
    wait_for("summary.json written", lambda: cluster.get("pod", "write-summary", namespace)["status"].get("phase") == "Succeeded",
             120, 1)
    op = run_operator(**env)
    st = _wait_phase(cluster, namespace, "gone", ("Succeeded", "Failed"), 180, op)["status"]
    assert st["phase"] == "Succeeded" and st["evaluation"]["accuracy"] == 0.77, st  # the saved copy, not a pod's
    reader = cluster.get("job", "gone-summary-1", namespace)
    assert reader["metadata"]["ownerReferences"][0]["uid"] == uid
