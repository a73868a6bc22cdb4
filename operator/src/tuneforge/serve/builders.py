"""Pure builders for a ModelServe's children, on top of server.py's one-server builders: the two
color Deployments and their version ConfigMaps, the active and preview Services, the
PodDisruptionBudget, the optional HPA and InferencePools. No I/O; everything is passed in
(names and labels: names.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .names import (
    ANNOTATION_VERSION, COLORS, LABEL_COLOR, LABEL_MODELSERVE, LABEL_NAME, LABEL_VERSION,
    active_service_name, color_name, config_name, preview_service_name,
)
from .server import PORT, AdapterRef, SecretRef, ServerPlan, build_config_map, build_deployment
from .source import ServedVersion
from .spec import ModelServeSpec

__all__ = [
    "ServeContext", "build_active_service", "build_color_deployment", "build_hpa", "build_inference_pool", "build_pdb",
    "build_preview_service", "build_version_config_map", "color_plan", "endpoints",
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
    s3_access_key: SecretRef | None = None
    s3_secret_key: SecretRef | None = None
    node_selector: dict[str, str] = dataclasses.field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()


def _meta(ctx: ServeContext, name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ctx.namespace,
                            "labels": {LABEL_NAME: "tuneforge-server", LABEL_MODELSERVE: ctx.name,
                                       "app.kubernetes.io/managed-by": "tuneforge", **(labels or {})}}
    if ctx.owner_references:
        meta["ownerReferences"] = [dict(o) for o in ctx.owner_references]
    return meta


def color_plan(ctx: ServeContext, spec: ModelServeSpec, color: str, version: ServedVersion, replicas: int) -> ServerPlan:
    """The server plan of one color serving ``version``."""
    return ServerPlan(
        name=color_name(ctx.name, color), namespace=ctx.namespace, image=ctx.image,
        base_uri=version.base_uri, base_name=f"{ctx.name}-base", base_digest=version.base_digest,
        adapters=tuple(AdapterRef(a.name, a.uri, a.digest) for a in version.adapters),
        mode=spec.mode, replicas=replicas, gpus=spec.gpus, cpu=spec.cpu, memory=spec.memory,
        max_model_len=spec.max_model_len,
        api_key=SecretRef(spec.api_key.name, spec.api_key.key) if spec.api_key else None,
        s3_endpoint=ctx.s3_endpoint, s3_region=ctx.s3_region, s3_access_key=ctx.s3_access_key,
        s3_secret_key=ctx.s3_secret_key, node_selector=dict(ctx.node_selector), tolerations=ctx.tolerations,
        labels={LABEL_MODELSERVE: ctx.name, LABEL_COLOR: color, LABEL_VERSION: version.short},
        owner_references=ctx.owner_references, config_name=config_name(ctx.name, version.short),
        annotations={ANNOTATION_VERSION: version.digest},
        extra_args=("--dtype", spec.dtype) if spec.dtype != "auto" else (),
    )


def build_version_config_map(ctx: ServeContext, spec: ModelServeSpec, version: ServedVersion) -> dict[str, Any]:
    """The launcher config of one version, immutable (both colors may mount it; a changed spec
    that changes the config is a new version's ConfigMap, never an edit under a running pod)."""
    cm = build_config_map(color_plan(ctx, spec, COLORS[0], version, 0))
    cm["metadata"]["labels"] = _meta(ctx, "", {LABEL_VERSION: version.short})["labels"]
    cm["metadata"]["annotations"] = {ANNOTATION_VERSION: version.digest}
    cm["immutable"] = True
    return cm


def build_color_deployment(ctx: ServeContext, spec: ModelServeSpec, color: str, version: ServedVersion, replicas: int) -> dict[str, Any]:
    """One color's Deployment (selector ``instance: <name>-<color>``, fixed for its life; pods
    labelled with the ModelServe, the color and the short version digest)."""
    return build_deployment(color_plan(ctx, spec, color, version, replicas))


def _service(ctx: ServeContext, name: str, color: str | None, role: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Service", "metadata": _meta(ctx, name, {"tuneforge.dev/role": role}),
        "spec": {"selector": {LABEL_MODELSERVE: ctx.name, LABEL_COLOR: color or NO_COLOR},
                 "ports": [{"name": "http", "port": PORT, "targetPort": "http", "appProtocol": "http"}]},
    }


def build_active_service(ctx: ServeContext, color: str | None) -> dict[str, Any]:
    """What clients call; selects the active color (none before the first promotion)."""
    return _service(ctx, active_service_name(ctx.name), color, "active")


def build_preview_service(ctx: ServeContext, color: str | None) -> dict[str, Any]:
    """What the gate calls; selects the candidate's color (the active one between rollouts)."""
    return _service(ctx, preview_service_name(ctx.name), color, "preview")


def build_pdb(ctx: ServeContext) -> dict[str, Any]:
    """At most one server pod of the ModelServe evicted at a time (both colors): a node drain
    goes one pod at a time and is never blocked for good, even with one replica."""
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _meta(ctx, ctx.name),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {LABEL_MODELSERVE: ctx.name}}}}


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
            # Model load takes minutes: do not flap on a burst.
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
        },
    }


def build_inference_pool(ctx: ServeContext, spec: ModelServeSpec, color: str) -> dict[str, Any] | None:
    """One color as a Gateway API Inference Extension InferencePool (v1); None unless enabled.
    The reconcile skips it when the CRD is not installed."""
    if spec.inference_pool is None:
        return None
    return {
        "apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
        "metadata": _meta(ctx, color_name(ctx.name, color), {LABEL_COLOR: color}),
        "spec": {
            "selector": {"matchLabels": {LABEL_MODELSERVE: ctx.name, LABEL_COLOR: color}},
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
