"""Operator settings: one dataclass, loaded once at startup from TUNEFORGE_* environment variables."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .leader import ElectionConfig


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the operator can be tuned with; each field reads TUNEFORGE_<FIELD_UPPER>."""

    trainer_image: str = "tuneforge/trainer:0.1.0"
    """Image of the trainer (entrypoint ``tuneforge-train``) used by validation and training Jobs."""

    image_pull_policy: str = "IfNotPresent"
    """Pull policy of trainer containers; the local cluster loads images without a registry."""

    validate_cpu: str = "500m"
    """CPU request of the CPU-only data validation pod (no CPU limit)."""

    validate_memory: str = "1Gi"
    """Memory request (and limit) of the data validation pod."""

    validate_node_selector: str = ""
    """JSON object: nodeSelector of validation pods (e.g. a CPU pool); empty means anywhere."""

    validate_tolerations: str = ""
    """JSON list of tolerations of validation pods (e.g. for a tainted CPU pool)."""

    validate_deadline_seconds: int = 900
    """activeDeadlineSeconds of the validation Job: validation takes seconds, a stuck one fails."""

    gpu_taint_key: str = "nvidia.com/gpu"
    """Taint key tolerated automatically by training pods that ask for GPUs."""

    namespaces: str = ""
    """Comma-separated namespaces to watch; empty watches the whole cluster."""

    progress_interval: float = 15.0
    """Seconds between reads of running trainers' last log lines (status shows progress within ~2x)."""

    progress_tail_lines: int = 20
    """How many log lines are read per running trainer per poll."""

    api_concurrency: int = 8
    """Operator API requests (creates, patches, log reads) in flight at once, at any scale."""

    reconcile_concurrency: int = 16
    """FineTuneJobs reconciled at the same time (a few per API slot keeps the slots busy)."""

    worker_limit: int = 0
    """Kopf's per-resource worker limit (0: none). A bound here saves no memory: an object waiting
    for a worker queues every raw event it receives (full bodies), so in a burst of 1,000
    FineTuneJobs a limit of 64 held ~1,600 queued bodies; API load is bounded by
    ``reconcile_concurrency`` and ``api_concurrency`` instead."""

    worker_idle_timeout: float = 1.0
    """Seconds an idle per-object Kopf worker waits for the object's next event before it exits."""

    watch_server_timeout: int = 300
    """Seconds the apiserver keeps a watch open (an integer: the apiserver rejects 300.0)."""

    watch_client_timeout: float = 330.0
    """Seconds the client waits on a watch; a silently dead stream is noticed after this."""

    request_timeout: float = 30.0
    """Seconds for a single Kubernetes API request."""

    consistency_timeout: float = 5.0
    """How long Kopf waits to see its own patches before handling an object again."""

    retry_delay: float = 10.0
    """First delay of a reconcile retry (an API error, or a FineTuneJob waiting on something);
    each further retry of the same object doubles it, with jitter, up to ``retry_max_delay``."""

    retry_max_delay: float = 300.0
    """Longest delay between reconcile retries of one object."""

    dependency_wait_seconds: float = 600.0
    """How long a revision waits for a PersistentVolumeClaim, Secret or PriorityClass it names
    to appear (GitOps often applies them moments after the FineTuneJob) before it fails."""

    metrics_port: int = 8080
    """Port of the Prometheus /metrics endpoint (0 disables it)."""

    liveness_port: int = 8081
    """Port of Kopf's liveness endpoint /healthz (0 disables it)."""

    pod_annotations: str = ""
    """JSON object of extra annotations on every trainer pod (cost attribution, mesh opt-out, or
    kwok's simulated outcome in the fast test tier)."""

    history_limit: int = 20
    """How many earlier revisions are kept in status.history."""

    server_image: str = "tuneforge/server:0.1.0"
    """Image of the server (the vLLM launcher) the ModelServe color Deployments run."""

    gate_image: str = "tuneforge/operator:0.1.0"
    """Image of the operator: ModelServe gate Jobs run ``python3 -m tuneforge.serve.gate`` in it."""

    gate_node_selector: str = ""
    """JSON object: nodeSelector of gate pods (e.g. a CPU pool); empty means anywhere."""

    gate_tolerations: str = ""
    """JSON list of tolerations of gate pods."""

    gate_pod_annotations: str = ""
    """JSON object of extra annotations on gate pods (a mesh opt-out, or kwok's simulated outcome
    in the fast test tier)."""

    gpu_hour_prices: str = ""
    """JSON object: price of one GPU for one hour per GPU resource name (``{"nvidia.com/gpu": 2.5}``);
    a FineTuneJob's status.cost is its GPU-seconds times the price of its spec.resources.gpuResourceName
    (no price for that name: no status.cost)."""

    cost_currency: str = "USD"
    """Currency of ``gpu_hour_prices`` (status.cost.currency, the Cost column, the cost metric's label)."""

    serve_usage_interval: float = 300.0
    """Longest seconds between two counts of a serving ModelServe's status.usage and status.cost
    (GPU-seconds, requests served): they are also counted whenever the GPUs its pods hold change;
    0 counts only then."""

    prometheus_url: str = ""
    """Base URL of the Prometheus that scrapes the ModelServe color pods, as the operator reaches it
    (``http://prometheus.monitoring:9090``): a ModelServe's status.usage.requests (and
    status.cost.per1kRequests) is the increase of vLLM's ``vllm:request_success_total`` over the
    series of its color pods, by the ``namespace`` and ``pod`` labels of Prometheus' usual pod
    scraping. Empty: no request count.
    The same server is KEDA's: set, and where KEDA's ScaledObject CRD is installed, a ModelServe with
    spec.hpa gets a KEDA ScaledObject (a Prometheus trigger on its active color's waiting requests;
    KEDA makes the HPA, named as the ModelServe) instead of the operator's own HPA on a Pods metric,
    which needs a custom-metrics adapter."""

    keda_query: str = 'sum({metric}{{namespace="{namespace}",pod=~"{pods}"}})'
    """PromQL of the ScaledObject's trigger, compared per replica with spec.hpa.targetWaitingRequests:
    ``{metric}`` (spec.hpa.metric), ``{namespace}``, ``{deployment}`` (the active color's Deployment)
    and ``{pods}`` (a regex of that Deployment's pod names) are filled in (``{{``/``}}`` are literal
    braces). The default fits the ``namespace`` and ``pod`` target labels of Prometheus' usual pod
    scraping, as status.usage.requests does."""

    leader_elect: bool = False
    """Run as one of several replicas: only the holder of a coordination.k8s.io Lease reconciles,
    the others stay Ready and idle (the chart and operator/deploy/operator.yaml turn this on; off,
    the process reconciles at once and must be the only one)."""

    leader_election_namespace: str = ""
    """Namespace of the leader Lease; empty: the operator's own (its service account's namespace in
    a pod, else the kubeconfig context's namespace)."""

    leader_election_lease: str = "tuneforge-operator"
    """Name of the leader Lease (the RBAC Role's resourceNames names it too)."""

    leader_election_lease_duration: float = 15.0
    """Seconds a follower waits, after it last saw the Lease renewed, before it takes the Lease
    (client-go's leaseDuration). Takeover after a leader dies takes at most about this plus two
    retry periods."""

    leader_election_renew_deadline: float = 10.0
    """Seconds after its last successful renewal at which a leader that could not renew exits
    (client-go's renewDeadline); must be below the lease duration, the gap being the safety margin."""

    leader_election_retry_period: float = 2.0
    """Seconds between a leader's renewals and between a follower's attempts (client-go's retryPeriod)."""

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Settings":
        """Build settings from TUNEFORGE_* variables; unknown variables are ignored."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            raw = env.get(f"TUNEFORGE_{field.name.upper()}")
            if raw is None:
                continue
            kind: Any = type(field.default)
            try:
                values[field.name] = _parse_bool(raw) if kind is bool else kind(raw)
            except ValueError as exc:
                raise ValueError(f"TUNEFORGE_{field.name.upper()}={raw!r}: expected {kind.__name__}") from exc
        settings = cls(**values)
        settings.pod_annotation_map()
        settings.validate_placement()
        settings.gate_placement()
        settings.election_config()
        settings.gpu_hour_price_map()
        settings.keda_trigger_query("m", "ns", "d", "d-.+")
        return settings

    def keda_trigger_query(self, metric: str, namespace: str, deployment: str, pods: str) -> str:
        """``keda_query`` filled in; a template that does not format fails at startup, naming it."""
        try:
            return self.keda_query.format(metric=metric, namespace=namespace, deployment=deployment, pods=pods)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"TUNEFORGE_KEDA_QUERY={self.keda_query!r}: {exc!r}; the placeholders are {{metric}}, "
                             "{namespace}, {deployment} and {pods}, and a literal brace is written {{ or }}") from exc

    def election_config(self) -> "ElectionConfig":
        """The leader election's durations, checked (renew deadline below the lease duration)."""
        from .leader import ElectionConfig

        return ElectionConfig(self.leader_election_lease_duration, self.leader_election_renew_deadline,
                              self.leader_election_retry_period)

    def pod_annotation_map(self) -> dict[str, str]:
        """``pod_annotations`` parsed; an invalid value fails at startup, not per pod."""
        if not self.pod_annotations.strip():
            return {}
        value = json.loads(self.pod_annotations)
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ValueError("TUNEFORGE_POD_ANNOTATIONS must be a JSON object of strings")
        return {str(k): v for k, v in value.items()}

    def gpu_hour_price_map(self) -> dict[str, float]:
        """``gpu_hour_prices`` parsed; a bad value fails at startup naming the resource."""
        if not self.gpu_hour_prices.strip():
            return {}
        value = json.loads(self.gpu_hour_prices)
        if not isinstance(value, dict):
            raise ValueError("TUNEFORGE_GPU_HOUR_PRICES must be a JSON object of GPU resource name to price per GPU-hour")
        out: dict[str, float] = {}
        for name, price in value.items():
            if isinstance(price, bool) or not isinstance(price, (int, float)) or price < 0:
                raise ValueError(f"TUNEFORGE_GPU_HOUR_PRICES[{name!r}]: expected a number >= 0, got {price!r}")
            out[str(name)] = float(price)
        return out

    def gpu_hour_price(self, resource_name: str) -> float | None:
        """Price of one ``resource_name`` GPU for one hour, or None when none is set."""
        return self.gpu_hour_price_map().get(resource_name)

    def validate_placement(self) -> tuple[dict[str, str], list[dict[str, object]]]:
        """``validate_node_selector`` and ``validate_tolerations`` parsed."""
        selector = json.loads(self.validate_node_selector) if self.validate_node_selector.strip() else {}
        tolerations = json.loads(self.validate_tolerations) if self.validate_tolerations.strip() else []
        if not isinstance(selector, dict) or not isinstance(tolerations, list):
            raise ValueError("TUNEFORGE_VALIDATE_NODE_SELECTOR must be a JSON object, TUNEFORGE_VALIDATE_TOLERATIONS a JSON list")
        return selector, tolerations

    def gate_placement(self) -> tuple[dict[str, str], list[dict[str, object]], dict[str, str]]:
        """``gate_node_selector``, ``gate_tolerations`` and ``gate_pod_annotations`` parsed."""
        def load(raw: str, empty: object) -> object:
            return json.loads(raw) if raw.strip() else empty
        selector, tolerations, annotations = (load(self.gate_node_selector, {}), load(self.gate_tolerations, []),
                                              load(self.gate_pod_annotations, {}))
        if not isinstance(selector, dict) or not isinstance(tolerations, list) or not isinstance(annotations, dict) \
                or not all(isinstance(v, str) for v in [*selector.values(), *annotations.values()]):
            raise ValueError("TUNEFORGE_GATE_NODE_SELECTOR and TUNEFORGE_GATE_POD_ANNOTATIONS must be JSON objects of "
                             "strings, TUNEFORGE_GATE_TOLERATIONS a JSON list")
        return selector, tolerations, annotations

    def namespace_list(self) -> list[str]:
        """The namespaces to watch, or an empty list for cluster-wide."""
        return [n.strip() for n in self.namespaces.split(",") if n.strip()]


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off", ""):
        return False
    raise ValueError(f"{raw!r} is not a boolean")
