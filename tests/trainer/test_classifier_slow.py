"""task.head classifier on the real model (slow: a few minutes on a CPU).

SmolLM2-135M-Instruct, BANKING77's 8 demo intents, 25 training rows per intent (a tenth held out
for validation), 50 steps of 8 at the classifier's default learning rate, 10 test rows per
intent from test.csv. The classifier must beat chance (1 in 8) by a wide margin, and the saved
adapter must reload with its label order and answer as the trainer did.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from trainer_helpers import banking_config, run_cli, write_config
from tuneforge_trainer.summary import parse_summary

pytestmark = pytest.mark.slow


def test_classifier_head_learns_banking77_8_intents_and_reloads(model_path: Path, banking77: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cfg = banking_config(
        model_path, out,
        task={"head": "classifier"},
        training={"max_steps": 50, "batch_size": 8, "logging_steps": 5, "eval_steps": None, "save_steps": None,
                  "learning_rate": None},  # the head's default (1e-3)
        eval={"loss_max_rows": 24, "baselines": {"few_shot": 0, "tfidf_lr": True}},  # zero-shot: off by default
    )
    cfg["dataset"].update(max_rows_per_label=25, max_eval_rows_per_label=10)
    path = write_config(tmp_path / "config.yaml", cfg)
    t0 = time.monotonic()
    proc = run_cli("train", "--config", str(path), timeout=3600)
    wall = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-4000:]
    s = parse_summary((tmp_path / "out.termination-log").read_text())
    tfidf = next(b.accuracy for b in s.baselines if b.name == "tfidf_lr")
    print(f"\nclassifier: accuracy {s.accuracy} on {s.n_eval} rows (TF-IDF + LR {tfidf}); "
          f"{s.steps} steps in {s.train_seconds} s, eval {s.eval_seconds} s, wall {wall:.0f} s")
    assert s.status == "succeeded" and s.steps == 50 and s.n_eval == 80
    assert s.accuracy is not None and s.accuracy >= 0.75  # chance is 0.125
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["training"]["learning_rate"] == 1e-3 and metrics["eval"]["method"] == "classifier"

    # The adapter reloads onto a fresh base with its own label order and answers as the trainer did.
    import torch
    from peft import PeftModel

    from tuneforge_trainer.classifier import check_adapter_labels, predict
    from tuneforge_trainer.config import load_config
    from tuneforge_trainer.modeling import device_settings, load_model, load_tokenizer

    adapter = out / "adapter"
    labels = check_adapter_labels(str(adapter), sorted(cfg["dataset"]["include_labels"]))
    c = load_config(path)
    model = PeftModel.from_pretrained(load_model(str(model_path), c, device_settings(c, cuda=False), labels), str(adapter))
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()][:16]
    torch.manual_seed(0)
    idx, _ = predict(model, load_tokenizer(str(model_path), c), [r["text"] for r in rows], batch_size=8)
    assert [labels[i] for i in idx] == [r["prediction"] for r in rows]
