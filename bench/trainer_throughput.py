#!/usr/bin/env python3
"""Training throughput: the Tuneforge trainer vs a plain transformers Trainer loop.

Same model (SmolLM2-135M-Instruct), same LoRA (r=16, alpha=32, q/k/v/o), same rows (BANKING77,
8 intents x 50 rows, prompt listing the labels), same batch size, optimiser and step count:

- tuneforge: the trainer ``tuneforge-train`` builds (``tuneforge_trainer.sft.build_trainer``):
  shared-prefix batches (the prompt prefix all rows repeat runs once per batch), completion-only
  loss through trl's fused LM head (projects only answer positions), fp32, no checkpointing;
- plain: ``transformers.Trainer`` with ``DataCollatorForLanguageModeling`` (pad to the longest
  row of the batch, loss on every token).

Throughput is the rows' own tokens per second of ``train()`` wall time (pad tokens and shared
prefixes are not counted twice), both measured in this one process, one after the other. The
"computed" column is the tokens the model actually ran per row token (padding makes it > 1,
sharing < 1). Prints both figures and their ratio. Run it on an idle machine
(``make cluster-down`` first): the two trainers run in turn, so load that changes between them
(a cluster collecting a bench's objects, say) skews the ratio.

    python bench/trainer_throughput.py [--steps 10] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from banking77_common import ROOT, model_folder, training_only_config  # noqa: E402


def make_cfg(model: Path, out: Path, steps: int, batch: int) -> Any:
    from tuneforge_trainer.config import parse_config

    return parse_config(training_only_config(model, out, steps, batch))


class _Timer:
    """Trainer callback: wall time and real tokens from the first step's end (warm-up excluded)."""

    def __init__(self) -> None:
        self.t0 = 0.0
        self.t1 = 0.0

    def callback(self, counter: Any) -> Any:
        from transformers import TrainerCallback

        timer = self

        class Cb(TrainerCallback):  # type: ignore[misc]
            def on_step_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
                if state.global_step == 1:
                    timer.t0 = time.perf_counter()

            def on_train_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
                timer.t1 = time.perf_counter()

        return Cb()


class TokenCounter:
    """Wraps a collator and records row tokens and computed tokens of every batch, in order."""

    def __init__(self, collator: Any) -> None:
        self.collator = collator
        self.real: list[int] = []
        self.computed: list[int] = []

    def __call__(self, examples: list[dict[str, Any]]) -> Any:
        batch = self.collator(examples)
        self.real.append(sum(len(e["input_ids"]) for e in examples))
        self.computed.append(int(batch["input_ids"].numel()))
        return batch

    def timed(self, steps: int) -> tuple[int, int]:
        # One batch per step (no accumulation); the dataloader may prefetch one more, so take
        # exactly the batches of the timed steps 2..steps.
        return sum(self.real[1:steps]), sum(self.computed[1:steps])


def run_tuneforge(cfg: Any, model_path: Path) -> dict[str, float]:
    import torch
    from datasets import Dataset

    from tuneforge_trainer.data import format_example, prepare_data
    from tuneforge_trainer.modeling import device_settings, get_lora_config, load_model, load_tokenizer
    from tuneforge_trainer.sft import build_trainer
    from tuneforge_trainer.train import _training_args

    tok = load_tokenizer(str(model_path), cfg)
    data = prepare_data(cfg)
    ds_rows = [format_example(e, cfg.dataset.prompt_template, data.labels) for e in data.train]
    dev = device_settings(cfg, cuda=False)
    args = _training_args(cfg, dev, cfg.output.dir, has_eval=False, cuda=False)
    args.save_strategy = "no"
    model = load_model(str(model_path), cfg, dev)
    trainer = build_trainer(cfg, model, tok, args, Dataset.from_list(ds_rows), peft_config=get_lora_config(cfg))
    counter = TokenCounter(trainer.data_collator)
    trainer.data_collator = counter
    timer = _Timer()
    trainer.add_callback(timer.callback(counter))
    torch.manual_seed(0)
    trainer.train()
    return _result(counter, timer, cfg.training.max_steps)


def _result(counter: TokenCounter, timer: _Timer, steps: int) -> dict[str, float]:
    tokens, computed = counter.timed(steps)
    secs = timer.t1 - timer.t0
    return {"tokens_per_s": tokens / secs, "seconds": secs, "tokens": tokens, "computed": computed / tokens}


def run_plain(cfg: Any, model_path: Path, out: Path) -> dict[str, float]:
    import torch
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from tuneforge_trainer.data import prepare_data, render_prompt
    from tuneforge_trainer.modeling import get_lora_config, load_tokenizer

    tok = load_tokenizer(str(model_path), cfg)
    data = prepare_data(cfg)
    texts = []
    for e in data.train:
        msgs = render_prompt(e, cfg.dataset.prompt_template, data.labels, None) + [{"role": "assistant", "content": e.target}]
        texts.append(tok.apply_chat_template(msgs, tokenize=False))
    ds = Dataset.from_list([{"input_ids": tok(t, add_special_tokens=False).input_ids} for t in texts])
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32), get_lora_config(cfg))
    t = cfg.training
    args = TrainingArguments(
        output_dir=str(out), max_steps=t.max_steps, per_device_train_batch_size=t.batch_size,
        learning_rate=t.learning_rate, lr_scheduler_type=t.lr_scheduler, warmup_steps=t.warmup_ratio,
        use_cpu=True, bf16=False, report_to=[], save_strategy="no", logging_steps=t.max_steps,
        disable_tqdm=True, seed=t.seed, data_seed=t.seed, dataloader_num_workers=0,
    )
    collator = DataCollatorForLanguageModeling(tok, mlm=False)  # pads to the batch's longest row
    counter = TokenCounter(collator)
    timer = _Timer()
    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=counter, callbacks=[timer.callback(counter)])
    torch.manual_seed(0)
    trainer.train()
    return _result(counter, timer, t.max_steps)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10, help="optimiser steps per trainer (the first is warm-up)")
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args()
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    t_start = time.monotonic()
    model = model_folder()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = make_cfg(model, Path(tmp) / "tf", args.steps, args.batch_size)
        tf = run_tuneforge(cfg, model)
        plain = run_plain(cfg, model, Path(tmp) / "plain")
    print(f"\nTraining throughput, SmolLM2-135M-Instruct + LoRA r=16 q/k/v/o, BANKING77 8 intents x 50 rows, "
          f"batch {args.batch_size}, steps 2..{args.steps} timed, {torch.get_num_threads()} CPU threads")
    print(f"{'trainer':<46} {'tokens/s':>9} {'tokens':>7} {'seconds':>8} {'computed':>9}")
    for name, r in (("tuneforge (shared prefix, completion-only loss)", tf), ("plain Trainer (pad to longest, every token)", plain)):
        print(f"{name:<46} {r['tokens_per_s']:>9.1f} {r['tokens']:>7d} {r['seconds']:>8.1f} {r['computed']:>8.2f}x")
    print(f"ratio tuneforge / plain: {tf['tokens_per_s'] / plain['tokens_per_s']:.2f}x   (wall time {time.monotonic() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
