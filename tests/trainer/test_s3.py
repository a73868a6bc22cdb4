"""s3:// sources and outputs against the local cluster's S3-compatible server (loopback).

The model folder, the training data and the artifacts all go through S3: the trainer downloads
the model and data (endpoint from AWS_ENDPOINT_URL), trains two steps, and uploads the adapter,
metrics and model card under the output prefix.
"""

from __future__ import annotations

import csv
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from trainer_helpers import BANKING77, INTENTS8, SRC_PATH, write_config
from tuneforge_localcluster import components
from tuneforge_localcluster.testing import Cluster, wait_for
from tuneforge_trainer.summary import parse_summary


def s3_env(cluster: Cluster) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{cluster.settings.s3_port}",
        "AWS_ACCESS_KEY_ID": components.S3_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": components.S3_SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def s3_client(cluster: Cluster) -> Any:
    import boto3

    env = s3_env(cluster)
    return boto3.client(
        "s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1",
    )


def small_csv(path: Path, per_label: int) -> Path:
    rows: dict[str, list[str]] = {}
    with open(BANKING77 / "train.csv", newline="") as f:
        for r in csv.DictReader(f):
            if r["category"] in INTENTS8[:4] and len(rows.setdefault(r["category"], [])) < per_label:
                rows[r["category"]].append(r["text"])
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "category"])
        for lab, texts in rows.items():
            w.writerows((t, lab) for t in texts)
    return path


def run(args: list[str], env: dict[str, str], cwd: Path) -> Any:
    import subprocess
    import sys

    full = dict(os.environ, PYTHONPATH=SRC_PATH, HF_HUB_OFFLINE="1", **env)
    return subprocess.run([sys.executable, "-m", "tuneforge_trainer", *args], capture_output=True, text=True, env=full, cwd=cwd, timeout=900)


@pytest.mark.slow
def test_model_data_and_artifacts_through_s3(cluster: Cluster, model_path: Path, tmp_path: Path) -> None:
    s3 = s3_client(cluster)
    bucket = f"t-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    for f in sorted(model_path.iterdir()):
        if f.is_file() and not f.name.startswith("."):
            s3.upload_file(str(f), bucket, f"models/smollm2/{f.name}")
    s3.upload_file(str(small_csv(tmp_path / "train.csv", 12)), bucket, "data/train.csv")

    cfg = {
        "model": {"source": f"s3://{bucket}/models/smollm2"},
        "dataset": {"source": f"s3://{bucket}/data/train.csv", "label_column": "category"},
        "data": {"eval_fraction": 0.25},
        "training": {"max_steps": 2, "batch_size": 4, "logging_steps": 1},
        "eval": {"loss_max_rows": 4, "baselines": {"zero_shot": False, "tfidf_lr": True}},
        "output": {"dir": f"s3://{bucket}/runs/r1", "work_dir": str(tmp_path / "work"),
                   "termination_message_path": str(tmp_path / "term")},
    }
    path = write_config(tmp_path / "cfg.yaml", cfg)
    env = s3_env(cluster) | {"TUNEFORGE_TRAINER_CACHE": str(tmp_path / "cache")}

    v = run(["validate", "--config", str(path)], env, tmp_path)
    assert v.returncode == 0, v.stderr[-3000:]
    # 12 rows x 4 labels: 3 test rows per label (eval_fraction 0.25), 1 validation, 8 training
    v_summary = parse_summary((tmp_path / "term").read_text())
    assert v_summary.n_train == 32 and v_summary.n_validation == 4 and v_summary.n_eval == 12

    r = run(["train", "--config", str(path)], env, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    s = parse_summary((tmp_path / "term").read_text())
    assert s.status == "succeeded" and s.steps == 2
    assert s.artifacts["adapter"] == f"s3://{bucket}/runs/r1/adapter"
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="runs/r1/")["Contents"]}
    assert {"runs/r1/adapter/adapter_model.safetensors", "runs/r1/adapter/adapter_config.json",
            "runs/r1/metrics.json", "runs/r1/README.md", "runs/r1/plots/loss.png", "runs/r1/summary.json"} <= keys
    # Checkpoints persist in the store (a replacement pod resumes from them), under checkpoints/ only.
    assert "runs/r1/checkpoints/checkpoint-2/.complete" in keys
    assert all(k.startswith("runs/r1/checkpoints/") for k in keys if "/checkpoint-" in k)
    metrics = json.loads(s3.get_object(Bucket=bucket, Key="runs/r1/metrics.json")["Body"].read())
    assert metrics["training"]["steps"] == 2
    # The model was fetched once into the trainer cache, from S3.
    assert any((tmp_path / "cache" / "s3" / bucket).iterdir())


def test_processes_of_one_pod_share_one_download(cluster: Cluster, tmp_path: Path) -> None:
    """torchrun starts several processes in one pod, each resolving the same s3:// model into
    the pod's one cache: one downloads, the others wait and get the same complete folder."""
    import subprocess
    import sys

    s3 = s3_client(cluster)
    bucket = f"t-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    blobs = {f"part-{i}.bin": os.urandom(8 << 20) for i in range(12)}  # 96 MiB: a download takes a while
    for name, data in blobs.items():
        s3.put_object(Bucket=bucket, Key=f"models/m/{name}", Body=data)
    code = ("import sys; from tuneforge_trainer.storage import resolve_source; "
            "print(resolve_source(sys.argv[1], sys.argv[2]))")
    env = dict(os.environ, PYTHONPATH=SRC_PATH, **s3_env(cluster))

    def start() -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-c", code, f"s3://{bucket}/models/m", str(tmp_path / "cache")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    # The others start while the first one's download is under way (as torchrun's processes do:
    # one is a moment ahead of the next).
    procs = [start()]
    wait_for("the first download to begin", lambda: list((tmp_path / "cache").glob("s3/*/*/part-*")), 120, 0.01)
    procs += [start() for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    folders = {out.strip() for out, _ in outs}
    assert len(folders) == 1
    folder = Path(folders.pop())
    assert {f.name: f.read_bytes() for f in folder.iterdir()} == blobs
