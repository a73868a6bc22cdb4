"""Pure builders for a ModelServe's children, on top of server.py's one-server builders: the two
color Deployments and their version ConfigMaps, the active and preview Services, a
PodDisruptionBudget per color, the optional HPA and the active and preview InferencePools. No I/O; everything is passed in
(names and labels: names.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from ..labels import child_labels
from ..pod_security import container_security_context, pod_security_context
from .names import (
    ANNOTATION_ATTEMPT, ANNOTATION_TEMPLATE, ANNOTATION_VERSION, COLORS, LABEL_COLOR, LABEL_MODELSERVE, LABEL_VERSION,
    active_service_name, color_name, config_name, gate_job_name, preview_service_name,
)
from .server import API_KEY_ENV, PORT, ServerPlan, build_config_map, build_deployment, secret_env
from .source import ServedVersion
from .spec import HpaSpec, ModelServeSpec, SecretKeyRef

__all__ = [
    "GatePod", "ServeContext", "build_active_service", "build_color_deployment", "build_gate_job", "build_hpa",
    "build_inference_pool", "build_pdb", "build_preview_service", "build_scaled_object", "build_version_config_map",
    "color_plan", "endpoints", "serve_context", "template_hash",
]

NO_COLOR = "none"
"""The color a Service selects before anything is promoted: no pod has it, so no endpoint."""


@dataclasses.dataclass(frozen=True)
class ServeContext:
    """What every child of one ModelServe shares (from its metadata and the operator settings)."""

    name: str
    namespace: str
    image: str
    owner_references: tuple[dict[str, Any], ...] = ()
    s3_endpoint: str | None = None
    s3_region: str | None = None
    s3_access_key: SecretKeyRef | None = None
    s3_secret_key: SecretKeyRef | None = None
    node_selector: dict[str, str] = dataclasses.field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()


def serve_context(body: Any, spec: ModelServeSpec, image: str) -> ServeContext:
    """The shared part of every child of the ModelServe ``body`` (its metadata and spec)."""
    meta = body["metadata"]
    owner = {"apiVersion": body.get("apiVersion", "tuneforge.dev/v1alpha1"), "kind": body.get("kind", "ModelServe"),
             "name": meta["name"], "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}
    s3 = spec.s3
    return ServeContext(
        name=meta["name"], namespace=meta["namespace"], image=image, owner_references=(owner,),
        s3_endpoint=s3.endpoint if s3 else None, s3_region=s3.region if s3 else None,
        s3_access_key=s3.access_key if s3 else None,
        s3_secret_key=s3.secret_key if s3 else None,
        node_selector=dict(spec.node_selector), tolerations=tuple(dict(t) for t in spec.tolerations),
    )


def _meta(ctx: ServeContext, name: str, labels: dict[str, str] | None = None, app: str = "tuneforge-server",
          role: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ctx.namespace,
                            "labels": child_labels(app, {LABEL_MODELSERVE: ctx.name, **(labels or {})}, role)}
    if ctx.owner_references:
        meta["ownerReferences"] = [dict(o) for o in ctx.owner_references]
    return meta


def color_plan(ctx: ServeContext, spec: ModelServeSpec, color: str, version: ServedVersion, replicas: int) -> ServerPlan:
    """The server plan of one color serving ``version``."""
    return ServerPlan(
        name=color_name(ctx.name, color), namespace=ctx.namespace, image=ctx.image,
        base_uri=version.base_uri, base_name=f"{ctx.name}-base", base_digest=version.base_digest,
        accept_lineage_mismatch=spec.accept_lineage_mismatch, adapters=version.adapters,
        cache=spec.cache, startup_budget_seconds=spec.startup_budget_seconds,
        mode=spec.mode, head=version.head, replicas=replicas, gpus=spec.gpus, cpu=spec.cpu, memory=spec.memory,
        max_model_len=spec.max_model_len, max_num_seqs=spec.max_num_seqs,
        api_key=spec.api_key,
        s3_endpoint=ctx.s3_endpoint, s3_region=ctx.s3_region, s3_access_key=ctx.s3_access_key,
        s3_secret_key=ctx.s3_secret_key, node_selector=dict(ctx.node_selector), tolerations=ctx.tolerations,
        labels={LABEL_MODELSERVE: ctx.name, LABEL_COLOR: color, LABEL_VERSION: version.short},
        owner_references=ctx.owner_references, config_name=config_name(ctx.name, version.template_hash or version.short),
        annotations=_version_annotations(version),
        extra_args=("--dtype", spec.dtype) if spec.dtype != "auto" else (),
    )


def _version_annotations(version: ServedVersion) -> dict[str, str]:
    out = {ANNOTATION_VERSION: version.digest}
    if version.template_hash:
        out[ANNOTATION_TEMPLATE] = version.template_hash
    return out


def template_hash(ctx: ServeContext, spec: ModelServeSpec, version: ServedVersion) -> str:
    """10 hex digits over the launcher config and the pod template a color serving ``version``
    renders (Argo's pod-template-hash): with the digest, the rollout's identity. The color,
    the replica count and the hash itself are left out, so both colors agree and the hash is
    stable; anything else that reaches a pod (spec fields, operator settings such as the server
    image, the builders' own output) changes it."""
    p = color_plan(ctx, spec, COLORS[0], dataclasses.replace(version, template_hash=None), 0)
    rendered = {"config": build_config_map(p).get("data"), "template": build_deployment(p)["spec"]["template"]}
    return hashlib.sha256(json.dumps(rendered, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:10]


def build_version_config_map(ctx: ServeContext, spec: ModelServeSpec, version: ServedVersion) -> dict[str, Any]:
    """The launcher config of one version, immutable (both colors may mount it; a changed spec
    that changes the config is a new version's ConfigMap, never an edit under a running pod)."""
    cm = build_config_map(color_plan(ctx, spec, COLORS[0], version, 0))
    cm["metadata"]["labels"] = _meta(ctx, "", {LABEL_VERSION: version.short})["labels"]
    cm["metadata"]["annotations"] = _version_annotations(version)
    cm["immutable"] = True
    return cm


def build_color_deployment(ctx: ServeContext, spec: ModelServeSpec, color: str, version: ServedVersion, replicas: int) -> dict[str, Any]:
    """One color's Deployment (selector ``instance: <name>-<color>``, fixed for its life; pods
    labelled with the ModelServe, the color and the short version digest)."""
    return build_deployment(color_plan(ctx, spec, color, version, replicas))


def _service(ctx: ServeContext, name: str, color: str | None, role: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Service", "metadata": _meta(ctx, name, role=role),
        "spec": {"selector": {LABEL_MODELSERVE: ctx.name, LABEL_COLOR: color or NO_COLOR},
                 "ports": [{"name": "http", "port": PORT, "targetPort": "http", "appProtocol": "http"}]},
    }


def build_active_service(ctx: ServeContext, color: str | None) -> dict[str, Any]:
    """What clients call; selects the active color (none before the first promotion)."""
    return _service(ctx, active_service_name(ctx.name), color, "active")


def build_preview_service(ctx: ServeContext, color: str | None) -> dict[str, Any]:
    """What the gate calls; selects the candidate's color (the active one between rollouts)."""
    return _service(ctx, preview_service_name(ctx.name), color, "preview")


def build_pdb(ctx: ServeContext, color: str) -> dict[str, Any]:
    """At most one pod of one color evicted at a time. Per color, so a candidate's Pending or
    crash-looping pods never use up the active color's budget; unhealthy (not Ready) pods are
    always evictable, so a drain is never blocked by pods that serve nothing."""
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": _meta(ctx, color_name(ctx.name, color), {LABEL_COLOR: color}),
            "spec": {"maxUnavailable": 1, "unhealthyPodEvictionPolicy": "AlwaysAllow",
                     "selector": {"matchLabels": {LABEL_MODELSERVE: ctx.name, LABEL_COLOR: color}}}}


def scale_behavior(hpa: HpaSpec) -> dict[str, Any]:
    """The autoscaler's behaviour, the HPA's and KEDA's alike: scale down only after the waiting
    requests stayed low for ``scaleDownStabilizationSeconds`` (300 by default: a model load takes
    minutes, do not flap on a burst)."""
    return {"scaleDown": {"stabilizationWindowSeconds": hpa.scale_down_stabilization_seconds}}


def build_hpa(ctx: ServeContext, spec: ModelServeSpec, color: str) -> dict[str, Any] | None:
    """Scale the active color on vLLM's waiting requests per pod (a Pods metric, served through
    a metrics adapter such as prometheus-adapter from the pods' /metrics); None without spec.hpa.
    It follows the active color: the reconcile rebuilds it on a switch."""
    if spec.hpa is None:
        return None
    return {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": _meta(ctx, ctx.name),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": color_name(ctx.name, color)},
            "minReplicas": spec.hpa.min_replicas, "maxReplicas": spec.hpa.max_replicas,
            "metrics": [{"type": "Pods", "pods": {
                "metric": {"name": spec.hpa.metric},
                "target": {"type": "AverageValue", "averageValue": str(spec.hpa.target_waiting_requests)}}}],
            "behavior": scale_behavior(spec.hpa),
        },
    }


def build_scaled_object(ctx: ServeContext, spec: ModelServeSpec, color: str, server_address: str,
                        query: str) -> dict[str, Any] | None:
    """KEDA's ScaledObject for the active color, in place of ``build_hpa`` where KEDA is installed:
    a Prometheus trigger on ``query`` (the color's waiting requests, summed over its pods; KEDA
    divides by the replicas, as the HPA's AverageValue target), the same bounds and scale-down
    window. KEDA makes and owns the HPA, named as the ModelServe (as ``build_hpa``'s); None without
    spec.hpa."""
    if spec.hpa is None:
        return None
    return {
        "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": _meta(ctx, ctx.name),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": color_name(ctx.name, color)},
            "minReplicaCount": spec.hpa.min_replicas, "maxReplicaCount": spec.hpa.max_replicas,
            "advanced": {"horizontalPodAutoscalerConfig": {
                "name": ctx.name, "behavior": scale_behavior(spec.hpa)}},
            "triggers": [{"type": "prometheus", "metricType": "AverageValue", "metadata": {
                "serverAddress": server_address, "query": query,
                "threshold": str(spec.hpa.target_waiting_requests)}}],
        },
    }


def build_inference_pool(ctx: ServeContext, spec: ModelServeSpec, role: str, color: str | None) -> dict[str, Any] | None:
    """A Gateway API Inference Extension InferencePool (v1) named as the Service of ``role``
    (``active``: ``<name>``, ``preview``: ``<name>-preview``) selecting ``color``, as that
    Service does: an HTTPRoute to ``<name>`` follows promotions and rollbacks. None unless
    enabled; the reconcile skips it when the CRD is not installed."""
    if spec.inference_pool is None:
        return None
    name = active_service_name(ctx.name) if role == "active" else preview_service_name(ctx.name)
    return {
        "apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
        "metadata": _meta(ctx, name, role=role),
        "spec": {
            "selector": {"matchLabels": {LABEL_MODELSERVE: ctx.name, LABEL_COLOR: color or NO_COLOR}},
            "targetPorts": [{"number": PORT}],
            "endpointPickerRef": {"kind": "Service", "name": spec.inference_pool.endpoint_picker,
                                  "port": {"number": spec.inference_pool.endpoint_picker_port}},
        },
    }


def endpoints(ctx: ServeContext) -> dict[str, str]:
    """In-cluster base URLs of the OpenAI-compatible API (status.endpoints)."""
    host = f"{ctx.namespace}.svc:{PORT}/v1"
    return {"active": f"http://{active_service_name(ctx.name)}.{host}",
            "preview": f"http://{preview_service_name(ctx.name)}.{host}"}


@dataclasses.dataclass(frozen=True)
class GatePod:
    """Operator settings for gate pods: the operator image and where they run."""

    image: str
    pull_policy: str = "IfNotPresent"
    node_selector: dict[str, str] = dataclasses.field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()
    annotations: dict[str, str] = dataclasses.field(default_factory=dict)


GATE_TTL_SECONDS = 86_400
"""A finished gate Job stays a day (its result is in the status by then; a lost one is re-run)."""


def build_gate_job(ctx: ServeContext, spec: ModelServeSpec, version: ServedVersion, pod: GatePod,
                   attempt: int = 0) -> dict[str, Any]:
    """The gate of one rollout attempt (named and annotated with it: a retry is a new Job): ``python3 -m tuneforge.serve.gate`` in the operator image asks
    the held-out rows through the preview Service and leaves its measures in the termination
    message. Rows: ``spec.rollout.gate.datasetUri``, else the FineTuneJob's predictions (an empty
    ``--rows-uri`` when neither exists: the Job fails with a message naming the field). It asks
    the version's first adapter by its served name; a classifier version through ``/classify``
    (``--head classifier``)."""
    gate = spec.rollout.gate
    assert gate is not None
    rows_uri = gate.dataset_uri or version.eval_rows_uri or ""
    model = version.adapters[0].name if version.adapters else f"{ctx.name}-base"
    url = f"http://{preview_service_name(ctx.name)}.{ctx.namespace}.svc:{PORT}/v1"
    env = [{"name": "HOME", "value": "/tmp"}]
    if ctx.s3_endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": ctx.s3_endpoint})
    if ctx.s3_region:
        env.append({"name": "AWS_REGION", "value": ctx.s3_region})
    env += secret_env("AWS_ACCESS_KEY_ID", ctx.s3_access_key) + secret_env("AWS_SECRET_ACCESS_KEY", ctx.s3_secret_key)
    env += secret_env(API_KEY_ENV, spec.api_key)
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    if rows_uri.startswith("pvc://"):
        claim = rows_uri.removeprefix("pvc://").split("/", 1)[0]
        mounts.append({"name": "rows", "mountPath": f"/mnt/pvc/{claim}", "readOnly": True})
        volumes.append({"name": "rows", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
    meta = _meta(ctx, gate_job_name(ctx.name, version.short, attempt), {LABEL_VERSION: version.short}, "tuneforge-gate", "gate")
    meta["annotations"] = {ANNOTATION_VERSION: version.digest, ANNOTATION_ATTEMPT: str(attempt)}
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never", "enableServiceLinks": False, "automountServiceAccountToken": False,
        # No fsGroup: the pod writes to no volume but its /tmp emptyDir, and a group change of
        # the rows' claim (possibly a large artifacts PVC) would only slow its start.
        "securityContext": pod_security_context(fs_group=False),
        "containers": [{
            "name": "gate", "image": pod.image, "imagePullPolicy": pod.pull_policy,
            "command": ["python3", "-m", "tuneforge.serve.gate", "--base-url", url, "--model", model,
                        "--rows-uri", rows_uri, "--rows", str(gate.rows), "--concurrency", str(gate.concurrency),
                        "--timeout", str(min(60, gate.timeout_seconds)),
                        *(["--head", version.head] if version.head != "lm" else [])],
            "env": env,
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
            "securityContext": container_security_context(),
            "volumeMounts": mounts,
        }],
        "volumes": volumes,
    }
    if pod.node_selector:
        pod_spec["nodeSelector"] = dict(pod.node_selector)
    if pod.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in pod.tolerations]
    return {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": meta,
        "spec": {
            # A pod evicted by a drain or preempted is retried (not counted against backoffLimit);
            # unusable rows (exit 2) fail at once; any other failure is retried once.
            "backoffLimit": 1,
            "podFailurePolicy": {"rules": [
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                {"action": "FailJob", "onExitCodes": {"containerName": "gate", "operator": "In", "values": [2]}}]},
            "activeDeadlineSeconds": gate.timeout_seconds, "ttlSecondsAfterFinished": GATE_TTL_SECONDS,
            # The pods carry no modelserve label: the PDB and the Services select by it.
            "template": {"metadata": {"labels": {k: v for k, v in meta["labels"].items() if k != LABEL_MODELSERVE},
                                      "annotations": dict(pod.annotations)}, "spec": pod_spec},
        },
    }
