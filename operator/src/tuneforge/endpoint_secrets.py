"""Secrets sent to an endpoint the user chose: only those that opt in for that endpoint.

A user allowed to create a FineTuneJob or a ModelServe, but not to read Secrets, could otherwise
name any Secret of the namespace next to an endpoint of their own (an openai baseline's ``url``
with ``apiKeySecretRef``, an ``s3.endpoint`` with the S3 key Secrets): the operator would render
the reference, the kubelet would put the value into the pod, and the pod would send it to that
endpoint (the confused deputy of review OP-2). A Secret's owner opts in by listing the hosts it
may be sent to in the annotation ``tuneforge.dev/allowed-endpoints``; only whoever may edit the
Secret can set it. Endpoints the user did not choose (AWS S3 when ``s3.endpoint`` is unset, the
Hugging Face Hub) need no opt-in.

Both rooms use the same rule and the same messages; the API read is the caller's (``kube``).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping
from urllib.parse import urlsplit

from . import GROUP

ANNOTATION_ALLOWED_ENDPOINTS = f"{GROUP}/allowed-endpoints"
"""Comma-separated hosts (``minio.storage.svc``, any port) or ``host:port`` (that port only) a
Secret may be sent to; ``*`` allows any endpoint (the Secret's owner gives up the protection)."""
SECRET_NOT_FOUND = "SecretNotFound"
SECRET_NOT_ALLOWED = "SecretNotAllowed"


@dataclasses.dataclass(frozen=True)
class EndpointSecret:
    """A Secret the spec sends to an endpoint the user chose."""

    field: str           # the spec field naming the Secret, e.g. spec.s3.accessKeyIdSecretRef
    secret: str          # the Secret's name (in the object's namespace)
    endpoint_field: str  # the spec field naming the endpoint, e.g. spec.s3.endpoint
    endpoint: str        # the URL as written in the spec


def endpoint_host(url: str) -> tuple[str, int | None]:
    """The host (lower case) and explicit port of an endpoint URL."""
    parts = urlsplit(url.strip())
    try:
        port = parts.port
    except ValueError:
        port = None
    return (parts.hostname or "").lower(), port


def allows(annotations: Mapping[str, str] | None, url: str) -> bool:
    """Whether a Secret with ``annotations`` opted in to being sent to ``url``."""
    host, port = endpoint_host(url)
    if not host:
        return False
    for entry in (annotations or {}).get(ANNOTATION_ALLOWED_ENDPOINTS, "").split(","):
        entry = entry.strip().lower()
        if entry == "*":
            return True
        if not entry:
            continue
        want_host, _, want_port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if want_host == host and (not want_port or (port is not None and want_port == str(port))):
            return True
    return False


def refusal(ref: EndpointSecret, annotations: Mapping[str, str] | None, namespace: str) -> tuple[str, str] | None:
    """(reason, message) when the Secret may not be used for the endpoint; ``annotations`` is
    None when the Secret does not exist (it is not used until it exists and opts in)."""
    host, port = endpoint_host(ref.endpoint)
    where = host + (f":{port}" if port is not None else "")
    if annotations is None:
        return SECRET_NOT_FOUND, f"{ref.field}: Secret {ref.secret!r} not found in namespace {namespace}"
    if allows(annotations, ref.endpoint):
        return None
    return SECRET_NOT_ALLOWED, (
        f"{ref.field}: Secret {ref.secret!r} has not opted in to being sent to {where} ({ref.endpoint_field}): "
        f"its owner adds {where} to its annotation {ANNOTATION_ALLOWED_ENDPOINTS}")


__all__ = ["ANNOTATION_ALLOWED_ENDPOINTS", "EndpointSecret", "SECRET_NOT_ALLOWED", "SECRET_NOT_FOUND", "allows",
           "endpoint_host", "refusal"]
