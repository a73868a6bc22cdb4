"""Manifests that run the server image on the local cluster's real node, as the ModelServe
controller will: the launcher config in a ConfigMap, the API key and S3 credentials from
Secrets, readiness by the launcher's probe, liveness on /health, a drain window on SIGTERM."""

from __future__ import annotations

from typing import Any

import yaml

from tuneforge_localcluster import components

S3_ENDPOINT = "http://s3.tuneforge-system.svc.cluster.local:9000"
API_KEY = "tuneforge-test-key"
CONFIG = "/etc/tuneforge/server.yaml"


def secrets() -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3"},
         "stringData": {"access-key-id": components.S3_ACCESS_KEY, "secret-access-key": components.S3_SECRET_KEY}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "api-key"}, "stringData": {"key": API_KEY}},
    ]


def server_config(name: str, base_uri: str, adapters: list[dict[str, Any]], **over: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
            "data": {"server.yaml": yaml.safe_dump({
                "model": {"uri": base_uri, "name": "smollm2-135m"}, "adapters": adapters,
                "max_model_len": 1024, "api_key_env": "TUNEFORGE_API_KEY", **over})}}


def _env() -> list[dict[str, Any]]:
    def secret(var: str, name: str, key: str) -> dict[str, Any]:
        return {"name": var, "valueFrom": {"secretKeyRef": {"name": name, "key": key}}}

    return [
        {"name": "AWS_ENDPOINT_URL", "value": S3_ENDPOINT}, {"name": "AWS_REGION", "value": "us-east-1"},
        secret("AWS_ACCESS_KEY_ID", "s3", "access-key-id"), secret("AWS_SECRET_ACCESS_KEY", "s3", "secret-access-key"),
        secret("TUNEFORGE_API_KEY", "api-key", "key"),
        {"name": "HOME", "value": "/var/cache/tuneforge"}, {"name": "TMPDIR", "value": "/tmp"},
    ]


def pod_spec(image: str, config: str, drain_seconds: int = 30, restart: str = "Always", pre_stop_seconds: int = 3) -> dict[str, Any]:
    return {
        "nodeSelector": {"tuneforge.dev/node-kind": "real"},
        "restartPolicy": restart,
        "enableServiceLinks": False,  # a Service named vllm would inject VLLM_* settings
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": pre_stop_seconds + drain_seconds + 15,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "server", "image": image, "imagePullPolicy": "IfNotPresent",
            "args": ["launch", "--config", CONFIG],
            "env": _env(),
            "ports": [{"name": "http", "containerPort": 8000}],
            "startupProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 5, "failureThreshold": 120},
            "readinessProbe": {"exec": {"command": ["tuneforge-server", "probe", "--config", CONFIG]},
                               "periodSeconds": 3, "timeoutSeconds": 5},
            "livenessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 10, "failureThreshold": 6},
            # Endpoints drop the pod before vLLM stops admitting work (no shell needed: a sleep action).
            "lifecycle": {"preStop": {"sleep": {"seconds": pre_stop_seconds}}},
            "resources": {"requests": {"cpu": "1", "memory": "3Gi"}, "limits": {"memory": "10Gi", "nvidia.com/gpu": "1"}},
            "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}},
            "volumeMounts": [
                {"name": "config", "mountPath": "/etc/tuneforge", "readOnly": True},
                {"name": "cache", "mountPath": "/var/cache/tuneforge"},
                {"name": "tmp", "mountPath": "/tmp"},
                {"name": "shm", "mountPath": "/dev/shm"},
            ],
        }],
        "volumes": [
            {"name": "config", "configMap": {"name": config}},
            {"name": "cache", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {}},
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
        ],
    }


def deployment(name: str, image: str, config: str, **kw: Any) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": name}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels, "annotations": {
                     "prometheus.io/scrape": "true", "prometheus.io/port": "8000", "prometheus.io/path": "/metrics"}},
                     "spec": pod_spec(image, config, **kw)}},
    }


def service(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": {"app.kubernetes.io/name": name}, "ports": [{"name": "http", "port": 8000, "targetPort": "http"}]}}
