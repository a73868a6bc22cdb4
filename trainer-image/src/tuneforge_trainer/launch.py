"""torchrun, with the exit code Kubernetes expects of a stopped pod.

``python3 -m tuneforge_trainer.launch <torchrun arguments>`` runs ``torch.distributed.run``.
When the kubelet sends SIGTERM, torchrun forwards it to the trainer processes (which save a
checkpoint and exit 143), waits up to ``--shutdown-timeout`` and then raises SignalException,
which torchrun itself turns into exit 1: a stopped gang would read as a failed one. Here it
exits 128 + the signal's number instead (143 for SIGTERM), as the single-process trainer does.
"""

from __future__ import annotations

import sys


def exit_code(exc: BaseException) -> int | None:
    """128 + signal for torchrun's SignalException (None for anything else)."""
    sigval = getattr(exc, "sigval", None)
    return 128 + int(sigval) if sigval is not None else None


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.run import main as torchrun

    try:
        torchrun(argv if argv is not None else sys.argv[1:])
    except SignalException as exc:
        code = exit_code(exc)
        print(f"torchrun stopped by signal {exc.sigval}: exiting {code}", file=sys.stderr, flush=True)
        return code if code is not None else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
