"""A real Prometheus server beside the local cluster (an optional component the monitoring tests
start): Debian's ``prometheus`` package (2.42), unpacked into the cache rather than installed —
installing it would enable a Prometheus service on the host.

Prometheus runs as a host process: the host routes to the pod range, so it scrapes pod IPs on the
real node directly. Debian builds Prometheus without its Kubernetes service discovery
(``kubernetes_sd_configs`` is an unknown field there), so targets are static, in
``file_sd_configs`` files that Prometheus re-reads every second:

- ``tuneforge-host``: processes on the host (an operator run by a test, a server launcher),
  written by :meth:`Prometheus.set_host_targets`;
- ``tuneforge-pods``: pods discovered by the caller from the cluster (:func:`pod_targets` over a
  pod list, written by :meth:`Prometheus.set_pod_targets`) the way Kubernetes SD plus the usual
  relabelling would: pods annotated ``prometheus.io/scrape: "true"`` (the ModelServe color pods),
  running on the real node (kwok's pods have made-up IPs), at their ``prometheus.io/port`` and
  ``prometheus.io/path``; their ``tuneforge.dev/color`` and ``tuneforge.dev/modelserve`` labels
  become the series' ``color`` and ``modelserve`` labels, the ones the chart's dashboard groups by.

Rule files are loaded as given (the chart's ``files/prometheus/alerts.yaml``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

VERSION = "2.42.0+ds-5+deb12u1"
"""bookworm's prometheus; a pin change unpacks a new folder beside the old one."""

HOST_JOB = "tuneforge-host"
POD_JOB = "tuneforge-pods"
COLOR_LABEL = "tuneforge.dev/color"
MODELSERVE_LABEL = "tuneforge.dev/modelserve"


def package_dir(cache: Path | None = None) -> Path:
    """The unpacked package (``usr/bin/prometheus``, ``usr/bin/promtool``), fetched with
    ``apt-get download`` on first use into ``<cache>/pkgs/prometheus-<version>/``."""
    cache = cache or Path(os.environ.get("TUNEFORGE_CACHE") or Path.home() / ".cache" / "tuneforge")
    target = cache / "pkgs" / f"prometheus-{VERSION}"
    if (target / ".complete").exists():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        def download() -> subprocess.CompletedProcess[str]:
            return subprocess.run(["apt-get", "download", f"prometheus={VERSION}"], cwd=tmp, capture_output=True, text=True)
        res = download()
        if res.returncode != 0:  # no package lists yet on a fresh machine
            subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True, text=True)
            res = download()
        if res.returncode != 0:
            raise RuntimeError(f"apt-get download prometheus={VERSION} failed: {res.stderr.strip()}")
        deb = next(Path(tmp).glob("prometheus_*.deb"))
        unpack = Path(tmp) / "x"
        subprocess.run(["dpkg-deb", "-x", str(deb), str(unpack)], check=True)
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(unpack), str(target))
    (target / ".complete").touch()
    return target


def binary(name: str, cache: Path | None = None) -> Path:
    """``prometheus`` or ``promtool`` from the package."""
    return package_dir(cache) / "usr" / "bin" / name


def build_config(*, rule_files: list[Path], host_targets: Path, pod_targets: Path, interval: str = "1s") -> dict[str, Any]:
    """The server's configuration (pure). ``interval`` is both the scrape and the rule evaluation
    interval: tests use 1 s so a state change reaches an alert within seconds."""
    return {
        "global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {"job_name": HOST_JOB, "file_sd_configs": [{"files": [str(host_targets)], "refresh_interval": "1s"}]},
            # A pod's path comes in as the __metrics_path__ label of its group (file_sd keeps it).
            {"job_name": POD_JOB, "file_sd_configs": [{"files": [str(pod_targets)], "refresh_interval": "1s"}]},
        ],
    }


def pod_targets(pods: list[dict[str, Any]], node_name: str) -> list[dict[str, Any]]:
    """file_sd groups for the scrapeable pods among ``pods`` (Kubernetes Pod objects), pure."""
    groups = []
    for pod in pods:
        meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
        ann, labels = meta.get("annotations") or {}, meta.get("labels") or {}
        if ann.get("prometheus.io/scrape") != "true" or spec.get("nodeName") != node_name:
            continue
        if status.get("phase") != "Running" or not status.get("podIP") or meta.get("deletionTimestamp"):
            continue
        port = ann.get("prometheus.io/port")
        if not port:
            raise ValueError(f"pod {meta['namespace']}/{meta['name']}: prometheus.io/scrape without prometheus.io/port")
        target_labels = {"namespace": meta["namespace"], "pod": meta["name"],
                         "__metrics_path__": ann.get("prometheus.io/path") or "/metrics"}
        for key, name in ((COLOR_LABEL, "color"), (MODELSERVE_LABEL, "modelserve")):
            if key in labels:
                target_labels[name] = labels[key]
        groups.append({"targets": [f"{status['podIP']}:{port}"], "labels": target_labels})
    return groups


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_targets(path: Path, groups: list[dict[str, Any]]) -> None:
    # Written aside and renamed: Prometheus never reads half a file.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(groups))
    tmp.replace(path)


@contextlib.contextmanager
def running(folder: Path, *, rule_files: list[Path], log_to: Path | None = None) -> Iterator["Prometheus"]:
    """A started Prometheus for the block; stopped after it, its log then copied to ``log_to``."""
    p = Prometheus(folder, rule_files=rule_files).start()
    try:
        yield p
    finally:
        p.stop()
        if log_to is not None:
            log_to.parent.mkdir(parents=True, exist_ok=True)
            log_to.write_text(p.log())


class Prometheus:
    """One Prometheus server process with its own folder (config, targets, TSDB, log)."""

    def __init__(self, folder: Path, *, rule_files: list[Path], cache: Path | None = None) -> None:
        self.folder = folder
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.host_targets_file = folder / "host-targets.json"
        self.pod_targets_file = folder / "pod-targets.json"
        self.config_file = folder / "prometheus.yml"
        self.log_path = folder / "prometheus.log"
        self.config = build_config(rule_files=rule_files, host_targets=self.host_targets_file, pod_targets=self.pod_targets_file)
        self.cache = cache
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> "Prometheus":
        self.folder.mkdir(parents=True, exist_ok=True)
        self.set_host_targets([])
        self.set_pod_targets([])
        self.config_file.write_text(yaml.safe_dump(self.config, sort_keys=False))
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [str(binary("prometheus", self.cache)), f"--config.file={self.config_file}",
             f"--storage.tsdb.path={self.folder / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
             "--storage.tsdb.retention.time=1d", "--log.level=info"],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.folder)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if urllib.request.urlopen(f"{self.url}/-/ready", timeout=2).status == 200:
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"prometheus not ready after {timeout:.0f} s:\n{self.log()}")
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path.exists() else ""

    def set_host_targets(self, groups: list[dict[str, Any]]) -> None:
        """Replace the host targets: ``[{"targets": ["127.0.0.1:PORT"], "labels": {...}}, ...]``."""
        _write_targets(self.host_targets_file, groups)

    def set_pod_targets(self, groups: list[dict[str, Any]]) -> None:
        """Replace the pod targets (:func:`pod_targets`' groups)."""
        _write_targets(self.pod_targets_file, groups)

    def api(self, path: str, **params: str) -> Any:
        """``GET /api/v1/<path>``'s ``data``; an error answer raises with Prometheus's message."""
        query = ("?" + urllib.parse.urlencode(params)) if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as res:
                body = json.loads(res.read())
        except urllib.error.HTTPError as err:
            body = json.loads(err.read() or b"{}")
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus /api/v1/{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return list(self.api("query", query=expr)["result"])

    def alerts(self) -> list[dict[str, Any]]:
        return list(self.api("alerts")["alerts"])

    def targets(self) -> dict[str, Any]:
        return dict(self.api("targets"))

    def metric_names(self) -> set[str]:
        return set(self.api("label/__name__/values"))
