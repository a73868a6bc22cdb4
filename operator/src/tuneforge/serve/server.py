"""Pure builders for one server (one color of a ModelServe): the launcher's config, its
Deployment and its Service. No I/O; every input is passed in.

The launcher config is the server image's contract (``tuneforge_server.config.ServerConfig``,
snake_case YAML); tests/server feeds this module's output through that parser. Pods run the
image's launcher, which fetches and pre-flights the weights and execs vLLM:

- readiness: ``python -S -m tuneforge_server.probe`` (exec, standard library only: passes only
  when every adapter is listed; 10 s per try and three misses, so a busy CPU server is not
  marked NotReady exactly when it is busiest);
- startup: ``/health`` with a budget for fetching, merging and loading the model;
- liveness: ``/health``;
- draining: a preStop sleep (endpoints drop the pod first), then SIGTERM; vLLM refuses new
  requests and finishes in-flight ones for ``drain_seconds`` (``--shutdown-timeout``);
- the API key comes from a Secret into an environment variable the config names;
- ``enableServiceLinks: false``: a Service named ``vllm`` would inject VLLM_* settings.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import yaml

from ..labels import LABEL_INSTANCE, child_labels
from ..pod_security import container_security_context, pod_security_context
from .spec import AdapterSource, CacheSpec, SecretKeyRef

__all__ = ["ServerPlan", "build_config_map", "build_deployment", "build_service", "render_server_config", "secret_env"]

CONFIG_DIR = "/etc/tuneforge"
CONFIG_FILE = "server.yaml"
CACHE_DIR = "/var/cache/tuneforge"
PVC_ROOT = "/mnt/pvc"
API_KEY_ENV = "TUNEFORGE_API_KEY"
PORT = 8000
CONTAINER = "server"
GPU_RESOURCE = "nvidia.com/gpu"


@dataclasses.dataclass(frozen=True)
class ServerPlan:
    """Everything one server Deployment needs (what a ModelServe color resolves to)."""

    name: str
    namespace: str
    image: str
    base_uri: str
    base_name: str
    adapters: tuple[AdapterSource, ...] = ()
    base_digest: str | None = None
    accept_lineage_mismatch: bool = False
    mode: str = "auto"
    head: str = "lm"
    """lm, or classifier: vLLM's pooling runner and /classify (the launcher config's ``head``)."""
    replicas: int = 1
    gpus: int = 1
    cpu: str | None = None
    memory: str | None = None
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    api_key: SecretKeyRef | None = None
    s3_endpoint: str | None = None
    s3_region: str | None = None
    s3_access_key: SecretKeyRef | None = None
    s3_secret_key: SecretKeyRef | None = None
    drain_seconds: int = 30
    pre_stop_seconds: int = 5
    startup_budget_seconds: int = 900
    cache: CacheSpec = CacheSpec()
    node_selector: dict[str, str] = dataclasses.field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    owner_references: tuple[dict[str, Any], ...] = ()
    extra_args: tuple[str, ...] = ()
    config_name: str | None = None
    """The launcher ConfigMap the pods mount (default: ``name``); a ModelServe color mounts its
    version's immutable ConfigMap, so a version change never rewrites a running pod's config."""
    annotations: dict[str, str] = dataclasses.field(default_factory=dict)
    """Annotations of the Deployment and its pod template (e.g. the served version's digest)."""
    selector: dict[str, str] | None = None
    """The Deployment's selector (default: ``app.kubernetes.io/instance: <name>``)."""


def render_server_config(plan: ServerPlan) -> dict[str, Any]:
    """The launcher's config (``tuneforge_server.config.ServerConfig``) for ``plan``."""
    model: dict[str, Any] = {"uri": plan.base_uri, "name": plan.base_name}
    if plan.base_digest:
        model["digest"] = plan.base_digest
    if plan.accept_lineage_mismatch:
        model["accept_lineage_mismatch"] = True
    cfg: dict[str, Any] = {
        "api_version": "tuneforge.dev/server-config/v1",
        "model": model,
        "adapters": [{k: v for k, v in dataclasses.asdict(a).items() if v is not None} for a in plan.adapters],
        "mode": plan.mode,
        "gpus": plan.gpus,
        "port": PORT,
        "cache_dir": CACHE_DIR,
        "pvc_root": PVC_ROOT,
        "shutdown": {"drain_seconds": plan.drain_seconds},
    }
    if plan.head != "lm":  # unset for lm: an lm server's config (and template hash) stays as it was
        cfg["head"] = plan.head
    if plan.max_model_len:
        cfg["max_model_len"] = plan.max_model_len
    if plan.max_num_seqs:  # unset: the config (and template hash) of a spec without it stays as it was
        cfg["max_num_seqs"] = plan.max_num_seqs
    if plan.api_key:
        cfg["api_key_env"] = API_KEY_ENV
    if plan.extra_args:
        cfg["extra_args"] = list(plan.extra_args)
    return cfg


def _meta(plan: ServerPlan, name: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": plan.namespace, "labels": _labels(plan)}
    if plan.annotations:
        meta["annotations"] = dict(plan.annotations)
    if plan.owner_references:
        meta["ownerReferences"] = [dict(o) for o in plan.owner_references]
    return meta


def _labels(plan: ServerPlan) -> dict[str, str]:
    return child_labels("tuneforge-server", {LABEL_INSTANCE: plan.name, **plan.labels})


def build_config_map(plan: ServerPlan) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(plan, plan.config_name or plan.name),
            "data": {CONFIG_FILE: yaml.safe_dump(render_server_config(plan), sort_keys=False)}}


def secret_env(var: str, ref: SecretKeyRef | None) -> list[dict[str, Any]]:
    return [{"name": var, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}] if ref else []


def _env(plan: ServerPlan) -> list[dict[str, Any]]:
    env = [{"name": "HOME", "value": CACHE_DIR}, {"name": "TMPDIR", "value": "/tmp"}]
    if plan.s3_endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": plan.s3_endpoint})
    if plan.s3_region:
        env.append({"name": "AWS_REGION", "value": plan.s3_region})
    return env + secret_env("AWS_ACCESS_KEY_ID", plan.s3_access_key) + secret_env("AWS_SECRET_ACCESS_KEY", plan.s3_secret_key) + secret_env(API_KEY_ENV, plan.api_key)


def _pvc_claims(plan: ServerPlan) -> list[str]:
    uris = [plan.base_uri, *(a.uri for a in plan.adapters)]
    return sorted({u.removeprefix("pvc://").split("/", 1)[0] for u in uris if u.startswith("pvc://")})


def _resources(plan: ServerPlan) -> dict[str, Any]:
    # An emptyDir cache of a known size is node disk the scheduler must count.
    disk = plan.cache.size if plan.cache.volume == "emptyDir" else None
    requests = {k: v for k, v in {"cpu": plan.cpu, "memory": plan.memory, "ephemeral-storage": disk}.items() if v}
    # gpus: 0 is CPU serving: no GPU limit, so the pod never waits for (or holds) a GPU.
    limits: dict[str, Any] = {GPU_RESOURCE: str(plan.gpus)} if plan.gpus else {}
    if plan.memory:
        limits["memory"] = plan.memory
    return {k: v for k, v in {"requests": requests, "limits": limits}.items() if v}


def _cache_volume(cache: CacheSpec) -> dict[str, Any]:
    if cache.volume == "ephemeral":
        claim: dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": cache.size}}}
        if cache.storage_class:
            claim["storageClassName"] = cache.storage_class
        return {"name": "cache", "ephemeral": {"volumeClaimTemplate": {"spec": claim}}}
    return {"name": "cache", "emptyDir": {"sizeLimit": cache.size} if cache.size else {}}


def pod_spec(plan: ServerPlan, restart_policy: str = "Always") -> dict[str, Any]:
    """The server pod (also used bare, with restartPolicy Never, to pre-flight an adapter)."""
    claims = _pvc_claims(plan)
    config_path = f"{CONFIG_DIR}/{CONFIG_FILE}"
    health = {"httpGet": {"path": "/health", "port": "http"}}
    spec: dict[str, Any] = {
        "restartPolicy": restart_policy,
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": plan.pre_stop_seconds + plan.drain_seconds + 15,
        "securityContext": pod_security_context(),
        "containers": [{
            "name": CONTAINER, "image": plan.image, "imagePullPolicy": "IfNotPresent",
            "args": ["launch", "--config", config_path],
            "env": _env(plan),
            "ports": [{"name": "http", "containerPort": PORT}],
            "startupProbe": {**health, "periodSeconds": 5, "failureThreshold": max(1, plan.startup_budget_seconds // 5)},
            "readinessProbe": {"exec": {"command": ["python", "-S", "-m", "tuneforge_server.probe", "--timeout", "8"]},
                               "periodSeconds": 5, "timeoutSeconds": 10, "failureThreshold": 3},
            "livenessProbe": {**health, "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 6},
            "lifecycle": {"preStop": {"sleep": {"seconds": plan.pre_stop_seconds}}},
            "resources": _resources(plan),
            "securityContext": container_security_context(),
            "volumeMounts": [
                {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
                {"name": "cache", "mountPath": CACHE_DIR},
                {"name": "tmp", "mountPath": "/tmp"},
                {"name": "shm", "mountPath": "/dev/shm"},
                *({"name": f"pvc-{c}", "mountPath": f"{PVC_ROOT}/{c}", "readOnly": True} for c in claims),
            ],
        }],
        "volumes": [
            {"name": "config", "configMap": {"name": plan.config_name or plan.name}},
            _cache_volume(plan.cache),
            {"name": "tmp", "emptyDir": {}},
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}},
            *({"name": f"pvc-{c}", "persistentVolumeClaim": {"claimName": c, "readOnly": True}} for c in claims),
        ],
    }
    if plan.node_selector:
        spec["nodeSelector"] = dict(plan.node_selector)
    # Only GPU servers tolerate the GPU taint: a CPU server must not take a GPU node's CPUs.
    gpu = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}] if plan.gpus else []
    if gpu or plan.tolerations:
        spec["tolerations"] = [*gpu, *plan.tolerations]
    return spec


def build_deployment(plan: ServerPlan) -> dict[str, Any]:
    selector = dict(plan.selector) if plan.selector else {LABEL_INSTANCE: plan.name}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(plan, plan.name),
        "spec": {
            "replicas": plan.replicas,
            "selector": {"matchLabels": selector},
            # A new pod must be ready before an old one goes: GPUs permitting, no gap in serving.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": _labels(plan), "annotations": {
                    **plan.annotations,
                    "prometheus.io/scrape": "true", "prometheus.io/port": str(PORT), "prometheus.io/path": "/metrics"}},
                "spec": pod_spec(plan),
            },
        },
    }


def build_service(plan: ServerPlan, name: str | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Service", "metadata": _meta(plan, name or plan.name),
        "spec": {"selector": {LABEL_INSTANCE: plan.name},
                 "ports": [{"name": "http", "port": PORT, "targetPort": "http", "appProtocol": "http"}]},
    }
