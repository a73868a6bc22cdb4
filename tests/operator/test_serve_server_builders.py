"""The serve room's pure builders for one server color, and the contract with the launcher: what
the operator renders is what ``tuneforge_server.config`` parses."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tuneforge.serve.spec import AdapterSource, CacheSpec, SecretKeyRef
from tuneforge.serve.server import (
    API_KEY_ENV, ServerPlan, build_config_map, build_deployment, build_service, pod_spec,
    render_server_config,
)
from tuneforge_server.config import parse_config

DIGEST = "sha256:" + "a" * 64


def plan(**over: Any) -> ServerPlan:
    base: dict[str, Any] = dict(name="intents-blue", namespace="team-a", image="reg/server:1", base_uri="s3://models/smollm2",
                                base_name="smollm2", adapters=(AdapterSource("intents", "s3://runs/a/adapter", DIGEST),))
    base.update(over)
    return ServerPlan(**base)


@pytest.mark.parametrize(
    "over",
    [
        {},
        {"mode": "lora", "gpus": 4, "max_model_len": 4096, "api_key": SecretKeyRef("k", "key")},
        {"adapters": (AdapterSource("a", "pvc://runs/a"), AdapterSource("b", "s3://runs/b", DIGEST)), "mode": "lora"},
        {"mode": "merged", "base_digest": "sha256:" + "b" * 64, "extra_args": ("--max-num-seqs", "32")},
        {"gpus": 0, "cpu": "4", "memory": "8Gi", "max_num_seqs": 2},
        {"accept_lineage_mismatch": True},
    ],
)
def test_rendered_config_is_what_the_launcher_parses(over: dict[str, Any]) -> None:
    p = plan(**over)
    cfg = parse_config(yaml.safe_load(build_config_map(p)["data"]["server.yaml"]))
    assert cfg.model.uri == p.base_uri and cfg.model.name == p.base_name and cfg.model.digest == p.base_digest
    assert [(a.name, a.uri, a.digest) for a in cfg.adapters] == [(a.name, a.uri, a.digest) for a in p.adapters]
    assert (cfg.mode, cfg.gpus, cfg.max_model_len, cfg.max_num_seqs) == (p.mode, p.gpus, p.max_model_len, p.max_num_seqs)
    assert cfg.api_key_env == (API_KEY_ENV if p.api_key else None)
    assert cfg.extra_args == list(p.extra_args)
    assert cfg.model.accept_lineage_mismatch is p.accept_lineage_mismatch
    assert render_server_config(p)["shutdown"] == {"drain_seconds": p.drain_seconds}


def test_deployment_probes_drain_and_security() -> None:
    p = plan(api_key=SecretKeyRef("key", "token"), drain_seconds=40, pre_stop_seconds=5, gpus=2, memory="24Gi",
             s3_endpoint="http://s3:9000", s3_access_key=SecretKeyRef("s3", "id"), s3_secret_key=SecretKeyRef("s3", "secret"))
    dep = build_deployment(p)
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    ready = c["readinessProbe"]
    # SRV-4: a stdlib-only check (python -S: no site-packages, no pydantic or YAML) with a budget
    # that a saturated CPU does not blow: 10 s per try and three misses before NotReady.
    assert ready["exec"]["command"][:4] == ["python", "-S", "-m", "tuneforge_server.probe"]
    assert ready["timeoutSeconds"] >= 10 and ready["failureThreshold"] >= 3 and ready["periodSeconds"] >= 5
    assert c["livenessProbe"]["httpGet"]["path"] == "/health" and c["startupProbe"]["httpGet"]["path"] == "/health"
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 600  # model load budget
    assert c["lifecycle"]["preStop"] == {"sleep": {"seconds": 5}}
    assert pod["terminationGracePeriodSeconds"] > 5 + 40
    assert pod["enableServiceLinks"] is False and pod["automountServiceAccountToken"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] and pod["securityContext"]["runAsNonRoot"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2" and c["resources"]["limits"]["memory"] == "24Gi"
    env = {e["name"]: e for e in c["env"]}
    assert env[API_KEY_ENV]["valueFrom"]["secretKeyRef"] == {"name": "key", "key": "token"}
    assert "value" not in env[API_KEY_ENV]  # never a literal
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://s3:9000"
    assert dep["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    assert dep["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/instance": "intents-blue"}
    assert build_service(p, "intents")["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]


def test_cpu_servers_ask_for_no_gpu_and_tolerate_no_gpu_taint() -> None:
    """SRV-1: ``gpus: 0`` (CPU serving) parses in the launcher, its vLLM command line has no
    tensor parallelism, and its pods neither request nor tolerate ``nvidia.com/gpu``."""
    from tuneforge_server.args import build_vllm_args

    p = plan(gpus=0, cpu="4", memory="8Gi", tolerations=({"key": "dedicated", "operator": "Exists"},))
    cfg = parse_config(yaml.safe_load(build_config_map(p)["data"]["server.yaml"]))
    assert cfg.gpus == 0
    assert "--tensor-parallel-size" not in build_vllm_args(cfg, cfg.model.uri, [], "cpu", "merged")  # type: ignore[arg-type]
    pod = pod_spec(p)
    res = pod["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in res.get("limits", {}) and res["requests"] == {"cpu": "4", "memory": "8Gi"}
    assert [t["key"] for t in pod["tolerations"]] == ["dedicated"]
    gpu_pod = pod_spec(plan(gpus=1))
    assert gpu_pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert [t["key"] for t in gpu_pod["tolerations"]] == ["nvidia.com/gpu"]


def _cache(spec: dict[str, Any]) -> dict[str, Any]:
    return next(v for v in spec["volumes"] if v["name"] == "cache")


def test_cache_volume_size_and_startup_budget() -> None:
    """SRV-2: a large model's weights go where the spec says, at a size the scheduler accounts
    for, and the startup probe waits as long as the spec allows."""
    plain = pod_spec(plan())
    assert _cache(plain) == {"name": "cache", "emptyDir": {}}
    assert "ephemeral-storage" not in plain["containers"][0].get("resources", {}).get("requests", {})
    sized = pod_spec(plan(cache=CacheSpec("emptyDir", "60Gi"), cpu="2"))
    assert _cache(sized) == {"name": "cache", "emptyDir": {"sizeLimit": "60Gi"}}
    assert sized["containers"][0]["resources"]["requests"] == {"cpu": "2", "ephemeral-storage": "60Gi"}
    eph = pod_spec(plan(cache=CacheSpec("ephemeral", "300Gi", "local-nvme")))
    claim = _cache(eph)["ephemeral"]["volumeClaimTemplate"]["spec"]
    assert claim == {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "300Gi"}}, "storageClassName": "local-nvme"}
    assert "ephemeral-storage" not in eph["containers"][0]["resources"].get("requests", {})  # a volume, not the node's disk
    start = pod_spec(plan(startup_budget_seconds=3600))["containers"][0]["startupProbe"]
    assert start["periodSeconds"] * start["failureThreshold"] >= 3600


def test_pvc_sources_are_mounted_read_only() -> None:
    p = plan(base_uri="pvc://models/smollm2", adapters=(AdapterSource("a", "pvc://runs/x/adapter", DIGEST), AdapterSource("b", "pvc://models/b", DIGEST)), mode="lora")
    spec = pod_spec(p)
    claims = {v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"models", "runs"}
    mounts = {m["mountPath"]: m for m in spec["containers"][0]["volumeMounts"]}
    assert mounts["/mnt/pvc/models"]["readOnly"] and mounts["/mnt/pvc/runs"]["readOnly"]
    assert pod_spec(p, restart_policy="Never")["restartPolicy"] == "Never"


def test_a_modelserve_spec_reaches_the_color_pods_and_their_launcher_config() -> None:
    """The spec's cache, startup budget, gpus: 0 and lineage override reach each color."""
    from tuneforge.serve.builders import ServeContext, build_color_deployment, build_version_config_map
    from tuneforge.serve.source import Lineage, ServedAdapter, ServedVersion
    from tuneforge.serve.spec import parse_spec

    version = ServedVersion("s3://models/base", (ServedAdapter("intents", "s3://runs/r1/adapter", DIGEST),), None, Lineage("intents", 1, 0.9))
    ctx = ServeContext("intents", "team-a", "reg/server:1")
    spec = parse_spec({"adapter": {"fineTuneJob": "intents"}, "gpus": 0, "baseModel": {"uri": "s3://mirror/base", "acceptLineageMismatch": True},
                       "cache": {"volume": "ephemeral", "size": "200Gi"}, "startupBudgetSeconds": 2400})
    pod = build_color_deployment(ctx, spec, "blue", version, 1)["spec"]["template"]["spec"]
    assert _cache(pod)["ephemeral"]["volumeClaimTemplate"]["spec"]["resources"]["requests"]["storage"] == "200Gi"
    start = pod["containers"][0]["startupProbe"]
    assert start["periodSeconds"] * start["failureThreshold"] >= 2400
    assert "tolerations" not in pod and "nvidia.com/gpu" not in pod["containers"][0].get("resources", {}).get("limits", {})
    cfg = parse_config(yaml.safe_load(build_version_config_map(ctx, spec, version)["data"]["server.yaml"]))
    assert cfg.gpus == 0 and cfg.model.accept_lineage_mismatch
