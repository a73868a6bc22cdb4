"""Where the local cluster keeps its files and which addresses and ports it uses."""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
KUBE_VERSION = "v1.36.3"


def _default_node_ip() -> str:
    """The address of the interface that holds the default route (the node's own address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        # connect() on UDP sends nothing; it only picks the route and source address.
        s.connect(("192.0.2.1", 9))
        return str(s.getsockname()[0])


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the local cluster needs to know about its machine; one instance per run."""

    cache: Path
    """Build caches kept across clusters: Go binaries, base images, wheelhouses."""
    runtime: Path
    """State of the running cluster: PKI, etcd data, kubelet and containerd folders, logs."""
    repo: Path
    """The checkout; its ``.cluster/`` gets the admin kubeconfig and a link to the logs."""
    node_ip: str
    """The real node's InternalIP; the apiserver advertises it to pods."""
    node_name: str = "tuneforge-node"
    """Name of the real node (kubelet ``--hostname-override``)."""
    gpus: int = 8
    """``nvidia.com/gpu`` the real node advertises as a CPU stand-in: blue/green needs two, and
    ``make test`` runs stand-in trainers (one GPU each by default) beside the e2e tests, whose
    distributed runs take up to four (with 4, a stand-in waited ~4 min for one)."""
    fake_gpu_nodes: int = 2
    """kwok nodes with 8 fake GPUs each."""
    pod_cidr: str = "10.244.0.0/24"
    service_cidr: str = "10.96.0.0/16"
    kubernetes_service_ip: str = "10.96.0.1"
    dns_service_ip: str = "10.96.0.10"
    apiserver_port: int = 6443
    etcd_port: int = 23790
    registry_port: int = 5000
    s3_port: int = 9000
    bridge: str = "tf0"

    @property
    def kubeconfig(self) -> Path:
        return self.repo / ".cluster" / "kubeconfig"

    @property
    def pki(self) -> Path:
        return self.runtime / "pki"

    @property
    def logs(self) -> Path:
        return self.runtime / "logs"

    @property
    def pids(self) -> Path:
        return self.runtime / "pids"

    @property
    def containerd_socket(self) -> Path:
        return self.runtime / "run" / "containerd.sock"

    @property
    def registry(self) -> str:
        return f"127.0.0.1:{self.registry_port}"

    @property
    def apiserver_url(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"


def load() -> Settings:
    """Settings from the environment (``TUNEFORGE_CACHE``, ``TUNEFORGE_CLUSTER_DIR``, ``TUNEFORGE_NODE_GPUS``)."""
    cache = Path(os.environ.get("TUNEFORGE_CACHE", Path.home() / ".cache" / "tuneforge"))
    runtime = Path(os.environ.get("TUNEFORGE_CLUSTER_DIR", "/var/lib/tuneforge-localcluster"))
    return Settings(
        cache=cache,
        runtime=runtime,
        repo=REPO_ROOT,
        node_ip=os.environ.get("TUNEFORGE_NODE_IP") or _default_node_ip(),
        # Unset: the field's default (it said 2 here while the field said 8, and 2 won).
        gpus=int(os.environ.get("TUNEFORGE_NODE_GPUS") or Settings.gpus),
    )
