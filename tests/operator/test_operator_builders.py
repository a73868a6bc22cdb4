"""Pure builders: the validation Job, the training Job, the ConfigMap."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from ftj_helpers import MINIMAL_SPEC, defaulted_spec
from tuneforge.finetune.builders.job import build_trainer_job, build_validate_job
from tuneforge.finetune.builders.names import Owner
from tuneforge.settings import Settings
from tuneforge.finetune.spec import parse_spec

OWNER = Owner("intent", "team-a", "uid-7")
SETTINGS = Settings(trainer_image="reg/trainer:1")


def spec_of(**overrides: Any) -> Any:
    raw = copy.deepcopy(MINIMAL_SPEC)
    raw.update(overrides)
    return parse_spec(defaulted_spec(raw))


def pod(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["template"]["spec"]


def container(job: dict[str, Any]) -> dict[str, Any]:
    (c,) = pod(job)["containers"]
    return c


def test_names_labels_owner() -> None:
    job = build_trainer_job(OWNER, spec_of(), 4, SETTINGS)
    assert job["metadata"]["name"] == "intent-train-4"
    assert job["metadata"]["namespace"] == "team-a"
    assert job["metadata"]["labels"]["tuneforge.dev/finetunejob"] == "intent"
    assert job["metadata"]["labels"]["tuneforge.dev/revision"] == "4"
    assert job["spec"]["template"]["metadata"]["labels"]["tuneforge.dev/role"] == "train"
    (ref,) = job["metadata"]["ownerReferences"]
    assert ref == {"apiVersion": "tuneforge.dev/v1alpha1", "kind": "FineTuneJob", "name": "intent",
                   "uid": "uid-7", "controller": True, "blockOwnerDeletion": True}
    assert build_validate_job(OWNER, spec_of(), 4, SETTINGS)["metadata"]["name"] == "intent-validate-4"


@pytest.mark.parametrize("resources,scheduling,gpu_limit,tolerations,selector,priority", [
    ({}, {}, "1", [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}], None, None),
    ({"gpus": 4}, {"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}, "priorityClassName": "train-low"},
     "4", [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
     {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}, "train-low"),
    ({"gpus": 0}, {"tolerations": [{"key": "spot", "operator": "Exists"}]}, None,
     [{"key": "spot", "operator": "Exists"}], None, None),
    ({"gpus": 2, "gpuResourceName": "amd.com/gpu"}, {}, "2",
     [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}], None, None),
])
def test_trainer_job_scheduling(resources: dict, scheduling: dict, gpu_limit: str | None, tolerations: list,
                                selector: dict | None, priority: str | None) -> None:
    spec = spec_of(resources=resources, scheduling=scheduling)
    job = build_trainer_job(OWNER, spec, 1, SETTINGS)
    res = container(job)["resources"]
    name = resources.get("gpuResourceName", "nvidia.com/gpu")
    assert res["limits"].get(name) == gpu_limit
    assert res["requests"].get(name) == gpu_limit
    assert pod(job).get("tolerations", []) == tolerations
    assert pod(job).get("nodeSelector") == selector
    assert pod(job).get("priorityClassName") == priority


def test_trainer_job_limits_and_command() -> None:
    job = build_trainer_job(OWNER, spec_of(scheduling={"activeDeadlineSeconds": 3600, "backoffLimit": 1}), 1, SETTINGS)
    assert job["spec"]["activeDeadlineSeconds"] == 3600
    assert job["spec"]["backoffLimit"] == 1
    assert job["spec"]["suspend"] is False
    assert job["spec"]["podReplacementPolicy"] == "Failed"
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailJob" and rules[0]["onExitCodes"]["values"] == [2, 3]
    assert rules[1] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
    c = container(job)
    assert c["command"] == ["tuneforge-train", "train", "--config", "/etc/tuneforge/config.yaml"]
    assert c["image"] == "reg/trainer:1"
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_restricted_security_context() -> None:
    for job in (build_trainer_job(OWNER, spec_of(), 1, SETTINGS), build_validate_job(OWNER, spec_of(), 1, SETTINGS)):
        p = pod(job)
        assert p["securityContext"]["runAsNonRoot"] is True
        assert p["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert p["automountServiceAccountToken"] is False
        sc = container(job)["securityContext"]
        assert sc == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}


def test_secrets_only_by_secret_key_ref() -> None:
    spec = spec_of(
        baseModel={"uri": "hf://o/m", "tokenSecretRef": {"name": "hf", "key": "token"}},
        output={"uri": "s3://bucket/runs"},
        s3={"endpoint": "http://minio:9000", "accessKeyIdSecretRef": {"name": "s3", "key": "id"},
            "secretAccessKeySecretRef": {"name": "s3", "key": "secret"}},
    )
    env = {e["name"]: e for e in container(build_trainer_job(OWNER, spec, 1, SETTINGS))["env"]}
    assert env["HF_TOKEN"] == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "s3", "key": "id"}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "s3", "key": "secret"}
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio:9000"
    for e in env.values():
        if any(w in e["name"] for w in ("TOKEN", "KEY", "SECRET")):
            assert "value" not in e, e


def test_pvc_volumes_read_only_except_output() -> None:
    spec = spec_of(baseModel={"uri": "pvc://models/smollm2"})
    p = pod(build_trainer_job(OWNER, spec, 1, SETTINGS))
    claims = {v["persistentVolumeClaim"]["claimName"]: v["persistentVolumeClaim"]["readOnly"]
              for v in p["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"models": True, "data": True, "artifacts": False}
    mounts = {m["mountPath"]: m.get("readOnly") for m in container({"spec": {"template": {"spec": p}}})["volumeMounts"]}
    assert mounts["/mnt/pvc/artifacts"] is False and mounts["/mnt/pvc/models"] is True
    assert mounts["/etc/tuneforge"] is True and "/dev/shm" in mounts and "/tmp" in mounts


def test_kueue_queue_label_and_suspend() -> None:
    job = build_trainer_job(OWNER, spec_of(scheduling={"queueName": "gpu-queue"}), 1, SETTINGS)
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert job["spec"]["suspend"] is True  # created suspended; Kueue admits by unsuspending
    assert build_trainer_job(OWNER, spec_of(suspend=True), 1, SETTINGS)["spec"]["suspend"] is True


def test_validate_job_is_cpu_only() -> None:
    spec = spec_of(resources={"gpus": 8}, scheduling={"nodeSelector": {"a": "b"}, "priorityClassName": "p"})
    job = build_validate_job(OWNER, spec, 1, SETTINGS)
    c = container(job)
    assert c["command"][:2] == ["tuneforge-train", "validate"]
    assert c["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "1Gi"}}
    p = pod(job)
    assert "tolerations" not in p and "nodeSelector" not in p and "priorityClassName" not in p
    assert job["spec"]["backoffLimit"] == 0
    assert "kueue.x-k8s.io/queue-name" not in job["metadata"]["labels"]


def test_pod_annotations_setting() -> None:
    s = Settings(pod_annotations='{"kwok.tuneforge.dev/exit-code": "3"}')
    job = build_validate_job(OWNER, spec_of(), 1, s)
    assert job["spec"]["template"]["metadata"]["annotations"] == {"kwok.tuneforge.dev/exit-code": "3"}
    assert "annotations" not in build_validate_job(OWNER, spec_of(), 1, SETTINGS)["spec"]["template"]["metadata"]


def test_validate_pool_placement() -> None:
    s = Settings(validate_node_selector='{"pool": "cpu"}', validate_tolerations='[{"key": "pool", "operator": "Exists"}]')
    p = pod(build_validate_job(OWNER, spec_of(), 1, s))
    assert p["nodeSelector"] == {"pool": "cpu"} and p["tolerations"] == [{"key": "pool", "operator": "Exists"}]


S3 = {"output": {"uri": "s3://bucket/runs"}, "s3": {"endpoint": "http://s3:9000",
      "accessKeyIdSecretRef": {"name": "s3", "key": "id"}, "secretAccessKeySecretRef": {"name": "s3", "key": "secret"}}}


def test_summary_reader_job_is_cpu_only_and_reads_the_runs_folder() -> None:
    from tuneforge.finetune.builders.job import build_summary_job
    job = build_summary_job(OWNER, spec_of(**S3), 2, SETTINGS)
    assert job["metadata"]["name"] == "intent-summary-2" and job["metadata"]["ownerReferences"][0]["uid"] == "uid-7"
    assert pod(job)["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] == 1
    c = container(job)
    assert c["command"][:2] == ["python3", "-c"] and c["command"][3] == "s3://bucket/runs/team-a/intent/uid-7/r2"
    assert "nvidia.com/gpu" not in str(c["resources"]) and "tolerations" not in pod(job)
    assert {e["name"] for e in c["env"]} == {"HOME", "HF_HOME", "MPLCONFIGDIR", "PYTHONUNBUFFERED", "AWS_ACCESS_KEY_ID",
                                             "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"}
    assert pod(job)["automountServiceAccountToken"] is False
    pvc = build_summary_job(OWNER, spec_of(), 1, SETTINGS)
    assert all(v["persistentVolumeClaim"]["readOnly"] for v in pod(pvc)["volumes"] if "persistentVolumeClaim" in v)
    assert all(m["readOnly"] for m in container(pvc)["volumeMounts"] if m["name"].startswith("pvc-"))


def test_summary_reader_script(tmp_path: Any) -> None:
    """The reader as the pod runs it, on a local folder (a PVC mount): the trainer's summary,
    trimmed by its own module, becomes the termination message; a missing file exits 1 naming it."""
    import json
    import subprocess
    import sys
    from tuneforge.finetune.builders.job import SUMMARY_READER
    from k8s_objects import summary
    out = tmp_path / "termination-log"
    script = SUMMARY_READER.replace('"/dev/termination-log"', repr(str(out)))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text(summary(message="x" * 6000))
    import os
    from pathlib import Path
    # As in the trainer image: the trainer's own summary module trims the message.
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "trainer-image" / "src"))
    ok = subprocess.run([sys.executable, "-c", script, str(tmp_path / "run") + "/"], capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    text = out.read_text()
    assert len(text.encode()) <= 4096 and json.loads(text)["accuracy"] == 0.93
    gone = subprocess.run([sys.executable, "-c", script, str(tmp_path / "nothing")], capture_output=True, text=True)
    assert gone.returncode == 1 and out.read_text().startswith(f"cannot read {tmp_path}/nothing/summary.json: FileNotFoundError")


# configmap://name/key sources: (dataset, ConfigMaps mounted, the path the trainer config names for
# dataset.source and dataset.eval_source).
CM_CASES = [
    ({"uri": "configmap://intents-small/train.csv", "format": "csv"}, ["intents-small"],
     "/mnt/configmap/intents-small/train.csv", None),
    ({"uri": "configmap://small.v2/train.jsonl", "evalUri": "configmap://small.v2/test.jsonl"}, ["small.v2"],
     "/mnt/configmap/small.v2/train.jsonl", "/mnt/configmap/small.v2/test.jsonl"),
    ({"uri": "configmap://train-rows/rows.csv", "evalUri": "configmap://held-out/rows.csv"}, ["held-out", "train-rows"],
     "/mnt/configmap/train-rows/rows.csv", "/mnt/configmap/held-out/rows.csv"),
    ({"uri": "pvc://data/train.csv", "evalUri": "configmap://held-out/test.csv"}, ["held-out"],
     "/mnt/pvc/data/train.csv", "/mnt/configmap/held-out/test.csv"),
    ({"uri": "pvc://data/train.csv"}, [], "/mnt/pvc/data/train.csv", None),
]


@pytest.mark.parametrize("dataset,config_maps,source,eval_source", CM_CASES)
def test_config_map_sources_are_mounted_read_only_and_rendered(dataset: dict[str, Any], config_maps: list[str],
                                                               source: str, eval_source: str | None) -> None:
    import yaml

    from tuneforge.finetune.builders.configmap import build_config_map
    from tuneforge.finetune.builders.job import build_summary_job
    spec = spec_of(dataset=dataset)
    for build in (build_validate_job, build_trainer_job):
        job = build(OWNER, spec, 1, SETTINGS)
        volumes = {v["name"]: v for v in pod(job)["volumes"]}
        mounted = {v["configMap"]["name"]: name for name, v in volumes.items()
                   if "configMap" in v and v["configMap"]["name"] != "intent-config-1"}
        assert sorted(mounted) == config_maps, build.__name__
        mounts = {m["name"]: m for m in container(job)["volumeMounts"]}
        for cm, vol in mounted.items():
            assert mounts[vol] == {"name": vol, "mountPath": f"/mnt/configmap/{cm}", "readOnly": True}
            assert "items" not in volumes[vol]["configMap"]  # a missing key is a missing file the trainer names
    # The summary reader reads no data: a ConfigMap deleted since training cannot keep it waiting.
    assert not [v for v in pod(build_summary_job(OWNER, spec, 1, SETTINGS))["volumes"]
                if "configMap" in v and v["configMap"]["name"] != "intent-config-1"]
    rendered = yaml.safe_load(build_config_map(OWNER, spec, 1)["data"]["config.yaml"])
    assert rendered["dataset"]["source"] == source
    assert rendered["dataset"].get("eval_source") == eval_source


def test_hub_cache_claim_is_mounted_read_write() -> None:
    """spec.hub.cacheUri: downloads outlive the pod, so the claim is written to."""
    import yaml

    from tuneforge.finetune.builders.configmap import build_config_map
    spec = spec_of(hub={"cacheUri": "pvc://hf-cache/hub"})
    p = pod(build_trainer_job(OWNER, spec, 1, SETTINGS))
    claims = {v["persistentVolumeClaim"]["claimName"]: v["persistentVolumeClaim"]["readOnly"]
              for v in p["volumes"] if "persistentVolumeClaim" in v}
    assert claims["hf-cache"] is False
    rendered = yaml.safe_load(build_config_map(OWNER, spec, 1)["data"]["config.yaml"])
    assert rendered["hub"] == {"cache_dir": "/mnt/pvc/hf-cache/hub", "offline": False}
