"""Entry point ``tuneforge-operator``: settings, the /metrics server, then Kopf's event loop."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

import kopf
from prometheus_client import start_http_server

from .settings import Settings


def _limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives each thread its own malloc arena, which fragments memory into a larger RSS;
    two arenas are plenty for this async process (its threads: Kopf's sync-handler executor and
    the /metrics server)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass  # not glibc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tuneforge-operator", description=__doc__)
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then ~/.kube/config)")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    _limit_malloc_arenas()
    # Kopf names itself after the login user; a non-root UID without a passwd entry (as in the
    # image) has none, and getpass would raise.
    os.environ.setdefault("USER", "tuneforge-operator")
    if not args.verbose:
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)  # one line per handled event
        logging.getLogger("httpx2").setLevel(logging.WARNING)  # one line per API request
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        logging.error("Invalid settings: %s", exc)
        return 2
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig  # what Kopf's kubeconfig login reads
    from .finetune import handlers as finetune_handlers  # registers the FineTuneJob handlers
    from .serve import handlers as _serve_handlers  # noqa: F401 - registers the ModelServe handlers
    from .metrics import REGISTRY

    finetune_handlers._state["settings"] = settings
    finetune_handlers._state["kubeconfig"] = args.kubeconfig
    if settings.metrics_port:
        start_http_server(settings.metrics_port, registry=REGISTRY)
    namespaces = settings.namespace_list()
    liveness = f"http://0.0.0.0:{settings.liveness_port}/healthz" if settings.liveness_port else None
    asyncio.run(kopf.operator(
        clusterwide=not namespaces, namespaces=namespaces, liveness_endpoint=liveness, standalone=True,
    ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
