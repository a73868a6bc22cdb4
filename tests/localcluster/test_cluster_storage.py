"""Storage: the default StorageClass provisions PVCs; the S3-compatible server serves pods and the host."""

from __future__ import annotations

import uuid

import boto3
from botocore.config import Config

from tuneforge_localcluster import components
from tuneforge_localcluster.testing import Cluster, real_node_pod_spec, wait_for


def _pod(name: str, image: str, command: list[str], **spec: object) -> dict:
    pod_spec = real_node_pod_spec(image, [], **spec)
    pod_spec["containers"][0]["command"] = command
    pod_spec["containers"][0].pop("args")
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": pod_spec}


def _phase(cluster: Cluster, ns: str, name: str) -> str:
    return str(cluster.get("pod", name, ns)["status"].get("phase"))


def test_pvc_binds_and_data_moves_between_pods(cluster: Cluster, namespace: str, probe_image: str) -> None:
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}},
    }
    volume = {"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]}
    writer = _pod("writer", probe_image, ["sh", "-c", "echo written-by-writer > /data/file.txt"], **volume)
    writer["spec"]["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
    cluster.apply([pvc, writer], namespace)
    wait_for("writer Succeeded", lambda: _phase(cluster, namespace, "writer") == "Succeeded", 120,
             describe=lambda: cluster.describe("pod", "writer", namespace) + cluster.describe("pvc", "data", namespace))
    claim = cluster.get("pvc", "data", namespace)
    assert claim["status"]["phase"] == "Bound"
    assert claim["spec"]["storageClassName"] == "local-path"  # the default class was applied

    reader = _pod("reader", probe_image, ["cat", "/data/file.txt"], **volume)
    reader["spec"]["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/data", "readOnly": True}]
    cluster.apply(reader, namespace)
    wait_for("reader Succeeded", lambda: _phase(cluster, namespace, "reader") == "Succeeded", 120,
             describe=lambda: cluster.describe("pod", "reader", namespace))
    assert cluster.kubectl("logs", "-n", namespace, "reader").stdout.strip() == "written-by-writer"


def _s3(endpoint: str) -> "boto3.client":
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=components.S3_ACCESS_KEY,
        aws_secret_access_key=components.S3_SECRET_KEY,
        region_name="us-east-1",
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )


def test_object_written_by_pod_is_readable_from_host(cluster: Cluster, namespace: str, probe_image: str) -> None:
    port = cluster.settings.s3_port
    host = _s3(f"http://127.0.0.1:{port}")
    bucket = f"t-{uuid.uuid4().hex[:10]}"
    host.create_bucket(Bucket=bucket)
    # The pod reaches the server by the Service name; a URL presigned for that name needs
    # no credentials inside the pod.
    in_cluster = _s3(f"http://s3.tuneforge-system.svc.cluster.local:{port}")
    url = in_cluster.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "from-pod.txt"}, ExpiresIn=600)
    cluster.apply(_pod("uploader", probe_image, ["python3", "/usr/local/bin/probe.py", "put", url, "hello s3"]), namespace)
    wait_for("uploader Succeeded", lambda: _phase(cluster, namespace, "uploader") == "Succeeded", 120,
             describe=lambda: cluster.describe("pod", "uploader", namespace) + cluster.kubectl("logs", "-n", namespace, "uploader", check=False).stdout)
    body = host.get_object(Bucket=bucket, Key="from-pod.txt")["Body"].read()
    assert body == b"hello s3"
