"""The vLLM OpenAI server's command line and environment, built from the server config.

Pure: no I/O, no vLLM import. ``build_vllm_args`` is what the launcher execs; the API key is
never an argument (vLLM reads ``VLLM_API_KEY`` from the environment, which ``build_vllm_env``
fills from the variable the config names).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tuneforge_server.config import VLLM_LORA_RANKS, ServerConfig

__all__ = ["ServedAdapter", "VLLM_MODULE", "build_vllm_args", "build_vllm_env", "lora_rank_limit", "served_names"]

VLLM_MODULE = "vllm.entrypoints.openai.api_server"


@dataclass(frozen=True)
class ServedAdapter:
    """An adapter as vLLM gets it: served name, local folder, LoRA rank."""

    name: str
    path: Path
    rank: int


def lora_rank_limit(ranks: Sequence[int], configured: int | None) -> int:
    """vLLM's --max-lora-rank: the configured limit or the largest adapter rank, rounded up to a
    rank vLLM supports (16, vLLM's default, when adapters only arrive at runtime)."""
    want = configured if configured is not None else max(ranks, default=16)
    for r in VLLM_LORA_RANKS:
        if r >= want:
            return r
    raise ValueError(f"LoRA rank {want} is above the largest rank vLLM supports ({VLLM_LORA_RANKS[-1]})")


def served_names(cfg: ServerConfig, mode: str) -> list[str]:
    """The model names ``/v1/models`` must list once the server is ready."""
    if mode == "merged":
        return [cfg.adapters[0].name]
    return [cfg.model.name, *(a.name for a in cfg.adapters)]


def build_vllm_args(cfg: ServerConfig, model_path: Path, adapters: Sequence[ServedAdapter], device: str, mode: str) -> list[str]:
    """Arguments after ``python -m vllm.entrypoints.openai.api_server``.

    ``model_path`` is the base folder (lora mode; for a classifier, the classifier base) or the
    merged folder (merged mode). A classifier runs on vLLM's pooling runner (``/classify``).
    """
    name = cfg.adapters[0].name if mode == "merged" else cfg.model.name
    dtype = cfg.dtype if cfg.dtype != "auto" else ("float32" if device == "cpu" else "auto")
    args = [
        "--model", str(model_path),
        "--served-model-name", name,
        "--host", "0.0.0.0",
        "--port", str(cfg.port),
        "--dtype", dtype,
        # Drain: on SIGTERM in-flight requests finish (new ones are refused) for up to this long.
        "--shutdown-timeout", str(cfg.shutdown.drain_seconds),
        # Weights are in the pod already; never reach for a hub or remote code.
        "--load-format", "safetensors",
        # Every response names the adapter digests that answered it (tuneforge_server.headers).
        "--middleware", "tuneforge_server.headers.AdapterDigestHeader",
    ]
    if cfg.head == "classifier":
        # One forward pass per request (the score layer over the last token, no decoding);
        # /classify names the class by the served config.json's id2label, the adapter's order.
        args += ["--runner", "pooling"]
    if cfg.max_model_len is not None:
        args += ["--max-model-len", str(cfg.max_model_len)]
    if cfg.max_num_seqs is not None:
        args += ["--max-num-seqs", str(cfg.max_num_seqs)]
    if device == "cuda":
        args += ["--tensor-parallel-size", str(cfg.gpus)]
        if cfg.gpu_memory_utilization is not None:
            args += ["--gpu-memory-utilization", str(cfg.gpu_memory_utilization)]
    if cfg.enforce_eager if cfg.enforce_eager is not None else device == "cpu":
        args.append("--enforce-eager")
    if mode == "lora" and (adapters or cfg.runtime_lora_updating):
        args.append("--enable-lora")
        for a in adapters:
            args += ["--lora-modules", f"{a.name}={a.path}"]
        args += ["--max-lora-rank", str(lora_rank_limit([a.rank for a in adapters], cfg.max_lora_rank))]
        args += ["--max-loras", str(cfg.max_loras or max(1, len(adapters)))]
    return [*args, *cfg.extra_args]


# At or below this many cores a CPU pod gives all of them to vLLM's compute threads.
SMALL_CPU_POD = 4


def build_vllm_env(cfg: ServerConfig, device: str, environ: Mapping[str, str], cpus: int | None = None) -> dict[str, str]:
    """The environment vLLM runs with: ``environ`` plus the API key, offline hub settings and
    writable cache folders; on CPU, the cores reserved off the compute threads (``cpus``: the
    cores the pod may use). Raises ``ValueError`` naming the variable when the key is missing."""
    env = dict(environ)
    env.pop("VLLM_API_KEY", None)
    if cfg.api_key_env:
        key = environ.get(cfg.api_key_env, "")
        if not key:
            raise ValueError(f"api_key_env: environment variable {cfg.api_key_env} is unset or empty (mount the Secret's key there)")
        env["VLLM_API_KEY"] = key
    cache = Path(cfg.cache_dir)
    env.setdefault("VLLM_CACHE_ROOT", str(cache / "vllm"))
    env.setdefault("VLLM_RPC_BASE_PATH", str(cache / "rpc"))
    env.setdefault("HF_HOME", str(cache / "hf"))
    env["HF_HUB_OFFLINE"] = "1"  # everything is local by now; a hub lookup would be a bug
    env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True" if cfg.runtime_lora_updating else "False"
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    if device == "cpu":
        env["VLLM_TARGET_DEVICE"] = "cpu"
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        reserved = cfg.cpu_reserved_cores
        if reserved is None and cpus is not None and cpus <= SMALL_CPU_POD:
            reserved = 0
        if reserved is not None:
            env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(reserved)
    return env
