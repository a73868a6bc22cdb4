"""Typed view of a ModelServe spec.

The apiserver has already validated and defaulted the spec against crds/modelserve.yaml; parsing
here gives it a shape and repeats the cross-field rules a client could slip past the schema (an
object applied before the CRD grew a rule, a test calling this directly). Every error is a
:class:`SpecError` whose text starts with the field path, as the apiserver's messages do.

Two sources of what to serve, exactly one per ModelServe:

- ``adapter.fineTuneJob``: follow a FineTuneJob in the namespace; its latest revision whose gate
  Passed is served (``adapter.digest`` pins an earlier one: a manual rollback through the spec);
- ``baseModel`` + ``adapters[]``: explicit URIs with the content digest each must have (several
  adapters on one base).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

from ..endpoint_secrets import EndpointSecret

__all__ = [
    "AdapterSource", "CacheSpec", "GateSpec", "HpaSpec", "InferencePoolSpec", "ModelServeSpec", "RolloutSpec", "S3Spec",
    "SecretKeyRef", "SpecError", "endpoint_secrets", "parse_spec",
]

MODES = ("auto", "lora", "merged")
HEADS = ("lm", "classifier")
DTYPES = ("auto", "float32", "float16", "bfloat16")
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
# A pin may be the full digest or the 12-digit short form kubectl get shows.
DIGEST_OR_SHORT = re.compile(r"^(sha256:[0-9a-f]{64}|[0-9a-f]{12})$")
ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
BASE_SCHEMES = ("s3://", "pvc://", "/")
ADAPTER_SCHEMES = ("s3://", "pvc://", "/")
DOT_DOT = re.compile(r"(^|/)[.][.](/|$)")
# A positive Kubernetes quantity in bytes (the CRD's isQuantity rule is the authority).
QUANTITY = re.compile(r"^([0-9]+(\.[0-9]+)?|\.[0-9]+)([EPTGMK]i?|[kmun]|[eE][0-9]+)?$")
CACHE_VOLUMES = ("emptyDir", "ephemeral")


class SpecError(ValueError):
    """An invalid ModelServe spec; ``str()`` starts with the field path (``spec.rollout.gate.rows``)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


@dataclasses.dataclass(frozen=True)
class SecretKeyRef:
    """A key of a Secret in the ModelServe's namespace."""

    name: str
    key: str


@dataclasses.dataclass(frozen=True)
class AdapterSource:
    """One adapter to serve: the name clients put in ``model``, where it is, its digest (the
    server pre-flights the bytes against it). The one adapter shape of the room: an explicit
    adapter of the spec, an adapter of a resolved version, an adapter of a server plan.

    ``digest`` is optional only for a server plan built by hand (the server builders' tests):
    ``parse_spec`` requires one on every explicit adapter, as the CRD does, and a resolved
    version's adapters always carry theirs."""

    name: str
    uri: str
    digest: str | None = None


@dataclasses.dataclass(frozen=True)
class GateSpec:
    """The pre-promotion gate, run through the preview Service before traffic switches."""

    min_accuracy: float | None = None
    """Fraction of rows whose answer equals the target (0..1)."""
    max_p99_ms: int | None = None
    """Highest allowed p99 request latency, milliseconds."""
    rows: int = 200
    """Rows sampled (across every label) from the gate's data."""
    dataset_uri: str | None = None
    """JSONL rows with ``messages`` and ``target``; unset: the FineTuneJob's scored held-out rows."""
    concurrency: int = 8
    """Requests in flight at once."""
    timeout_seconds: int = 600
    """The gate's whole budget; a gate that has not answered by then failed."""


@dataclasses.dataclass(frozen=True)
class RolloutSpec:
    """How a new version replaces the active one (Argo Rollouts blue/green terms)."""

    auto_promotion: bool = True
    progress_deadline_seconds: int = 600
    scale_down_delay_seconds: int = 300
    revision_history_limit: int = 10
    gate: GateSpec | None = None


@dataclasses.dataclass(frozen=True)
class HpaSpec:
    """Autoscaling of the active color on vLLM's queue length (``vllm:num_requests_waiting``)."""

    min_replicas: int
    max_replicas: int
    target_waiting_requests: int = 4
    metric: str = "vllm:num_requests_waiting"
    scale_down_stabilization_seconds: int = 300


@dataclasses.dataclass(frozen=True)
class InferencePoolSpec:
    """Expose each color as a Gateway API Inference Extension InferencePool."""

    endpoint_picker: str
    endpoint_picker_port: int = 9002


@dataclasses.dataclass(frozen=True)
class CacheSpec:
    """Where a server pod keeps the fetched (and merged) weights.

    ``emptyDir`` is the node's disk: ``size`` becomes its sizeLimit and the pod's
    ``ephemeral-storage`` request, so the scheduler counts the weights. ``ephemeral`` is a
    generic ephemeral volume: a PersistentVolumeClaim of ``size`` per pod (``storage_class``),
    created and deleted with the pod. Not a claim shared by pods: their launchers would write the
    same folders at once."""

    volume: str = "emptyDir"
    size: str | None = None
    storage_class: str | None = None


@dataclasses.dataclass(frozen=True)
class S3Spec:
    """The object store of every s3:// URI the ModelServe reads (as a FineTuneJob's ``spec.s3``).
    Unset, s3:// reads use the pods' ambient credentials (an IAM role for the service account)."""

    access_key: SecretKeyRef
    secret_key: SecretKeyRef
    endpoint: str | None = None
    region: str | None = None


@dataclasses.dataclass(frozen=True)
class ModelServeSpec:
    """The whole spec. ``fine_tune_job`` is set, or ``adapters`` is non-empty, never both."""

    fine_tune_job: str | None = None
    adapter_name: str | None = None
    """Served name of the FineTuneJob's adapter (default: the FineTuneJob's name)."""
    pin_digest: str | None = None
    """Serve the FineTuneJob revision with this adapter digest (full or short) instead of the latest."""
    base_model_uri: str | None = None
    """With a FineTuneJob: where to fetch the base from instead of its lineage's URI (a hf:// base
    must be mirrored: nothing downloads from a hub at start); with explicit adapters: required."""
    base_model_digest: str | None = None
    accept_lineage_mismatch: bool = False
    """Serve adapters whose lineage names another base (a warning, not a refusal)."""
    adapters: tuple[AdapterSource, ...] = ()
    head: str | None = None
    """Explicit adapters: lm or classifier (None: lm); a followed FineTuneJob's head is its own."""
    mode: str = "auto"
    replicas: int = 1
    gpus: int = 1
    cpu: str | None = None
    memory: str | None = None
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    """vLLM --max-num-seqs: beyond it requests queue (``vllm:num_requests_waiting``, the HPA's signal)."""
    dtype: str = "auto"
    api_key: SecretKeyRef | None = None
    rollout: RolloutSpec = RolloutSpec()
    hpa: HpaSpec | None = None
    inference_pool: InferencePoolSpec | None = None
    s3: S3Spec | None = None
    node_selector: tuple[tuple[str, str], ...] = ()
    """Node labels the server pods require (pairs, so the spec stays hashable)."""
    tolerations: tuple[Mapping[str, Any], ...] = ()
    cache: CacheSpec = CacheSpec()
    startup_budget_seconds: int = 900
    """How long a pod may take to fetch, check, merge and load the model before it is restarted."""

    @property
    def served_name(self) -> str:
        return self.adapter_name or self.fine_tune_job or ""


def _get(raw: Mapping[str, Any], key: str, path: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
    value = raw.get(key, default)
    if value is None:
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int in Python; a YAML `replicas: true` is still not a number.
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise SpecError(f"{path}.{key}", f"must be {_kind_name(kind)}, not {value!r}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "an object", list: "a list"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _int(raw: Mapping[str, Any], key: str, path: str, default: int | None, low: int, high: int | None = None) -> int | None:
    value = _get(raw, key, path, int, default)
    if value is None:
        return None
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise SpecError(f"{path}.{key}", f"must be {bound}, not {value}")
    return int(value)


def _uri(raw: Mapping[str, Any], key: str, path: str, schemes: tuple[str, ...], required: bool = False) -> str | None:
    value = _get(raw, key, path, str)
    if value is None:
        if required:
            raise SpecError(f"{path}.{key}", "is required")
        return None
    if not value.startswith(schemes):
        raise SpecError(f"{path}.{key}", f"must start with one of {', '.join(schemes)} (nothing downloads from a model hub at start), not {value!r}")
    if DOT_DOT.search(value):
        raise SpecError(f"{path}.{key}", "must not contain a .. path segment")
    return str(value)


def _digest(raw: Mapping[str, Any], key: str, path: str, pattern: re.Pattern[str] = DIGEST) -> str | None:
    value = _get(raw, key, path, str)
    if value is not None and not pattern.match(value):
        raise SpecError(f"{path}.{key}", f"must be sha256:<64 hex digits>{' or 12 hex digits' if pattern is DIGEST_OR_SHORT else ''}, not {value!r}")
    return value


def _secret(raw: Mapping[str, Any] | None, path: str) -> SecretKeyRef | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise SpecError(path, "must be an object with name and key")
    name = _get(raw, "name", path, str)
    key = _get(raw, "key", path, str)
    if not name or not key:
        raise SpecError(f"{path}.{'key' if name else 'name'}", "is required")
    return SecretKeyRef(name, key)


def _obj(raw: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any] | None:
    return _get(raw, key, path, dict)  # type: ignore[no-any-return]


def _gate(raw: Mapping[str, Any] | None, path: str, follows_job: bool) -> GateSpec | None:
    if raw is None:
        return None
    min_acc = _get(raw, "minAccuracy", path, (int, float))
    if min_acc is not None and not 0 <= min_acc <= 1:
        raise SpecError(f"{path}.minAccuracy", f"must be between 0 and 1, not {min_acc}")
    max_p99 = _int(raw, "maxP99Ms", path, None, 1)
    if min_acc is None and max_p99 is None:
        raise SpecError(path, "set minAccuracy, maxP99Ms or both (a gate with no threshold checks nothing)")
    dataset = _uri(raw, "datasetUri", path, ("s3://", "pvc://"))
    if dataset is None and not follows_job:
        raise SpecError(f"{path}.datasetUri", "is required with explicit adapters (only a FineTuneJob has held-out rows to reuse)")
    return GateSpec(
        min_accuracy=None if min_acc is None else float(min_acc), max_p99_ms=max_p99,
        rows=_int(raw, "rows", path, 200, 1, 100_000) or 200, dataset_uri=dataset,
        concurrency=_int(raw, "concurrency", path, 8, 1, 256) or 8,
        timeout_seconds=_int(raw, "timeoutSeconds", path, 600, 10, 86_400) or 600,
    )


def _rollout(raw: Mapping[str, Any] | None, path: str, follows_job: bool) -> RolloutSpec:
    raw = raw or {}
    strategy = _get(raw, "strategy", path, str, "BlueGreen")
    if strategy != "BlueGreen":
        raise SpecError(f"{path}.strategy", f"must be BlueGreen, not {strategy!r}")
    return RolloutSpec(
        auto_promotion=_get(raw, "autoPromotion", path, bool, True),
        progress_deadline_seconds=_int(raw, "progressDeadlineSeconds", path, 600, 30, 86_400) or 600,
        scale_down_delay_seconds=_int(raw, "scaleDownDelaySeconds", path, 300, 0, 86_400) or 0,
        revision_history_limit=_int(raw, "revisionHistoryLimit", path, 10, 1, 50) or 10,
        gate=_gate(_obj(raw, "gate", path), f"{path}.gate", follows_job),
    )


def _hpa(raw: Mapping[str, Any] | None, path: str, replicas: int) -> HpaSpec | None:
    if raw is None or not _get(raw, "enabled", path, bool, True):
        return None
    low = _int(raw, "minReplicas", path, max(1, replicas), 1, 64) or 1
    high = _int(raw, "maxReplicas", path, None, 1, 64)
    if high is None:
        raise SpecError(f"{path}.maxReplicas", "is required when the HPA is enabled")
    if high < low:
        raise SpecError(f"{path}.maxReplicas", f"must be at least minReplicas ({low}), not {high}")
    window = _int(raw, "scaleDownStabilizationSeconds", path, 300, 0, 3600)
    return HpaSpec(low, high, _int(raw, "targetWaitingRequests", path, 4, 1, 10_000) or 4,
                   _get(raw, "metric", path, str, "vllm:num_requests_waiting"),
                   300 if window is None else window)


def _pool(raw: Mapping[str, Any] | None, path: str) -> InferencePoolSpec | None:
    if raw is None or not _get(raw, "enabled", path, bool, False):
        return None
    picker = _get(raw, "endpointPicker", path, str)
    if not picker or not K8S_NAME.match(picker):
        raise SpecError(f"{path}.endpointPicker", "is required when the InferencePool is enabled: the Service of the endpoint picker")
    return InferencePoolSpec(picker, _int(raw, "endpointPickerPort", path, 9002, 1, 65535) or 9002)


def _s3(raw: Mapping[str, Any] | None, path: str) -> S3Spec | None:
    if raw is None:
        return None
    access = _secret(_obj(raw, "accessKeyIdSecretRef", path), f"{path}.accessKeyIdSecretRef")
    secret = _secret(_obj(raw, "secretAccessKeySecretRef", path), f"{path}.secretAccessKeySecretRef")
    if access is None or secret is None:
        raise SpecError(f"{path}.{'secretAccessKeySecretRef' if access else 'accessKeyIdSecretRef'}", "is required")
    endpoint = _get(raw, "endpoint", path, str)
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise SpecError(f"{path}.endpoint", f"must start with http:// or https://, not {endpoint!r}")
    return S3Spec(access, secret, endpoint, _get(raw, "region", path, str))


def _cache(raw: Mapping[str, Any] | None, path: str) -> CacheSpec:
    if raw is None:
        return CacheSpec()
    volume = _get(raw, "volume", path, str, "emptyDir")
    if volume not in CACHE_VOLUMES:
        raise SpecError(f"{path}.volume", f"must be one of {', '.join(CACHE_VOLUMES)}, not {volume!r}")
    size = _get(raw, "size", path, str)
    if size is None and volume == "ephemeral":
        raise SpecError(f"{path}.size", "is required for an ephemeral volume (the claim's storage request)")
    if size is not None and not QUANTITY.match(size):
        raise SpecError(f"{path}.size", f"must be a Kubernetes quantity, e.g. 200Gi, not {size!r}")
    storage_class = _get(raw, "storageClassName", path, str)
    if storage_class is not None and volume != "ephemeral":
        raise SpecError(f"{path}.storageClassName", "applies to volume: ephemeral only")
    return CacheSpec(volume, size, storage_class)


def _scheduling(raw: Mapping[str, Any] | None, path: str) -> tuple[tuple[tuple[str, str], ...], tuple[Mapping[str, Any], ...]]:
    raw = raw or {}
    selector = _obj(raw, "nodeSelector", path) or {}
    if not all(isinstance(v, str) for v in selector.values()):
        raise SpecError(f"{path}.nodeSelector", "values must be strings")
    tolerations = _get(raw, "tolerations", path, list, []) or []
    for i, t in enumerate(tolerations):
        if not isinstance(t, Mapping):
            raise SpecError(f"{path}.tolerations[{i}]", "must be an object")
    return tuple(sorted(selector.items())), tuple(dict(t) for t in tolerations)


def _adapters(raw: Any, path: str) -> tuple[AdapterSource, ...]:
    if not isinstance(raw, list) or not raw:
        raise SpecError(path, "must list at least one adapter")
    out, names = [], set()
    for i, item in enumerate(raw):
        p = f"{path}[{i}]"
        if not isinstance(item, Mapping):
            raise SpecError(p, "must be an object with name, uri and digest")
        name = _get(item, "name", p, str)
        if not name or not ADAPTER_NAME.match(name):
            raise SpecError(f"{p}.name", f"must be 1-128 letters, digits, '.', '_' or '-', not {name!r}")
        if name in names:
            raise SpecError(f"{p}.name", f"{name!r} is listed twice")
        names.add(name)
        uri = _uri(item, "uri", p, ADAPTER_SCHEMES, required=True)
        digest = _digest(item, "digest", p)
        if digest is None:
            raise SpecError(f"{p}.digest", "is required: a rollout follows content, and the server pre-flights the bytes against it")
        assert uri is not None
        out.append(AdapterSource(name, uri, digest))
    return tuple(out)


def parse_spec(raw: Mapping[str, Any]) -> ModelServeSpec:
    """The typed spec; :class:`SpecError` names the first invalid field."""
    path = "spec"
    if not isinstance(raw, Mapping):
        raise SpecError(path, "must be an object")
    adapter = _obj(raw, "adapter", path)
    explicit = raw.get("adapters")
    job = _get(adapter, "fineTuneJob", f"{path}.adapter", str) if adapter is not None else None
    if (job is None) == (explicit is None):
        raise SpecError(path, "set exactly one of adapter.fineTuneJob (follow a FineTuneJob) or adapters (explicit URIs and digests)")
    if adapter is not None and job is None:
        raise SpecError(f"{path}.adapter.fineTuneJob", "is required when adapter is set")
    base = _obj(raw, "baseModel", path)
    base_uri = _uri(base, "uri", f"{path}.baseModel", BASE_SCHEMES, required=True) if base is not None else None
    base_digest = _digest(base, "digest", f"{path}.baseModel") if base is not None else None
    if job is not None:
        assert adapter is not None
        if not K8S_NAME.match(job) or len(job) > 40:
            raise SpecError(f"{path}.adapter.fineTuneJob", f"must be a FineTuneJob name, not {job!r}")
        name = _get(adapter, "name", f"{path}.adapter", str)
        if name is not None and not ADAPTER_NAME.match(name):
            raise SpecError(f"{path}.adapter.name", f"must be 1-128 letters, digits, '.', '_' or '-', not {name!r}")
        pin = _digest(adapter, "digest", f"{path}.adapter", DIGEST_OR_SHORT)
        adapters: tuple[AdapterSource, ...] = ()
    else:
        if base is None:
            raise SpecError(f"{path}.baseModel", "is required with explicit adapters")
        name, pin = None, None
        adapters = _adapters(explicit, f"{path}.adapters")
    head = _get(raw, "head", path, str)
    if head is not None and head not in HEADS:
        raise SpecError(f"{path}.head", f"must be one of {', '.join(HEADS)}, not {head!r}")
    if head is not None and job is not None:
        raise SpecError(f"{path}.head", "head is for explicit adapters; a followed FineTuneJob's head is its spec.task.head")
    mode = _get(raw, "mode", path, str, "auto")
    if mode not in MODES:
        raise SpecError(f"{path}.mode", f"must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "merged" and len(adapters) > 1:
        raise SpecError(f"{path}.mode", "merged serves one adapter merged into the base; several adapters need lora")
    dtype = _get(raw, "dtype", path, str, "auto")
    if dtype not in DTYPES:
        raise SpecError(f"{path}.dtype", f"must be one of {', '.join(DTYPES)}, not {dtype!r}")
    replicas = _int(raw, "replicas", path, 1, 0, 64)
    assert replicas is not None
    resources = _obj(raw, "resources", path) or {}
    api_key = _obj(raw, "apiKey", path)
    follows_job = job is not None
    rollout = _rollout(_obj(raw, "rollout", path), f"{path}.rollout", follows_job)
    s3 = _s3(_obj(raw, "s3", path), f"{path}.s3")
    node_selector, tolerations = _scheduling(_obj(raw, "scheduling", path), f"{path}.scheduling")
    return ModelServeSpec(
        fine_tune_job=job, adapter_name=name, pin_digest=pin, base_model_uri=base_uri, base_model_digest=base_digest,
        adapters=adapters, head=head, mode=mode, replicas=replicas, gpus=_int(raw, "gpus", path, 1, 0, 16) or 0,
        cpu=_get(resources, "cpu", f"{path}.resources", str), memory=_get(resources, "memory", f"{path}.resources", str),
        max_model_len=_int(raw, "maxModelLen", path, None, 128, 1_048_576),
        max_num_seqs=_int(raw, "maxNumSeqs", path, None, 1, 4096), dtype=dtype,
        api_key=_secret(api_key.get("secretRef") if api_key else None, f"{path}.apiKey.secretRef"),
        rollout=rollout, hpa=_hpa(_obj(raw, "hpa", path), f"{path}.hpa", replicas),
        inference_pool=_pool(_obj(raw, "inferencePool", path), f"{path}.inferencePool"),
        s3=s3, node_selector=node_selector, tolerations=tolerations,
        accept_lineage_mismatch=bool(_get(base, "acceptLineageMismatch", f"{path}.baseModel", bool, False)) if base is not None else False,
        cache=_cache(_obj(raw, "cache", path), f"{path}.cache"),
        startup_budget_seconds=_int(raw, "startupBudgetSeconds", path, 900, 60, 86_400) or 900,
    )


def endpoint_secrets(spec: ModelServeSpec) -> list[EndpointSecret]:
    """The Secrets the spec sends to an endpoint the user chose (they must opt in for it)."""
    if spec.s3 is None or not spec.s3.endpoint:
        return []
    return [EndpointSecret(f"spec.s3.{field}", ref.name, "spec.s3.endpoint", spec.s3.endpoint)
            for field, ref in (("accessKeyIdSecretRef", spec.s3.access_key), ("secretAccessKeySecretRef", spec.s3.secret_key))]
