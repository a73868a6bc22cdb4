"""Shared-prefix batches: the prompt prefix every row of a batch repeats runs once per batch.

Classification rows repeat one long instruction — the system prompt, the task and the label list
— before a short message and a one-word answer: on BANKING77 with 8 labels, ~70 of each row's
~105 tokens are the same in every row (with all 77 labels, ~500 of ~530). Padding-free batching
removes pad tokens; this removes the repeats. A batch becomes one sequence

    [ prefix | rest of row 1 | rest of row 2 | ... ]

where each row's positions continue from the prefix and a block mask lets every row attend to
the prefix and, causally, to itself only. The loss is exactly the per-row loss: the prefix stops
before the token that predicts any row's first loss token, so every loss token is predicted from
the same tokens, at the same positions, as in its own row (checked by
tests/trainer/test_batching.py against padded rows). The same idea is "prefix sharing" in
preference-tuning and serving work (vLLM's prefix cache, Hydragen).

It pays when the prefix is long against the rows; with a short prefix the dense block mask costs
more attention than padding saves, so :func:`pays_off` keeps such batches on the ordinary
collator. The pure layout functions need no torch; :class:`SharedPrefixCollator` builds tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ROW_TOKENS",
    "SharedPrefixCollator",
    "SharedPrefixLayout",
    "layout",
    "pays_off",
    "shared_prefix_length",
]

IGNORE = -100
# Batch key with the rows' own token count: trl and the Trainer would otherwise count the flat
# sequence (fewer tokens) or the 4D mask's entries as the tokens trained on.
ROW_TOKENS = "tuneforge_row_tokens"


@dataclass(frozen=True)
class SharedPrefixLayout:
    """One batch as a single sequence: ``segments`` is -1 on the prefix, else the row index."""

    input_ids: list[int]
    position_ids: list[int]
    labels: list[int]
    segments: list[int]

    @property
    def length(self) -> int:
        return len(self.input_ids)


def _first_loss_index(labels: Sequence[int]) -> int:
    # Label 0 is never predicted (the shift drops it); an all-ignored row has no loss at all.
    return next((i for i in range(1, len(labels)) if labels[i] != IGNORE), len(labels))


def shared_prefix_length(rows: Sequence[Sequence[int]], labels: Sequence[Sequence[int]]) -> int:
    """Tokens that can be shared: the common prefix, ending before any row's first loss predictor.

    Row r's first loss token at index f is predicted from index f - 1, which must stay in the
    row's own segment (the prefix has one last position, but rows differ in what follows it).
    """
    if not rows:
        return 0
    limit = min(min(_first_loss_index(lab) for lab in labels) - 1, min(len(r) for r in rows))
    n = 0
    first = rows[0]
    while n < limit and all(r[n] == first[n] for r in rows):
        n += 1
    return n


def layout(rows: Sequence[Sequence[int]], labels: Sequence[Sequence[int]], prefix: int) -> SharedPrefixLayout:
    """Pure: the flat sequence for ``rows`` sharing their first ``prefix`` tokens."""
    ids = list(rows[0][:prefix])
    pos = list(range(prefix))
    lab = [IGNORE] * prefix  # no loss on the prefix (shared_prefix_length guarantees it)
    seg = [-1] * prefix
    for j, (row, row_labels) in enumerate(zip(rows, labels, strict=True)):
        ids.extend(row[prefix:])
        pos.extend(range(prefix, len(row)))
        # No loss on a segment's first token: the flat left shift would predict it from the end
        # of the previous row. In the row itself it is either a prompt token (prefix >= 1) or
        # label 0, which the shift never predicts either.
        lab.append(IGNORE)
        lab.extend(row_labels[prefix + 1 :])
        seg.extend([j] * (len(row) - prefix))
    return SharedPrefixLayout(ids, pos, lab, seg)


def pays_off(row_lengths: Sequence[int], flat_length: int, hidden_size: int) -> bool:
    """Whether the shared layout is cheaper than padding the rows to the longest.

    Per token, the linear layers cost ~24·h² FLOPs per layer and attention ~4·h per attended key,
    so one token weighs ~6·h key pairs. The shared layout attends over its whole block mask (a
    dense T×T: no causal fast path); padded rows take the causal kernel (~L²/2 per row). Require a
    clear win, since the estimate ignores kernel efficiency.
    """
    per_token = 6 * hidden_size
    longest = max(row_lengths)
    padded = len(row_lengths) * longest * (per_token + longest / 2)
    shared = flat_length * (per_token + flat_length)
    return shared < 0.8 * padded


class SharedPrefixCollator:
    """Collates rows into a shared-prefix batch, or hands them to ``fallback`` when that is cheaper.

    Rows come as trl's SFTTrainer tokenises them (``input_ids`` and ``labels`` with -100 on
    tokens without loss). The batch holds ``input_ids``/``position_ids``/``labels`` of shape
    (1, T), a boolean ``attention_mask`` of shape (1, 1, T, T) (True = attend; transformers passes
    a 4D mask to the attention as is) and :data:`ROW_TOKENS`.

    ``always``: never fall back. Under DDP every rank must run the same loss code, which holds
    collectives, so there every batch takes the shared layout (still exact with no common prefix).
    """

    def __init__(
        self,
        fallback: Callable[[list[dict[str, Any]]], dict[str, Any]],
        hidden_size: int,
        min_prefix: int = 8,
        always: bool = False,
    ) -> None:
        self.fallback = fallback
        self.hidden_size = hidden_size
        self.min_prefix = min_prefix
        self.always = always
        self.shared_batches = 0
        self.fallback_batches = 0

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        rows = [list(e["input_ids"]) for e in examples]
        labels = [list(e["labels"]) if "labels" in e else list(e["input_ids"]) for e in examples]
        prefix = shared_prefix_length(rows, labels) if len(rows) > 1 else 0
        flat = sum(len(r) for r in rows) - (len(rows) - 1) * prefix
        cheaper = prefix >= self.min_prefix and pays_off([len(r) for r in rows], flat, self.hidden_size)
        if not (cheaper or self.always):
            self.fallback_batches += 1
            return self.fallback(examples)
        self.shared_batches += 1
        lay = layout(rows, labels, prefix)
        seg = torch.tensor(lay.segments)
        causal = torch.ones(lay.length, lay.length, dtype=torch.bool).tril_()
        visible = (seg[:, None] == seg[None, :]) | (seg[None, :] == -1)
        return {
            "input_ids": torch.tensor([lay.input_ids]),
            "position_ids": torch.tensor([lay.position_ids]),
            "labels": torch.tensor([lay.labels]),
            "attention_mask": (causal & visible)[None, None],
            ROW_TOKENS: torch.tensor(sum(len(r) for r in rows)),
        }
