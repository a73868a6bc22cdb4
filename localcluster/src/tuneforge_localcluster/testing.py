"""Helpers that tests, benches and the demo use against the local cluster: a handle with kubectl,
a Kubernetes API client, image builds, fresh namespaces, waits that explain themselves, and the
operator environment of the kwok fast tier (``kwok_serve_env``)."""

from __future__ import annotations

import builtins
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tuneforge_localcluster import binaries, cluster, components, images
from tuneforge_localcluster.settings import REPO_ROOT, Settings

T = TypeVar("T")


@functools.cache
def operator_python() -> str:
    """The interpreter to run the operator process with: its own venv (``hack/venv.sh
    operator``, operator/requirements.txt only, as in its image), so tests and benches exercise
    the shipped dependency set and measure its memory, not the host venv's (where Kopf would
    also import the ``kubernetes`` client, ~45 MB). ``TUNEFORGE_OPERATOR_PYTHON`` overrides."""
    override = os.environ.get("TUNEFORGE_OPERATOR_PYTHON")
    if override:
        return override
    venv = subprocess.run([str(REPO_ROOT / "hack" / "venv.sh"), "operator"], check=True, text=True,
                          stdout=subprocess.PIPE).stdout.strip()
    return str(Path(venv) / "bin" / "python")


def stop_group(proc: subprocess.Popen[bytes], grace: float = 60) -> None:
    """Stop a process started with ``start_new_session=True`` *and everything it started*: SIGTERM
    to its process group, up to ``grace`` seconds for the leader to exit, then SIGKILL to what is
    left of the group. A vLLM launcher's engine core and workers are its children: when a fixture
    gave up on a launcher still starting and stopped only the launcher (a cold ``make test``,
    2026-12-07), the engine stayed on, reparented to init, with a GB of memory and some of the two
    cores, through the rest of the run and into the next."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return  # the whole group is gone
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue


class WaitTimeout(AssertionError):
    """A wait ran out; the message holds what was last seen."""


def wait_for(
    what: str,
    probe: Callable[[], T],
    timeout: float = 60,
    interval: float = 0.5,
    describe: Callable[[], str] | None = None,
) -> T:
    """Call ``probe`` until it returns something truthy; on timeout fail with what it last saw.

    ``probe`` may raise: the exception counts as "not yet" and its text is reported.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = probe()
            if value:
                return value
            last = value
        except Exception as err:  # noqa: BLE001 - reported on timeout
            last = f"{type(err).__name__}: {err}"
        if time.monotonic() >= deadline:
            extra = ""
            if describe is not None:
                try:
                    extra = "\n" + describe()
                except Exception as err:  # noqa: BLE001
                    extra = f"\n(describe failed: {err})"
            raise WaitTimeout(f"Timed out after {timeout:.0f} s waiting for {what}; last seen: {last!r}{extra}")
        time.sleep(interval)


class Cluster:
    """A handle on the running local cluster."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.kubeconfig = settings.kubeconfig
        self.kubectl_bin = settings.runtime / "bin" / "kubectl"
        self._images: dict[tuple[str, str, str], str] = {}

    def kubectl(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        # A kubectl that waits (``--timeout=180s``) gets that long, and a margin, before it is killed.
        for arg in args:
            if m := re.fullmatch(r"--timeout=(\d+)(s|m|h)", arg):
                timeout = max(timeout, int(m[1]) * {"s": 1, "m": 60, "h": 3600}[m[2]] + 30)
        res = subprocess.run(
            [str(self.kubectl_bin), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and res.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")
        return res

    def helm(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Run the Helm CLI (built and cached like the cluster's other Go binaries) against the
        cluster; Helm's own cache and config stay under the build cache, not in ``~``."""
        home = self.settings.cache / "helm"
        env = dict(os.environ, HELM_CACHE_HOME=str(home / "cache"), HELM_CONFIG_HOME=str(home / "config"),
                   HELM_DATA_HOME=str(home / "data"))
        res = subprocess.run([str(binaries.helm(self.settings)), f"--kubeconfig={self.kubeconfig}", *args],
                             capture_output=True, text=True, timeout=timeout, env=env)
        if check and res.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")
        return res

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        ns = ["-n", namespace] if namespace else []
        return dict(json.loads(self.kubectl("get", kind, name, *ns, "-o", "json").stdout))

    def list(self, kind: str, namespace: str | None = None, selector: str | None = None) -> list[dict[str, Any]]:
        args = ["get", kind, "-o", "json"]
        if namespace:
            args += ["-n", namespace]
        if selector:
            args += ["-l", selector]
        return list(json.loads(self.kubectl(*args).stdout)["items"])

    def apply(self, objs: builtins.list[dict[str, Any]] | dict[str, Any], namespace: str | None = None) -> None:
        docs = objs if isinstance(objs, list) else [objs]
        ns = ["-n", namespace] if namespace else []
        self.kubectl("apply", *ns, "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs))

    def describe(self, kind: str, name: str, namespace: str | None = None) -> str:
        ns = ["-n", namespace] if namespace else []
        return self.kubectl("describe", kind, name, *ns, check=False).stdout

    def api_client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` for the admin kubeconfig."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def image(self, context: Path, name: str, target: str | None = None) -> str:
        """Build (or find cached) the image of a Dockerfile folder (its ``target`` stage when
        given) and return its reference."""
        key = (str(context), name, target or "")
        if key not in self._images:
            self._images[key] = images.build(self.settings, context, name, target=target)
        return self._images[key]

    def new_namespace(self, prefix: str, labels: dict[str, str] | None = None) -> str:
        """A namespace named after ``prefix``, carrying ``labels`` from its creation (e.g.
        :func:`pod_security_labels`: no pod is ever admitted under a laxer level)."""
        name = f"{prefix[:40].lower().replace('_', '-').strip('-')}-{uuid.uuid4().hex[:6]}"
        ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": dict(labels or {})}}
        self.kubectl("create", "-f", "-", input=json.dumps(ns))
        # Pods may only start once the namespace's default ServiceAccount exists.
        wait_for(f"ServiceAccount default in {name}", lambda: self.kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0, 30)
        return name

    def delete_namespace(self, name: str) -> None:
        self.kubectl("delete", "namespace", name, "--wait=false", check=False)

    def collect_logs(self, dest: Path) -> None:
        """Copy every component's log to ``dest`` (for CI artifacts)."""
        if self.settings.logs.exists():
            shutil.copytree(self.settings.logs, dest, dirs_exist_ok=True)


def pod_security_labels(level: str) -> dict[str, str]:
    """Namespace labels that make the apiserver's PodSecurity admission enforce ``level``
    (``restricted``, ``baseline``) on every pod, and warn and audit at the same level."""
    return {f"pod-security.kubernetes.io/{mode}": level for mode in ("enforce", "warn", "audit")}


def real_node_pod_spec(image: str, args: list[str], **extra: object) -> dict:
    """A restricted, non-root pod spec on the real node running ``image`` with ``args``."""
    spec: dict = {
        "nodeSelector": {"tuneforge.dev/node-kind": "real"},
        "restartPolicy": "Never",
        "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": "main",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "args": args,
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
            }
        ],
    }
    spec.update(extra)
    return spec


KWOK_CPU_NODE = "kwok-cpu-0"
KWOK_TOLERATION = {"key": components.FAKE_NODE_ANNOTATION, "operator": "Exists", "effect": "NoSchedule"}
"""Lets a pod onto the kwok nodes (``components.fake_nodes`` taints the CPU node with it)."""
GATE_MEASURES = {"rows": 20, "correct": 18, "errors": 0, "accuracy": 0.9, "p50Ms": 20.0, "p99Ms": 40.0}
"""What the stand-in gate reports: a gate with ``minAccuracy: 0.8`` passes, one with 0.95 fails."""


def kwok_serve_env(tag: str = "kwok-never-pulled", gate_delay: str = "2s",
                   measures: dict[str, Any] = GATE_MEASURES) -> dict[str, str]:
    """The operator's environment for ModelServes on kwok nodes (nothing real runs; what is
    exercised is the controller): server and gate images under ``tag`` that kwok never pulls, the
    gate Job's pod on the kwok CPU node, ended by our kwok pod-complete stage after
    ``gate_delay`` with ``measures`` as its termination message, as the real gate writes them.
    The operator reads them from the pod and judges them against the spec."""
    return {
        "TUNEFORGE_SERVER_IMAGE": f"tuneforge/server:{tag}",
        "TUNEFORGE_GATE_IMAGE": f"tuneforge/operator:{tag}",
        "TUNEFORGE_GATE_NODE_SELECTOR": json.dumps({"kubernetes.io/hostname": KWOK_CPU_NODE}),
        "TUNEFORGE_GATE_TOLERATIONS": json.dumps([KWOK_TOLERATION]),
        "TUNEFORGE_GATE_POD_ANNOTATIONS": json.dumps({"kwok.tuneforge.dev/termination-message": json.dumps(measures),
                                                      "pod-complete.stage.kwok.x-k8s.io/delay": gate_delay}),
    }


def start_or_reuse(settings: Settings) -> tuple[Cluster, bool]:
    """A handle on the cluster, starting it when it is not running; True when started here."""
    with cluster.locked(settings):
        if cluster.is_up(settings):
            # Started from another checkout, maybe: give this one its kubeconfig too.
            cluster.publish_kubeconfig(settings)
            return Cluster(settings), False
        cluster.up(settings)
        return Cluster(settings), True
