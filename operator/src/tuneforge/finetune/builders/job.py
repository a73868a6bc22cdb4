"""The two batch/v1 Jobs of a revision: CPU-only data validation, then GPU training.

Validation is a separate CPU Job rather than an init container of the training pod: an init
container's pod is scheduled with the GPU already reserved, so a bad dataset would hold a GPU
(and wait in the GPU queue) just to be rejected. The training Job is created only after the
validation Job succeeds; ``tuneforge-train train`` re-validates in seconds anyway.
"""

from __future__ import annotations

from typing import Any

from ...pod_security import container_security_context, pod_security_context
from ...settings import Settings
from .. import KUEUE_QUEUE_LABEL
from ..spec import FineTuneJobSpec, SecretKeyRef, config_map_sources, pvc_claims
from ..trainer_config import (
    CONFIG_DIR, CONFIG_MAP_ROOT, CONFIG_PATH, ENV_HF_TOKEN, ENV_OPENAI_KEY, PVC_ROOT, output_location, trial_location,
)
from .names import (
    ROLE_SUMMARY, ROLE_TRAIN, ROLE_TRIAL, ROLE_VALIDATE, Owner, child_labels, config_map_name, owner_references,
    summary_job_name, train_job_name, trial_job_name, trial_summary_job_name, validate_job_name, workers_service_name,
)

CONTAINER = "trainer"
# tuneforge_trainer.cli exit codes that no retry can fix: a bad config (2) or bad data (3).
FATAL_EXIT_CODES = [2, 3]
# torchrun's static rendezvous: every node dials pod 0's TCPStore on this port.
RENDEZVOUS_PORT = 29500
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
# The trainer checkpoints on SIGTERM; the pod's grace period gives it time before SIGKILL, and
# torchrun's own SIGKILL of its workers (30 s by default) comes a little before the kubelet's.
GRACE_SECONDS = 120
SHUTDOWN_SECONDS = GRACE_SECONDS - 10
# Init container of a gang's pods: wait until every worker's DNS name resolves (each pod has an
# IP, so the whole gang is scheduled), stdlib only. The trainer's rendezvous then starts with
# every peer there instead of holding GPUs while the rest of the gang waits for nodes.
GANG_WAIT = """\
import socket, sys, time
names, last = sys.argv[1:], None
while True:
    missing = []
    for name in names:
        try:
            socket.getaddrinfo(name, None)
        except OSError:
            missing.append(name)
    if not missing:
        print(f"All {len(names)} workers resolve", flush=True)
        break
    if missing != last:
        print(f"Waiting for {len(missing)} of {len(names)} workers: {' '.join(missing)}", flush=True)
        last = missing
    time.sleep(2)
"""


def _secret_env(name: str, ref: SecretKeyRef | None) -> list[dict[str, Any]]:
    if ref is None:
        return []
    return [{"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}]


def _env(spec: FineTuneJobSpec) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        # The root filesystem is read-only: every cache goes to the /tmp emptyDir.
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_HOME", "value": "/tmp/hf"},
        {"name": "MPLCONFIGDIR", "value": "/tmp/matplotlib"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    env += _secret_env(ENV_HF_TOKEN, spec.hf_token)
    env += _secret_env("AWS_ACCESS_KEY_ID", spec.s3_access_key)
    env += _secret_env("AWS_SECRET_ACCESS_KEY", spec.s3_secret_key)
    if spec.s3_endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": spec.s3_endpoint})
    if spec.s3_region:
        env.append({"name": "AWS_DEFAULT_REGION", "value": spec.s3_region})
    for b in spec.baselines or ():
        if b.type == "openai":
            env += _secret_env(ENV_OPENAI_KEY, b.api_key)
    return env


def _volumes(owner: Owner, spec: FineTuneJobSpec, revision: int, with_shm: bool,
             with_config_maps: bool = True, config_map: str | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": config_map or config_map_name(owner.name, revision)}},
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if with_shm:
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.shared_memory}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    for i, (claim, writable) in enumerate(sorted(pvc_claims(spec).items())):
        volumes.append({"name": f"pvc-{i}", "persistentVolumeClaim": {"claimName": claim, "readOnly": not writable}})
        mounts.append({"name": f"pvc-{i}", "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": not writable})
    if with_config_maps:
        # configmap://name/key: the whole ConfigMap, read-only, so the key is a file at
        # CONFIG_MAP_ROOT/name/key. Not limited to the key with items: a key that is not there
        # is then a missing file the trainer names, not a mount error that keeps the pod waiting.
        for i, cm in enumerate(sorted({name for _, name, _ in config_map_sources(spec)})):
            volumes.append({"name": f"cm-{i}", "configMap": {"name": cm}})
            mounts.append({"name": f"cm-{i}", "mountPath": f"{CONFIG_MAP_ROOT}/{cm}", "readOnly": True})
    return volumes, mounts


def _pod_failure_policy(gang: bool = False) -> dict[str, Any]:
    if gang:
        # A gang trains only whole: one worker that fails (or is evicted) fails the Job, and the
        # Job controller then removes the other workers' pods. A lone replacement pod could
        # never rejoin the running collective; the FineTuneJob reports the worker by rank.
        # The disruption rule comes first: the first rule that matches names the cause in the
        # Job's Failed condition, and an evicted worker's container also exits non-zero (137 or
        # 143), which the exit-code rule would claim as the trainer's own failure. The operator
        # reads that condition to restart a disrupted gang when its pods are already gone.
        return {"rules": [
            {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget"}]},
            {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "NotIn", "values": [0]}},
        ]}
    return {"rules": [
        # Bad config or data fails the Job at once instead of burning backoffLimit retries.
        {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": FATAL_EXIT_CODES}},
        # Preemption/eviction is not the trainer's fault: retry without counting it (the trainer
        # resumes from its last checkpoint).
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
    ]}


def _pod_meta(labels: dict[str, str], settings: Settings) -> dict[str, Any]:
    meta: dict[str, Any] = {"labels": labels}
    annotations = settings.pod_annotation_map()
    if annotations:
        meta["annotations"] = annotations
    return meta


def _job(owner: Owner, name: str, labels: dict[str, str], job_spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": owner.namespace,
            "labels": labels,
            "ownerReferences": owner_references(owner),
        },
        "spec": job_spec,
    }


def _cpu_pod(labels: dict[str, str], settings: Settings, command: list[str], env: list[dict[str, Any]],
             volumes: list[dict[str, Any]], mounts: list[dict[str, Any]]) -> dict[str, Any]:
    """The pod template of a short CPU-only Job in the trainer image (validation, summary reader):
    no GPU request or toleration, placed by ``settings.validate_placement()``."""
    # No CPU limit (throttling only slows a pod that has the CPU to itself); memory is capped.
    resources = {"requests": {"cpu": settings.validate_cpu, "memory": settings.validate_memory},
                 "limits": {"memory": settings.validate_memory}}
    pod: dict[str, Any] = {
        "metadata": _pod_meta(labels, settings),
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": pod_security_context(),
            "containers": [{
                "name": CONTAINER,
                "image": settings.trainer_image,
                "imagePullPolicy": settings.image_pull_policy,
                "command": command,
                "env": env,
                "resources": resources,
                "volumeMounts": mounts,
                "securityContext": container_security_context(),
                "terminationMessagePolicy": "FallbackToLogsOnError",
            }],
            "volumes": volumes,
        },
    }
    selector, tolerations = settings.validate_placement()
    if selector:
        pod["spec"]["nodeSelector"] = selector
    if tolerations:
        pod["spec"]["tolerations"] = tolerations
    return pod


def build_validate_job(owner: Owner, spec: FineTuneJobSpec, revision: int, settings: Settings) -> dict[str, Any]:
    """CPU-only pre-flight of the data: no GPU request, no GPU toleration, short deadline."""
    labels = child_labels(owner, revision, ROLE_VALIDATE)
    volumes, mounts = _volumes(owner, spec, revision, with_shm=False)
    pod = _cpu_pod(labels, settings, ["tuneforge-train", "validate", "--config", CONFIG_PATH], _env(spec), volumes, mounts)
    return _job(owner, validate_job_name(owner.name, revision), labels, {
        "backoffLimit": 0,
        "activeDeadlineSeconds": settings.validate_deadline_seconds,
        "podFailurePolicy": _pod_failure_policy(),
        "podReplacementPolicy": "Failed",
        "template": pod,
    })


def _tolerations(spec: FineTuneJobSpec, settings: Settings) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if spec.gpus > 0:
        out.append({"key": settings.gpu_taint_key, "operator": "Exists", "effect": "NoSchedule"})
    for t in spec.tolerations:
        out.append({k: v for k, v in {
            "key": t.key, "operator": t.operator, "value": t.value, "effect": t.effect,
            "tolerationSeconds": t.toleration_seconds,
        }.items() if v is not None})
    return out


def train_job_suspended(spec: FineTuneJobSpec) -> bool:
    """The Job's spec.suspend at creation: Kueue admits a queued Job by unsuspending it."""
    return spec.suspend or spec.queue_name is not None


def build_trainer_job(owner: Owner, spec: FineTuneJobSpec, revision: int, settings: Settings,
                      attempt: int = 0, config_map: str | None = None) -> dict[str, Any]:
    """The GPU training Job of one revision (``attempt``: of a gang restarted after a disruption;
    ``config_map``: the winner's config of a searched revision)."""
    return _gpu_job(owner, spec, revision, settings, train_job_name(owner.name, revision, attempt), ROLE_TRAIN,
                    attempt, config_map)


def build_trial_job(owner: Owner, spec: FineTuneJobSpec, revision: int, settings: Settings, index: int) -> dict[str, Any]:
    """One trial of a revision's search: a one-pod training Job of ``spec`` (the trial's settings
    applied) reading the ConfigMap of its own name; placed, queued and suspended as the training Job."""
    name = trial_job_name(owner.name, revision, index)
    return _gpu_job(owner, spec, revision, settings, name, ROLE_TRIAL, 0, name)


def _gpu_job(owner: Owner, spec: FineTuneJobSpec, revision: int, settings: Settings, name: str, role: str,
             attempt: int, config_map: str | None) -> dict[str, Any]:
    labels = child_labels(owner, revision, role)
    job_labels = dict(labels)
    if spec.queue_name:
        job_labels[KUEUE_QUEUE_LABEL] = spec.queue_name
    volumes, mounts = _volumes(owner, spec, revision, with_shm=True, config_map=config_map)
    requests: dict[str, Any] = {"cpu": spec.cpu, "memory": spec.memory}
    # No CPU limit: a throttled trainer is only slower; memory is capped at the request.
    limits: dict[str, Any] = {"memory": spec.memory}
    if spec.gpus > 0:
        # Extended resources must have requests == limits.
        requests[spec.gpu_resource_name] = str(spec.gpus)
        limits[spec.gpu_resource_name] = str(spec.gpus)
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "terminationGracePeriodSeconds": GRACE_SECONDS,
        "containers": [{
            "name": CONTAINER,
            "image": settings.trainer_image,
            "imagePullPolicy": settings.image_pull_policy,
            "command": trainer_command(spec, owner, revision, attempt),
            "env": _env(spec) + _distributed_env(spec),
            "resources": {"requests": requests, "limits": limits},
            "volumeMounts": mounts,
            "securityContext": container_security_context(),
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }],
        "volumes": volumes,
    }
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    tolerations = _tolerations(spec, settings)
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if spec.priority_class_name:
        pod_spec["priorityClassName"] = spec.priority_class_name
    job_spec: dict[str, Any] = {
        "backoffLimit": spec.backoff_limit,
        "activeDeadlineSeconds": spec.active_deadline_seconds,
        "suspend": train_job_suspended(spec),
        "podFailurePolicy": _pod_failure_policy(gang=spec.nodes > 1),
        "podReplacementPolicy": "Failed",
        "template": {"metadata": _pod_meta(labels, settings), "spec": pod_spec},
    }
    if spec.nodes > 1:
        # One pod per node; pod i is <job>-<i> under the headless Service <job> (its subdomain).
        pod_spec["subdomain"] = workers_service_name(owner.name, revision)
        pod_spec["initContainers"] = [_gang_wait(spec, owner, revision, attempt, settings)]
        pod_spec["containers"][0]["ports"] = [{"name": "rendezvous", "containerPort": RENDEZVOUS_PORT}]
        job_spec.update({
            "completionMode": "Indexed",
            "completions": spec.nodes,
            "parallelism": spec.nodes,
            # Every failure fails the gang at once (the pod failure policy); no retries of a worker.
            "backoffLimit": 0,
        })
    return _job(owner, name, job_labels, job_spec)


def worker_hostnames(owner: Owner, spec: FineTuneJobSpec, revision: int, attempt: int = 0) -> list[str]:
    """Each worker's DNS name, by rank: ``<job>-<rank>.<workers service>``."""
    job, service = train_job_name(owner.name, revision, attempt), workers_service_name(owner.name, revision)
    return [f"{job}-{rank}.{service}" for rank in range(spec.nodes)]


def _gang_wait(spec: FineTuneJobSpec, owner: Owner, revision: int, attempt: int, settings: Settings) -> dict[str, Any]:
    resources = {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "64Mi"}}
    return {
        "name": "wait-for-gang",
        "image": settings.trainer_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["python3", "-c", GANG_WAIT],
        "args": worker_hostnames(owner, spec, revision, attempt),
        "resources": resources,
        "securityContext": container_security_context(),
    }


def trainer_command(spec: FineTuneJobSpec, owner: Owner, revision: int, attempt: int = 0) -> list[str]:
    """One process for one GPU (or the CPU); torchrun with one process per GPU above that, and
    across the pods of an Indexed Job when ``nodes`` > 1 (static rendezvous at pod 0)."""
    train = ["train", "--config", CONFIG_PATH]
    if spec.world_size == 1:
        return ["tuneforge-train", *train]
    # torchrun (torch.distributed.run) through the trainer's launcher, which exits 128 + signal
    # (143) when the kubelet stops the pod, where torchrun itself exits 1. Its workers get nearly
    # the whole grace period to checkpoint (torchrun's default is 30 s).
    run = ["python3", "-m", "tuneforge_trainer.launch", f"--nproc-per-node={spec.procs_per_node}",
           f"--shutdown-timeout={SHUTDOWN_SECONDS}"]
    if spec.nodes == 1:
        run.append("--standalone")
    else:
        run += [
            f"--nnodes={spec.nodes}",
            # The node rank comes from the pod's completion index (PET_NODE_RANK, set below).
            f"--master-addr={worker_hostnames(owner, spec, revision, attempt)[0]}",
            f"--master-port={RENDEZVOUS_PORT}",
            # The static rendezvous gives up after 600 s by default; a gang may wait for its
            # last worker's node (autoscaling, a cold image pull) as long as the Job may run.
            f"--rdzv-conf=timeout={spec.active_deadline_seconds}",
        ]
    return [*run, "-m", "tuneforge_trainer", *train]


def cpu_request_cores(cpu: str) -> int | None:
    """Whole cores of a CPU quantity ("500m" -> 1, "2" -> 2, "2.5" -> 2); None if not a plain
    count of cores or millicores."""
    try:
        cores = int(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
    except ValueError:
        return None
    return max(1, int(cores))


def _distributed_env(spec: FineTuneJobSpec) -> list[dict[str, Any]]:
    if spec.nodes == 1:
        return []
    # torchrun reads every option from PET_<OPTION> as well: the rank is the pod's own index.
    env: list[dict[str, Any]] = [{"name": "PET_NODE_RANK", "valueFrom": {"fieldRef": {
        "fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"}}}]
    cores = cpu_request_cores(spec.cpu)
    if cores is not None:
        # Every step waits for the slowest worker, and workers often share a node: each pod's
        # processes keep to its CPU request (the trainer splits it among them) instead of all cores.
        env.append({"name": "TUNEFORGE_THREADS", "value": str(cores)})
    return env


def build_workers_service(owner: Owner, spec: FineTuneJobSpec, revision: int) -> dict[str, Any]:
    """The headless Service that gives each worker of a multi-node Job a stable DNS name
    (``<job>-<rank>.<job>``): the rendezvous address is pod 0's. Not-ready addresses are
    published, so the workers find each other while they start."""
    labels = child_labels(owner, revision, ROLE_TRAIN)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": workers_service_name(owner.name, revision),
            "namespace": owner.namespace,
            "labels": labels,
            "ownerReferences": owner_references(owner),
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": labels,
            "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT}],
        },
    }


# Reads <output>/summary.json (the trainer's copy of its result, beside the artifacts) and hands
# it over as this container's termination message, trimmed to 4 KiB by the trainer's own
# summary module. Runs in the trainer image: it has boto3 and the job's S3 credentials, where the
# operator has neither (no S3 client or SigV4 in the operator; no Secret access either).
SUMMARY_READER = """\
import os, sys
uri = sys.argv[1].rstrip("/") + "/summary.json"
out = "/dev/termination-log"
try:
    if uri.startswith("s3://"):
        import boto3
        bucket, _, key = uri[len("s3://"):].partition("/")
        s3 = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)
        text = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8")
    else:
        with open(uri, encoding="utf-8") as f:
            text = f.read()
except Exception as exc:
    with open(out, "w") as f:
        f.write(f"cannot read {uri}: {type(exc).__name__}: {exc}"[:4000])
    sys.exit(1)
try:
    from tuneforge_trainer.summary import parse_summary
    text = parse_summary(text).to_json()
except ImportError:
    pass
with open(out, "w", encoding="utf-8") as f:
    f.write(text)
"""


def build_summary_job(owner: Owner, spec: FineTuneJobSpec, revision: int, settings: Settings,
                      trial: int | None = None) -> dict[str, Any]:
    """A seconds-long CPU Job that reads a finished run's summary.json from the output store,
    for when the training pods (and their termination messages) are gone (``trial``: a search
    trial's, from its own folder)."""
    labels = child_labels(owner, revision, ROLE_SUMMARY)
    # No ConfigMap sources: it reads no data, and one deleted since training would keep it waiting.
    volumes, mounts = _volumes(owner, spec, revision, with_shm=False, with_config_maps=False)
    # It only reads: every claim read-only (the /tmp emptyDir stays writable for boto3).
    for v in volumes:
        if "persistentVolumeClaim" in v:
            v["persistentVolumeClaim"]["readOnly"] = True
    for m in mounts:
        if m["name"].startswith("pvc-"):
            m["readOnly"] = True
    where = (output_location(spec, owner.namespace, owner.name, owner.uid, revision) if trial is None
             else trial_location(spec, owner.namespace, owner.name, owner.uid, revision, trial))
    command = ["python3", "-c", SUMMARY_READER, where]
    env = [e for e in _env(spec) if e["name"] != ENV_OPENAI_KEY and e["name"] != ENV_HF_TOKEN]
    pod = _cpu_pod(labels, settings, command, env, volumes, mounts)
    name = summary_job_name(owner.name, revision) if trial is None else trial_summary_job_name(owner.name, revision, trial)
    return _job(owner, name, labels, {
        "backoffLimit": 1,
        "activeDeadlineSeconds": 300,
        "template": pod,
    })
