"""task.head classifier on the real model (slow: minutes on a CPU).

SmolLM2-135M-Instruct on BANKING77's 8 demo intents: 25 training rows per intent (a tenth of
train.csv's rows split off first as validation rows), 10 test rows per intent from test.csv,
trained with the classifier head's defaults only (2 epochs of batch 8 at its learning rate: no
setting here is tuned to these rows). The adapter must learn (far above chance; TF-IDF + logistic
regression on the same rows is printed beside it), report its validation accuracy, and the saved adapter
must reload with its label order and answer as the trainer did.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from trainer_helpers import banking_config, run_cli, write_config
from tuneforge_trainer.summary import parse_summary

pytestmark = pytest.mark.slow


@pytest.mark.timeout(3600)
def test_classifier_head_learns_banking77_8_intents_and_reloads(model_path: Path, banking77: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cfg = banking_config(
        model_path, out,
        task={"head": "classifier"},
        eval={"loss_max_rows": 24, "batch_size": 32, "baselines": {"few_shot": 0, "tfidf_lr": True}},
    )
    # The head's defaults: epochs, learning rate, warmup and schedule as the trainer sets them.
    cfg["training"] = {"batch_size": 8, "logging_steps": 10}
    # 25 training rows and 10 test rows per intent keep this test to a few minutes on 2 cores; the
    # full demo size (50/20, where the adapter is compared with TF-IDF) is bench/accuracy.py's.
    cfg["dataset"].update(max_rows_per_label=25, max_eval_rows_per_label=10)
    path = write_config(tmp_path / "config.yaml", cfg)
    t0 = time.monotonic()
    proc = run_cli("train", "--config", str(path), timeout=3600)
    wall = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-4000:]
    s = parse_summary((tmp_path / "out.termination-log").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    tfidf = metrics["baselines"]["tfidf_lr"]["accuracy"]
    val = metrics["validation"]
    print(f"\nclassifier: accuracy {s.accuracy} on {s.n_eval} test rows (TF-IDF + LR {tfidf}); validation "
          f"{val['accuracy']} on {val['n']} rows; {s.steps} steps in {s.train_seconds} s, eval {s.eval_seconds} s, "
          f"wall {wall:.0f} s")
    assert s.status == "succeeded" and s.n_eval == 80 and s.steps >= 40  # 2 epochs of ~180 rows, batch 8
    assert metrics["config"]["training"]["epochs"] == 2.0
    assert metrics["config"]["training"]["learning_rate"] == 1e-3 and metrics["eval"]["method"] == "classifier"
    # Learned, far above chance (1 in 8); the comparison with TF-IDF at the demo's size is measured
    # by bench/accuracy.py (issue 20: 96.9 % vs 98.1 % there, not yet at or above it).
    assert s.accuracy is not None and s.accuracy >= 0.75, (s.accuracy, tfidf)
    assert val["n"] > 0 and val["accuracy"] >= 0.6
    card = (out / "README.md").read_text()
    assert "head: classifier" in card and f"Validation rows ({val['n']}," in card

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


@pytest.mark.timeout(1800)
def test_a_searched_classifier_is_refit_on_its_validation_rows_and_its_card_says_which_head_won(
        model_path: Path, banking77: Path, tmp_path: Path) -> None:
    """The winner retrain of a search, as the operator renders it (data.train_on_validation and
    the trials in ``selection``), on the real model at a small size: the validation rows train
    too (none is left to score), the test rows are scored once, and the model card names the head
    and its margin over the other head's best trial on validation."""
    out = tmp_path / "out"
    cfg = banking_config(
        model_path, out,
        task={"head": "classifier"},
        data={"validation_fraction": 0.1, "train_on_validation": True},
        eval={"batch_size": 32, "baselines": {"zero_shot": False, "few_shot": 0, "tfidf_lr": True}},
    )
    cfg["training"] = {"batch_size": 8, "logging_steps": 4, "max_steps": 12}
    cfg["dataset"].update(max_rows_per_label=10, max_eval_rows_per_label=5)
    cfg["selection"] = {
        "winner": 1, "rule": "cheapest (GPU-seconds) of the trials with validation accuracy >= 0.9000",
        "trials": [
            {"index": 0, "params": {"head": "lm"}, "validation_accuracy": 0.92, "validation_rows": 92, "gpu_seconds": 1300},
            {"index": 1, "params": {"head": "classifier"}, "validation_accuracy": 0.946, "validation_rows": 92, "gpu_seconds": 600},
        ],
    }
    proc = run_cli("train", "--config", str(write_config(tmp_path / "config.yaml", cfg)), timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = json.loads((out / "metrics.json").read_text())
    data = metrics["data"]
    # 10 capped training rows per intent plus that intent's validation rows (a tenth of its pool).
    assert data["validation_counts"] == {} and metrics.get("validation") is None
    assert all(n > 10 for n in data["train_counts"].values()), data["train_counts"]
    assert metrics["eval"]["n"] == 40 and metrics["eval"]["method"] == "classifier"
    card = (out / "README.md").read_text()
    assert "## How the settings were chosen" in card
    assert "**Head: `classifier`**, validation accuracy 94.6 %; the best `lm` trial 92.0 % (+2.6 points for `classifier`)" in card
