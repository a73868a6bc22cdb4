"""Pure translators from the config to peft/bitsandbytes objects and device settings (no model)."""

from __future__ import annotations

from typing import Any

import pytest

from tuneforge_trainer.config import apply_overrides, parse_config
from tuneforge_trainer.modeling import device_settings, get_lora_config, get_quantization_config, model_load_kwargs

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
    cfg = cfg_with(quantization__mode=mode)
    q = get_quantization_config(cfg, device_settings(cfg, cuda=cuda))
    if expected is None:
        assert q is None
        return
    for key, value in expected.items():
        got = getattr(q, key)
        assert (str(got).removeprefix("torch.") if key.endswith("dtype") else got) == value, key


def test_fp4_without_double_quant() -> None:
    cfg = cfg_with(quantization__mode="4bit", quantization__quant_type="fp4", quantization__double_quant=False)
    q = get_quantization_config(cfg, device_settings(cfg, cuda=False))
    assert q.bnb_4bit_quant_type == "fp4" and not q.bnb_4bit_use_double_quant


def _dtype(v: Any) -> str:
    return str(v).removeprefix("torch.")


@pytest.mark.parametrize("cuda", [False, True])
@pytest.mark.parametrize("bf16_ok", [False, True])
@pytest.mark.parametrize("precision", ["auto", "fp32", "bf16", "fp16"])
@pytest.mark.parametrize("quant", ["auto", "4bit", "8bit", "none"])
def test_precision_and_quantization_table(cuda: bool, bf16_ok: bool, precision: str, quant: str) -> None:
    """Every (cuda, bf16-capable, precision, quantization) combination, through the same calls
    train_main makes: device_settings with the GPU's capability, then load_model's kwargs."""
    cfg = cfg_with(training__precision=precision, quantization__mode=quant)
    bf16_cap = cuda and bf16_ok  # train_main passes cuda and torch.cuda.is_bf16_supported()
    # What an engineer expects, written out independently of the code.
    if not cuda:
        want_prec = "fp32"
    elif precision == "auto":
        want_prec = "bf16" if bf16_cap else "fp32"
    else:
        want_prec = precision
    if cuda and want_prec == "bf16" and not bf16_cap:
        with pytest.raises(ValueError, match="training.precision bf16"):
            device_settings(cfg, cuda=cuda, bf16_supported=bf16_cap)
        return
    want_quant = ("4bit" if cuda else "none") if quant == "auto" else quant
    want_dtype = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[want_prec]

    ds = device_settings(cfg, cuda=cuda, bf16_supported=bf16_cap)
    assert (ds.bf16, ds.fp16) == (want_prec == "bf16", want_prec == "fp16")
    assert ds.quantization == want_quant
    kw = model_load_kwargs(cfg, ds)
    assert _dtype(kw["dtype"]) == want_dtype
    q = kw.get("quantization_config")
    if want_quant == "none":
        assert q is None
    elif want_quant == "8bit":
        assert q.load_in_8bit and not q.load_in_4bit
    else:
        assert q.load_in_4bit
        # The 4-bit layers compute in the training precision: bf16 on a bf16 GPU (the bug was float32).
        assert _dtype(q.bnb_4bit_compute_dtype) == want_dtype
    assert ("device_map" in kw) == (cuda and want_quant != "none")


def test_explicit_compute_dtype_wins() -> None:
    cfg = cfg_with(quantization__mode="4bit", quantization__compute_dtype="float16")
    q = get_quantization_config(cfg, device_settings(cfg, cuda=True, bf16_supported=True))
    assert _dtype(q.bnb_4bit_compute_dtype) == "float16"


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


# --- several processes: ddp, or fsdp on GPU processes ------------------------------------------

@pytest.mark.parametrize(("strategy", "cuda", "world", "sharded"), [
    ("ddp", True, 8, False),
    ("fsdp", True, 8, True),
    ("fsdp", True, 1, False),  # one process: nothing to shard
    ("fsdp", False, 2, False),  # CPU processes: accelerate enables FSDP on accelerators only
])
def test_fsdp_only_for_several_gpu_processes(strategy: str, cuda: bool, world: int, sharded: bool) -> None:
    ds = device_settings(cfg_with(training__strategy=strategy), cuda=cuda, bf16_supported=True, world_size=world)
    assert ds.sharded is sharded


def test_qlora_with_fsdp_stores_4bit_weights_in_the_compute_dtype_and_has_no_device_map() -> None:
    import torch

    cfg = cfg_with(training__strategy="fsdp", quantization__mode="4bit")
    sharded = device_settings(cfg, cuda=True, bf16_supported=True, world_size=2)
    kw = model_load_kwargs(cfg, sharded)
    assert kw["quantization_config"].bnb_4bit_quant_storage == torch.bfloat16 == kw["dtype"]
    assert "device_map" not in kw  # FSDP places the shards
    single = device_settings(cfg_with(quantization__mode="4bit"), cuda=True, bf16_supported=True, world_size=2)
    kw = model_load_kwargs(cfg, single)
    assert kw["quantization_config"].bnb_4bit_quant_storage == torch.uint8  # bitsandbytes' default
    assert kw["device_map"] == {"": 0}


def test_trainer_fsdp_arguments() -> None:
    from tuneforge_trainer.train import _fsdp_args

    cfg = cfg_with(training__strategy="fsdp")
    assert _fsdp_args(device_settings(cfg, cuda=True, bf16_supported=True, world_size=1)) == {}
    args = _fsdp_args(device_settings(cfg, cuda=True, bf16_supported=True, world_size=4))
    assert args["fsdp"] == "full_shard auto_wrap"
    assert args["fsdp_config"]["use_orig_params"] is False and args["fsdp_config"]["cpu_ram_efficient_loading"] is True


def test_fsdp_with_8bit_is_a_config_error() -> None:
    from tuneforge_trainer.config import ConfigError

    with pytest.raises(ConfigError, match="training.strategy fsdp cannot shard bitsandbytes 8-bit"):
        cfg_with(training__strategy="fsdp", quantization__mode="8bit")


@pytest.mark.parametrize(("env", "cpus", "threads"), [
    ({}, 2, 2),
    ({"LOCAL_WORLD_SIZE": "2"}, 2, 1),
    ({"LOCAL_WORLD_SIZE": "4"}, 2, 1),
    ({"LOCAL_WORLD_SIZE": "2", "TUNEFORGE_THREADS": "8"}, 2, 4),
])
def test_cpu_threads_are_shared_by_the_pods_processes(env: dict[str, str], cpus: int, threads: int) -> None:
    from tuneforge_trainer.train import cpu_threads

    assert cpu_threads(env, cpus) == threads


def test_cpu_threads_are_announced_to_openmp_before_accelerate_starts() -> None:
    """accelerate resets torch's threads to every core when OMP_NUM_THREADS is unset (MULTI_CPU):
    the trainer sets it to its own share first."""
    from tuneforge_trainer.train import use_cpu_threads

    class Torch:
        threads = 0

        def set_num_threads(self, n: int) -> None:
            self.threads = n

    torch, env = Torch(), {"TUNEFORGE_THREADS": "4", "LOCAL_WORLD_SIZE": "2"}
    assert use_cpu_threads(torch, env) == 2
    assert torch.threads == 2 and env["OMP_NUM_THREADS"] == "2"


def test_openmp_threads_sleep_when_they_wait_in_the_image_and_in_make_test() -> None:
    """Two CPU trainings on the same cores spend 3x as long when torch's OpenMP threads spin while
    they wait (bench/cpu_sharing.py): the image's environment says PASSIVE, and make test says it
    for the host's trainings, which run beside the node's."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env_block = (root / "trainer-image" / "Dockerfile").read_text().split("\nENV ", 1)[1].split("\n\n", 1)[0]
    assert "OMP_WAIT_POLICY=PASSIVE" in env_block.split("\n#", 1)[0], env_block
    recipe = (root / "Makefile").read_text().split("\ntest:\n", 1)[1].split("\n\n", 1)[0]
    assert recipe.index("export OMP_WAIT_POLICY=PASSIVE") < recipe.index("pytest"), recipe
