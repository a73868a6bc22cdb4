"""Names, labels and annotations of a ModelServe's children, in one place (the plan, the
builders and the observer agree on them here).

Children are named from the ModelServe's name, never generated, so a restarted operator finds
what it created (``metadata.name`` is at most 40 characters, which keeps every name below 63):

- ``<name>-blue`` / ``<name>-green``: the two color Deployments (each its own selector);
- ``<name>``: the active Service; ``<name>-preview``: the preview Service;
- ``<name>-<template hash>``: the immutable launcher ConfigMap of one rollout identity (digest plus
  rendered template, source.py; both colors may share it);
- ``<name>-gate-<short digest>-<attempt>``: the gate Job of one rollout attempt (a retry or a new
  rollout of the same digest is a new attempt, so a new Job);
- ``<name>-<color>``: the PodDisruptionBudget of a color (a Pending candidate never uses up the
  active color's budget);
- ``<name>``: the HorizontalPodAutoscaler;
- ``<name>`` / ``<name>-preview``: the InferencePools, selecting the active and the preview color
  as the Services do.
"""

from __future__ import annotations

from .. import GROUP
from ..labels import LABEL_INSTANCE, LABEL_NAME

COLORS = ("blue", "green")

LABEL_MODELSERVE = f"{GROUP}/modelserve"
LABEL_COLOR = f"{GROUP}/color"
LABEL_VERSION = f"{GROUP}/version"
"""The short digest (12 hex digits): a label value stops at 63 characters."""

ANNOTATION_VERSION = f"{GROUP}/version"
"""The full version digest on a color Deployment (and gate Job): what the observer reads back."""

ANNOTATION_TEMPLATE = f"{GROUP}/template-hash"
"""The rollout identity's template hash on a color Deployment and its ConfigMap."""
ANNOTATION_ATTEMPT = f"{GROUP}/attempt"
"""The rollout attempt a gate Job measures (status.gate.attempt): only that attempt reads it."""

# The user's requests, as annotations on the ModelServe (see plan.py's docstring).
ANNOTATION_PROMOTE = f"{GROUP}/promote"
ANNOTATION_ABORT = f"{GROUP}/abort"
ANNOTATION_RETRY = f"{GROUP}/retry"


def other(color: str | None) -> str:
    """The idle color: green when blue is active, blue otherwise (also when nothing is)."""
    return "green" if color == "blue" else "blue"


def color_name(name: str, color: str) -> str:
    return f"{name}-{color}"


def active_service_name(name: str) -> str:
    return name


def preview_service_name(name: str) -> str:
    return f"{name}-preview"


def config_name(name: str, template_hash: str) -> str:
    return f"{name}-{template_hash}"


def gate_job_name(name: str, short: str, attempt: int) -> str:
    # Four digits keep the name within 63 characters; the annotation carries the full number.
    return f"{name}-gate-{short}-{attempt % 10_000}"
