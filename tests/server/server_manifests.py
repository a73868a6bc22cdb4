"""The server on the local cluster's real node, built by the operator's pure builders
(``tuneforge.serve.server``) as a ModelServe color will be: S3 credentials and the API key from
Secrets, the real node (its GPU stand-ins) and a memory budget that fits beside the trainer."""

from __future__ import annotations

from typing import Any

from tuneforge.serve.server import ServerPlan
from tuneforge.serve.spec import AdapterSource, SecretKeyRef
from tuneforge_localcluster import components

S3_ENDPOINT = "http://s3.tuneforge-system.svc.cluster.local:9000"
API_KEY = "tuneforge-test-key"


def secrets() -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "Secret",
         "metadata": {"name": "s3", "annotations": {"tuneforge.dev/allowed-endpoints": "s3.tuneforge-system.svc.cluster.local"}},
         "stringData": {"access-key-id": components.S3_ACCESS_KEY, "secret-access-key": components.S3_SECRET_KEY}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "api-key"}, "stringData": {"key": API_KEY}},
    ]


def local_plan(name: str, namespace: str, image: str, base_uri: str, adapters: list[AdapterSource], **over: Any) -> ServerPlan:
    fields: dict[str, Any] = dict(
        name=name, namespace=namespace, image=image, base_uri=base_uri, base_name="smollm2-135m",
        adapters=tuple(adapters), max_model_len=1024, api_key=SecretKeyRef("api-key", "key"),
        s3_endpoint=S3_ENDPOINT, s3_region="us-east-1",
        s3_access_key=SecretKeyRef("s3", "access-key-id"), s3_secret_key=SecretKeyRef("s3", "secret-access-key"),
        cpu="1", memory="8Gi", node_selector={"tuneforge.dev/node-kind": "real"}, pre_stop_seconds=3,
    )
    return ServerPlan(**{**fields, **over})
