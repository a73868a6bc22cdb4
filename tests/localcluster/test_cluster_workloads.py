"""Real workloads on the real node: Jobs, probes, Services, DNS, fake GPU scheduling."""

from __future__ import annotations

import json
import time

from tuneforge_localcluster.testing import Cluster, real_node_pod_spec, wait_for


def _job(name: str, image: str, args: list[str], backoff: int = 0, **spec: object) -> dict:
    pod_spec = real_node_pod_spec(image, args)
    pod_spec.update(spec)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"backoffLimit": backoff, "template": {"spec": pod_spec}},
    }


def _job_condition(cluster: Cluster, ns: str, name: str) -> str | None:
    for cond in cluster.get("job", name, ns).get("status", {}).get("conditions", []):
        if cond["type"] in ("Complete", "Failed") and cond["status"] == "True":
            return str(cond["type"])
    return None


def test_job_completes_on_real_node_with_logs(cluster: Cluster, namespace: str, probe_image: str) -> None:
    cluster.apply(_job("hello", probe_image, ["exit", "0", "--message", "hello from the real node"]), namespace)
    wait_for("Job hello Complete", lambda: _job_condition(cluster, namespace, "hello") == "Complete", 120,
             describe=lambda: cluster.describe("job", "hello", namespace))
    pod = cluster.list("pods", namespace, "job-name=hello")[0]
    assert pod["spec"]["nodeName"] == cluster.settings.node_name
    logs = cluster.kubectl("logs", "-n", namespace, "job/hello").stdout
    assert "hello from the real node" in logs


def test_failing_job_retries_per_backoff_limit(cluster: Cluster, namespace: str, probe_image: str) -> None:
    cluster.apply(_job("fails", probe_image, ["exit", "3"], backoff=1), namespace)
    wait_for("Job fails Failed", lambda: _job_condition(cluster, namespace, "fails") == "Failed", 180,
             describe=lambda: cluster.describe("job", "fails", namespace))
    job = cluster.get("job", "fails", namespace)
    # backoffLimit 1: the first pod and one retry.
    assert job["status"]["failed"] == 2
    reasons = [c.get("reason") for c in job["status"]["conditions"] if c["type"] == "Failed"]
    assert reasons == ["BackoffLimitExceeded"]
    pods = cluster.list("pods", namespace, "job-name=fails")
    exit_codes = {p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] for p in pods}
    assert exit_codes == {3}


def test_deployment_available_after_readiness_and_service_balances(
    cluster: Cluster, namespace: str, probe_image: str
) -> None:
    spec = real_node_pod_spec(probe_image, ["serve", "--port", "8080"])
    spec.pop("restartPolicy")
    spec["containers"][0]["readinessProbe"] = {
        "httpGet": {"path": "/ready", "port": 8080},
        "periodSeconds": 1,
        "failureThreshold": 1,
    }
    spec["containers"][0]["ports"] = [{"containerPort": 8080}]
    deploy = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": spec},
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    cluster.apply([deploy, service], namespace)

    def running_pods() -> list[str]:
        pods = cluster.list("pods", namespace, "app=web")
        names = [p["metadata"]["name"] for p in pods if p["status"].get("phase") == "Running"]
        return names if len(names) == 2 else []

    pods = wait_for("2 web pods Running", running_pods, 120, describe=lambda: cluster.describe("deploy", "web", namespace))
    # Running but not ready: the probe fails until /tmp/ready exists.
    time.sleep(3)
    status = cluster.get("deploy", "web", namespace)["status"]
    assert status.get("availableReplicas", 0) == 0
    assert not any(c["type"] == "Available" and c["status"] == "True" for c in status.get("conditions", []))

    for pod in pods:
        cluster.kubectl("exec", "-n", namespace, pod, "--", "python3", "-c", "open('/tmp/ready', 'w').close()")
    wait_for(
        "Deployment web Available",
        lambda: cluster.get("deploy", "web", namespace)["status"].get("availableReplicas") == 2,
        60,
        describe=lambda: cluster.describe("deploy", "web", namespace),
    )

    def ready_endpoints() -> bool:
        slices = cluster.list("endpointslices", namespace, "kubernetes.io/service-name=web")
        ready = [e for s in slices for e in s.get("endpoints") or [] if e["conditions"].get("ready")]
        return len(ready) == 2

    wait_for("both endpoints ready in the EndpointSlice", ready_endpoints, 30)
    url = f"http://web.{namespace}.svc.cluster.local/"
    # Spread over ~2 s: kube-proxy programs a new endpoint within its 1 s minSyncPeriod.
    cluster.apply(_job("client", probe_image, ["get", url, "--times", "40", "--interval", "0.05"], backoff=2), namespace)
    wait_for("Job client Complete", lambda: _job_condition(cluster, namespace, "client") == "Complete", 120,
             describe=lambda: cluster.describe("job", "client", namespace) + cluster.kubectl("logs", "-n", namespace, "job/client", check=False).stdout)
    # The Job may have retried (backoff 2): read the pod that succeeded, not `logs job/client`'s pick.
    (done,) = [p for p in cluster.list("pods", namespace, "job-name=client") if p["status"].get("phase") == "Succeeded"]
    log = cluster.kubectl("logs", "-n", namespace, done["metadata"]["name"]).stdout
    responses = json.loads(log.strip().splitlines()[-1])["responses"]
    assert len(responses) == 40
    # Both backends answered through the ClusterIP, reached by its DNS name.
    assert set(responses) == set(pods)


def test_gpu_job_lands_on_fake_gpu_node(cluster: Cluster, namespace: str) -> None:
    pod = {
        "restartPolicy": "Never",
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        "containers": [{"name": "train", "image": "fake.invalid/trainer:1", "resources": {"limits": {"nvidia.com/gpu": "4"}}}],
    }
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "gpu4"}, "spec": {"template": {"spec": pod}}}
    cluster.apply(job, namespace)
    wait_for("Job gpu4 Complete", lambda: _job_condition(cluster, namespace, "gpu4") == "Complete", 60,
             describe=lambda: cluster.describe("job", "gpu4", namespace))
    node = cluster.list("pods", namespace, "job-name=gpu4")[0]["spec"]["nodeName"]
    assert node.startswith("kwok-gpu-")


def test_too_many_gpus_stays_pending_with_reason(cluster: Cluster, namespace: str) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "gpu16"},
        "spec": {
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{"name": "train", "image": "fake.invalid/trainer:1", "resources": {"limits": {"nvidia.com/gpu": "16"}}}],
        },
    }
    cluster.apply(pod, namespace)

    def unschedulable() -> str:
        for cond in cluster.get("pod", "gpu16", namespace)["status"].get("conditions", []):
            if cond["type"] == "PodScheduled" and cond.get("reason") == "Unschedulable":
                return str(cond["message"])
        return ""

    message = wait_for("pod gpu16 Unschedulable", unschedulable, 60)
    assert "Insufficient nvidia.com/gpu" in message
    assert cluster.get("pod", "gpu16", namespace)["status"]["phase"] == "Pending"


def test_deleting_a_running_fake_job_pod_ends_it(cluster: Cluster, namespace: str) -> None:
    """As a kubelet would: a deleted running Job pod on a kwok node is ended and removed,
    so namespaces with simulated jobs can be deleted."""
    pod = {
        "restartPolicy": "Never",
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "nodeSelector": {"nvidia.com/gpu.present": "true"},
        "containers": [{"name": "train", "image": "fake.invalid/trainer:1", "resources": {"limits": {"nvidia.com/gpu": "1"}}}],
    }
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "long"},
        "spec": {
            "backoffLimit": 0,
            "template": {"metadata": {"annotations": {"pod-complete.stage.kwok.x-k8s.io/delay": "1h"}}, "spec": pod},
        },
    }
    cluster.apply(job, namespace)

    def running_pod() -> str:
        pods = cluster.list("pods", namespace, "job-name=long")
        return pods[0]["metadata"]["name"] if pods and pods[0]["status"].get("phase") == "Running" else ""

    name = wait_for("the fake job's pod Running", running_pod, 60)
    cluster.kubectl("delete", "pod", name, "-n", namespace, "--wait=false")
    wait_for(f"pod {name} gone", lambda: cluster.kubectl("get", "pod", name, "-n", namespace, check=False).returncode != 0, 60,
             describe=lambda: cluster.describe("pod", name, namespace))
