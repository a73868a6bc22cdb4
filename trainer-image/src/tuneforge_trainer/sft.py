"""trl's SFTTrainer as ``tuneforge-train`` runs it: shared-prefix batches on top of trl's own.

trl does the rest: chat templating, completion-only labels, its fused LM head (which projects
only the positions with a loss), padding-free or padded fallback batches, DDP, checkpoints.
Heavy module (torch, trl): imported only by the training code and the benches.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from trl import SFTTrainer

from tuneforge_trainer.batching import ROW_TOKENS, SharedPrefixCollator
from tuneforge_trainer.config import TrainerConfig

__all__ = ["TuneforgeSFTTrainer", "build_trainer"]

log = logging.getLogger(__name__)

# Attention implementations that take a ready 4D mask as is (flash-attention takes none).
_MASKED_ATTENTION = {"sdpa": "bool", "eager": "additive"}


class TuneforgeSFTTrainer(SFTTrainer):  # type: ignore[misc]
    """SFTTrainer that understands shared-prefix batches (see :mod:`tuneforge_trainer.batching`)."""

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
        row_tokens = inputs.get(ROW_TOKENS)
        if row_tokens is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # A copy: the Trainer reads ROW_TOKENS from the same dict after the step (token count).
        inputs = {k: v for k, v in inputs.items() if k != ROW_TOKENS}
        own: Any = self.model  # the PeftModel / PreTrainedModel (typed Module | None by trl)
        if _MASKED_ATTENTION.get(own.config._attn_implementation) == "additive":
            mask = inputs["attention_mask"]
            additive = torch.zeros(mask.shape, dtype=own.dtype, device=mask.device)
            inputs["attention_mask"] = additive.masked_fill_(~mask, torch.finfo(own.dtype).min)
        tokens_before = self._total_train_tokens
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if own.training:
            # trl counts attention_mask.sum() as the batch's tokens: the 4D mask's entries here.
            n = int(self.accelerator.gather_for_metrics(row_tokens.reshape(1)).sum().item())
            self._total_train_tokens = tokens_before + n
            self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
        return result

    def _track_num_input_tokens(self, inputs: dict[str, Any]) -> None:
        # Throughput is the rows' tokens per second, whatever layout computed them.
        row_tokens = inputs.get(ROW_TOKENS)
        if row_tokens is None or self.args.include_num_input_tokens_seen == "no":
            super()._track_num_input_tokens(inputs)
            return
        n = torch.as_tensor(row_tokens, device=self.args.device, dtype=torch.int64).reshape(1)
        self.state.num_input_tokens_seen += int(self.accelerator.gather(n).sum().item())


def build_trainer(
    cfg: TrainerConfig,
    model: Any,
    tokenizer: Any,
    args: Any,
    train_dataset: Any,
    eval_dataset: Any = None,
    peft_config: Any = None,
    callbacks: list[Any] | None = None,
) -> TuneforgeSFTTrainer:
    """The SFT trainer for ``cfg``, its collator wrapped for shared-prefix batches when they apply."""
    trainer = TuneforgeSFTTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    if cfg.training.shared_prefix:
        model_config: Any = trainer.model.config  # type: ignore[union-attr]
        attn = model_config._attn_implementation
        if attn in _MASKED_ATTENTION:
            hidden = model_config.get_text_config().hidden_size
            trainer.data_collator = SharedPrefixCollator(
                trainer.data_collator, hidden_size=hidden, always=args.world_size > 1
            )
        else:
            log.info("training.shared_prefix: off, attention %r takes no 4D mask", attn)
    return trainer
