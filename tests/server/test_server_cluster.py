"""The CPU server image on the real node, serving an lm-head adapter trained through the operator
(``lm_finetunejob``: the demo's intents with the lm head; the demo's own classifier adapter is
served through a ModelServe in tests/e2e) fetched from the cluster's S3 server: readiness follows the adapter being listed, the official
``openai`` client through a Service gets the labels the trainer's own evaluation got, SIGTERM
drains in-flight requests, and a corrupted adapter never starts (the pre-flight message is in
``kubectl logs``)."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import openai
import pytest
from botocore.config import Config

from server_manifests import API_KEY, local_plan, secrets
from tuneforge.serve.server import CONFIG_DIR, CONFIG_FILE, build_config_map, build_deployment, build_service, pod_spec
from tuneforge.serve.spec import AdapterSource
from tuneforge_localcluster import components
from tuneforge_localcluster.testing import Cluster, wait_for
from tuneforge_trainer.evaluate import match_label

ROOT = Path(__file__).resolve().parents[2]
NAME = "intents"  # Deployment, Service and ConfigMap
CONFIG = f"{CONFIG_DIR}/{CONFIG_FILE}"
ADAPTER = "banking77-intents"  # the served model name clients ask for
DRAIN_SECONDS = 90  # long enough for the SIGTERM test's requests (a few hundred tokens on 2 cores)
TOKENS = 256

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


def s3_client(cluster: Cluster) -> Any:
    return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{cluster.settings.s3_port}", region_name="us-east-1",
                        aws_access_key_id=components.S3_ACCESS_KEY, aws_secret_access_key=components.S3_SECRET_KEY,
                        config=Config(s3={"addressing_style": "path"}))


def split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def read_s3(cluster: Cluster, uri: str) -> str:
    bucket, key = split(uri)
    return str(s3_client(cluster).get_object(Bucket=bucket, Key=key)["Body"].read().decode())


def pod_of(cluster: Cluster, ns: str, selector: str) -> dict[str, Any]:
    pods = [p for p in cluster.list("pods", ns, selector) if not p["metadata"].get("deletionTimestamp")]
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    return pods[0]


def probe(cluster: Cluster, ns: str, pod: str) -> tuple[int, str]:
    res = cluster.kubectl("exec", "-n", ns, pod, "--", "tuneforge-server", "probe", "--config", CONFIG, check=False, timeout=60)
    return res.returncode, (res.stdout + res.stderr).strip()


def running(pod: dict[str, Any]) -> bool:
    return any("running" in (c.get("state") or {}) for c in pod.get("status", {}).get("containerStatuses") or ())


def ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions") or ())


@pytest.fixture(scope="module")
def adapter(lm_finetunejob: dict[str, Any]) -> dict[str, Any]:
    st = lm_finetunejob["status"]
    assert st["phase"] == "Succeeded" and st.get("adapter"), st
    return {**st["adapter"], "predictions": st["artifacts"]["predictions"]}


@pytest.fixture(scope="module")
def server_image(cluster: Cluster) -> str:
    return cluster.image(ROOT / "server-image", "server", target="cpu")


@pytest.fixture(scope="module")
def served(cluster: Cluster, server_image: str, adapter: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The server Deployment and its Service; what the readiness probe said before and after."""
    ns = cluster.new_namespace("t-server")
    plan = local_plan(NAME, ns, server_image, adapter["baseModel"]["uri"], [AdapterSource(ADAPTER, adapter["uri"], adapter["digest"])],
                      drain_seconds=DRAIN_SECONDS)
    cluster.apply([*secrets(), build_config_map(plan), build_deployment(plan), build_service(plan)], ns)
    selector = f"app.kubernetes.io/instance={NAME}"
    describe = lambda: cluster.describe("pods", "", ns) + cluster.kubectl("logs", "-n", ns, "-l", selector, "--tail=30", check=False).stdout  # noqa: E731
    pod = wait_for("the server container to run", lambda: next((p for p in cluster.list("pods", ns, selector) if running(p)), None), 900, 2, describe)
    name = pod["metadata"]["name"]
    before = probe(cluster, ns, name)
    started = time.monotonic()
    wait_for("the server pod to be Ready", lambda: ready(cluster.get("pod", name, ns)), 900, 2, describe)
    after = probe(cluster, ns, name)
    ip = cluster.get("service", NAME, ns)["spec"]["clusterIP"]
    yield {"ns": ns, "pod": name, "before": before, "after": after, "ready_seconds": time.monotonic() - started,
           "base_url": f"http://{ip}:8000/v1", "selector": selector}
    cluster.delete_namespace(ns)


def client(served: dict[str, Any], **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=served["base_url"], api_key=API_KEY, **kw)


def test_readiness_means_the_adapter_is_listed(served: dict[str, Any]) -> None:
    code, text = served["before"]
    assert code != 0, text  # the container ran, vLLM did not list the adapter yet
    assert served["after"] == (0, f"serving {ADAPTER}"), served["after"]
    models = [m.id for m in client(served).models.list()]
    assert models == [ADAPTER]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=served["base_url"], api_key="wrong", max_retries=0).models.list()


def stratified(rows: list[dict[str, Any]], per_label: int, seed: int = 0) -> list[dict[str, Any]]:
    """Up to ``per_label`` rows of every label (eval files are often grouped by label)."""
    by_label: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_label[r["target"]].append(r)
    rng = random.Random(seed)
    return [r for label in sorted(by_label) for r in rng.sample(by_label[label], min(per_label, len(by_label[label])))]


def test_served_adapter_answers_like_the_evaluated_one(cluster: Cluster, served: dict[str, Any], adapter: dict[str, Any]) -> None:
    rows = [json.loads(line) for line in read_s3(cluster, adapter["predictions"]).splitlines() if line.strip()]
    sample = stratified(rows, per_label=20)
    labels = sorted({r["target"] for r in rows})
    assert len(labels) == 8 and len(sample) >= 100, (len(labels), len(sample))
    api = client(served, timeout=120, max_retries=3)

    def ask(row: dict[str, Any]) -> str:
        out = api.chat.completions.create(model=ADAPTER, messages=row["messages"], max_tokens=16, temperature=0)
        return match_label(out.choices[0].message.content or "", labels)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, sample))
    served_acc = sum(a == r["target"] for a, r in zip(answers, sample)) / len(sample)
    trainer_acc = sum(r["prediction"] == r["target"] for r in sample) / len(sample)
    agree = sum(a == r["prediction"] for a, r in zip(answers, sample)) / len(sample)
    print(f"served accuracy {served_acc:.4f}, trainer's evaluation {trainer_acc:.4f}, same answer on {agree:.4f} of {len(sample)} rows")
    assert abs(served_acc - trainer_acc) <= 0.01, (served_acc, trainer_acc, agree)


def test_corrupted_adapter_never_starts(cluster: Cluster, server_image: str, adapter: dict[str, Any], namespace: str) -> None:
    s3 = s3_client(cluster)
    bucket, key = split(adapter["uri"])
    corrupt = f"{key}-corrupt-{namespace}"
    for obj in s3.list_objects_v2(Bucket=bucket, Prefix=key + "/")["Contents"]:
        body = bytearray(s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read())
        if obj["Key"].endswith("adapter_model.safetensors"):
            body[len(body) // 2] ^= 0x01  # one flipped bit in the weights
        s3.put_object(Bucket=bucket, Key=obj["Key"].replace(key, corrupt, 1), Body=bytes(body))
    plan = local_plan("corrupt", namespace, server_image, adapter["baseModel"]["uri"], [AdapterSource("corrupt", f"s3://{bucket}/{corrupt}", adapter["digest"])], cpu="100m", memory="1Gi")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "corrupt"}, "spec": pod_spec(plan, restart_policy="Never")}
    cluster.apply([*secrets(), build_config_map(plan), pod], namespace)
    wait_for("the pod to fail", lambda: cluster.get("pod", "corrupt", namespace)["status"].get("phase") == "Failed", 600, 2,
             lambda: cluster.describe("pod", "corrupt", namespace))
    logs = cluster.kubectl("logs", "-n", namespace, "corrupt").stdout
    want = f"pre-flight failed: adapter corrupt (adapters[0].uri s3://{bucket}/{corrupt}): file adapter_model.safetensors does not match its digest"
    assert want in logs, logs
    term = cluster.get("pod", "corrupt", namespace)["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 3 and term["message"].startswith("pre-flight failed: adapter corrupt"), term
    assert "Serving corrupt" not in logs  # the launcher never got as far as starting vLLM


def test_trainer_openai_baseline_scores_the_served_adapter(served: dict[str, Any], adapter: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """``evaluation.baselines: openai`` pointed at this server: "our served model vs another
    endpoint" end to end, through the trainer's own baseline code."""
    import csv

    from tuneforge_trainer.config import parse_config
    from tuneforge_trainer.data import Example
    from tuneforge_trainer.evaluate import openai_baseline

    labels = sorted(adapter_labels := {"card_arrival", "exchange_rate", "lost_or_stolen_card", "pin_blocked",
                                       "age_limit", "cancel_transfer", "top_up_limits", "card_not_working"})
    with open(ROOT.parent / "shared" / "datasets" / "banking77" / "test.csv", newline="", encoding="utf-8") as f:
        rows = [Example(text=r["text"], target=r["category"], row=i) for i, r in enumerate(csv.DictReader(f)) if r["category"] in adapter_labels]
    sample = [r for label in labels for r in [x for x in rows if x.target == label][:5]]
    monkeypatch.setenv("TF_SERVED_KEY", API_KEY)
    cfg = parse_config({
        "model": {"source": "/unused"}, "dataset": {"source": "/unused.csv", "format": "csv"},
        "task": {"type": "classification", "labels": labels}, "output": {"dir": "/tmp/unused"},
        "eval": {"max_new_tokens": 16, "baselines": {"openai": {"base_url": served["base_url"], "model": ADAPTER, "api_key_env": "TF_SERVED_KEY", "concurrency": 4}}},
    })
    res = openai_baseline(sample, cfg, labels)
    assert res.get("error") is None, res
    assert res["accuracy"] >= 0.8, res  # the fine-tuned adapter, served: far above the base model's ~0 %


# Last: it stops the shared server.
def test_sigterm_drains_in_flight_requests(cluster: Cluster, served: dict[str, Any]) -> None:
    ns, name = served["ns"], served["pod"]
    pod_ip = cluster.get("pod", name, ns)["status"]["podIP"]
    api = client(served, timeout=300, max_retries=0)
    results: list[Any] = []

    def long_request() -> None:
        try:
            out = api.chat.completions.create(
                model=ADAPTER, messages=[{"role": "user", "content": "Tell me about cards."}], max_tokens=TOKENS,
                temperature=0, extra_body={"ignore_eos": True, "min_tokens": TOKENS})
            results.append(out.usage.completion_tokens if out.usage else None)
        except Exception as e:  # noqa: BLE001 - recorded and asserted below
            results.append(e)

    threads = [threading.Thread(target=long_request) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(2)  # the requests are being generated
    assert not results, results  # none finished yet: they are in flight
    stopped = time.monotonic()
    cluster.kubectl("scale", "deployment", NAME, "-n", ns, "--replicas=0")  # SIGTERM after the preStop sleep
    # Once the preStop sleep is over vLLM has SIGTERM and refuses new work, through the Service
    # (kube-proxy still routes to a serving, terminating endpoint when it is the only one) and
    # straight to the pod: a 500 "cannot schedule new futures after shutdown", which the openai
    # client would retry on another replica.
    def refused(url: str) -> Exception | None:
        try:
            openai.OpenAI(base_url=url, api_key=API_KEY, max_retries=0, timeout=10).chat.completions.create(
                model=ADAPTER, messages=[{"role": "user", "content": "hi"}], max_tokens=1)
        except (openai.APIStatusError, openai.APIConnectionError) as e:
            return e
        return None

    via_service = wait_for("new requests to be refused", lambda: refused(served["base_url"]), 30, 1)
    direct = refused(f"http://{pod_ip}:8000/v1")
    assert direct is not None and time.monotonic() - stopped < 20, (via_service, direct)
    for t in threads:
        t.join(DRAIN_SECONDS + 30)
    drained = time.monotonic()
    assert results == [TOKENS] * 4, results  # every in-flight request completed in full
    wait_for("the server pod to exit", lambda: not cluster.list("pods", ns, served["selector"]), DRAIN_SECONDS + 30, 1)
    # It exited by itself once drained, not at the end of the drain window or the grace period.
    print(f"SIGTERM drain: {len(results)} requests in flight completed {drained - stopped:.1f} s after the scale-down, "
          f"pod gone {time.monotonic() - drained:.1f} s later")
    assert time.monotonic() - drained < 30
