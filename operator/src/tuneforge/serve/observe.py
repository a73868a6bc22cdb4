"""What exists, read from a ModelServe's children (plain dicts as the API returns them) into
status.py's :class:`Observed`. Pure: the reconcile passes the objects in (the operator keeps them
in Kopf indexes, as ``project_child`` projects them)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, Iterable, Mapping

from .gate import GateMeasures
from .server import GPU_RESOURCE
from .names import ANNOTATION_ATTEMPT, ANNOTATION_TEMPLATE, ANNOTATION_VERSION, COLORS, LABEL_COLOR, active_service_name, color_name, preview_service_name
from .status import ColorState, GateJob, Observed

__all__ = ["observe", "observe_color", "template_gpus", "observe_gate_job", "project_child", "service_color"]

Obj = Mapping[str, Any]


_KEPT_CONDITION = ("type", "status", "reason", "message")
_KEPT_DEPLOYMENT_STATUS = ("readyReplicas", "updatedReplicas", "replicas", "observedGeneration")


def project_child(kind: str, body: Obj) -> dict[str, Any]:
    """What the operator's index keeps of a ModelServe's child (a color Deployment, a Service or a
    gate Job), in the API's shape: what ``reconcile`` and ``observe`` read, nothing more (a full
    Deployment with its pod template is many times this). ``kind`` is given: Kopf's initial
    listing need not name it on each object."""
    m = body.get("metadata") or {}
    meta: dict[str, Any] = {
        "name": m.get("name"), "uid": m.get("uid"), "labels": dict(m.get("labels") or {}),
        "generation": m.get("generation"), "creationTimestamp": m.get("creationTimestamp"),
        # The controller only: a label proves nothing (reconcile reads only children it controls).
        "ownerReferences": [{"uid": o.get("uid"), "controller": True} for o in m.get("ownerReferences") or () if o.get("controller")],
    }
    kept = {k: v for k, v in (m.get("annotations") or {}).items()
            if k in (ANNOTATION_VERSION, ANNOTATION_TEMPLATE, ANNOTATION_ATTEMPT)}
    if kept:
        meta["annotations"] = kept
    spec, status = body.get("spec") or {}, body.get("status") or {}
    out: dict[str, Any] = {"kind": kind, "metadata": meta}
    if kind == "Deployment":
        out["spec"] = {"replicas": spec["replicas"]} if "replicas" in spec else {}
        # The GPUs its pods ask for (status.usage counts them); no template, no GPU: nothing kept.
        containers = [{"resources": {"limits": {GPU_RESOURCE: lim[GPU_RESOURCE]}}}
                      for c in ((spec.get("template") or {}).get("spec") or {}).get("containers") or ()
                      if GPU_RESOURCE in (lim := (c.get("resources") or {}).get("limits") or {})]
        if containers:
            out["spec"]["template"] = {"spec": {"containers": containers}}
        out["status"] = {k: status[k] for k in _KEPT_DEPLOYMENT_STATUS if k in status}
    elif kind == "Service":
        out["spec"] = {"selector": dict(spec.get("selector") or {})}
    elif kind == "Job":
        out["status"] = {"conditions": [{k: c[k] for k in _KEPT_CONDITION if k in c} for c in status.get("conditions") or ()]}
    return out


def _created(meta: Obj) -> dt.datetime | None:
    ts = meta.get("creationTimestamp")
    return dt.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc) if ts else None


def template_gpus(deployment: Obj) -> int:
    """GPUs one pod of a Deployment asks for: its containers' ``nvidia.com/gpu`` limits, summed."""
    containers = (((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or ()
    return sum(int(((c.get("resources") or {}).get("limits") or {}).get(GPU_RESOURCE) or 0) for c in containers)


def observe_color(deployment: Obj) -> ColorState:
    meta = deployment.get("metadata") or {}
    st = deployment.get("status") or {}
    return ColorState(
        version=(meta.get("annotations") or {}).get(ANNOTATION_VERSION),
        template=(meta.get("annotations") or {}).get(ANNOTATION_TEMPLATE),
        replicas=int((deployment.get("spec") or {}).get("replicas", 1)),
        ready=int(st.get("readyReplicas") or 0), updated=int(st.get("updatedReplicas") or 0),
        total=int(st.get("replicas") or 0),
        current=int(st.get("observedGeneration") or 0) >= int(meta.get("generation") or 0),
        created_at=_created(meta), gpus=template_gpus(deployment),
    )


def service_color(service: Obj | None) -> str | None:
    color = (((service or {}).get("spec") or {}).get("selector") or {}).get(LABEL_COLOR)
    return color if color in COLORS else None


def observe_gate_job(job: Obj, termination_message: str | None = None) -> GateJob | None:
    """A gate Job; ``termination_message``: its pod's, where the measures are (one JSON line).
    A Job from before attempts were recorded is attempt -1: no attempt reads it, so it is deleted."""
    meta = job.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    digest = annotations.get(ANNOTATION_VERSION)
    if not digest:
        return None
    try:
        attempt = int(annotations.get(ANNOTATION_ATTEMPT, -1))
    except ValueError:
        attempt = -1
    conds = {c.get("type"): c for c in (job.get("status") or {}).get("conditions") or () if c.get("status") == "True"}
    measures, message = None, ""
    if termination_message:
        try:
            measures = GateMeasures.from_json(json.loads(termination_message))
        except (ValueError, KeyError, TypeError):
            message = termination_message.strip()[:300]
    if "Failed" in conds:
        message = message or f"{conds['Failed'].get('reason', 'Failed')}: {conds['Failed'].get('message', '')}".strip()
    return GateJob(digest, finished="Complete" in conds, failed="Failed" in conds, measures=measures, message=message,
                   attempt=attempt, name=str(meta.get("name") or ""))


def observe(name: str, deployments: Iterable[Obj], services: Iterable[Obj], gate_jobs: Iterable[tuple[Obj, str | None]]) -> Observed:
    """The children of ModelServe ``name``: its color Deployments, Services and gate Jobs
    (each with its pod's termination message, or None)."""
    by_name = {(d.get("metadata") or {}).get("name"): d for d in deployments}
    colors = {c: observe_color(by_name[color_name(name, c)]) for c in COLORS if color_name(name, c) in by_name}
    svcs = {(s.get("metadata") or {}).get("name"): s for s in services}
    gates = {}
    for job, message in gate_jobs:
        g = observe_gate_job(job, message)
        if g is not None:
            gates[g.name] = g
    return Observed(colors, service_color(svcs.get(active_service_name(name))),
                    service_color(svcs.get(preview_service_name(name))), gates)
