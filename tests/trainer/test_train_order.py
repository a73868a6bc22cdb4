"""FSDP loads the model only after this process's GPU, the FSDP environment and the process
group exist (DT-3). No GPU here: the loaders are monkeypatched and record what they see."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from test_train_tiny import tiny_model  # noqa: F401  (the fixture)


class Loaded(Exception):
    """Stops train_main once the model would load: what came before is the test's subject."""


def test_fsdp_sets_device_env_and_process_group_before_the_model_loads(
        tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    import torch

    from tuneforge_trainer import modeling, train
    from tuneforge_trainer.config import parse_config

    calls: list[tuple[str, Any]] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: None)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", device)))
    for name, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    for name in ("ACCELERATE_USE_FSDP", "FSDP_CPU_RAM_EFFICIENT_LOADING"):
        # setenv first: a delenv of an absent name records nothing to restore, and train_main
        # sets both, which would leave the rest of the session's trainers sharded.
        monkeypatch.setenv(name, "unset")
        monkeypatch.delenv(name)

    def training_args(cfg: Any, ds: Any, out_dir: str, has_eval: bool, cuda: bool) -> str:
        calls.append(("training_args", ds.sharded))
        return "args"

    def load_model(path: str, cfg: Any, ds: Any, labels: Any = None) -> Any:
        calls.append(("load_model", {k: os.environ.get(k) for k in ("ACCELERATE_USE_FSDP", "FSDP_CPU_RAM_EFFICIENT_LOADING")}))
        raise Loaded

    monkeypatch.setattr(train, "_training_args", training_args)
    monkeypatch.setattr(train, "_init_distributed", lambda args: calls.append(("init_distributed", args)))
    monkeypatch.setattr(modeling, "load_model", load_model)

    (tmp_path / "train.csv").write_text("text,label\n" + "".join(f"my card is lost {i},card\neuro rate {i},fx\n" for i in range(12)))
    cfg = parse_config({
        "model": {"source": str(tiny_model)},
        "dataset": {"source": str(tmp_path / "train.csv")},
        "data": {"eval_fraction": 0.25, "validation_fraction": 0.25},
        "training": {"max_steps": 2, "batch_size": 4, "max_seq_length": 128, "strategy": "fsdp"},
        "output": {"dir": str(tmp_path / "out"), "termination_message_path": str(tmp_path / "term")},
    })
    with pytest.raises(Loaded):
        train.train_main(cfg)
    assert calls == [
        ("training_args", True),
        ("set_device", 1),
        ("init_distributed", "args"),
        ("load_model", {"ACCELERATE_USE_FSDP": "true", "FSDP_CPU_RAM_EFFICIENT_LOADING": "true"}),
    ]


def test_fsdp_load_env_only_when_sharded() -> None:
    from tuneforge_trainer.modeling import DeviceSettings
    from tuneforge_trainer.train import fsdp_load_env

    assert fsdp_load_env(DeviceSettings(cuda=True, bf16=True, fp16=False, gradient_checkpointing=False,
                                        quantization="none", compute_dtype="bfloat16", sharded=False)) == {}
