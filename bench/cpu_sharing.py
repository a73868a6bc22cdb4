#!/usr/bin/env python3
"""Two CPU trainings on one machine's cores: what OpenMP's waiting policy costs them.

The trainer sets its compute threads to every CPU it sees (``cpu_threads``: 2 on the 2-core
reference machine). ``make test`` runs trainings side by side (the slow tier's on the host, the
demo's and the e2e tests' on the real node), so 2 x 2 threads share 2 cores. torch's OpenMP
runtime (libgomp) lets a thread that waits at the end of a parallel region spin first (GOMP's
spin count: 300,000 polls by default) before it sleeps: with every core taken by another
process's threads, those spins burn the time the other training needed.

Runs the trainer CLI (``python -m tuneforge_trainer train``, 8 BANKING77 intents, no evaluation)
for ``--steps`` steps:

- alone, with libgomp's default waiting and with ``OMP_WAIT_POLICY=PASSIVE``;
- ``--jobs`` at once, with the default, with PASSIVE, with one thread each
  (``TUNEFORGE_THREADS=1``) and with a short spin (``GOMP_SPINCOUNT=10000``, libgomp's own knob).

Measured on the 2-core machine (2026-12-07, 20 steps): alone 49-51 s default, 58 s PASSIVE, 53 s
short spin; two together 240 s default, 82 s PASSIVE, 76 s one thread each, 110 s short spin.
The trainer image sets PASSIVE (its Dockerfile says why), and ``make test`` for the host's.

Prints each case's seconds per step (the trainer's own train_seconds / steps, mean over the
concurrent runs) and wall time, and the ratios against the default in the same run. Run on an
idle machine (``make cluster-down`` first).

    python bench/cpu_sharing.py [--steps 30] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from banking77_common import ROOT, model_folder, training_only_config  # noqa: E402

CASES = {
    # name: (jobs at once, extra environment)
    "alone, default": (1, {}),
    "alone, PASSIVE": (1, {"OMP_WAIT_POLICY": "PASSIVE"}),
    "together, default": (None, {}),
    "together, PASSIVE": (None, {"OMP_WAIT_POLICY": "PASSIVE"}),
    "together, 1 thread each": (None, {"TUNEFORGE_THREADS": "1"}),
    "together, short spin": (None, {"GOMP_SPINCOUNT": "10000"}),
}


def config(model: Path, out: Path, steps: int) -> dict[str, object]:
    cfg = training_only_config(model, out, steps)
    cfg["output"]["termination_message_path"] = str(out.parent / "summary.json")  # type: ignore[index]
    return cfg


def run_case(model: Path, work: Path, steps: int, jobs: int, extra: dict[str, str]) -> tuple[float, float]:
    """(mean seconds per step, wall seconds) of ``jobs`` trainings started together."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join(str(ROOT / p) for p in ("trainer-image/src", "operator/src")), **extra)
    procs, summaries = [], []
    t0 = time.monotonic()
    for i in range(jobs):
        base = Path(tempfile.mkdtemp(dir=work))
        cfg = base / "config.yaml"
        cfg.write_text(yaml.safe_dump(config(model, base / "out", steps)))
        summaries.append(base / "summary.json")
        procs.append(subprocess.Popen([sys.executable, "-m", "tuneforge_trainer", "train", "--config", str(cfg)],
                                      env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=3600)
        if p.returncode != 0:
            raise SystemExit(f"trainer exited {p.returncode}:\n{err[-3000:]}")
    wall = time.monotonic() - t0
    per_step = [json.loads(s.read_text())["train_seconds"] / steps for s in summaries]
    return sum(per_step) / len(per_step), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    model = model_folder()
    results = {}
    with tempfile.TemporaryDirectory(prefix="cpu-sharing-") as tmp:
        for name, (jobs, extra) in CASES.items():
            results[name] = run_case(model, Path(tmp), args.steps, jobs or args.jobs, extra)
            print(f"{name:<26} {results[name][0]:6.2f} s/step  wall {results[name][1]:6.0f} s", flush=True)
    print(f"\n{os.cpu_count()} CPUs, {args.steps} steps, {args.jobs} trainings together")
    for base, other in (("alone, default", "alone, PASSIVE"), ("together, default", "together, PASSIVE"),
                        ("together, default", "together, 1 thread each"), ("together, default", "together, short spin")):
        print(f"{other} / {base}: s/step {results[other][0] / results[base][0]:.2f}x, "
              f"wall {results[other][1] / results[base][1]:.2f}x")


if __name__ == "__main__":
    main()
