"""The classification head (``task.head: classifier``): LoRA plus a sequence-classification score
layer, trained on the bare text and scored with one forward pass per row.

The base model loads as ``AutoModelForSequenceClassification`` (for a decoder LM: a ``score``
linear layer over the hidden state of the last non-pad token, so the pad token id must be set).
LoRA adapts the same modules as the lm head and the score layer trains fully, saved with the
adapter through peft's ``modules_to_save``. There is no prompt template and no label list: the
input is the row's text, so the cost of a row does not grow with the number of labels.

The label order is part of the adapter: class index i means ``labels[i]``. It is written into
the adapter folder (``config.json``'s id2label/label2id beside the lineage's ``labels`` in
``tuneforge.json``) and :func:`check_adapter_labels` refuses an adapter whose order differs from
the one expected. Pure parts (:func:`label_maps`, :func:`classifier_text`, :func:`lora_config_kwargs`,
:func:`adapter_labels`, :func:`check_adapter_labels`) need no torch; the rest imports it inside.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from tuneforge_trainer.config import TrainerConfig
from tuneforge_trainer.data import DataError, Example
from tuneforge_trainer.lineage import MANIFEST_NAME
from tuneforge_trainer.metrics import Timings, classification_metrics, latency_summary

__all__ = [
    "LabelMismatch",
    "SCORE_MODULES",
    "adapter_labels",
    "build_trainer",
    "check_adapter_labels",
    "classifier_text",
    "label_maps",
    "load_model",
    "lora_config_kwargs",
    "predict",
    "save_label_config",
    "score_classifier",
    "to_dataset",
    "token_length_fn",
]

log = logging.getLogger(__name__)

# The score layer of transformers' decoder *ForSequenceClassification classes (Llama, Mistral,
# Qwen2, Gemma, ...): trained in full and saved with the adapter.
SCORE_MODULES = ["score"]


class LabelMismatch(DataError):
    """An adapter's label order is not the expected one (or it has none); ``str()`` says which
    (a DataError: the tuneforge-train CLI exits with its data-error code and this one line)."""


def label_maps(labels: Sequence[str]) -> tuple[dict[int, str], dict[str, int]]:
    """``(id2label, label2id)`` for the label order: class index i is ``labels[i]``."""
    if len(set(labels)) != len(labels):
        raise LabelMismatch(f"labels must be unique, got {list(labels)}")
    return dict(enumerate(labels)), {lab: i for i, lab in enumerate(labels)}


def classifier_text(ex: Example) -> str:
    """The text the classifier reads for a row: its input without a prompt template or label
    list (instruction rows: instruction and input; chat rows: the last user turn)."""
    if ex.messages is not None:
        users = [m["content"] for m in ex.messages if m.get("role") == "user"]
        return users[-1] if users else ex.text
    if ex.instruction is not None:
        return ex.instruction if ex.text == ex.instruction else f"{ex.instruction}\n\n{ex.text}"
    return ex.text


def lora_config_kwargs(cfg: TrainerConfig) -> dict[str, Any]:
    """Keyword arguments of peft's ``LoraConfig`` for the classifier: the lm head's LoRA settings
    (r, alpha, dropout, target modules, bias), task type SEQ_CLS and the score layer saved."""
    lc = cfg.lora
    targets: Any = lc.target_modules if lc.target_modules == "all-linear" else list(lc.target_modules)
    return {
        "r": lc.r,
        "lora_alpha": lc.alpha,
        "lora_dropout": lc.dropout,
        "target_modules": targets,
        "bias": lc.bias,
        "task_type": "SEQ_CLS",
        "modules_to_save": list(SCORE_MODULES),
    }


def adapter_labels(adapter_dir: str) -> list[str]:
    """The label order saved with a classifier adapter (``config.json``'s id2label, checked
    against the lineage's ``labels`` in ``tuneforge.json`` when both are there)."""
    found: dict[str, list[str]] = {}
    cfg_path = os.path.join(adapter_dir, "config.json")
    if os.path.isfile(cfg_path):
        with open(cfg_path, encoding="utf-8") as f:
            id2label = json.load(f).get("id2label") or {}
        try:
            idx = sorted(int(k) for k in id2label)
        except ValueError:
            raise LabelMismatch(f"{cfg_path}: id2label keys must be class indices, got {sorted(id2label)}") from None
        if idx != list(range(len(idx))):
            raise LabelMismatch(f"{cfg_path}: id2label must number the classes 0..n-1, got {idx}")
        if idx:
            found["config.json id2label"] = [str(id2label[str(i)]) for i in idx]
    man_path = os.path.join(adapter_dir, MANIFEST_NAME)
    if os.path.isfile(man_path):
        with open(man_path, encoding="utf-8") as f:
            labels = (json.load(f).get("lineage") or {}).get("labels")
        if labels:
            found[f"{MANIFEST_NAME} lineage.labels"] = [str(x) for x in labels]
    if not found:
        raise LabelMismatch(
            f"adapter {adapter_dir} has no label order (neither config.json id2label nor "
            f"{MANIFEST_NAME} lineage.labels): not a classifier adapter written by tuneforge"
        )
    (first, a), *rest = found.items()
    for other, b in rest:
        if a != b:
            raise LabelMismatch(f"adapter {adapter_dir}: {first} {a} differs from {other} {b}")
    return a


def check_adapter_labels(adapter_dir: str, expected: Sequence[str]) -> list[str]:
    """The adapter's label order, refused unless it is ``expected`` (same labels, same order:
    class index i must mean the same label for whoever maps indices to names)."""
    got = adapter_labels(adapter_dir)
    want = list(expected)
    if got == want:
        return got
    if set(got) != set(want):
        missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        raise LabelMismatch(
            f"adapter {adapter_dir} was trained on other labels: expected labels missing from it "
            f"{missing}, labels only it has {extra}"
        )
    i = next(i for i, (g, w) in enumerate(zip(got, want)) if g != w)
    raise LabelMismatch(
        f"adapter {adapter_dir} orders its labels differently: class {i} is {got[i]!r} in the "
        f"adapter, {want[i]!r} expected (adapter order {got})"
    )


def save_label_config(model: Any, adapter_dir: str) -> None:
    """Write the base model's config with this head (num_labels, id2label, label2id, pad token)
    as ``<adapter>/config.json``: the label order travels with the adapter's weights."""
    import copy

    base: Any = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = copy.deepcopy(base.config)
    # The base folder's config names its causal-LM class; this head is the classification one.
    config.architectures = [type(base).__name__]
    config.to_json_file(os.path.join(adapter_dir, "config.json"))


def load_model(path: str, cfg: TrainerConfig, ds: Any, labels: Sequence[str]) -> Any:
    """The base model with a new score layer for ``labels`` (not yet wrapped with LoRA)."""
    from transformers import AutoModelForSequenceClassification

    from tuneforge_trainer.modeling import load_tokenizer, model_load_kwargs

    id2label, label2id = label_maps(labels)
    kw = model_load_kwargs(cfg, ds)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=len(labels), id2label=id2label, label2id=label2id, **kw
    )
    # A decoder LM reads its class from the last non-pad token; without a pad id it refuses
    # batches of more than one row.
    model.config.pad_token_id = load_tokenizer(path, cfg).pad_token_id
    if "quantization_config" not in kw and ds.cuda and not ds.sharded:
        model.to(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    return model


def token_length_fn(tokenizer: Any):  # type: ignore[no-untyped-def]
    """Tokens of a row as the classifier reads it (for dropping over-length rows)."""

    def n_tokens(ex: Example) -> int:
        return len(tokenizer(classifier_text(ex)).input_ids)

    return n_tokens


def to_dataset(rows: Sequence[Example], tokenizer: Any, labels: Sequence[str], max_length: int) -> Any:
    """A tokenized ``datasets.Dataset`` (input_ids, attention_mask, labels) for the Trainer."""
    from datasets import Dataset

    _, label2id = label_maps(labels)
    enc = tokenizer([classifier_text(e) for e in rows], truncation=True, max_length=max_length)
    return Dataset.from_dict(
        {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
         "labels": [label2id[e.target] for e in rows]}
    )


def build_trainer(
    cfg: TrainerConfig, model: Any, tokenizer: Any, args: Any, train_dataset: Any, eval_dataset: Any = None,
    peft_config: Any = None, callbacks: list[Any] | None = None,
) -> Any:
    """A transformers ``Trainer`` for the classifier (cross-entropy over the classes), with the
    same arguments, callbacks and checkpoints as the lm head's SFT trainer."""
    from peft import get_peft_model
    from transformers import DataCollatorWithPadding, Trainer

    if peft_config is not None:
        model = get_peft_model(model, peft_config)
    return Trainer(
        model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
        processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer), callbacks=callbacks,
    )


def predict(model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 16,
            timings: Timings | None = None) -> tuple[list[int], list[list[float]]]:
    """Class index and class log-probabilities per text: one forward pass per batch;
    ``timings`` gets (rows, seconds) per batch."""
    import torch

    device = next(model.parameters()).device
    idx: list[int] = []
    logp: list[list[float]] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                t_batch = time.perf_counter()
                enc = tokenizer(list(texts[start : start + batch_size]), padding=True, return_tensors="pt").to(device)
                lp = torch.log_softmax(model(**enc).logits.float(), dim=-1)
                idx.extend(lp.argmax(-1).tolist())
                logp.extend(lp.tolist())
                if timings is not None:
                    timings.append((len(lp), time.perf_counter() - t_batch))
    finally:
        if was_training:
            model.train()
    return idx, logp


def score_classifier(
    model: Any, tokenizer: Any, rows: Sequence[Example], cfg: TrainerConfig, labels: Sequence[str]
) -> dict[str, Any]:
    """Predict and score ``rows`` as ``evaluate.score_model`` does (same metrics and keys;
    ``label_nll`` is the mean cross-entropy of the true class)."""
    t0 = time.monotonic()
    timings: Timings = []
    idx, logp = predict(model, tokenizer, [classifier_text(e) for e in rows], cfg.eval.batch_size, timings)
    preds = [labels[i] for i in idx]
    truth = [e.target for e in rows]
    _, label2id = label_maps(labels)
    res = classification_metrics(truth, preds, labels)
    # Rows whose truth is outside the trained label set count as errors, not as a loss term.
    known = [(lp, label2id[t]) for lp, t in zip(logp, truth) if t in label2id]
    res["label_nll"] = -sum(lp[j] for lp, j in known) / max(1, len(known))
    res["method"] = "classifier"
    res["predictions"] = preds
    res["seconds"] = round(time.monotonic() - t0, 2)
    res["latency"] = latency_summary(timings)
    return res
