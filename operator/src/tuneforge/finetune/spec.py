"""Typed view of a FineTuneJob spec.

The apiserver has already validated and defaulted the spec against crds/finetunejob.yaml, so
parsing here only gives the dict a shape; it repeats none of the schema's checks. Optional
fields are ``None`` when unset. The CRD is the one source of defaults: the fallbacks below only
shape a spec the apiserver has not defaulted (tests), and a test checks they agree with the CRD;
fields added since are ``None`` when absent, which leaves the trainer's default (equal to the
CRD's, also tested).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Mapping

from ..endpoint_secrets import EndpointSecret


@dataclasses.dataclass(frozen=True)
class SecretKeyRef:
    """A key of a Secret in the job's namespace."""

    name: str
    key: str

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | None) -> "SecretKeyRef | None":
        return None if raw is None else cls(name=raw["name"], key=raw["key"])


@dataclasses.dataclass(frozen=True)
class Baseline:
    """A baseline scored on the same held-out rows (at most one of each type)."""

    type: str
    shots: int | None = None
    url: str | None = None
    model: str | None = None
    api_key: SecretKeyRef | None = None
    # openai only; None leaves the trainer's default.
    max_retries: int | None = None
    concurrency: int | None = None
    timeout_seconds: int | None = None
    max_rows: int | None = None
    input_token_price: float | None = None  # per million tokens, the operator's cost currency
    output_token_price: float | None = None


@dataclasses.dataclass(frozen=True)
class Gate:
    """What the adapter must reach for the job to succeed."""

    min_accuracy: float | None = None
    min_class_f1: float | None = None
    must_beat_baseline: str | None = None
    baseline_margin: float = 0.0


@dataclasses.dataclass(frozen=True)
class Toleration:
    """A pod toleration, as given in the spec."""

    key: str | None = None
    operator: str | None = None
    value: str | None = None
    effect: str | None = None
    toleration_seconds: int | None = None


@dataclasses.dataclass(frozen=True)
class SearchSpec:
    """spec.search: the values each dimension of the trial grid takes (None: the spec's own)."""

    strategy: str = "grid"
    max_trials: int = 8
    parallelism: int = 1
    seed: int = 0
    heads: tuple[str, ...] | None = None
    learning_rates: tuple[float, ...] | None = None
    max_steps: tuple[int, ...] | None = None
    epochs: tuple[float, ...] | None = None
    lora_ranks: tuple[int, ...] | None = None

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | None) -> "SearchSpec | None":
        if raw is None:
            return None
        space = raw.get("space") or {}

        def values(key: str, kind: type) -> tuple[Any, ...] | None:
            return None if key not in space else tuple(kind(v) for v in space[key])

        return cls(
            strategy=raw.get("strategy", "grid"), max_trials=int(raw.get("maxTrials", 8)),
            parallelism=int(raw.get("parallelism", 1)), seed=int(raw.get("seed", 0)),
            heads=values("head", str), learning_rates=values("learningRate", float),
            max_steps=values("maxSteps", int), epochs=values("epochs", float), lora_ranks=values("loraRank", int),
        )


@dataclasses.dataclass(frozen=True)
class FineTuneJobSpec:
    """The whole spec, flattened where that reads better."""

    base_model_uri: str
    base_model_revision: str | None
    hf_token: SecretKeyRef | None
    dataset_uri: str
    dataset_format: str
    eval_uri: str | None
    text_column: str | None
    label_column: str | None
    csv_bad_rows: str | None
    prompt_template: str | None
    system_prompt: str | None
    include_labels: tuple[str, ...] | None
    max_rows_per_label: int | None
    max_eval_rows_per_label: int | None
    task_type: str
    labels: tuple[str, ...] | None
    task_head: str
    eval_fraction: float
    validation_fraction: float | None
    train_on_validation: bool
    dedup: str
    balance: str
    balance_cap: int | None
    leak_threshold: float
    lora_enabled: bool
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    lora_target_modules: tuple[str, ...]
    quantization: str
    training: Mapping[str, Any]
    eval_method: str
    max_new_tokens: int | None
    max_eval_rows: int | None
    eval_batch_size: int | None
    baselines: tuple[Baseline, ...] | None
    gate: Gate
    gpus: int
    gpu_resource_name: str
    nodes: int
    cpu: str
    memory: str
    shared_memory: str
    queue_name: str | None
    priority_class_name: str | None
    node_selector: Mapping[str, str]
    tolerations: tuple[Toleration, ...]
    active_deadline_seconds: int
    backoff_limit: int
    max_restarts: int
    s3_endpoint: str | None
    s3_region: str | None
    s3_access_key: SecretKeyRef | None
    s3_secret_key: SecretKeyRef | None
    output_uri: str
    merge_adapter: bool
    hub_cache_uri: str | None
    hub_offline: bool | None
    suspend: bool
    search: SearchSpec | None = None

    @property
    def procs_per_node(self) -> int:
        """Training processes in each pod: one per GPU (one on a CPU)."""
        return max(self.gpus, 1)

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node

    @property
    def strategy(self) -> str:
        return str(self.training.get("strategy", "ddp"))


def parse_spec(spec: Mapping[str, Any]) -> FineTuneJobSpec:
    """Shape an apiserver-validated, defaulted spec into a FineTuneJobSpec."""
    model, data = spec["baseModel"], spec["dataset"]
    task, prep, lora = spec.get("task", {}), spec.get("dataPrep", {}), spec.get("lora", {})
    evaluation = spec.get("evaluation", {})
    gate = evaluation.get("gate", {})
    res, sched = spec.get("resources", {}), spec.get("scheduling", {})
    s3 = spec.get("s3") or {}
    hub = spec.get("hub") or {}
    return FineTuneJobSpec(
        base_model_uri=model["uri"],
        base_model_revision=model.get("revision"),
        hf_token=SecretKeyRef.parse(model.get("tokenSecretRef")),
        dataset_uri=data["uri"],
        dataset_format=data.get("format", "auto"),
        eval_uri=data.get("evalUri"),
        text_column=data.get("textColumn"),
        label_column=data.get("labelColumn"),
        csv_bad_rows=data.get("csvBadRows"),
        prompt_template=data.get("promptTemplate"),
        system_prompt=data.get("systemPrompt"),
        include_labels=_tuple_or_none(data.get("includeLabels")),
        max_rows_per_label=data.get("maxRowsPerLabel"),
        max_eval_rows_per_label=data.get("maxEvalRowsPerLabel"),
        task_type=task.get("type", "classification"),
        labels=_tuple_or_none(task.get("labels")),
        task_head=task.get("head", "lm"),
        eval_fraction=float(prep.get("evalFraction", 0.1)),
        validation_fraction=prep.get("validationFraction"),
        train_on_validation=bool(prep.get("trainOnValidation", False)),
        dedup=prep.get("dedup", "normalized"),
        balance=prep.get("balance", "none"),
        balance_cap=prep.get("balanceCap"),
        leak_threshold=float(prep.get("leakThreshold", 0.05)),
        lora_enabled=bool(lora.get("enabled", True)),
        lora_r=int(lora.get("r", 16)),
        lora_alpha=int(lora.get("alpha", 32)),
        lora_dropout=float(lora.get("dropout", 0.05)),
        lora_target_modules=tuple(lora.get("targetModules", ("q_proj", "k_proj", "v_proj", "o_proj"))),
        quantization=spec.get("quantization", "auto"),
        training=dict(spec.get("training", {})),
        eval_method=evaluation.get("method", "auto"),
        max_new_tokens=evaluation.get("maxNewTokens"),
        max_eval_rows=evaluation.get("maxRows"),
        eval_batch_size=evaluation.get("batchSize"),
        baselines=None if "baselines" not in evaluation else tuple(
            Baseline(
                type=b["type"], shots=b.get("shots"), url=b.get("url"),
                model=b.get("model"), api_key=SecretKeyRef.parse(b.get("apiKeySecretRef")),
                max_retries=b.get("maxRetries"), concurrency=b.get("concurrency"),
                timeout_seconds=b.get("timeoutSeconds"), max_rows=b.get("maxRows"),
                input_token_price=b.get("inputTokenPrice"), output_token_price=b.get("outputTokenPrice"),
            )
            for b in evaluation["baselines"]
        ),
        gate=Gate(
            min_accuracy=gate.get("minAccuracy"),
            min_class_f1=gate.get("minClassF1"),
            must_beat_baseline=gate.get("mustBeatBaseline"),
            baseline_margin=float(gate.get("baselineMargin", 0.0)),
        ),
        gpus=int(res.get("gpus", 1)),
        nodes=int(res.get("nodes", 1)),
        gpu_resource_name=res.get("gpuResourceName", "nvidia.com/gpu"),
        cpu=str(res.get("cpu", "2")),
        memory=str(res.get("memory", "8Gi")),
        shared_memory=str(res.get("sharedMemory", "1Gi")),
        queue_name=sched.get("queueName"),
        priority_class_name=sched.get("priorityClassName"),
        node_selector=dict(sched.get("nodeSelector", {})),
        tolerations=tuple(
            Toleration(
                key=t.get("key"), operator=t.get("operator"), value=t.get("value"),
                effect=t.get("effect"), toleration_seconds=t.get("tolerationSeconds"),
            )
            for t in sched.get("tolerations", ())
        ),
        active_deadline_seconds=int(sched.get("activeDeadlineSeconds", 86400)),
        backoff_limit=int(sched.get("backoffLimit", 2)),
        max_restarts=int(sched.get("maxRestarts", 3)),
        s3_endpoint=s3.get("endpoint"),
        s3_region=s3.get("region"),
        s3_access_key=SecretKeyRef.parse(s3.get("accessKeyIdSecretRef")),
        s3_secret_key=SecretKeyRef.parse(s3.get("secretAccessKeySecretRef")),
        output_uri=spec["output"]["uri"],
        merge_adapter=bool(spec["output"].get("mergeAdapter", False)),
        hub_cache_uri=hub.get("cacheUri"),
        hub_offline=hub.get("offline"),
        suspend=bool(spec.get("suspend", False)),
        search=SearchSpec.parse(spec.get("search")),
    )


def _tuple_or_none(value: Any) -> tuple[str, ...] | None:
    return None if value is None else tuple(value)


def spec_hash(spec: Mapping[str, Any]) -> str:
    """A stable hash of everything in the spec that defines a run (suspend does not)."""
    essence = {k: v for k, v in spec.items() if k != "suspend"}
    return hashlib.sha256(json.dumps(essence, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]


def config_map_sources(spec: FineTuneJobSpec) -> list[tuple[str, str, str]]:
    """(spec field, ConfigMap name, key) of every configmap://name/key data source."""
    out = []
    for field, uri in (("spec.dataset.uri", spec.dataset_uri), ("spec.dataset.evalUri", spec.eval_uri)):
        if uri and uri.startswith("configmap://"):
            name, _, key = uri[len("configmap://"):].partition("/")
            out.append((field, name, key))
    return out


def endpoint_secrets(spec: FineTuneJobSpec) -> list[EndpointSecret]:
    """The Secrets the spec sends to an endpoint the user chose (they must opt in for it)."""
    out = [EndpointSecret("spec.evaluation.baselines[openai].apiKeySecretRef", b.api_key.name,
                          "spec.evaluation.baselines[openai].url", b.url)
           for b in spec.baselines or () if b.api_key and b.url]
    if spec.s3_endpoint:
        out += [EndpointSecret(f"spec.s3.{field}", ref.name, "spec.s3.endpoint", spec.s3_endpoint)
                for field, ref in (("accessKeyIdSecretRef", spec.s3_access_key), ("secretAccessKeySecretRef", spec.s3_secret_key))
                if ref]
    return out


def pvc_claims(spec: FineTuneJobSpec) -> dict[str, bool]:
    """PersistentVolumeClaims the spec's URIs name, each mapped to whether it is written to."""
    claims: dict[str, bool] = {}
    for uri, writable in (
        (spec.base_model_uri, False), (spec.dataset_uri, False), (spec.eval_uri, False), (spec.output_uri, True),
        (spec.hub_cache_uri, True),
    ):
        if uri and uri.startswith("pvc://"):
            claim = uri[len("pvc://"):].split("/", 1)[0]
            claims[claim] = claims.get(claim, False) or writable
    return claims
