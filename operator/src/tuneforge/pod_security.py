"""The security contexts of every pod the operator creates, written once for both rooms: what Pod
Security ``restricted`` asks (non-root, no privilege escalation, every capability dropped, the
runtime's default seccomp profile) plus a read-only root filesystem.

The UID is numeric and set on the pod, not only in the images (``USER 65532`` in the trainer,
server and operator Dockerfiles): the kubelet can verify ``runAsNonRoot`` only for a numeric user,
and an image someone rebuilds with a named or root user still runs as this one. The images keep
everything they write under emptyDir mounts (``/tmp``, the server's cache folder, ``/dev/shm``),
so the read-only root filesystem holds.
"""

from __future__ import annotations

from typing import Any

RUN_AS = 65532
"""The UID and GID of every container (distroless' ``nonroot``), as the Dockerfiles declare."""


def pod_security_context(fs_group: bool = True) -> dict[str, Any]:
    """A pod's ``securityContext``; ``fs_group`` makes writable volumes (PVCs the pod writes, the
    server's ephemeral cache claim) group-owned by ``RUN_AS``."""
    ctx: dict[str, Any] = {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if fs_group:
        ctx["fsGroup"] = RUN_AS
    return ctx


def container_security_context() -> dict[str, Any]:
    """Every container's (init containers too) ``securityContext``."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


__all__ = ["RUN_AS", "container_security_context", "pod_security_context"]
