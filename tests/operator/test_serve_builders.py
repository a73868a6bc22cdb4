"""The ModelServe's children as pure dicts (color Deployments, version ConfigMaps, Services,
PDB, HPA, InferencePool) and the observer that reads them back into the plan's inputs."""

from __future__ import annotations

import dataclasses
import json

import yaml

from tuneforge.serve.builders import (
    ServeContext, build_active_service, build_color_deployment, build_hpa, build_inference_pool, build_pdb, build_scaled_object,
    build_preview_service, build_version_config_map, endpoints,
)
from tuneforge.serve.gate import GateMeasures
from tuneforge.serve.observe import observe, observe_gate_job
from tuneforge.serve.source import Lineage, ServedAdapter, ServedVersion
from tuneforge.serve.spec import parse_spec
from tuneforge_server.config import parse_config

D1 = "sha256:" + "1" * 64
V1 = ServedVersion("s3://models/base", (ServedAdapter("intents", "s3://runs/r1/adapter", D1),), "sha256:" + "b" * 64, Lineage("intents", 1, 0.9))
CTX = ServeContext("intents", "team-a", "reg/server:1", owner_references=({"kind": "ModelServe", "name": "intents", "uid": "u", "controller": True},))
SPEC = parse_spec({"adapter": {"fineTuneJob": "intents"}, "gpus": 2, "dtype": "bfloat16", "apiKey": {"secretRef": {"name": "k", "key": "t"}},
                   "hpa": {"minReplicas": 1, "maxReplicas": 4}, "inferencePool": {"enabled": True, "endpointPicker": "epp"}})


def test_color_deployment_labels_version_and_config() -> None:
    dep = build_color_deployment(CTX, SPEC, "green", V1, 2)
    assert dep["metadata"]["name"] == "intents-green" and dep["spec"]["replicas"] == 2
    assert dep["metadata"]["annotations"]["tuneforge.dev/version"] == D1
    assert dep["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/instance": "intents-green"}
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert {k: pod_labels[k] for k in ("tuneforge.dev/modelserve", "tuneforge.dev/color", "tuneforge.dev/version")} == {
        "tuneforge.dev/modelserve": "intents", "tuneforge.dev/color": "green", "tuneforge.dev/version": V1.short}
    assert all(len(v) <= 63 for v in pod_labels.values())
    assert dep["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == f"intents-{V1.short}"
    assert dep["metadata"]["ownerReferences"][0]["controller"] is True


def test_version_config_map_is_immutable_and_what_the_launcher_parses() -> None:
    cm = build_version_config_map(CTX, SPEC, V1)
    assert cm["immutable"] is True and cm["metadata"]["name"] == f"intents-{V1.short}"
    cfg = parse_config(yaml.safe_load(cm["data"]["server.yaml"]))
    assert [(a.name, a.uri, a.digest) for a in cfg.adapters] == [("intents", "s3://runs/r1/adapter", D1)]
    assert cfg.model.digest == V1.base_digest and cfg.gpus == 2 and cfg.api_key_env == "TUNEFORGE_API_KEY"
    assert cfg.extra_args == ["--dtype", "bfloat16"]


def test_services_select_by_color_and_select_nothing_before_a_promotion() -> None:
    assert build_active_service(CTX, "blue")["spec"]["selector"] == {"tuneforge.dev/modelserve": "intents", "tuneforge.dev/color": "blue"}
    assert build_preview_service(CTX, "green")["metadata"]["name"] == "intents-preview"
    assert build_active_service(CTX, None)["spec"]["selector"]["tuneforge.dev/color"] == "none"
    assert endpoints(CTX) == {"active": "http://intents.team-a.svc:8000/v1", "preview": "http://intents-preview.team-a.svc:8000/v1"}


def test_pdb_hpa_and_inference_pool() -> None:
    # One PDB per color, unhealthy pods always evictable: a Pending or crash-looping candidate
    # neither uses up the active color's budget nor blocks a drain (MS-10).
    pdb = build_pdb(CTX, "green")
    assert pdb["metadata"]["name"] == "intents-green"
    assert pdb["spec"] == {"maxUnavailable": 1, "unhealthyPodEvictionPolicy": "AlwaysAllow",
                           "selector": {"matchLabels": {"tuneforge.dev/modelserve": "intents", "tuneforge.dev/color": "green"}}}
    hpa = build_hpa(CTX, SPEC, "green")
    assert hpa is not None and hpa["spec"]["scaleTargetRef"]["name"] == "intents-green"
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "vllm:num_requests_waiting"
    # The pools follow the Services: "<name>" selects the active color, "<name>-preview" the
    # candidate's (MS-6); before a promotion the active pool selects no pod.
    active = build_inference_pool(CTX, SPEC, "active", "blue")
    assert active is not None and active["apiVersion"] == "inference.networking.k8s.io/v1"
    assert active["metadata"]["name"] == "intents"
    assert active["spec"]["selector"]["matchLabels"] == {"tuneforge.dev/modelserve": "intents", "tuneforge.dev/color": "blue"}
    assert active["spec"]["targetPorts"] == [{"number": 8000}] and active["spec"]["endpointPickerRef"]["name"] == "epp"
    preview = build_inference_pool(CTX, SPEC, "preview", "green")
    assert preview is not None and preview["metadata"]["name"] == "intents-preview"
    assert preview["spec"]["selector"]["matchLabels"]["tuneforge.dev/color"] == "green"
    none = build_inference_pool(CTX, SPEC, "active", None)
    assert none is not None and none["spec"]["selector"]["matchLabels"]["tuneforge.dev/color"] == "none"
    plain = parse_spec({"adapter": {"fineTuneJob": "intents"}})
    assert build_hpa(CTX, plain, "blue") is None and build_inference_pool(CTX, plain, "active", "blue") is None
    # KEDA's ScaledObject in place of the HPA: the same target, bounds and scale-down window.
    so = build_scaled_object(CTX, SPEC, "green", "http://prom:9090", "q")
    assert so is not None and so["apiVersion"] == "keda.sh/v1alpha1" and so["metadata"]["name"] == "intents"
    assert so["spec"]["scaleTargetRef"] == hpa["spec"]["scaleTargetRef"]
    assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) == (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"])
    assert so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == hpa["spec"]["behavior"]
    assert hpa["spec"]["behavior"] == {"scaleDown": {"stabilizationWindowSeconds": 300}}  # the default window
    assert so["spec"]["triggers"][0]["metadata"] == {"serverAddress": "http://prom:9090", "query": "q", "threshold": "4"}
    assert build_scaled_object(CTX, plain, "blue", "http://prom:9090", "q") is None


def test_observe_reads_the_builders_output_back() -> None:
    dep = build_color_deployment(CTX, SPEC, "blue", V1, 2)
    dep["metadata"].update(generation=3, creationTimestamp="2025-06-01T12:00:00Z")
    dep["status"] = {"observedGeneration": 3, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2}
    job = {"metadata": {"name": "intents-gate-x", "annotations": {"tuneforge.dev/version": D1, "tuneforge.dev/attempt": "4"}},
           "status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    m = GateMeasures(10, 9, 0, 0.9, 100.0, 300.0)
    obs = observe("intents", [dep], [build_active_service(CTX, "blue"), build_preview_service(CTX, None)],
                  [(job, json.dumps(m.to_json()))])
    assert obs.colors["blue"].serves(V1, 2) and "green" not in obs.colors
    assert (obs.active_selector, obs.preview_selector) == ("blue", None)
    assert obs.gates["intents-gate-x"].finished and obs.gates["intents-gate-x"].measures == m
    assert obs.gates["intents-gate-x"].attempt == 4
    failed = observe_gate_job({"metadata": {"annotations": {"tuneforge.dev/version": D1}},
                               "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]}})
    assert failed is not None and failed.failed and "DeadlineExceeded" in failed.message
    assert failed.attempt == -1  # from before attempts: no attempt reads it


def test_gate_job_retries_a_disrupted_pod_and_not_a_failed_one() -> None:
    """A gate pod evicted by a drain or preempted is retried (DisruptionTarget: Ignore) rather than
    failing the Job, which the plan would read as a GateError rejection; unusable rows (exit 2)
    fail at once (MS-8)."""
    from tuneforge.serve.builders import GatePod, build_gate_job
    gated = parse_spec({"adapter": {"fineTuneJob": "intents"}, "rollout": {"gate": {"minAccuracy": 0.8}}})
    job = build_gate_job(CTX, gated, V1, GatePod("op:1"))
    assert job["spec"]["backoffLimit"] == 1
    assert job["spec"]["podFailurePolicy"] == {"rules": [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {"action": "FailJob", "onExitCodes": {"containerName": "gate", "operator": "In", "values": [2]}}]}
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_a_classifier_version_renders_a_pooling_server_and_a_classify_gate() -> None:
    """A version of a FineTuneJob with task.head classifier: the launcher config says head
    classifier (pooling runner, /classify), the gate Job asks with --head classifier; an lm
    version's config and gate stay as they were (no head key: its template hash is unchanged)."""
    from tuneforge.serve.builders import GatePod, build_gate_job, template_hash
    from tuneforge.serve.source import job_head, resolve

    gated = parse_spec({"adapter": {"fineTuneJob": "intents"}, "rollout": {"gate": {"minAccuracy": 0.8}}})
    ftj = {"spec": {"task": {"type": "classification", "head": "classifier"}},
           "status": {"phase": "Succeeded", "revision": 1, "gate": {"outcome": "Passed"},
                      "adapter": {"revision": 1, "uri": "s3://runs/r1/adapter", "digest": D1, "baseModel": {"uri": "s3://models/base"}},
                      "artifacts": {"predictions": "s3://runs/r1/predictions.jsonl"}}}
    version = resolve(gated, ftj["status"], (), job_head(ftj)).version
    assert version is not None and version.head == "classifier"
    assert ServedVersion.from_status(version.to_status()) == version
    cfg = parse_config(yaml.safe_load(build_version_config_map(CTX, gated, version)["data"]["server.yaml"]))
    assert cfg.head == "classifier"
    command = build_gate_job(CTX, gated, version, GatePod("op:1"))["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--head") + 1] == "classifier"
    assert "--rows-uri" in command and command[command.index("--rows-uri") + 1] == "s3://runs/r1/predictions.jsonl"

    lm = dataclasses.replace(version, head="lm")
    assert "head" not in yaml.safe_load(build_version_config_map(CTX, gated, lm)["data"]["server.yaml"])
    assert "--head" not in build_gate_job(CTX, gated, lm, GatePod("op:1"))["spec"]["template"]["spec"]["containers"][0]["command"]
    assert template_hash(CTX, gated, lm) != template_hash(CTX, gated, version)
    assert job_head({"spec": {"task": {"type": "classification"}}}) == "lm" and job_head(None) == "lm"


def test_explicit_classifier_adapters_are_served_as_classifiers() -> None:
    from tuneforge.serve.source import resolve

    spec = parse_spec({"baseModel": {"uri": "s3://models/base"}, "head": "classifier",
                       "adapters": [{"name": "intents", "uri": "s3://runs/a", "digest": D1}]})
    version = resolve(spec).version
    assert version is not None and version.head == "classifier"
    assert parse_config(yaml.safe_load(build_version_config_map(CTX, spec, version)["data"]["server.yaml"])).head == "classifier"
    lm = parse_spec({"baseModel": {"uri": "s3://models/base"}, "adapters": [{"name": "intents", "uri": "s3://runs/a", "digest": D1}]})
    assert resolve(lm).version.head == "lm"  # type: ignore[union-attr]
