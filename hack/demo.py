#!/usr/bin/env python3
"""``make demo``: the main job end to end on the local cluster, on local defaults.

1. starts (or reuses) the local cluster and builds the trainer image from trainer-image/;
2. puts the base model (SmolLM2-135M-Instruct, converted once) and BANKING77 on the cluster's
   S3-compatible server, as a team would keep them in object storage;
3. applies the CRDs, runs the operator against the cluster and `kubectl apply`s
   examples/finetunejob-banking77.yaml;
4. follows the FineTuneJob through its phases until it ends, then prints `kubectl get`, the
   evaluation against its baselines, the gate and the model card.

The cluster stays up afterwards (`make cluster-down` stops it); the operator stops with the demo.
Exit status: 0 when the FineTuneJob Succeeded.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import boto3
import yaml
from botocore.config import Config

from tuneforge_localcluster import components, settings
from tuneforge_localcluster.testing import Cluster, operator_python, start_or_reuse

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


def start_operator(c: Cluster, trainer_image: str) -> subprocess.Popen[bytes]:
    log = c.settings.logs / "operator-demo.log"
    env = dict(os.environ, TUNEFORGE_TRAINER_IMAGE=trainer_image, TUNEFORGE_NAMESPACES=NAMESPACE,
               TUNEFORGE_PROGRESS_INTERVAL="5")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "operator" / "src"), str(ROOT / "trainer-image" / "src")])
    say(f"Starting the operator (log: {log})")
    return subprocess.Popen([operator_python(), "-m", "tuneforge", "--kubeconfig", str(c.kubeconfig)],
                            env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT, cwd=ROOT)


def follow(c: Cluster, name: str, operator: subprocess.Popen[bytes], timeout: float = 3600) -> dict:
    last = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if operator.poll() is not None:
            raise SystemExit(f"The operator exited with {operator.returncode}; see .cluster/logs/operator-demo.log")
        ftj = c.get("finetunejob", name, NAMESPACE)
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


def run(c: Cluster, manifest: Path = MANIFEST, timeout: float = 3600) -> dict:
    """Stage the inputs, run the operator and one FineTuneJob to its end; return the object."""
    say("Building the trainer image (cached by its inputs)")
    trainer_image = c.image(ROOT / "trainer-image", "trainer")
    stage_inputs(c.settings)

    c.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    c.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/finetunejobs.tuneforge.dev")
    c.kubectl("create", "namespace", NAMESPACE, check=False)
    c.kubectl("create", "secret", "generic", "tuneforge-demo-s3", "-n", NAMESPACE,
              f"--from-literal=access-key-id={components.S3_ACCESS_KEY}",
              f"--from-literal=secret-access-key={components.S3_SECRET_KEY}", check=False)
    name = yaml.safe_load(manifest.read_text())["metadata"]["name"]
    # A fresh run each time: a finished job is only re-run by a spec change (a new revision).
    c.kubectl("delete", "finetunejob", name, "-n", NAMESPACE, "--ignore-not-found", "--wait=true", timeout=120)

    operator = start_operator(c, trainer_image)
    try:
        say(f"kubectl apply -f {manifest.relative_to(ROOT)}")
        c.kubectl("apply", "-n", NAMESPACE, "-f", str(manifest))
        return follow(c, name, operator, timeout)
    finally:
        operator.terminate()
        operator.wait(30)


def model_card(s: settings.Settings, uri: str) -> str:
    bucket, _, key = uri[len("s3://"):].partition("/")
    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{s.s3_port}", aws_access_key_id=components.S3_ACCESS_KEY,
                      aws_secret_access_key=components.S3_SECRET_KEY, region_name="us-east-1")
    return str(s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode())


def _run_seconds(status: dict[str, object]) -> str:
    """The job's own run time, from its status (startTime to completionTime)."""
    import datetime as dt
    try:
        start, end = (dt.datetime.strptime(str(status[k]), "%Y-%m-%dT%H:%M:%SZ") for k in ("startTime", "completionTime"))
    except (KeyError, ValueError):
        return "an unknown time"
    return f"{(end - start).total_seconds():.0f} s"


def main() -> int:
    started = time.monotonic()
    s = settings.load()
    say("Starting the local cluster (first run on a machine builds Kubernetes from source: ~10 min)")
    c, _ = start_or_reuse(s)
    ftj = run(c)
    name = ftj["metadata"]["name"]
    print()
    print(c.kubectl("get", "finetunejob", name, "-n", NAMESPACE).stdout)
    st = ftj["status"]
    print(json.dumps({k: st.get(k) for k in ("evaluation", "baselines", "gate", "artifacts", "gpuSeconds")}, indent=2))
    card = st.get("artifacts", {}).get("modelCard")
    if card and card.startswith("s3://"):
        print("\n" + model_card(s, card)[:3000])
    say(f"FineTuneJob {name} {st.get('phase')} in {_run_seconds(st)} (the demo took {time.monotonic() - started:.0f} s); "
        f"inspect with: kubectl --kubeconfig .cluster/kubeconfig describe ftj {name} -n {NAMESPACE}")
    return 0 if st.get("phase") == "Succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
