"""Starts, stops and reports the local cluster: one process per component on the host.

``up`` is safe after a crash: it first cleans whatever an earlier run left (processes,
pod containers, mounts, the bridge, kube-proxy's rules). ``down`` does the same and keeps
only the caches (images in containerd and the registry, Go binaries).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml

from tuneforge_localcluster import audit, binaries, components, hostpkgs, images, manifests, pki
from tuneforge_localcluster.settings import REPO_ROOT, Settings

# Started in this order, stopped in the reverse one.
COMPONENTS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "registry",
    "containerd",
    "kubelet",
    "kube-proxy",
    "coredns",
    "kwok",
    "s3",
    "local-path-provisioner",
)


@contextlib.contextmanager
def locked(s: Settings) -> Iterator[None]:
    """Serialise up/down between processes (a test run and a developer's ``make`` at once)."""
    s.runtime.mkdir(parents=True, exist_ok=True)
    with open(s.runtime / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes


def _pid_file(s: Settings, name: str) -> Path:
    return s.pids / f"{name}.pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _pid(s: Settings, name: str) -> int | None:
    try:
        pid = int(_pid_file(s, name).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return pid if _alive(pid) else None


def component_pid(s: Settings, name: str) -> int | None:
    """The pid of a running component (``name`` of COMPONENTS or an optional one), else None."""
    return _pid(s, name)


def _start(s: Settings, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
    """Start a component in its own session, logging to ``<logs>/<name>.log``; ``env`` adds to
    this process's environment."""
    s.logs.mkdir(parents=True, exist_ok=True)
    s.pids.mkdir(parents=True, exist_ok=True)
    log = open(s.logs / f"{name}.log", "ab")
    proc = subprocess.Popen(
        args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, cwd=s.runtime,
        env={**os.environ, **env} if env else None,
    )
    _pid_file(s, name).write_text(str(proc.pid))


def _stop_pid(pid: int, grace: float = 10.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


def _our_processes(s: Settings) -> list[int]:
    """Processes started from our binaries or by our containerd, found even without pid files."""
    ours = []
    markers = (str(s.cache / "bin"), str(s.runtime))
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(m in cmdline for m in markers) and "tuneforge_localcluster" not in cmdline:
            ours.append(int(entry.name))
    return ours


def _wait(what: str, check: Callable[[], bool], timeout: float, log_file: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - anything short of success means "not yet"
            pass
        time.sleep(0.5)
    tail = ""
    if log_file and log_file.exists():
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-30:])
    raise RuntimeError(f"Timed out after {timeout:.0f} s waiting for {what}\n{tail}")


def _https_ok(s: Settings, url: str) -> bool:
    ctx = ssl.create_default_context(cafile=str(s.pki / "ca.crt"))
    ctx.load_cert_chain(str(s.pki / "admin.crt"), str(s.pki / "admin.key"))
    with urllib.request.urlopen(url, context=ctx, timeout=5) as resp:
        return bool(resp.status == 200)


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return bool(resp.status == 200)


# ---------------------------------------------------------------- kubectl


def kubectl(s: Settings, *args: str, input: str | None = None, check: bool = True) -> str:
    kubectl_bin = s.runtime / "bin" / "kubectl"
    res = subprocess.run(
        [str(kubectl_bin), f"--kubeconfig={s.pki / 'admin.kubeconfig'}", *args],
        input=input,
        capture_output=True,
        text=True,
    )
    if check and res.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {res.stderr.strip()}")
    return res.stdout


def _apply(s: Settings, objs: list[dict]) -> None:
    kubectl(s, "apply", "--server-side", "--force-conflicts", "--field-manager=localcluster", "-f", "-",
            input=yaml.safe_dump_all(objs))


# ---------------------------------------------------------------- cleanup


def _mounts_under(prefixes: tuple[str, ...]) -> list[str]:
    with open("/proc/self/mounts") as f:
        points = [line.split()[1].encode().decode("unicode_escape") for line in f]
    return sorted((p for p in points if p.startswith(prefixes)), key=len, reverse=True)


def clean(s: Settings) -> None:
    """Stop everything an earlier run started and remove the pods' leftovers."""
    # The kubelet first, so it restarts nothing while the containers go.
    for name in reversed(COMPONENTS):
        if name in ("containerd",):
            continue
        pid = _pid(s, name)
        if pid:
            _stop_pid(pid, grace=5)
    ctr = ["ctr", "--address", str(s.containerd_socket), "-n", "k8s.io"]
    if _pid(s, "containerd") and s.containerd_socket.exists():
        tasks = subprocess.run([*ctr, "tasks", "ls", "-q"], capture_output=True, text=True).stdout.split()
        for task in tasks:
            subprocess.run([*ctr, "tasks", "kill", "-s", "SIGKILL", task], capture_output=True)
        for task in tasks:
            subprocess.run([*ctr, "tasks", "delete", "-f", task], capture_output=True)
        containers = subprocess.run([*ctr, "containers", "ls", "-q"], capture_output=True, text=True).stdout.split()
        for c in containers:
            subprocess.run([*ctr, "containers", "delete", c], capture_output=True)
    for pid in _our_processes(s):
        _stop_pid(pid, grace=3)
    for point in _mounts_under((str(s.runtime / "kubelet"), str(s.runtime / "containerd" / "state"), "/run/netns/cni-")):
        subprocess.run(["umount", "-l", point], capture_output=True)
    for ns in Path("/run/netns").glob("cni-*") if Path("/run/netns").exists() else []:
        subprocess.run(["ip", "netns", "delete", ns.name], capture_output=True)
    subprocess.run(["ip", "link", "delete", s.bridge], capture_output=True)
    kube_proxy = s.runtime / "bin" / "kube-proxy"
    if kube_proxy.exists():
        subprocess.run([str(kube_proxy), "--cleanup"], capture_output=True)
    _flush_chains()
    for folder in ("etcd", "kubelet", "cni", "containerd/state", "s3", "local-path", "pids", "run"):
        shutil.rmtree(s.runtime / folder, ignore_errors=True)


def _flush_chains(prefixes: tuple[str, ...] = ("CNI-", "KUBE-")) -> None:
    """Remove the iptables chains the CNI plugins, the kubelet and kube-proxy leave behind."""
    for table in ("nat", "filter", "mangle"):
        rules = subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True).stdout
        chains = {line[1:].split()[0] for line in rules.splitlines() if line.startswith(tuple(":" + p for p in prefixes))}
        for line in rules.splitlines():
            parts = line.split()
            if line.startswith("-A ") and not parts[1].startswith(prefixes) and any(f"-j {c}" in line for c in chains):
                subprocess.run(["iptables", "-t", table, "-D", *parts[1:]], capture_output=True)
        for chain in chains:
            subprocess.run(["iptables", "-t", table, "-F", chain], capture_output=True)
        for chain in chains:
            subprocess.run(["iptables", "-t", table, "-X", chain], capture_output=True)


# ---------------------------------------------------------------- up


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _prepare_host(s: Settings) -> None:
    for key, value in (("net/ipv4/ip_forward", "1"), ("net/bridge/bridge-nf-call-iptables", "1")):
        try:
            Path("/proc/sys", key).write_text(value)
        except OSError as err:
            _log(f"Could not set sysctl {key}: {err}")


def up(s: Settings) -> float:
    """Start the whole cluster; return the seconds it took until every node was Ready."""
    started = time.monotonic()
    hostpkgs.ensure()
    bins = binaries.ensure_binaries(s)
    _log("Cleaning up any earlier run")
    clean(s)
    t0 = time.monotonic()
    (s.runtime / "bin").mkdir(parents=True, exist_ok=True)
    for name in ("kubectl", "kube-proxy"):
        link = s.runtime / "bin" / name
        link.unlink(missing_ok=True)
        link.symlink_to(bins[name])
    _prepare_host(s)
    pki.generate(s.pki, s.node_name, s.node_ip, s.kubernetes_service_ip, f"https://127.0.0.1:{s.apiserver_port}")
    # Pods and the node use the node's own address (127.0.0.1 is not the apiserver for them).
    node_kubeconfig = pki.kubeconfig(f"https://{s.node_ip}:{s.apiserver_port}", s.pki, "kubelet")
    _write(s.pki / "kubelet.kubeconfig", yaml.safe_dump(node_kubeconfig))

    _start(s, "etcd", components.etcd_args(s, bins))
    _wait("etcd", lambda: _http_ok(f"http://127.0.0.1:{s.etcd_port}/health"), 30, s.logs / "etcd.log")
    audit.write_policy(s)
    _start(s, "kube-apiserver", components.apiserver_args(s, bins))
    _wait("kube-apiserver /readyz", lambda: _https_ok(s, f"{s.apiserver_url}/readyz"), 90, s.logs / "kube-apiserver.log")
    _log(f"Control plane ready in {time.monotonic() - t0:.1f} s")
    _start(s, "kube-controller-manager", components.controller_manager_args(s, bins))
    _start(s, "kube-scheduler", components.scheduler_args(s, bins))
    _apply(s, manifests.bootstrap(s))

    (s.cache / "registry").mkdir(parents=True, exist_ok=True)
    images.gc(s)
    _start(s, "registry", components.registry_args(s, bins))
    _wait("registry", lambda: _http_ok(f"http://{s.registry}/v2/"), 30, s.logs / "registry.log")
    pause = images.pause_image(s, bins["pause"])

    _write(s.runtime / "containerd.toml", components.containerd_config(s, pause))
    _write(s.runtime / "containerd" / "certs.d" / s.registry / "hosts.toml", components.registry_hosts_toml(s))
    _write(s.runtime / "cni" / "net.d" / "10-tuneforge.conflist", components.to_json(components.cni_conflist(s)))
    s.containerd_socket.parent.mkdir(parents=True, exist_ok=True)
    _start(s, "containerd", ["containerd", f"--config={s.runtime / 'containerd.toml'}"])
    _wait("containerd", lambda: s.containerd_socket.exists(), 30, s.logs / "containerd.log")

    _write(s.runtime / "resolv.conf", f"nameserver {s.dns_service_ip}\n")
    _write(s.runtime / "kubelet-config.yaml", yaml.safe_dump(components.kubelet_config(s)))
    _start(s, "kubelet", components.kubelet_args(s, bins))
    _write(s.runtime / "kube-proxy.yaml", yaml.safe_dump(components.kube_proxy_config(s)))
    _start(s, "kube-proxy", components.kube_proxy_args(s, bins))
    _write(s.runtime / "Corefile", components.corefile(s))
    _start(s, "coredns", components.coredns_args(s, bins))
    own_stages = sorted((REPO_ROOT / "localcluster" / "kwok").glob("*.yaml"))
    _write(s.runtime / "kwok.yaml", components.kwok_config(binaries.module_dir(components.KWOK_MODULE), own_stages))
    _start(s, "kwok", components.kwok_args(s, bins))
    (s.runtime / "s3").mkdir(parents=True, exist_ok=True)
    _start(s, "s3", components.s3_args(s, bins))
    _wait("S3 server", lambda: _http_ok(f"http://127.0.0.1:{s.s3_port}/healthz"), 30, s.logs / "s3.log")

    _wait(f"node {s.node_name} Ready", lambda: _node_ready(s, s.node_name), 90, s.logs / "kubelet.log")
    # An extended resource without a device plugin: the kubelet keeps what is patched in.
    patch = [{"op": "add", "path": "/status/capacity/nvidia.com~1gpu", "value": str(s.gpus)}]
    kubectl(s, "patch", "node", s.node_name, "--subresource=status", "--type=json", "-p", json.dumps(patch))

    base = images.base_image(s)
    _write(s.runtime / "local-path" / "config.json", components.to_json(components.local_path_config(s)))
    _write(s.runtime / "local-path-helper-pod.yaml", yaml.safe_dump(components.local_path_helper_pod(base)))
    _start(s, "local-path-provisioner", [*components.local_path_args(s, bins, base)])

    _apply(s, components.fake_nodes(s))
    for node in components.fake_nodes(s):
        fake = str(node["metadata"]["name"])
        _wait(f"fake node {fake} Ready", functools.partial(_node_ready, s, fake), 60, s.logs / "kwok.log")
    _wait("CoreDNS ready", lambda: _http_ok("http://127.0.0.1:18181/ready"), 60, s.logs / "coredns.log")
    _wait(
        f"nvidia.com/gpu allocatable on {s.node_name}",
        lambda: _allocatable(s, s.node_name, "nvidia.com/gpu") == str(s.gpus),
        60,
    )
    _wait("default ServiceAccount", lambda: bool(kubectl(s, "get", "sa", "default", "-n", "default", "-o", "name")), 60)
    images.gc(s, s.containerd_socket)
    publish_kubeconfig(s)
    ready_after = time.monotonic() - started
    _log(f"Cluster up in {ready_after:.1f} s; KUBECONFIG={s.kubeconfig}")
    return ready_after


def _node(s: Settings, name: str) -> dict:
    return dict(json.loads(kubectl(s, "get", "node", name, "-o", "json")))


def _node_ready(s: Settings, name: str) -> bool:
    conds = _node(s, name).get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)


def _allocatable(s: Settings, name: str, resource: str) -> str | None:
    return _node(s, name).get("status", {}).get("allocatable", {}).get(resource)


def publish_kubeconfig(s: Settings) -> None:
    """Write the admin kubeconfig (certificates embedded) and a logs link into ``.cluster/``."""
    import base64

    cfg = pki.kubeconfig(s.apiserver_url, s.pki, "admin")
    cluster = cfg["clusters"][0]["cluster"]
    cluster["certificate-authority-data"] = base64.b64encode(Path(cluster.pop("certificate-authority")).read_bytes()).decode()
    user = cfg["users"][0]["user"]
    user["client-certificate-data"] = base64.b64encode(Path(user.pop("client-certificate")).read_bytes()).decode()
    user["client-key-data"] = base64.b64encode(Path(user.pop("client-key")).read_bytes()).decode()
    s.kubeconfig.parent.mkdir(parents=True, exist_ok=True)
    s.kubeconfig.write_text(yaml.safe_dump(cfg))
    s.kubeconfig.chmod(0o600)
    logs = s.kubeconfig.parent / "logs"
    if logs.is_symlink() or logs.exists():
        logs.unlink()
    logs.symlink_to(s.logs)
    bin_link = s.kubeconfig.parent / "bin"
    if bin_link.is_symlink() or bin_link.exists():
        bin_link.unlink()
    bin_link.symlink_to(s.runtime / "bin")


def down(s: Settings) -> None:
    clean(s)
    for leftover in (s.kubeconfig,):
        leftover.unlink(missing_ok=True)
    _log("Cluster stopped")


def status(s: Settings) -> dict[str, object]:
    procs = {name: _pid(s, name) for name in COMPONENTS}
    report: dict[str, object] = {"processes": procs}
    if procs.get("kube-apiserver"):
        report["nodes"] = kubectl(s, "get", "nodes", "-o", "wide", check=False)
    report["disk"] = images.disk_usage(s)
    return report


def is_up(s: Settings) -> bool:
    if not all(_pid(s, name) for name in COMPONENTS):
        return False
    try:
        return _https_ok(s, f"{s.apiserver_url}/readyz") and _node_ready(s, s.node_name)
    except (OSError, urllib.error.URLError, RuntimeError):
        return False
