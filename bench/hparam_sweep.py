#!/usr/bin/env python3
"""How the lm-head example FineTuneJob's maxSteps and learningRate are chosen: on validation rows only.

Reads examples/finetunejob-banking77-lm.yaml (labels, rows per label, validation fraction, LoRA
rank/alpha, batch size, warmup) and trains it once per (maxSteps, learningRate) of the grid on
the local files, with ``eval.enabled: false`` and no eval source: the test rows of test.csv are
never loaded. Each run reports its final validation loss (the eval loss on the validation rows
split off train.csv) and its accuracy on those validation rows (scored as the gate scores the
test rows). The choice follows the one-standard-error rule (Breiman et al., CART): among the
settings whose validation accuracy — the measure the gate applies — is within one standard error
of the best (a few dozen validation rows cannot tell them apart), the fewest steps (the cheaper
run), then the higher accuracy, then the lower validation loss. Prints the table, the choice and
whether it is the example's.

    python bench/hparam_sweep.py [--steps 50,100,150] [--lrs 5e-4,1e-3,2e-3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

from banking77_common import BANKING77, ROOT, model_folder  # noqa: E402

sys.path.insert(0, str(ROOT / "operator" / "src"))
from tuneforge.finetune.selection import Candidate, one_standard_error  # noqa: E402

EXAMPLE = ROOT / "examples" / "finetunejob-banking77-lm.yaml"


def example_spec() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())["spec"]


def run(model: Path, spec: dict, steps: int, lr: float, out: Path) -> dict:
    from tuneforge_trainer.config import parse_config
    from tuneforge_trainer.train import train_main

    ds, tr, lora = spec["dataset"], spec["training"], spec.get("lora", {})
    cfg = parse_config({
        "run_name": f"sweep-{steps}-{lr:g}",
        "model": {"source": str(model)},
        "dataset": {
            "source": str(BANKING77 / Path(ds["uri"]).name), "format": ds.get("format", "auto"),
            "text_column": ds.get("textColumn", "text"), "label_column": ds["labelColumn"],
            "include_labels": ds.get("includeLabels"), "max_rows_per_label": ds.get("maxRowsPerLabel"),
        },
        # Like the example (its test rows come from evalUri), no test split is cut from train.csv:
        # validation rows are drawn from the same training pool the FineTuneJob draws them from.
        "data": {"validation_fraction": spec["dataPrep"]["validationFraction"], "eval_fraction": 0},
        "lora": {"r": lora.get("r", 16), "alpha": lora.get("alpha", 32)},
        "training": {
            "max_steps": steps, "learning_rate": lr, "batch_size": tr["batchSize"],
            "warmup_ratio": tr.get("warmupRatio", 0.05), "logging_steps": 10,
            "eval_steps": max(steps // 2, 1), "save_steps": 10_000,
        },
        # The test rows stay unread: no eval source, nothing scored after training.
        "eval": {"enabled": False, "loss_max_rows": None},
        "output": {"dir": str(out), "termination_message_path": None, "plots": False, "model_card": False},
    })
    t0 = time.monotonic()
    code = train_main(cfg)
    if code != 0:
        raise SystemExit(f"training {steps} steps at {lr:g} failed with exit code {code}")
    seconds = time.monotonic() - t0
    m = json.loads((out / "metrics.json").read_text())
    accuracy = validation_accuracy(model, cfg, out / "adapter")
    curve = [(h["step"], h["eval_loss"]) for h in m["training"]["log_history"] if "eval_loss" in h]
    return {
        "steps": steps, "lr": lr, "validation_loss": m["training"]["eval_loss"], "curve": curve,
        "train_loss": m["training"]["train_loss"], "n_validation": sum(m["data"]["validation_counts"].values()),
        "seconds": seconds, "validation_accuracy": accuracy,
    }


def validation_accuracy(model: Path, cfg: object, adapter: Path) -> float:
    """The adapter's accuracy on the run's own validation rows (the same seeded split)."""
    from peft import PeftModel
    from tuneforge_trainer.evaluate import score_model
    from tuneforge_trainer.modeling import device_settings, load_model, load_tokenizer
    from tuneforge_trainer.pipeline import prepare

    data = prepare(cfg)  # type: ignore[arg-type]
    tokenizer = load_tokenizer(str(model), cfg)  # type: ignore[arg-type]
    base = load_model(str(model), cfg, device_settings(cfg, cuda=False))  # type: ignore[arg-type]
    scored = score_model(PeftModel.from_pretrained(base, str(adapter)), tokenizer, data.validation, cfg, data.labels)  # type: ignore[arg-type]
    return float(scored["accuracy"])


def choose(results: list[dict]) -> dict:
    """The one-standard-error rule over validation accuracy, cheapest (fewest steps) first: the
    rule FineTuneJob's spec.search applies (``tuneforge.finetune.selection``)."""
    choice = one_standard_error([
        Candidate(i, r["validation_accuracy"], r["n_validation"], (r["steps"],), r["validation_loss"])
        for i, r in enumerate(results)
    ])
    assert choice is not None, "no results"
    return results[choice.key]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", default="50,100,150", help="maxSteps values, comma-separated")
    p.add_argument("--lrs", default="5e-4,1e-3,2e-3", help="learning rates, comma-separated")
    args = p.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    lrs = [float(x) for x in args.lrs.split(",")]

    spec = example_spec()
    model = model_folder()
    t0 = time.monotonic()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for lr in lrs:
            for n in steps:
                results.append(run(model, spec, n, lr, Path(tmp) / f"{n}-{lr:g}"))
                r = results[-1]
                print(f"  ran {n} steps at lr {lr:g}: validation accuracy {r['validation_accuracy']:.4f}, "
                      f"loss {r['validation_loss']:.4f} ({r['seconds']:.0f} s)", flush=True)
    best = choose(results)
    print(f"\n{EXAMPLE.relative_to(ROOT)}: {len(spec['dataset'].get('includeLabels') or [])} labels, "
          f"{spec['dataset'].get('maxRowsPerLabel')} training rows/label, batch {spec['training']['batchSize']}, "
          f"validation fraction {spec['dataPrep']['validationFraction']} "
          f"({results[0]['n_validation']} validation rows); test rows never loaded")
    print(f"{'maxSteps':>8} {'learningRate':>12} {'train loss':>10} {'val acc':>8} {'val loss':>9}  "
          f"{'val loss curve':<28} {'s':>5}")
    for r in results:
        curve = " ".join(f"{s}:{v:.3f}" for s, v in r["curve"])
        mark = "  <- chosen" if r is best else ""
        print(f"{r['steps']:>8} {r['lr']:>12g} {r['train_loss']:>10.4f} {r['validation_accuracy']:>8.4f} "
              f"{r['validation_loss']:>9.4f}  "
              f"{curve:<28} {r['seconds']:>5.0f}{mark}")
    ex_steps, ex_lr = spec["training"]["maxSteps"], float(spec["training"]["learningRate"])
    same = best["steps"] == ex_steps and abs(best["lr"] - ex_lr) < 1e-12
    print(f"choice: maxSteps {best['steps']}, learningRate {best['lr']:g}; the example has "
          f"{ex_steps} / {ex_lr:g}: {'the same' if same else 'DIFFERENT - update the example'}")
    print(f"wall time {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
