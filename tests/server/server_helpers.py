"""Small fixtures for the server tests: adapter and base folders on disk, without a model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneforge_trainer.lineage import base_model_digest, write_manifest


def make_base(folder: Path) -> Path:
    """A tiny stand-in of a Hugging Face model folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "model.safetensors").write_bytes(b"\x01" * 4096)
    (folder / "tokenizer.json").write_text("{}")
    return folder


def add_hub_extras(folder: Path) -> Path:
    """What a full Hub snapshot has beside the model: a README, the original checkpoint, ONNX."""
    (folder / "README.md").write_text("# model card\n")
    (folder / "original").mkdir(exist_ok=True)
    (folder / "original" / "consolidated.pth").write_bytes(b"\x05" * 2048)
    (folder / "onnx").mkdir(exist_ok=True)
    (folder / "onnx" / "model.onnx").write_bytes(b"\x06" * 1024)
    return folder


def make_adapter(folder: Path, base: Path | None, rank: int = 16, peft_base: str = "/tmp/cache/base", lineage: dict[str, Any] | None = None) -> str:
    """A PEFT-shaped adapter folder with the trainer's manifest (its base digest computed as the
    trainer computes it); returns its digest."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": rank, "lora_alpha": 2 * rank, "base_model_name_or_path": peft_base, "peft_type": "LORA"}))
    (folder / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 64)
    (folder / "tokenizer_config.json").write_text("{}")
    if lineage is None and base is not None:
        lineage = {"baseModel": {"uri": "s3://models/base", "digest": base_model_digest(str(base))}}
    return write_manifest(str(folder), lineage or {})
