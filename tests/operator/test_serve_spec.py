"""The serve room's spec parser: both sources, defaults, and an error naming the field for each
invalid spec."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tuneforge.serve.spec import AdapterSource, CacheSpec, SecretKeyRef, SpecError, parse_spec

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
FTJ: dict[str, Any] = {"adapter": {"fineTuneJob": "intents"}}
EXPLICIT: dict[str, Any] = {
    "baseModel": {"uri": "s3://models/smollm2"},
    "adapters": [{"name": "a", "uri": "s3://runs/a/adapter", "digest": D1}, {"name": "b", "uri": "pvc://runs/b", "digest": D2}],
    "mode": "lora",
    "rollout": {"gate": {"minAccuracy": 0.8, "datasetUri": "s3://data/gate.jsonl"}},
}


def test_fine_tune_job_source_with_defaults() -> None:
    spec = parse_spec(FTJ)
    assert spec.fine_tune_job == "intents" and spec.served_name == "intents" and not spec.adapters
    assert (spec.replicas, spec.gpus, spec.mode) == (1, 1, "auto")
    r = spec.rollout
    assert (r.auto_promotion, r.progress_deadline_seconds, r.scale_down_delay_seconds, r.gate) == (True, 600, 300, None)
    assert spec.hpa is None and spec.inference_pool is None


def test_explicit_source_and_every_field() -> None:
    raw = copy.deepcopy(EXPLICIT)
    raw.update(replicas=2, gpus=4, resources={"cpu": "4", "memory": "32Gi"}, apiKey={"secretRef": {"name": "k", "key": "token"}},
               hpa={"enabled": True, "minReplicas": 2, "maxReplicas": 6, "targetWaitingRequests": 8,
                    "scaleDownStabilizationSeconds": 30},
               inferencePool={"enabled": True, "endpointPicker": "intents-epp"})
    raw["rollout"].update(autoPromotion=False, progressDeadlineSeconds=900, scaleDownDelaySeconds=60)
    raw["rollout"]["gate"].update(maxP99Ms=3000, rows=50)
    spec = parse_spec(raw)
    assert spec.adapters == (AdapterSource("a", "s3://runs/a/adapter", D1), AdapterSource("b", "pvc://runs/b", D2))
    assert spec.api_key == SecretKeyRef("k", "token") and (spec.cpu, spec.memory) == ("4", "32Gi")
    assert spec.rollout.auto_promotion is False and spec.rollout.progress_deadline_seconds == 900
    assert spec.rollout.gate is not None and (spec.rollout.gate.min_accuracy, spec.rollout.gate.max_p99_ms, spec.rollout.gate.rows) == (0.8, 3000, 50)
    assert spec.hpa is not None and (spec.hpa.min_replicas, spec.hpa.max_replicas, spec.hpa.metric) == (2, 6, "vllm:num_requests_waiting")
    assert spec.hpa.scale_down_stabilization_seconds == 30
    assert parse_spec({**FTJ, "hpa": {"maxReplicas": 2}}).hpa.scale_down_stabilization_seconds == 300  # type: ignore[union-attr]
    assert spec.inference_pool is not None and spec.inference_pool.endpoint_picker == "intents-epp"


def test_cache_volume_startup_budget_and_lineage_override() -> None:
    """SRV-2/SRV-3: the weights' cache volume and the startup budget are in the spec, and the
    base-lineage override is explicit (off by default)."""
    spec = parse_spec(FTJ)
    assert (spec.cache, spec.startup_budget_seconds, spec.accept_lineage_mismatch) == (CacheSpec(), 900, False)
    raw = copy.deepcopy(EXPLICIT)
    raw["baseModel"]["acceptLineageMismatch"] = True
    raw.update(cache={"volume": "ephemeral", "size": "300Gi", "storageClassName": "local-nvme"}, startupBudgetSeconds=3600)
    spec = parse_spec(raw)
    assert spec.cache == CacheSpec("ephemeral", "300Gi", "local-nvme")
    assert (spec.startup_budget_seconds, spec.accept_lineage_mismatch) == (3600, True)
    assert parse_spec({**FTJ, "cache": {"size": "50Gi"}}).cache == CacheSpec("emptyDir", "50Gi")


def test_a_pin_takes_a_short_digest() -> None:
    assert parse_spec({"adapter": {"fineTuneJob": "intents", "digest": "1" * 12}}).pin_digest == "1" * 12


def _with(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    raw = copy.deepcopy(base)
    *parents, last = path.split(".")
    node = raw
    for p in parents:
        node = node.setdefault(p, {}) if not p.isdigit() else node[int(p)]
    if value is _DELETE:
        del node[last]
    elif last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return raw


_DELETE = object()

INVALID = [
    (FTJ, "adapters", EXPLICIT["adapters"], "spec", "exactly one"),
    (EXPLICIT, "adapters", _DELETE, "spec", "exactly one"),
    (EXPLICIT, "baseModel", _DELETE, "spec.baseModel", "required"),
    (EXPLICIT, "baseModel.uri", "hf://org/model", "spec.baseModel.uri", "must start with"),
    (EXPLICIT, "adapters.0.uri", "s3://runs/../x", "spec.adapters[0].uri", ".."),
    (EXPLICIT, "adapters.1.digest", _DELETE, "spec.adapters[1].digest", "required"),
    (EXPLICIT, "adapters.1.digest", "sha256:abc", "spec.adapters[1].digest", "64 hex"),
    (EXPLICIT, "adapters.1.name", "a", "spec.adapters[1].name", "twice"),
    (EXPLICIT, "mode", "merged", "spec.mode", "several adapters"),
    (EXPLICIT, "replicas", -1, "spec.replicas", "between 0 and 64"),
    (EXPLICIT, "replicas", True, "spec.replicas", "an integer"),
    (EXPLICIT, "hpa", {"maxReplicas": 2, "scaleDownStabilizationSeconds": 7200}, "spec.hpa.scaleDownStabilizationSeconds", "between 0 and 3600"),
    (EXPLICIT, "rollout.gate.minAccuracy", 1.5, "spec.rollout.gate.minAccuracy", "between 0 and 1"),
    (EXPLICIT, "rollout.gate.datasetUri", _DELETE, "spec.rollout.gate.datasetUri", "required with explicit adapters"),
    (EXPLICIT, "rollout.gate.minAccuracy", _DELETE, "spec.rollout.gate", "no threshold"),
    (EXPLICIT, "rollout.progressDeadlineSeconds", 5, "spec.rollout.progressDeadlineSeconds", "between 30"),
    (EXPLICIT, "rollout.strategy", "Canary", "spec.rollout.strategy", "BlueGreen"),
    (EXPLICIT, "hpa", {"minReplicas": 3, "maxReplicas": 2}, "spec.hpa.maxReplicas", "at least minReplicas"),
    (EXPLICIT, "inferencePool", {"enabled": True}, "spec.inferencePool.endpointPicker", "required"),
    (EXPLICIT, "apiKey", {"secretRef": {"name": "k"}}, "spec.apiKey.secretRef.key", "required"),
    (FTJ, "adapter.fineTuneJob", "Not_A_Name", "spec.adapter.fineTuneJob", "FineTuneJob name"),
    (FTJ, "adapter.digest", "latest", "spec.adapter.digest", "12 hex"),
    (FTJ, "rollout.gate", {"maxP99Ms": 0}, "spec.rollout.gate.maxP99Ms", "at least 1"),
    (FTJ, "cache", {"volume": "hostPath"}, "spec.cache.volume", "emptyDir"),
    (FTJ, "cache", {"volume": "ephemeral"}, "spec.cache.size", "required"),
    (FTJ, "cache", {"size": "lots"}, "spec.cache.size", "quantity"),
    (FTJ, "cache", {"size": "50Gi", "storageClassName": "fast"}, "spec.cache.storageClassName", "ephemeral"),
    (FTJ, "startupBudgetSeconds", 10, "spec.startupBudgetSeconds", "between"),
    (FTJ, "maxNumSeqs", 0, "spec.maxNumSeqs", "between"),
]


@pytest.mark.parametrize("base,path,value,field,words", INVALID, ids=[f"{i[3]}:{i[4]}" for i in INVALID])
def test_invalid_spec_names_the_field(base: dict[str, Any], path: str, value: Any, field: str, words: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(_with(base, path, value))
    assert err.value.path == field, str(err.value)
    assert str(err.value).startswith(field + ":") and words in str(err.value)


def test_the_example_manifest_parses() -> None:
    """examples/modelserve-banking77.yaml follows the demo's FineTuneJob with a gate."""
    from pathlib import Path

    import yaml

    raw = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "modelserve-banking77.yaml").read_text())
    spec = parse_spec(raw["spec"])
    assert spec.fine_tune_job == "banking77-intents" and spec.rollout.gate is not None and spec.s3 is not None
    assert spec.gpus == 0  # the local node serves on its CPU
