"""Model-side translators and loading: config → peft/bitsandbytes objects → model and tokenizer.

``get_lora_config``, ``get_quantization_config`` and ``device_settings`` are pure translators
(unit-tested without a model); ``load_model`` does the I/O. torch, transformers and peft are
imported inside the functions.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from tuneforge_trainer.config import ConfigError, TrainerConfig

__all__ = [
    "DeviceSettings",
    "device_settings",
    "get_lora_config",
    "get_quantization_config",
    "load_model",
    "load_tokenizer",
    "model_dtype",
    "model_load_kwargs",
    "resolve_model_path",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceSettings:
    """Precision and memory settings right for the device (trl's defaults assume a GPU)."""

    cuda: bool
    bf16: bool
    fp16: bool
    gradient_checkpointing: bool
    quantization: str
    compute_dtype: str
    # FSDP shards the model over the processes (training.strategy fsdp, several CUDA processes).
    sharded: bool = False


def device_settings(cfg: TrainerConfig, cuda: bool, bf16_supported: bool = False, world_size: int = 1) -> DeviceSettings:
    """Pure: choose precision, checkpointing and quantization for this device.

    ``bf16_supported`` is the device's capability (``torch.cuda.is_bf16_supported()``), passed
    in so that every (cuda, bf16, precision, quantization) combination is testable on a CPU.
    """
    t = cfg.training
    prec = t.precision
    if prec == "auto":
        prec = "bf16" if cuda and bf16_supported else "fp32"
    if not cuda and prec != "fp32":
        log.warning("Training precision %s is not used on the CPU; using fp32", prec)
        prec = "fp32"
    if cuda and prec == "bf16" and not bf16_supported:
        # Failing here names the field; the Trainer would fail later with a less direct message.
        raise ConfigError("training.precision bf16: this GPU does not support bfloat16; use fp16 or auto")
    quant = cfg.effective_quantization(cuda)
    if cfg.quantization.mode == "auto" and not cuda:
        log.warning("Quantization auto: no CUDA device, loading the base model unquantized (float32)")
    gc = t.gradient_checkpointing if t.gradient_checkpointing is not None else cuda
    cd: str = cfg.quantization.compute_dtype
    if cd == "auto":
        # The quantized layers compute in the training precision: bf16 on bf16 GPUs (QLoRA's
        # recipe), fp16 when asked for, float32 otherwise (and always on the CPU).
        cd = {"bf16": "bfloat16", "fp16": "float16"}.get(prec, "float32")
    # FSDP is an accelerator feature (accelerate enables it only for GPU processes; the CRD
    # refuses strategy fsdp without GPUs): on CPU processes the strategy falls back to DDP.
    sharded = cuda and world_size > 1 and t.strategy == "fsdp"
    return DeviceSettings(
        cuda=cuda, bf16=prec == "bf16", fp16=prec == "fp16", gradient_checkpointing=gc,
        quantization=quant, compute_dtype=cd, sharded=sharded,
    )


def get_lora_config(cfg: TrainerConfig) -> Any:
    """peft ``LoraConfig`` for the config (None when LoRA is disabled)."""
    if not cfg.lora.enabled:
        return None
    from peft import LoraConfig

    if cfg.task.head == "classifier":
        from tuneforge_trainer.classifier import lora_config_kwargs

        return LoraConfig(**lora_config_kwargs(cfg))
    lc = cfg.lora
    targets: Any = lc.target_modules if lc.target_modules == "all-linear" else list(lc.target_modules)
    return LoraConfig(
        r=lc.r,
        lora_alpha=lc.alpha,
        lora_dropout=lc.dropout,
        target_modules=targets,
        bias=lc.bias,
        task_type="CAUSAL_LM",
    )


def get_quantization_config(cfg: TrainerConfig, ds: DeviceSettings) -> Any:
    """transformers ``BitsAndBytesConfig`` for the device settings (None for no quantization).

    Takes the :class:`DeviceSettings` that ``train_main`` computed (with the GPU's bf16
    capability) rather than recomputing them, so the 4-bit compute dtype cannot disagree with
    the training precision.
    """
    if ds.quantization == "none":
        return None
    import torch
    from transformers import BitsAndBytesConfig

    if ds.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    extra: dict[str, Any] = {}
    if ds.sharded:
        # QLoRA with FSDP: the packed 4-bit weights are stored in the dtype of the other
        # parameters, so FSDP can flatten and shard them together (peft's FSDP+QLoRA recipe).
        extra["bnb_4bit_quant_storage"] = getattr(torch, model_dtype(ds))
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=cfg.quantization.quant_type,
        bnb_4bit_use_double_quant=cfg.quantization.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, ds.compute_dtype),
        **extra,
    )


def model_dtype(ds: DeviceSettings) -> str:
    """The torch dtype name the (non-quantized parts of the) base model load in."""
    return "bfloat16" if ds.bf16 else ("float16" if ds.fp16 else "float32")


def model_load_kwargs(cfg: TrainerConfig, ds: DeviceSettings) -> dict[str, Any]:
    """Keyword arguments for ``AutoModelForCausalLM.from_pretrained`` (what ``load_model`` uses)."""
    import torch

    kw: dict[str, Any] = {"trust_remote_code": cfg.model.trust_remote_code}
    if cfg.model.gguf_file:
        kw["gguf_file"] = cfg.model.gguf_file
    q = get_quantization_config(cfg, ds)
    if q is not None:
        kw["quantization_config"] = q
        if ds.cuda and not ds.sharded:
            # Under FSDP no device_map: the wrapper places the shards on each process's GPU.
            kw["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    kw["dtype"] = getattr(torch, model_dtype(ds))
    return kw


def resolve_model_path(cfg: TrainerConfig, cache: str) -> str:
    """A local folder for ``model.source`` (hf:// through the hub cache, s3:// downloaded once)."""
    from tuneforge_trainer.storage import resolve_source

    return resolve_source(
        cfg.model.source, cache, cfg.model.revision, cfg.model.token_env, "model",
        hf_cache=cfg.hub.cache_dir, offline=cfg.hub.offline,
    )


def load_tokenizer(path: str, cfg: TrainerConfig) -> Any:
    from transformers import AutoTokenizer

    kw: dict[str, Any] = {"trust_remote_code": cfg.model.trust_remote_code}
    if cfg.model.gguf_file:
        kw["gguf_file"] = cfg.model.gguf_file
    tok = AutoTokenizer.from_pretrained(path, **kw)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str, cfg: TrainerConfig, ds: DeviceSettings, labels: list[str] | None = None) -> Any:
    """The base model on its device, quantized as configured (not yet wrapped with LoRA).

    With ``task.head: classifier`` it carries a new score layer for ``labels`` (required then).
    """
    if cfg.task.head == "classifier":
        from tuneforge_trainer import classifier

        if not labels:
            raise ConfigError("task.head classifier: the label set is needed to load the model")
        return classifier.load_model(path, cfg, ds, labels)
    from transformers import AutoModelForCausalLM

    kw = model_load_kwargs(cfg, ds)
    model = AutoModelForCausalLM.from_pretrained(path, **kw)
    if "quantization_config" not in kw and ds.cuda and not ds.sharded:
        model.to(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")  # type: ignore[arg-type]
    return model
