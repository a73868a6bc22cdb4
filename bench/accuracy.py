#!/usr/bin/env python3
"""Accuracy: the fine-tuned adapter vs the base model zero-shot and few-shot vs TF-IDF + LR.

Subset (default): BANKING77, the 8 intents below, 50 training rows per intent from train.csv,
10 held-out rows per intent from test.csv (80 rows), LoRA r=16/alpha=32 on q/k/v/o, 50 steps of
8 at lr 1e-3, label scoring by log-likelihood. Every model is scored on exactly the same rows.
``--all-classes`` uses all 77 intents (same rows per intent; slower: the prompt lists 77 labels).
Runs ``tuneforge-train train`` in-process and prints the table and the wall time.

    python bench/accuracy.py [--all-classes] [--train-per-label 50] [--eval-per-label 10]
                             [--steps 50] [--shots 8]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from banking77_common import BANKING77, INTENTS8, ROOT, model_folder  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--all-classes", action="store_true", help="all 77 intents instead of 8")
    p.add_argument("--train-per-label", type=int, default=50)
    p.add_argument("--eval-per-label", type=int, default=10)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--shots", type=int, default=8, help="few-shot examples (0 = skip the few-shot baseline)")
    p.add_argument("--keep", help="keep the run folder here instead of a temporary one")
    args = p.parse_args()

    from tuneforge_trainer.config import parse_config
    from tuneforge_trainer.train import train_main

    t0 = time.monotonic()
    model = model_folder()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.keep or tmp) / "run"
        cfg = parse_config({
            "run_name": "bench-accuracy",
            "model": {"source": str(model)},
            "dataset": {
                "source": str(BANKING77 / "train.csv"), "eval_source": str(BANKING77 / "test.csv"),
                "label_column": "category", "include_labels": None if args.all_classes else INTENTS8,
                "max_rows_per_label": args.train_per_label, "max_eval_rows_per_label": args.eval_per_label,
            },
            "training": {"max_steps": args.steps, "learning_rate": 1e-3, "batch_size": 8, "warmup_ratio": 0.1,
                         "logging_steps": 10, "save_steps": 10_000},
            "eval": {"loss_max_rows": 32, "baselines": {"zero_shot": True, "few_shot": args.shots, "tfidf_lr": True}},
            "output": {"dir": str(out), "termination_message_path": None},
        })
        code = train_main(cfg)
        if code != 0:
            print(f"training failed with exit code {code}", file=sys.stderr)
            return code
        m = json.loads((out / "metrics.json").read_text())
    ev, bl, tr = m["eval"], m["baselines"], m["training"]
    n_labels = len(m["data"]["train_counts"])
    print(f"\nBANKING77 {n_labels} intents, {sum(m['data']['train_counts'].values())} training rows "
          f"({args.train_per_label}/intent), {ev['n']} held-out rows from test.csv ({args.eval_per_label}/intent)")
    print(f"{'model':<34} {'accuracy':>9} {'macro-F1':>9} {'eval s':>7}")
    rows = [(f"LoRA adapter ({tr['steps']} steps, {tr['train_seconds']:.0f} s)", ev)]
    rows += [(name, r) for name, r in bl.items()]
    for name, r in rows:
        if r.get("error"):
            print(f"{name:<34} error: {r['error']}")
            continue
        print(f"{name:<34} {100 * r['accuracy']:>8.1f}% {100 * r['macro_f1']:>8.1f}% {r.get('seconds', 0):>7.1f}")
    print(f"wall time {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
