#!/usr/bin/env python3
"""``make test``'s background prefetch: everything the cluster tier needs that does not need the
cluster, built while the pure tier (and then the first cluster tests) run — the cluster's Go binaries (Kubernetes, etcd, Helm, the
add-ons, then the optional KEDA and Kueue), the operator, trainer and CPU server images (into buildah's storage; the cluster's
registry gets them by a push later), the converted base model and the operator and server venvs.

Three lanes run side by side, because their costs differ in kind: the Go builds are CPU-bound
(two chains, see ``binaries.ensure_binaries``), the images are mostly downloads (debootstrap,
wheels) and disk, and the model and venvs are downloads. The images are built one after another
so the torch layer the trainer and server images share is built once. On a warm cache every lane
finds its outputs and ends in seconds.

It needs only the standard library (``make test`` runs it on the machine's own Python before the
host virtualenv exists, see the Makefile); the model lane runs in that venv once it is there.

Each lane's seconds go to ``test-output/prefetch.json``. A lane that fails is reported and the
exit status is 1; the tests then build what is missing themselves (and fail there, naming it).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "localcluster" / "src"))

from tuneforge_localcluster import binaries, hostpkgs, images, settings  # noqa: E402

IMAGES = [  # (context, name, target): the images the cluster tier builds, in the order it needs them
    (ROOT / "operator", "operator", None),
    (ROOT / "tests" / "images" / "trainer-standin", "trainer-standin", None),
    (ROOT / "trainer-image", "trainer", None),
    (ROOT / "server-image", "server", "cpu"),
]
DEMO_IMAGES = [IMAGES[0], *IMAGES[2:]]
"""What ``make demo`` runs: it builds them (and the model) this way while the cluster starts."""


def _say(msg: str) -> None:
    print(f"[prefetch {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _output(cmd: list[str]) -> str:
    return subprocess.run(cmd, check=True, text=True, stdout=subprocess.PIPE).stdout.strip()


def lanes(s: settings.Settings, image_list: list[tuple[Path, str, str | None]] = IMAGES,
          venvs: tuple[str, ...] = ("operator", "server")) -> dict[str, Callable[[], object]]:
    """The lanes by name: each a callable that builds (or finds cached) its outputs."""
    return {
        # What the cluster needs to start first, then the optional components (KEDA, Kueue) the
        # cluster tier's tests ask for: built here, beside the first tests, rather than inside one.
        "go binaries": lambda: _go_binaries(s),
        "images": lambda: _images(s, image_list),
        "model and venvs": lambda: [_output([_host_python(), str(ROOT / "hack" / "prepare_model.py")]),
                                    *(_output([str(ROOT / "hack" / "venv.sh"), v]) for v in venvs)],
    }


def _go_binaries(s: settings.Settings) -> list[str]:
    """The cluster's binaries at the lane's priority, then the optional ones (KEDA, Kueue: only a
    few tests of the group beside the foreground use them) at :data:`OPTIONAL_GO_NICE` more: on an
    empty cache they would otherwise take the cores from the images the foreground's e2e tests
    are waiting for (a cold run's trainer image took 902 s beside KEDA's and Kueue's builds)."""
    built = binaries.ensure_binaries(s)
    _set_thread_nice(OPTIONAL_GO_NICE)  # the build threads ensure_binaries starts inherit it
    return sorted([*built, *binaries.ensure_binaries(s, [b.name for b in binaries.OPTIONAL])])


def _set_thread_nice(nice: int) -> None:
    """Run this thread at the process's niceness + ``nice`` (Linux keeps one per thread; what the
    thread starts from then on inherits it). Set, not added: the pool may run a lane on a thread
    another lane has changed."""
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, os.getpid()) + nice)


def _host_python() -> str:
    """The host virtualenv's Python (``hack/venv.sh`` creates it first, once, under its lock):
    this script itself may run on the machine's own Python, before that venv exists."""
    return str(Path(_output([str(ROOT / "hack" / "venv.sh")])) / "bin" / "python")


def _images(s: settings.Settings, image_list: list[tuple[Path, str, str | None]]) -> list[str]:
    hostpkgs.ensure()  # buildah and debootstrap, on a fresh machine
    return [images.build(s, context, name, target=target, push=False) for context, name, target in image_list]


NICE = {"go binaries": 0, "images": 5, "model and venvs": 5}
"""Each lane's niceness. On an empty cache the cluster cannot start before the Go builds end (the
critical path: minutes of compilation on every core), while the images and the model are needed
only by later tests; so the Go lane keeps normal priority and the others yield to it."""
OPTIONAL_GO_NICE = 10
"""The Go lane's niceness once the cluster's binaries are built: the optional builds then yield to
the images (niceness 5 against 10: about three times their CPU share)."""


def run(todo: dict[str, Callable[[], object]]) -> dict[str, dict[str, object]]:
    """Run the lanes side by side, each at its :data:`NICE`; each one's seconds, and its result
    or error."""
    report: dict[str, dict[str, object]] = {}
    started = time.monotonic()

    def timed(name: str, fn: Callable[[], object]) -> None:
        # Linux keeps a niceness per thread, and the threads and processes a thread starts
        # inherit it: this lane's builds run at its niceness, the other lanes' do not.
        _set_thread_nice(NICE.get(name, 0))
        t0 = time.monotonic()
        _say(f"{name}: started")
        try:
            result: object = fn()
            report[name] = {"ok": True, "seconds": round(time.monotonic() - t0, 1), "result": result}
            _say(f"{name}: done in {time.monotonic() - t0:.0f} s")
        except Exception as err:  # noqa: BLE001 - reported; the tests build what is missing
            traceback.print_exc()
            report[name] = {"ok": False, "seconds": round(time.monotonic() - t0, 1), "error": f"{type(err).__name__}: {err}"}
            _say(f"{name}: FAILED after {time.monotonic() - t0:.0f} s: {err}")

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(todo)) as pool:
        for f in [pool.submit(timed, name, fn) for name, fn in todo.items()]:
            f.result()
    report["total"] = {"ok": all(r["ok"] for r in report.values()), "seconds": round(time.monotonic() - started, 1)}
    return report


def main() -> int:
    report = run(lanes(settings.load()))
    out = ROOT / "test-output" / "prefetch.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    _say(f"done in {report['total']['seconds']:.0f} s ({out.relative_to(ROOT)})")
    return 0 if report["total"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
