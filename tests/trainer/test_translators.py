"""Pure translators from the config to peft/bitsandbytes objects and device settings (no model)."""

from __future__ import annotations

from typing import Any

import pytest

from tuneforge_trainer.config import apply_overrides, parse_config
from tuneforge_trainer.modeling import device_settings, get_lora_config, get_quantization_config

BASE: dict[str, Any] = {"model": {"source": "/m"}, "dataset": {"source": "/d.csv"}, "output": {"dir": "/o"}}


def cfg_with(**kv: Any) -> Any:
    return parse_config(apply_overrides(BASE, {k.replace("__", "."): v for k, v in kv.items()}))


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": {"q_proj", "k_proj", "v_proj", "o_proj"}}),
        ({"lora__r": 8, "lora__alpha": 8, "lora__dropout": 0.0}, {"r": 8, "lora_alpha": 8, "lora_dropout": 0.0}),
        ({"lora__target_modules": "all-linear"}, {"target_modules": "all-linear"}),
        ({"lora__target_modules": ["q_proj"], "lora__bias": "lora_only"}, {"target_modules": {"q_proj"}, "bias": "lora_only"}),
    ],
)
def test_get_lora_config(changes: dict[str, Any], expected: dict[str, Any]) -> None:
    lc = get_lora_config(cfg_with(**changes))
    assert str(lc.task_type).endswith("CAUSAL_LM")
    for key, value in expected.items():
        got = getattr(lc, key)
        assert (set(got) if isinstance(value, set) else got) == value, key


def test_get_lora_config_disabled() -> None:
    assert get_lora_config(cfg_with(lora__enabled=False)) is None


@pytest.mark.parametrize(
    ("mode", "cuda", "expected"),
    [
        ("auto", False, None),
        ("none", True, None),
        ("auto", True, {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True}),
        ("4bit", False, {"load_in_4bit": True, "bnb_4bit_compute_dtype": "float32"}),
        ("8bit", False, {"load_in_8bit": True, "load_in_4bit": False}),
    ],
)
def test_get_quantization_config(mode: str, cuda: bool, expected: dict[str, Any] | None) -> None:
    q = get_quantization_config(cfg_with(quantization__mode=mode), cuda=cuda)
    if expected is None:
        assert q is None
        return
    for key, value in expected.items():
        got = getattr(q, key)
        assert (str(got).removeprefix("torch.") if key.endswith("dtype") else got) == value, key


def test_fp4_without_double_quant() -> None:
    q = get_quantization_config(cfg_with(quantization__mode="4bit", quantization__quant_type="fp4", quantization__double_quant=False), cuda=False)
    assert q.bnb_4bit_quant_type == "fp4" and not q.bnb_4bit_use_double_quant


@pytest.mark.parametrize(
    ("changes", "cuda", "bf16_ok", "expected"),
    [
        # trl/transformers GPU-minded defaults are wrong on the CPU: fp32, no checkpointing, no quantization.
        ({}, False, False, dict(bf16=False, fp16=False, gradient_checkpointing=False, quantization="none", compute_dtype="float32")),
        ({}, True, True, dict(bf16=True, gradient_checkpointing=True, quantization="4bit", compute_dtype="bfloat16")),
        ({}, True, False, dict(bf16=False, quantization="4bit", compute_dtype="float32")),
        ({"training__precision": "bf16"}, False, False, dict(bf16=False)),
        ({"training__precision": "fp16"}, True, False, dict(fp16=True, bf16=False)),
        ({"training__gradient_checkpointing": True}, False, False, dict(gradient_checkpointing=True)),
        ({"quantization__mode": "none"}, True, True, dict(quantization="none")),
    ],
)
def test_device_settings(changes: dict[str, Any], cuda: bool, bf16_ok: bool, expected: dict[str, Any]) -> None:
    ds = device_settings(cfg_with(**changes), cuda=cuda, bf16_supported=bf16_ok)
    for key, value in expected.items():
        assert getattr(ds, key) == value, key
