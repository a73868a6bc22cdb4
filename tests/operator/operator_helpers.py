"""Helpers for the operator tests (a module with its own name: test modules must not
import `conftest`, which names a different folder's file depending on collection order)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from tuneforge_localcluster.testing import operator_python

ROOT = Path(__file__).resolve().parents[2]
STANDIN_DIR = ROOT / "tests" / "images" / "trainer-standin"
OUTPUT = ROOT / "test-output" / "operator"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

class OperatorProcess:
    """One operator process watching one namespace; its log goes to test-output/operator/."""

    def __init__(self, cluster: Any, namespace: str, env: dict[str, str], log_name: str,
                 args: tuple[str, ...] = ()) -> None:
        self.cluster, self.namespace, self.extra_env, self.args = cluster, namespace, env, args
        self.metrics_port = _free_port()
        self.liveness_port = _free_port()
        OUTPUT.mkdir(parents=True, exist_ok=True)
        self.log_path = OUTPUT / f"{log_name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "OperatorProcess":
        env = dict(os.environ)
        env.update({
            "PYTHONPATH": str(ROOT / "operator" / "src"),
            "TUNEFORGE_NAMESPACES": self.namespace,
            "TUNEFORGE_METRICS_PORT": str(self.metrics_port),
            "TUNEFORGE_LIVENESS_PORT": str(self.liveness_port),
            "TUNEFORGE_PROGRESS_INTERVAL": "1",
            "TUNEFORGE_RETRY_DELAY": "2",
            # The real node (2 CPUs) is shared with real training runs: request no CPU.
            "TUNEFORGE_VALIDATE_CPU": "0",
            "TUNEFORGE_VALIDATE_MEMORY": "64Mi",
        })
        env.update(self.extra_env)
        log = open(self.log_path, "ab" if self.log_path.exists() and self.proc else "wb")
        self.proc = subprocess.Popen(
            [operator_python(), "-m", "tuneforge", "--kubeconfig",
             self.extra_env.get("KUBECONFIG_OVERRIDE", str(self.cluster.kubeconfig)), *self.args],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def check_alive(self) -> None:
        """Fail the test at once (not after a long wait) when the operator has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            pytest.fail(f"operator exited with {self.proc.returncode}:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

def ftj_manifest(name: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "baseModel": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
        "dataset": {"uri": "/standin/accuracy=0.93/steps=4/train.jsonl"},
        "output": {"uri": "pvc://artifacts/runs"},
        "resources": {"cpu": "0", "memory": "64Mi"},
    }
    base.update(spec)
    return {"apiVersion": "tuneforge.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name}, "spec": base}

def pvc_manifest(name: str = "artifacts") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}}}

def summary_annotation(accuracy: float = 0.95) -> str:
    """Pod annotations for kwok's pod-complete stage: a realistic trainer summary, after 3 s."""
    summary = {"version": "tuneforge.dev/trainer-summary/v1", "status": "succeeded", "command": "train",
               "accuracy": accuracy, "macro_f1": accuracy - 0.01, "eval_loss": 0.2, "n_eval": 80,
               "worst_classes": [{"label": "card_arrival", "f1": 0.8}],
               "baselines": [{"name": "zero_shot", "accuracy": 0.0}, {"name": "tfidf_lr", "accuracy": 0.9}],
               "artifacts": {"adapter": "/mnt/pvc/artifacts/runs/adapter"}}
    return json.dumps({"kwok.tuneforge.dev/termination-message": json.dumps(summary),
                       "pod-complete.stage.kwok.x-k8s.io/delay": "3s"})


@contextmanager
def least_privilege_kubeconfig(cluster: Any, namespace: str, folder: Path) -> Iterator[Path]:
    """A kubeconfig for a ServiceAccount bound to exactly the ClusterRole of
    operator/deploy/operator.yaml (the role and binding are removed afterwards)."""
    import yaml

    docs = list(yaml.safe_load_all((ROOT / "operator" / "deploy" / "operator.yaml").read_text()))
    role = next(d for d in docs if d["kind"] == "ClusterRole")
    role["metadata"]["name"] = f"tuneforge-operator-{namespace}"
    binding: dict[str, Any] = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": f"tuneforge-operator-{namespace}"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role["metadata"]["name"]},
               "subjects": [{"kind": "ServiceAccount", "name": "operator", "namespace": namespace}]}
    cluster.kubectl("create", "serviceaccount", "operator", "-n", namespace)
    cluster.apply([role, binding])
    try:
        token = cluster.kubectl("create", "token", "operator", "-n", namespace, "--duration=1h").stdout.strip()
        admin: dict[str, Any] = yaml.safe_load(open(cluster.kubeconfig).read())
        ctx = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
        clu = next(c for c in admin["clusters"] if c["name"] == ctx["cluster"])
        kubeconfig = folder / "operator.kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "op",
            "clusters": [clu], "users": [{"name": "op", "user": {"token": token}}],
            "contexts": [{"name": "op", "context": {"cluster": clu["name"], "user": "op"}}],
        }))
        yield kubeconfig
    finally:
        cluster.kubectl("delete", "clusterrolebinding", binding["metadata"]["name"], check=False)
        cluster.kubectl("delete", "clusterrole", role["metadata"]["name"], check=False)


_REFUSED = re.compile(r"Forbidden|\(403\)|\b403 Forbidden|[\"']?(?:code|status)[\"']?\s*[:=]\s*403\b")


def refused_calls(log: str) -> list[str]:
    """The log lines that report an API call the apiserver refused (HTTP 403). Each client names
    it: the kubernetes client's ApiException ``(403) Reason: Forbidden``, Kopf's
    ``APIForbiddenError``, a Status ``"code": 403``. A bare ``403`` is not one: it also occurs in
    timestamps (``17:41:25.403008``) and ids, and a test that looked for it failed on a timestamp."""
    return [line for line in log.splitlines() if _REFUSED.search(line)]

