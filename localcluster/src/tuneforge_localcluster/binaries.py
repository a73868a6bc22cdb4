"""Builds the cluster's Go binaries once per machine and caches them by their inputs.

Kubernetes and etcd come from wrapper modules in ``localcluster/go`` whose go.sum is
committed; the add-ons are ``go install``-ed at a pinned version (their own go.sum is
checked by the Go toolchain). The cache key of a binary hashes its module files or
version, the Go version and the build flags, so only the first build on a machine pays.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tuneforge_localcluster.settings import KUBE_VERSION, REPO_ROOT, Settings

GO_DIR = REPO_ROOT / "localcluster" / "go"
HELM_VERSION = "v4.3.2"
"""The Helm CLI the chart is linted, rendered and installed with (``helm.sh/helm/v4``)."""

_K8S_LDFLAGS = " ".join(
    [
        "-s -w",
        f"-X k8s.io/component-base/version.gitVersion={KUBE_VERSION}",
        "-X k8s.io/component-base/version.gitMajor=1",
        f"-X k8s.io/component-base/version.gitMinor={KUBE_VERSION.split('.')[1]}",
        "-X k8s.io/component-base/version.gitTreeState=clean",
        f"-X k8s.io/client-go/pkg/version.gitVersion={KUBE_VERSION}",
    ]
)


@dataclasses.dataclass(frozen=True)
class GoBinary:
    """One binary: either a package of a wrapper module, or ``go install pkg@version``."""

    name: str
    package: str
    module_dir: str | None = None
    """Wrapper module folder under localcluster/go; None means ``go install package``."""
    ldflags: str = "-s -w"
    tags: str = ""
    cold_seconds: float = 60
    """What a first build took on the 2-core reference machine (``build.json`` records), for
    spreading the builds over two chains of about equal length."""

    def key(self, go_version: str) -> str:
        h = hashlib.sha256()
        h.update(f"{self.name}|{self.package}|{self.ldflags}|{self.tags}|{go_version}".encode())
        if self.module_dir:
            for f in ("go.mod", "go.sum"):
                path = GO_DIR / self.module_dir / f
                if path.exists():
                    h.update(path.read_bytes())
            for src in sorted((GO_DIR / self.module_dir).glob("*.go")):
                h.update(src.read_bytes())
        return h.hexdigest()[:16]


def _k8s(cmd: str, cold_seconds: float) -> GoBinary:
    return GoBinary(
        cmd, f"k8s.io/kubernetes/cmd/{cmd}", "kubernetes", ldflags=_K8S_LDFLAGS, tags="selinux,notest",
        cold_seconds=cold_seconds,
    )


BINARIES: tuple[GoBinary, ...] = (
    GoBinary("etcd", "go.etcd.io/etcd/server/v3", "etcd", cold_seconds=68),
    _k8s("kube-apiserver", 274),  # the first Kubernetes build compiles what the others share
    _k8s("kube-controller-manager", 92),
    _k8s("kube-scheduler", 9),
    _k8s("kubelet", 32),
    _k8s("kube-proxy", 10),
    _k8s("kubectl", 20),
    GoBinary("pause", "tuneforge.dev/localcluster/pause", "pause", cold_seconds=1),
    GoBinary("kwok", "sigs.k8s.io/kwok/cmd/kwok@v0.8.0", cold_seconds=130),
    GoBinary("coredns", "github.com/coredns/coredns@v1.14.7", cold_seconds=169),
    GoBinary("local-path-provisioner", "github.com/rancher/local-path-provisioner@v0.0.30", cold_seconds=101),
    GoBinary("crane", "github.com/google/go-containerregistry/cmd/crane@v0.22.1", cold_seconds=9),
    GoBinary("versitygw", "github.com/versity/versitygw/cmd/versitygw@v1.8.0", cold_seconds=77),
    GoBinary(
        "helm",
        f"helm.sh/helm/v4/cmd/helm@{HELM_VERSION}",
        ldflags=f"-s -w -X helm.sh/helm/v4/internal/version.version={HELM_VERSION} "
        "-X helm.sh/helm/v4/internal/version.gitTreeState=clean",
        cold_seconds=261,
    ),
)


KUEUE_VERSION = "v0.17.0"
"""Kueue's manager (``sigs.k8s.io/kueue``), an optional component (``kueue.py``)."""
KEDA_VERSION = "v2.20.2"
"""KEDA's operator and metrics API server (``github.com/kedacore/keda/v2``), an optional component
(``keda.py``), from the wrapper module ``localcluster/go/keda`` (KEDA's own replace directives
apply only in a main module). Not v2.21.1: its go.mod needs Go >= 1.27.4, newer than any
toolchain the module proxy serves here (go1.27.3); v2.20.2 needs 1.26.0."""
_KEDA_LDFLAGS = f"-s -w -X github.com/kedacore/keda/v2/version.Version={KEDA_VERSION.removeprefix('v')}"

OPTIONAL: tuple[GoBinary, ...] = (
    # Kueue's manager: built only for the tests that ask for it (``kueue.ensure``).
    GoBinary("kueue", f"sigs.k8s.io/kueue/cmd/kueue@{KUEUE_VERSION}",
             ldflags=f"-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion={KUEUE_VERSION}"),
    # KEDA: built only for the tests that ask for it (``keda.ensure``); both from one module.
    # Cold: 707 s and 178 s on the 2-core machine beside a make test (every scaler's SDK links in).
    GoBinary("keda-operator", "github.com/kedacore/keda/v2/cmd/operator", "keda", ldflags=_KEDA_LDFLAGS, cold_seconds=707),
    GoBinary("keda-adapter", "github.com/kedacore/keda/v2/cmd/adapter", "keda", ldflags=_KEDA_LDFLAGS, cold_seconds=178),
)
"""Binaries a full ``ensure_binaries`` does not build (nor prune): built when named."""


def go_version() -> str:
    return subprocess.run(["go", "env", "GOVERSION"], check=True, capture_output=True, text=True).stdout.strip()


def module_dir(module: str) -> Path:
    """The extracted source of ``module@version`` in the Go module cache (downloaded if missing)."""
    out = subprocess.run(["go", "mod", "download", "-json", module], check=True, capture_output=True, text=True).stdout
    return Path(json.loads(out)["Dir"])


def build_chains(missing: list[GoBinary]) -> list[list[GoBinary]]:
    """Two build chains of about equal ``cold_seconds``: the wrapper modules' binaries stay
    together, in order, in one unit (they share one module's packages: split over two chains,
    both would compile the same packages at once); the add-ons are placed longest first, each
    on the chain that is shorter so far."""
    units = [[b for b in missing if b.module_dir]] + [[b] for b in missing if not b.module_dir]
    units = sorted((u for u in units if u), key=lambda u: -sum(b.cold_seconds for b in u))
    chains: list[list[GoBinary]] = [[], []]
    for unit in units:
        min(chains, key=lambda c: sum(b.cold_seconds for b in c)).extend(unit)
    return [c for c in chains if c]


def binary_path(settings: Settings, binary: GoBinary, gover: str) -> Path:
    return settings.cache / "bin" / binary.key(gover) / binary.name


GOGC_FOR_BUILDS = "400"
"""The Go toolchain's own garbage collector target while it compiles (not the binaries'): the
compiler allocates steadily and exits, so collecting less often saves CPU for more memory. Measured
on the 2-core machine (kwok v0.8.0 from an empty build cache, 2026-12-07): 172 CPU-s at 400 against
202 at the default 100 (-15 %), peak RSS 1.04 GB against 0.96."""


def _build(binary: GoBinary, out: Path) -> None:
    env = dict(os.environ, CGO_ENABLED="0", GOGC=GOGC_FOR_BUILDS)
    flags = ["-trimpath", "-ldflags", binary.ldflags]
    if binary.tags:
        flags += ["-tags", binary.tags]
    tmp = out.parent / (out.name + ".tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    if binary.module_dir:
        cmd = ["go", "build", *flags, "-o", str(tmp), binary.package]
        cwd: Path | None = GO_DIR / binary.module_dir
    else:
        gobin = tmp.parent / "gobin"
        env["GOBIN"] = str(gobin)
        cmd = ["go", "install", *flags, binary.package]
        cwd = None
    subprocess.run(cmd, cwd=cwd, env=env, check=True)
    if not binary.module_dir:
        built = next((tmp.parent / "gobin").iterdir())
        built.rename(tmp)
        shutil.rmtree(tmp.parent / "gobin")
    tmp.rename(out)


def ensure_binaries(settings: Settings, names: list[str] | None = None) -> dict[str, Path]:
    """Build every missing binary (one progress line each) and return name -> path.

    Two build chains run side by side (:func:`build_chains`): ``go build`` is parallel inside
    a package but links on one core, so two chains use two cores better (measured ~9 min cold
    instead of ~16 one after another); balanced by each binary's cold build time, the longer
    chain is ~640 s of recorded build time instead of ~750 s (Kubernetes/etcd vs add-ons).
    """
    gover = go_version()
    wanted = [b for b in (*BINARIES, *OPTIONAL) if (b.name in names if names else b in BINARIES)]
    unknown = set(names or ()) - {b.name for b in wanted}
    if unknown:
        raise ValueError(f"Unknown binaries: {sorted(unknown)}")
    paths = {b.name: binary_path(settings, b, gover) for b in wanted}
    missing = [b for b in wanted if not paths[b.name].exists()]
    chains = build_chains(missing)

    def build_chain(chain: list[GoBinary]) -> None:
        for binary in chain:
            out = paths[binary.name]
            out.parent.mkdir(parents=True, exist_ok=True)
            # Another process (make test's background prefetch, a second checkout) may be
            # building the same binary: one builds it, the other waits and then finds it built.
            with open(out.parent / ".lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if out.exists():
                    continue
                started = time.monotonic()
                print(f"Building {binary.name} ({binary.package})", file=sys.stderr, flush=True)
                _build(binary, out)
                seconds = time.monotonic() - started
                (out.parent / "build.json").write_text(json.dumps({"name": binary.name, "seconds": round(seconds, 1)}))
                print(f"Built {binary.name} in {seconds:.0f} s", file=sys.stderr, flush=True)

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        for future in [pool.submit(build_chain, c) for c in chains if c]:
            future.result()
    keep = {p.parent.name for p in paths.values()} | {b.key(gover) for b in OPTIONAL}
    _prune(settings, keep, names is None)
    return paths


def _prune(settings: Settings, keep: set[str], complete: bool) -> None:
    """Drop binaries of older inputs so the cache stays bounded (only after a full ensure)."""
    if not complete:
        return
    for entry in (settings.cache / "bin").iterdir():
        if entry.name not in keep:
            shutil.rmtree(entry, ignore_errors=True)


def helm(settings: Settings) -> Path:
    """The Helm CLI (``helm.sh/helm/v4`` at ``HELM_VERSION``), built on first use and cached."""
    return ensure_binaries(settings, ["helm"])["helm"]


def build_records(settings: Settings) -> dict[str, float]:
    """Seconds each cached binary took to build when it was built on this machine."""
    records = {}
    for record in (settings.cache / "bin").glob("*/build.json"):
        data = json.loads(record.read_text())
        records[data["name"]] = float(data["seconds"])
    return records
