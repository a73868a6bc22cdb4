#!/usr/bin/env python3
"""Accuracy: the fine-tuned adapter vs the base model zero-shot vs TF-IDF + LR, on the same rows.

BANKING77 (Casanueva et al., 2020): training rows from train.csv (a tenth split off as
validation rows), test rows from test.csv. Default: the demo's 8 intents, 50 training rows and 20
test rows per intent, ``task.head: classifier`` with the trainer's defaults (2 epochs of batch 8
at the head's learning rate) - the settings chosen on validation rows, never on these test rows.

    python bench/accuracy.py                      # the demo's 8 intents
    python bench/accuracy.py --intent-seed 1      # 8 other intents drawn with seed 1 (held-out sets)
    python bench/accuracy.py --all-classes        # all 77 intents, every row (10,003 / 3,080)
    python bench/accuracy.py --head lm            # the generative head (label list in the prompt)
    python bench/accuracy.py --refit              # trained on training + validation rows (a search's winner)

Every model is scored on exactly the same test rows: the adapter; the base model zero-shot (its
language-model head, label log-likelihood with the label list in the prompt; ``--no-zero-shot``
skips it: with 77 labels every prompt carries ~400 tokens of label names); TF-IDF + logistic
regression on the same training rows. Prints the table with wall times, the validation accuracy
the settings are judged by, and the adapter's five worst classes (F1) beside TF-IDF's.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from banking77_common import BANKING77, INTENTS8, model_folder  # noqa: E402


def pick_intents(seed: int, k: int = 8) -> list[str]:
    """``k`` BANKING77 intents other than the demo's, drawn with ``seed`` (held-out intent sets)."""
    labels = json.loads((BANKING77 / "categories.json").read_text())
    return sorted(random.Random(seed).sample(sorted(set(labels) - set(INTENTS8)), k))


def bench_config(args: argparse.Namespace, intents: list[str] | None, out: Path) -> dict[str, Any]:
    """The trainer config this bench runs (the head's defaults unless a flag overrides them)."""
    training: dict[str, Any] = {"batch_size": 8, "logging_steps": 10, "save_steps": 100_000, "eval_steps": 100_000}
    for key, value in (("epochs", args.epochs), ("max_steps", args.steps), ("learning_rate", args.lr)):
        if value is not None:
            training[key] = value
    return {
        "run_name": "bench-accuracy",
        "model": {"source": str(model_folder())},
        "dataset": {
            "source": str(BANKING77 / "train.csv"), "eval_source": str(BANKING77 / "test.csv"),
            "label_column": "category", "include_labels": intents,
            "max_rows_per_label": args.train_per_label, "max_eval_rows_per_label": args.eval_per_label,
        },
        "task": {"head": args.head},
        "data": {"validation_fraction": 0.1, "train_on_validation": args.refit},
        "training": training,
        "eval": {"loss_max_rows": 32, "batch_size": 32,
                 "baselines": {"zero_shot": not args.no_zero_shot, "few_shot": 0, "tfidf_lr": True}},
        "output": {"dir": str(out), "termination_message_path": None},
    }


def print_report(m: dict[str, Any], wall: float, title: str) -> None:
    ev, bl, tr, val = m["eval"], m["baselines"], m["training"], m.get("validation") or {}
    counts = m["data"]["train_counts"]
    print(f"\n{title}: {len(counts)} intents, {sum(counts.values())} training rows, "
          f"{sum(m['data']['validation_counts'].values())} validation rows, {ev['n']} test rows (test.csv)")
    print(f"{'model':<40} {'accuracy':>9} {'macro-F1':>9} {'train s':>8} {'eval s':>7} {'p50 ms':>8} {'p99 ms':>8} {'rows/req':>8}")
    head = m["config"]["task"]["head"]
    rows = [(f"LoRA + {head} head ({tr['steps']} steps)", ev, tr["train_seconds"])]
    rows += [(name, r, None) for name, r in bl.items()]
    for name, r, train_s in rows:
        if r.get("error"):
            print(f"{name:<40} error: {r['error']}")
            continue
        ts = f"{train_s:>8.0f}" if train_s is not None else f"{'':>8}"
        lat = r.get("latency") or {}
        latency = (f"{lat['p50_ms']:>8.1f} {lat['p99_ms']:>8.1f} {lat['rows_per_request']:>8}" if lat
                   else f"{'-':>8} {'-':>8} {'-':>8}")
        print(f"{name:<40} {100 * r['accuracy']:>8.1f}% {100 * r['macro_f1']:>8.1f}% {ts} {r.get('seconds', 0):>7.1f} {latency}")
    if val.get("accuracy") is not None:
        print(f"validation rows: adapter {100 * val['accuracy']:.1f}% ({val['n']} rows)")
    worst = sorted(ev["per_class"].items(), key=lambda kv: (kv[1]["f1"], kv[0]))[:5]
    tf = (bl.get("tfidf_lr") or {}).get("per_class") or {}
    print("five worst classes of the adapter (F1; TF-IDF + LR's F1 on the same class):")
    for label, pc in worst:
        other = f"{tf[label]['f1']:.2f}" if label in tf else "-"
        print(f"  {label:<40} {pc['f1']:.2f}  (support {pc['support']}; TF-IDF {other})")
    print(f"wall time {wall:.0f} s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--all-classes", action="store_true", help="all 77 intents and every row")
    p.add_argument("--intent-seed", type=int, help="8 intents other than the demo's, drawn with this seed")
    p.add_argument("--head", choices=["classifier", "lm"], default="classifier")
    p.add_argument("--train-per-label", type=int, help="training rows per intent (default 50; all with --all-classes)")
    p.add_argument("--eval-per-label", type=int, help="test rows per intent (default 20; all with --all-classes)")
    p.add_argument("--epochs", type=float, help="default: the head's (classifier 2, lm 3)")
    p.add_argument("--steps", type=int, help="max_steps instead of epochs")
    p.add_argument("--lr", type=float, help="default: the head's (classifier 1e-3, lm 2e-4)")
    p.add_argument("--no-zero-shot", action="store_true", help="skip the zero-shot base model")
    p.add_argument("--refit", action="store_true",
                   help="train on the training + validation rows (what spec.search's winner retrain does; "
                        "no validation figure then)")
    p.add_argument("--keep", help="keep the run folder here instead of a temporary one")
    args = p.parse_args()
    if not args.all_classes:
        args.train_per_label = args.train_per_label or 50
        args.eval_per_label = args.eval_per_label or 20
    intents = None if args.all_classes else (pick_intents(args.intent_seed) if args.intent_seed is not None else INTENTS8)
    title = "BANKING77 all intents" if args.all_classes else (
        f"BANKING77 held-out intent set (seed {args.intent_seed}: {', '.join(intents or [])})"
        if args.intent_seed is not None else "BANKING77 demo intents")

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from tuneforge_trainer.config import parse_config
    from tuneforge_trainer.train import train_main

    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.keep or tmp) / "run"
        code = train_main(parse_config(bench_config(args, intents, out)))
        if code != 0:
            print(f"training failed with exit code {code}", file=sys.stderr)
            return code
        m = json.loads((out / "metrics.json").read_text())
    print_report(m, time.monotonic() - t0, title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
