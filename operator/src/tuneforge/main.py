"""Entry point ``tuneforge-operator``: settings (read once), logging, the /metrics server, then
Kopf's event loop with the one start-up (``startup.py``) both rooms plug into — in the replica
that holds the leader Lease when leader election is on (``leader.py``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Awaitable, Callable, TextIO

import kopf
from prometheus_client import start_http_server

from . import leader
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


def configure_logging(verbose: bool, stream: TextIO | None = None) -> None:
    """Kopf's logging integration: JSON lines (one object per line; a line about an object
    carries it as ``object`` — kind, namespace, name, uid — and a FineTuneJob's ``revision``, see
    runtime.log_extra) for log collectors, human text with a ``[namespace/name]`` prefix when
    stderr is a terminal."""
    stream = stream or sys.stderr
    terminal = stream.isatty()
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.FULL if terminal else kopf.LogFormat.JSON,
                   log_prefix=terminal, log_refkey="object")
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.formatter is not None \
                and type(handler).__module__.startswith("kopf"):
            handler.setStream(stream)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tuneforge-operator", description=__doc__)
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then ~/.kube/config)")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
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
    from . import startup
    from .finetune import handlers as _finetune_handlers  # noqa: F401 - registers and plugs the FineTuneJob room
    from .serve import handlers as _serve_handlers  # noqa: F401 - registers and plugs the ModelServe room
    from .metrics import REGISTRY

    startup.given(settings, args.kubeconfig)
    if settings.metrics_port:
        start_http_server(settings.metrics_port, registry=REGISTRY)
    namespaces = settings.namespace_list()
    liveness = f"http://0.0.0.0:{settings.liveness_port}/healthz" if settings.liveness_port else None

    async def operate() -> None:
        await kopf.operator(clusterwide=not namespaces, namespaces=namespaces, liveness_endpoint=liveness,
                            standalone=True)

    if not settings.leader_elect:
        from .metrics import LEADER
        LEADER.set(1)  # the only replica: it reconciles
        asyncio.run(operate())
        return 0
    with asyncio.Runner(loop_factory=leader.fenced_event_loop) as runner:
        runner.run(_elected(settings, args.kubeconfig, operate))
    return 0


async def _elected(settings: Settings, kubeconfig: str | None, operate: Callable[[], Awaitable[None]]) -> None:
    """Kopf starts only in the replica that holds the Lease; the others serve /healthz and wait."""
    from .kube import LeaseLock
    from .metrics import LEADER

    lock = LeaseLock(settings, kubeconfig)
    elector = leader.LeaderElector(lock, leader.default_identity(), settings.election_config(), fence=leader.FENCE)
    logging.info("Leader election on: Lease %s/%s, identity %s", lock.namespace, lock.name, elector.identity)
    try:
        await leader.run_elected(elector, operate, settings.liveness_port, lambda on: LEADER.set(1 if on else 0))
    finally:
        await lock.close()


if __name__ == "__main__":
    sys.exit(main())
