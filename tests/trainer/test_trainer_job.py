"""The trainer image, built with the local-cluster tooling, as a Job on the real node.

It trains the 8-intent BANKING77 run end to end as a non-root pod with all capabilities dropped:
the model and the data are mounted read-only (hostPath), artifacts are written to a mounted
volume, and the result summary arrives through the termination message.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from trainer_helpers import BANKING77, ROOT, banking_config
from tuneforge_localcluster.testing import Cluster, real_node_pod_spec, wait_for
from tuneforge_trainer.summary import parse_summary

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def trainer_image(cluster: Cluster) -> str:
    return cluster.image(ROOT / "trainer-image", "trainer")


def job_manifest(image: str, config: dict[str, Any], model: Path, out: Path) -> list[dict[str, Any]]:
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "trainer-config"},
          "data": {"config.yaml": yaml.safe_dump(config, sort_keys=False)}}
    spec = real_node_pod_spec(image, ["train", "--config", "/config/config.yaml"])
    c = spec["containers"][0]
    c["env"] = [{"name": "TUNEFORGE_THREADS", "value": "2"}]
    c["volumeMounts"] = [
        {"name": "config", "mountPath": "/config", "readOnly": True},
        {"name": "model", "mountPath": "/model", "readOnly": True},
        {"name": "data", "mountPath": "/data", "readOnly": True},
        {"name": "output", "mountPath": "/output"},
    ]
    c["terminationMessagePolicy"] = "File"
    spec["volumes"] = [
        {"name": "config", "configMap": {"name": "trainer-config"}},
        {"name": "model", "hostPath": {"path": str(model), "type": "Directory"}},
        {"name": "data", "hostPath": {"path": str(BANKING77), "type": "Directory"}},
        {"name": "output", "hostPath": {"path": str(out), "type": "Directory"}},
    ]
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "train"},
           "spec": {"backoffLimit": 0, "template": {"spec": spec}}}
    return [cm, job]


@pytest.mark.timeout(3600)
def test_trainer_job_on_real_node(cluster: Cluster, namespace: str, trainer_image: str, model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "output"
    out.mkdir()
    os.chmod(out, 0o777)  # the pod runs as uid 65532
    config = banking_config("/model", Path("/output"),
                            eval={"loss_max_rows": 16, "baselines": {"zero_shot": False, "few_shot": 0, "tfidf_lr": True}})
    config["dataset"].update(source="/data/train.csv", eval_source="/data/test.csv", max_eval_rows_per_label=5)
    # The image and the wiring are under test here; the full 100-step schedule's accuracy is
    # asserted by test_training_slow.py on the host (same code), so the pod trains 20 steps.
    config["training"].update(max_steps=20, eval_steps=None, save_steps=None)
    config["output"] = {"dir": "/output"}  # the summary goes to the default /dev/termination-log
    cluster.apply(job_manifest(trainer_image, config, model_path, out), namespace)

    def done() -> bool:
        conds = cluster.get("job", "train", namespace).get("status", {}).get("conditions", [])
        return any(c["type"] in ("Complete", "Failed") and c["status"] == "True" for c in conds)

    def describe() -> str:
        logs = cluster.kubectl("logs", "-n", namespace, "job/train", "--tail=40", check=False)
        return cluster.describe("job", "train", namespace) + logs.stdout + logs.stderr

    wait_for("trainer Job finished", done, 2400, interval=10, describe=describe)
    pods = cluster.list("pod", namespace, selector="job-name=train")
    term = pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 0, describe()
    s = parse_summary(term["message"])
    print(f"\njob: accuracy {s.accuracy} steps {s.steps} train {s.train_seconds} s, tfidf {s.baselines}")
    assert s.status == "succeeded" and s.steps == 20 and s.n_eval == 40
    assert s.accuracy is not None and s.accuracy >= 0.5
    assert s.artifacts["adapter"] == "/output/adapter"
    for rel in ("adapter/adapter_model.safetensors", "adapter/adapter_config.json", "metrics.json", "README.md",
                "plots/loss.png", "plots/confusion.png", "progress.jsonl", "summary.json"):
        assert (out / rel).is_file(), rel
    assert json.loads((out / "metrics.json").read_text())["training"]["device"] == "cpu"
    logs = cluster.kubectl("logs", "-n", namespace, pods[0]["metadata"]["name"]).stdout
    assert any(json.loads(line).get("event") == "done" for line in logs.splitlines() if line.startswith("{"))
