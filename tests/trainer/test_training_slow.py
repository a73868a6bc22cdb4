"""Real CPU runs of the trainer on SmolLM2-135M-Instruct (slow: minutes).

- Acceptance: BANKING77, 8 intents x 50 training rows (2 epochs, 100 steps of 8), 160 held-out
  rows from test.csv:
  accuracy >= 90 % and >= 60 points above the base model's zero-shot; model card, plots,
  metrics.json and the termination summary are produced.
- Kill-and-resume: the same run, SIGTERM mid-training (checkpoint, exit 143), restarted: it
  continues from the checkpoint and ends within 2 points of the uninterrupted run (the
  acceptance fixture's; the resumed run starts from its step-80 checkpoint, so the suite trains
  the 100 steps once plus ~20).
- QLoRA: a few 4-bit (nf4, double quant) steps on the CPU through the same code path.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from trainer_helpers import BANKING77, ROOT, banking_config, cli_env, hub_cache_standin, run_cli, write_config
from tuneforge_trainer.progress import read_progress
from tuneforge_trainer.summary import TrainerSummary, parse_summary

pytestmark = pytest.mark.slow


@dataclass
class Run:
    out: Path
    summary: TrainerSummary
    metrics: dict[str, Any]
    stdout: str
    seconds: float


def finished_run(out: Path, proc: subprocess.CompletedProcess[str], seconds: float) -> Run:
    assert proc.returncode == 0, proc.stderr[-4000:]
    term = out.parent / f"{out.name}.termination-log"
    return Run(out, parse_summary(term.read_text()), json.loads((out / "metrics.json").read_text()), proc.stdout, seconds)


@pytest.fixture(scope="session")
def acceptance_run(model_path: Path, banking77: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One uninterrupted 100-step run with baselines; shared by the acceptance and resume tests.

    TUNEFORGE_REUSE_ACCEPTANCE_RUN=<folder of a finished run's config.yaml and out/> reuses a
    run instead of training again (for reruns of the other slow tests on a busy machine).
    """
    reuse = os.environ.get("TUNEFORGE_REUSE_ACCEPTANCE_RUN")
    if reuse:
        out = Path(reuse) / "out"
        term = out.parent / f"{out.name}.termination-log"
        return Run(out, parse_summary(term.read_text()), json.loads((out / "metrics.json").read_text()), "", 0.0)
    base = tmp_path_factory.mktemp("acceptance")
    out = base / "out"
    cfg = write_config(base / "config.yaml", banking_config(model_path, out))
    t0 = time.monotonic()
    proc = run_cli("train", "--config", str(cfg), timeout=3600)  # a busy 2-core machine: 10-40 min
    return finished_run(out, proc, time.monotonic() - t0)


@pytest.mark.timeout(5400)  # the shared 100-step run is set up by the first test that needs it
def test_acceptance_banking77_8_intents(acceptance_run: Run) -> None:
    s = acceptance_run.summary
    zero = {b.name: b for b in s.baselines}["zero_shot"]
    tfidf = {b.name: b for b in s.baselines}["tfidf_lr"]
    print(
        f"\nacceptance: accuracy {s.accuracy:.4f} macro-F1 {s.macro_f1:.4f} zero-shot {zero.accuracy:.4f} "
        f"tfidf {tfidf.accuracy:.4f} train {s.train_seconds} s eval {s.eval_seconds} s total {acceptance_run.seconds:.0f} s"
    )
    assert s.status == "succeeded" and s.steps == 100 and s.n_eval == 160
    assert s.accuracy is not None and s.accuracy >= 0.90
    assert zero.accuracy is not None and s.accuracy - zero.accuracy >= 0.60
    assert s.macro_f1 is not None and s.macro_f1 >= 0.88
    assert s.eval_loss is not None and s.train_loss is not None and s.eval_loss < 1.0

    out = acceptance_run.out
    for rel in ("adapter/adapter_model.safetensors", "adapter/adapter_config.json", "adapter/tokenizer.json",
                "README.md", "metrics.json", "plots/loss.png", "plots/confusion.png"):
        f = out / rel
        assert f.is_file() and f.stat().st_size > 0, rel
        assert f.stat().st_mode & 0o044 == 0o044, f"{rel} must be world-readable"
    assert (out / "plots" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    card = (out / "README.md").read_text()
    assert "| fine-tuned adapter |" in card and "| zero_shot |" in card and "| card_arrival |" in card
    m = acceptance_run.metrics
    assert m["training"]["precision"] == "fp32" and m["training"]["quantization"] == "none"
    assert m["training"]["shared_prefix_batches"] > 0  # the BANKING77 prompt prefix is shared
    assert m["data"]["train_counts"] and max(m["data"]["train_counts"].values()) <= 50
    assert set(s.artifacts) >= {"adapter", "metrics", "model_card", "loss_plot", "confusion_plot"}

    events = [json.loads(line) for line in acceptance_run.stdout.splitlines() if line.startswith("{")]
    events = events or read_progress(str(out / "progress.jsonl"))  # a reused run has no captured stdout
    kinds = {e["event"] for e in events}
    assert {"start", "data", "progress", "checkpoint", "eval_start", "eval", "baseline", "done"} <= kinds
    from tuneforge_trainer.events import check_event

    assert [e for e in events if check_event(e)] == []
    # The whole summary also lies beside the artifacts, for when the pod is gone.
    saved = parse_summary((out / "summary.json").read_text())
    assert saved.status == "succeeded" and saved.accuracy == s.accuracy and saved.steps == 100
    assert zero.accuracy_norm is not None and s.accuracy_norm is not None
    prog = [e for e in events if e["event"] == "progress" and "loss" in e]
    assert prog[-1]["step"] == 100 and prog[-1]["tokens_per_second"] > 0 and "eta_seconds" in prog[-1]
    assert read_progress(str(out / "progress.jsonl"))[-1]["event"] == "done"


@pytest.mark.timeout(5400)
def test_kill_and_resume_matches_uninterrupted(acceptance_run: Run, tmp_path: Path) -> None:
    """SIGTERM mid-run, restart, finish: the same result as the uninterrupted acceptance run.

    To train only ~20 steps more, the run starts from a copy of the acceptance run's step-80
    checkpoint (exactly as if an earlier attempt had been preempted there), is killed again a
    few steps later, and is restarted to the end.
    """
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copytree(acceptance_run.out / "checkpoints" / "checkpoint-80", out / "checkpoints" / "checkpoint-80")
    config = yaml.safe_load((acceptance_run.out.parent / "config.yaml").read_text())
    config["output"] = {"dir": str(out), "termination_message_path": str(tmp_path / "out.termination-log")}
    config["eval"]["baselines"] = {"zero_shot": False, "few_shot": 0, "tfidf_lr": False}
    cfg = write_config(tmp_path / "config.yaml", config)
    cmd = [sys.executable, "-m", "tuneforge_trainer", "train", "--config", str(cfg)]
    proc = subprocess.Popen(cmd, env=cli_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    progress = out / "progress.jsonl"
    deadline = time.monotonic() + 1800
    try:
        while time.monotonic() < deadline:
            steps = [e.get("step", 0) for e in read_progress(str(progress)) if e["event"] == "progress"]
            if steps and max(steps) >= 85:
                break
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(1)
        else:
            pytest.fail("training did not reach step 85")
        proc.send_signal(signal.SIGTERM)
        t_term = time.monotonic()
        _, err = proc.communicate(timeout=300)
        grace = time.monotonic() - t_term
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-3000:]
    assert grace < 90, f"took {grace:.0f} s to checkpoint and exit after SIGTERM"
    first = read_progress(str(progress))
    assert any(e["event"] == "resume" and e["step"] == 80 for e in first)
    pre = parse_summary((tmp_path / "out.termination-log").read_text())
    assert pre.status == "preempted" and pre.steps is not None and 85 <= pre.steps < 100
    assert (out / "checkpoints" / f"checkpoint-{pre.steps}" / "adapter_model.safetensors").is_file()
    assert not (out / "adapter").exists()

    t0 = time.monotonic()
    resumed = finished_run(out, run_cli("train", "--config", str(cfg), timeout=3600), time.monotonic() - t0)
    s = resumed.summary
    print(
        f"\nresume: killed at step {pre.steps} (exit {grace:.0f} s after SIGTERM), resumed from {s.resumed_from_step}, "
        f"accuracy {s.accuracy:.4f} vs uninterrupted {acceptance_run.summary.accuracy:.4f}; restart took {resumed.seconds:.0f} s"
    )
    assert s.status == "succeeded" and s.steps == 100 and s.resumed_from_step == pre.steps
    events = read_progress(str(progress))
    assert [e["step"] for e in events if e["event"] == "resume"] == [80, pre.steps]
    assert s.accuracy is not None and acceptance_run.summary.accuracy is not None
    assert abs(s.accuracy - acceptance_run.summary.accuracy) <= 0.02


def test_qlora_4bit_steps_on_cpu_from_hf_source(model_path: Path, banking77: Path, tmp_path: Path) -> None:
    # The base model comes as hf://, resolved offline from a hub-cache-shaped stand-in folder.
    hub = hub_cache_standin(tmp_path / "hub", "HuggingFaceTB/SmolLM2-135M-Instruct", model_path)
    out = tmp_path / "out"
    cfg = banking_config(
        "hf://HuggingFaceTB/SmolLM2-135M-Instruct", out,
        quantization={"mode": "4bit"},
        training={"max_steps": 3, "batch_size": 4, "logging_steps": 1, "eval_steps": None, "save_steps": None},
        eval={"max_rows": 16, "baselines": {"zero_shot": False, "few_shot": 0, "tfidf_lr": False}},
    )
    cfg["dataset"].update(max_rows_per_label=4, max_eval_rows_per_label=2)
    cfg["model"]["revision"] = "main"
    path = write_config(tmp_path / "config.yaml", cfg)
    t0 = time.monotonic()
    proc = run_cli("train", "--config", str(path), env={"HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"})
    run = finished_run(out, proc, time.monotonic() - t0)
    print(f"\nqlora: 3 steps in {run.summary.train_seconds} s, total {run.seconds:.0f} s")
    assert run.summary.quantization == "4bit" and run.summary.steps == 3
    t = run.metrics["training"]
    assert t["quantized_modules"] > 0
    losses = [h["loss"] for h in t["log_history"] if "loss" in h]
    assert len(losses) == 3 and all(0 < x < 20 for x in losses)
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == 16
    assert os.path.getsize(out / "adapter" / "adapter_model.safetensors") < 20_000_000


def test_torchrun_two_processes_rank0_writes(model_path: Path, banking77: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cfg = banking_config(
        model_path, out,
        training={"max_steps": 2, "batch_size": 2, "logging_steps": 1, "eval_steps": None, "save_steps": None},
        eval={"max_rows": 8, "loss_max_rows": 4, "baselines": {"zero_shot": False, "few_shot": 0, "tfidf_lr": True}},
    )
    cfg["dataset"].update(max_rows_per_label=3, max_eval_rows_per_label=1)
    path = write_config(tmp_path / "config.yaml", cfg)
    env = cli_env() | {"TUNEFORGE_THREADS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
         "-m", "tuneforge_trainer", "train", "--config", str(path)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [e["event"] for e in events].count("done") == 1  # rank 1 reports nothing
    assert [e["event"] for e in events].count("start") == 1
    s = parse_summary((tmp_path / "out.termination-log").read_text())
    assert s.status == "succeeded" and s.steps == 2
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert sum(1 for e in read_progress(str(out / "progress.jsonl")) if e["event"] == "done") == 1
    # Under DDP every batch takes the shared-prefix layout (the ranks run the same collectives).
    training = json.loads((out / "metrics.json").read_text())["training"]
    assert training["shared_prefix_batches"] == training["batches"] > 0


@pytest.mark.timeout(5400)
def test_evaluate_subcommand_scores_existing_adapter(acceptance_run: Run, tmp_path: Path) -> None:
    import csv

    from trainer_helpers import INTENTS8

    held = tmp_path / "held.csv"
    per: dict[str, int] = {}
    with open(BANKING77 / "test.csv", newline="") as src, open(held, "w", newline="") as dst:
        w = csv.writer(dst)
        w.writerow(["text", "category"])
        for r in csv.DictReader(src):
            lab = r["category"]
            if lab in INTENTS8 and per.get(lab, 0) < 5:
                per[lab] = per.get(lab, 0) + 1
                w.writerow([r["text"], lab])
    cfg = acceptance_run.out.parent / "config.yaml"
    r = run_cli("evaluate", "--config", str(cfg), "--eval-file", str(held),
                "--adapter", str(acceptance_run.out / "adapter"),
                "output.termination_message_path=" + str(tmp_path / "term"),
                "eval.baselines.zero_shot=false", "eval.baselines.tfidf_lr=true")
    assert r.returncode == 0, r.stderr[-3000:]
    s = parse_summary((tmp_path / "term").read_text())
    print(f"\nevaluate: accuracy {s.accuracy} on {s.n_eval} other test rows in {s.eval_seconds} s")
    assert s.command == "evaluate" and s.status == "succeeded" and s.n_eval == 40
    assert s.accuracy is not None and s.accuracy >= 0.8
    assert [b.name for b in s.baselines] == ["tfidf_lr"]
    assert (acceptance_run.out / "evaluation" / "metrics.json").is_file()
