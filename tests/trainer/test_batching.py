"""Shared-prefix batches: the pure layout (table-driven) and, on the real model, that the shared
layout gives the same loss and gradients as the rows computed one by one, through the same
trainer class ``tuneforge-train`` uses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tuneforge_trainer.batching import IGNORE, ROW_TOKENS, SharedPrefixCollator, layout, pays_off, shared_prefix_length

X = IGNORE


@pytest.mark.parametrize(
    ("rows", "labels", "expected"),
    [
        # Common prefix of 3, first loss token at index 5: share all 3.
        ([[1, 2, 3, 4, 9, 7], [1, 2, 3, 5, 9, 8]], [[X, X, X, X, X, 7], [X, X, X, X, X, 8]], 3),
        # Identical prompts: stop one before the first loss token (its predictor stays per row).
        ([[1, 2, 3, 7], [1, 2, 3, 8]], [[X, X, X, 7], [X, X, X, 8]], 2),
        # Loss on every token: nothing can be shared.
        ([[1, 2, 3], [1, 2, 4]], [[1, 2, 3], [1, 2, 4]], 0),
        # One row's answer starts early: the shortest prompt bounds the prefix.
        ([[1, 2, 3, 4, 5], [1, 2, 6]], [[X, X, X, X, 5], [X, X, 6]], 1),
        # No common first token.
        ([[1, 2, 3], [4, 2, 3]], [[X, X, 3], [X, X, 3]], 0),
        # Rows without any loss token share up to their length minus one.
        ([[1, 2, 3], [1, 2, 3]], [[X, X, X], [X, X, X]], 2),
        ([], [], 0),
    ],
)
def test_shared_prefix_length(rows: list[list[int]], labels: list[list[int]], expected: int) -> None:
    assert shared_prefix_length(rows, labels) == expected


def test_layout_positions_segments_and_labels() -> None:
    rows = [[1, 2, 3, 4, 9, 7], [1, 2, 3, 5, 8]]
    labels = [[X, X, X, X, X, 7], [X, X, X, X, 8]]
    lay = layout(rows, labels, 3)
    assert lay.input_ids == [1, 2, 3, 4, 9, 7, 5, 8]
    assert lay.position_ids == [0, 1, 2, 3, 4, 5, 3, 4]
    assert lay.segments == [-1, -1, -1, 0, 0, 0, 1, 1]
    assert lay.labels == [X, X, X, X, X, 7, X, 8]
    # Every loss token, shifted left by one, is predicted from a token of its own row.
    for t, lab in enumerate(lay.labels):
        if lab != X:
            assert lay.segments[t - 1] == lay.segments[t]


def test_layout_never_predicts_a_segment_start_from_the_previous_row() -> None:
    # Loss on every token but label 0 (prefix 0): the first token of row 2 must carry no loss.
    lay = layout([[1, 2], [3, 4]], [[1, 2], [3, 4]], 0)
    assert lay.labels == [X, 2, X, 4]


@pytest.mark.parametrize(
    ("rows", "flat", "hidden", "expected"),
    [
        ([105] * 8, 70 + 8 * 35, 576, True),  # BANKING77, 8 labels: 70 shared of 105
        ([530] * 8, 500 + 8 * 30, 576, True),  # all 77 labels in the prompt
        ([500] * 8, 16 + 8 * 484, 576, False),  # short prefix, long rows: the dense mask costs more
        ([100] * 8, 800, 576, False),  # nothing shared
    ],
)
def test_pays_off(rows: list[int], flat: int, hidden: int, expected: bool) -> None:
    assert pays_off(rows, flat, hidden) is expected


def test_collator_falls_back_when_nothing_is_shared() -> None:
    seen: list[Any] = []

    def fallback(examples: list[dict[str, Any]]) -> dict[str, Any]:
        seen.append(examples)
        return {"fallback": True}

    c = SharedPrefixCollator(fallback, hidden_size=576)
    assert c([{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}, {"input_ids": [4, 5], "labels": [4, 5]}]) == {"fallback": True}
    assert (c.shared_batches, c.fallback_batches) == (0, 1)


def test_collator_always_shares_when_told() -> None:
    """DDP: every rank takes the same path; with no common prefix the layout is still exact."""
    c = SharedPrefixCollator(lambda ex: pytest.fail("fell back"), hidden_size=576, always=True)
    batch = c([{"input_ids": [1, 2, 3], "labels": [X, 2, 3]}, {"input_ids": [4, 5], "labels": [X, 5]}])
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert batch["labels"].tolist() == [[X, 2, 3, X, 5]]
    assert batch["attention_mask"][0, 0].int().tolist() == [
        [1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 1, 1],
    ]
    assert batch[ROW_TOKENS].item() == 5


def _tokenized_rows(model_path: Path, banking77: Path, n: int) -> tuple[Any, list[dict[str, Any]]]:
    import csv

    from tuneforge_trainer.config import parse_config
    from tuneforge_trainer.data import Example, format_example
    from tuneforge_trainer.modeling import load_tokenizer

    cfg = parse_config({"model": {"source": str(model_path)}, "dataset": {"source": str(banking77 / "train.csv")}, "output": {"dir": "/tmp/unused"}})
    tok = load_tokenizer(str(model_path), cfg)
    with open(banking77 / "train.csv", newline="", encoding="utf-8") as f:
        raw = [r for _, r in zip(range(400), csv.DictReader(f))][::50][:n]
    labels = sorted({r["category"] for r in raw})
    out = []
    for i, r in enumerate(raw):
        ex = format_example(Example(text=r["text"], target=r["category"], source="train.csv", row=i + 2), cfg.dataset.prompt_template, labels)
        prompt = tok.apply_chat_template(ex["prompt"], tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
        full = tok.apply_chat_template(ex["prompt"] + ex["completion"], tokenize=True, return_dict=True)["input_ids"]
        assert full[: len(prompt)] == prompt
        out.append({"input_ids": full, "labels": [X] * len(prompt) + full[len(prompt):]})
    return tok, out


@pytest.mark.slow
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_shared_prefix_loss_and_gradients_equal_per_row(model_path: Path, banking77: Path, attn: str) -> None:
    """The real model, real BANKING77 prompts: one shared-prefix forward/backward == padded rows."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    tok, rows = _tokenized_rows(model_path, banking77, 4)
    base = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32, attn_implementation=attn)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.train()

    def grads() -> dict[str, torch.Tensor]:
        g = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad()
        return g

    collator = SharedPrefixCollator(lambda ex: pytest.fail("fell back"), hidden_size=base.config.hidden_size)
    batch = collator(rows)
    assert batch[ROW_TOKENS].item() == sum(len(r["input_ids"]) for r in rows)
    assert batch["input_ids"].shape[1] < 0.6 * sum(len(r["input_ids"]) for r in rows)
    mask = batch["attention_mask"]
    if attn == "eager":  # what TuneforgeSFTTrainer does for eager attention
        mask = torch.zeros(mask.shape).masked_fill_(~mask, torch.finfo(torch.float32).min)
    shared = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=mask, labels=batch["labels"]).loss
    shared.backward()
    g_shared = grads()

    longest = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), longest), tok.pad_token_id)
    am = torch.zeros((len(rows), longest), dtype=torch.long)
    labels = torch.full((len(rows), longest), X)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n], am[i, :n], labels[i, :n] = torch.tensor(r["input_ids"]), 1, torch.tensor(r["labels"])
    padded = model(input_ids=ids, attention_mask=am, labels=labels).loss
    padded.backward()
    g_padded = grads()

    assert shared.item() == pytest.approx(padded.item(), rel=1e-5)
    assert g_shared.keys() == g_padded.keys() and g_shared
    for name in g_shared:
        # Float32 sums in another order: equal to ~1e-6 of the gradient's norm.
        rel = (g_shared[name] - g_padded[name]).norm() / g_padded[name].norm()
        assert rel < 1e-4, (name, float(rel))


@pytest.mark.slow
def test_trainer_counts_row_tokens_and_matches_unshared_loss(model_path: Path, banking77: Path, tmp_path: Path) -> None:
    """Two steps of the trainer tuneforge-train builds, shared prefix on and off: same losses;
    tokens seen are the rows' tokens, not the shorter flat sequence."""
    import torch
    from datasets import Dataset

    from tuneforge_trainer.config import parse_config
    from tuneforge_trainer.data import Example, format_example
    from tuneforge_trainer.modeling import device_settings, get_lora_config, load_model, load_tokenizer
    from tuneforge_trainer.sft import build_trainer
    from tuneforge_trainer.train import _training_args

    texts = ["my card has not arrived", "what is the exchange rate", "I lost my card", "my pin is blocked"] * 2
    targets = ["card_arrival", "exchange_rate", "lost_or_stolen_card", "pin_blocked"] * 2

    def run(shared: bool) -> tuple[list[float], int, int]:
        cfg = parse_config({
            "model": {"source": str(model_path)},
            "dataset": {"source": str(banking77 / "train.csv")},
            "lora": {"dropout": 0.0},
            "training": {"max_steps": 2, "batch_size": 4, "logging_steps": 1, "shared_prefix": shared, "learning_rate": 1e-3},
            "output": {"dir": str(tmp_path / str(shared))},
        })
        tok = load_tokenizer(str(model_path), cfg)
        rows = [format_example(Example(text=t, target=y, source="x", row=i), cfg.dataset.prompt_template, sorted(set(targets)))
                for i, (t, y) in enumerate(zip(texts, targets))]
        dev = device_settings(cfg, cuda=False)
        args = _training_args(cfg, dev, str(tmp_path / f"ckpt-{shared}"), has_eval=False, cuda=False)
        args.save_strategy = "no"
        torch.manual_seed(0)
        trainer = build_trainer(cfg, load_model(str(model_path), cfg, dev), tok, args, Dataset.from_list(rows), peft_config=get_lora_config(cfg))
        trainer.args.dataloader_drop_last = True
        trainer.train()
        assert (trainer.data_collator.shared_batches > 0) if shared else not hasattr(trainer.data_collator, "shared_batches")
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        row_tokens = sum(len(e["input_ids"]) for e in trainer.train_dataset)
        return losses, trainer.state.num_input_tokens_seen, row_tokens

    shared_losses, shared_seen, row_tokens = run(True)
    plain_losses, _, _ = run(False)
    assert len(shared_losses) == 2
    assert shared_losses == pytest.approx(plain_losses, rel=1e-4)
    assert shared_seen == row_tokens
