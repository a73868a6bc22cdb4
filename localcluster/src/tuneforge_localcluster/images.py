"""Container images without a Docker engine: a Debian base made by debootstrap, project
images built by buildah from the repo's Dockerfiles, all served by a registry on loopback.

Every image is tagged with a hash of its inputs, so an unchanged image is never rebuilt,
and pushing to the registry moves only the layers it does not have yet: after a code-only
change, only the last layer of a multi-GB torch image is built, pushed and pulled.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tuneforge_localcluster.settings import Settings

DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# python3-venv for the images' virtualenvs; libnuma1 because vLLM's CPU kernels need it.
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "libnuma1")


def _hash(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()[:16]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _run(cmd: list[str], **kw: object) -> str:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    return str(out.stdout).strip()


def registry_has(s: Settings, ref: str) -> bool:
    """Whether the loopback registry serves ``ref`` (``127.0.0.1:5000/repo:tag``)."""
    repo, tag = ref.split("/", 1)[1].rsplit(":", 1)
    req = urllib.request.Request(
        f"http://{s.registry}/v2/{repo}/manifests/{tag}",
        method="HEAD",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10):
            return True
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return False
        raise


def _push(s: Settings, ref: str) -> None:
    # Uncompressed layers: gzip of a multi-GB layer on two cores costs minutes and the
    # registry is on the same disk. buildah skips blobs the registry already has.
    _run(["buildah", "push", "--tls-verify=false", "--disable-compression", ref, f"docker://{ref}"])


def _served(s: Settings, ref: str, push: bool = True) -> bool:
    """Whether the registry serves ``ref``, pushing buildah's copy first when only that exists
    (the registry keeps its index in memory, so a restart forgets what it had). With ``push``
    False (no registry yet: ``make test``'s prefetch before the cluster is up), whether
    buildah's storage has it."""
    if push and registry_has(s, ref):
        return True
    if _image_exists_locally(ref):
        if push:
            _push(s, ref)
        return True
    return False


def pause_image(s: Settings, pause_binary: Path) -> str:
    """The pod sandbox image (one static binary), built and pushed when missing."""
    ref = f"{s.registry}/tuneforge/pause:{_hash(pause_binary.read_bytes())}"
    if _served(s, ref):
        return ref
    ctr = _run(["buildah", "from", "scratch"])
    try:
        _run(["buildah", "copy", "--chmod", "0755", ctr, str(pause_binary), "/pause"])
        _run(["buildah", "config", "--entrypoint", '["/pause"]', "--user", "65535", ctr])
        _run(["buildah", "commit", "--rm", ctr, ref])
    except subprocess.CalledProcessError:
        subprocess.run(["buildah", "rm", ctr], capture_output=True)
        raise
    _push(s, ref)
    return ref


def _lock_file(s: Settings, name: str) -> Path:
    locks = s.cache / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    return locks / name


@contextlib.contextmanager
def _building(s: Settings, ref: str) -> Iterator[None]:
    """One builder of ``ref`` at a time across processes (``make test``'s and ``make demo``'s
    background builds run beside the cluster's start-up and the tests): a second one waits
    and then finds the image built. Every build also holds the store lock shared, so that
    :func:`gc` never prunes the layers of a build in progress."""
    with open(_lock_file(s, "image-store.lock"), "w") as store, open(_lock_file(s, f"image-{_hash(ref)}.lock"), "w") as lock:
        fcntl.flock(store, fcntl.LOCK_SH)
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def base_image(s: Settings, push: bool = True) -> str:
    """A Debian minbase image with Python 3.11 (same minor as the host), from Debian's packages
    (``push``: see :func:`build`)."""
    key = _hash(DEBIAN_SUITE, DEBIAN_MIRROR, *BASE_PACKAGES)
    ref = f"{s.registry}/tuneforge/base:{DEBIAN_SUITE}-{key}"
    with _building(s, ref):
        return _base_image(s, ref, push)


def _base_image(s: Settings, ref: str, push: bool) -> str:
    if _served(s, ref, push):
        return ref
    started = time.monotonic()
    _log(f"Building base image {ref} with debootstrap (first run on this machine: ~2 min)")
    with tempfile.TemporaryDirectory(dir=s.cache, prefix="rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                DEBIAN_SUITE,
                str(rootfs),
                DEBIAN_MIRROR,
            ]
        )
        # Keep the image small and deterministic enough: no apt lists or caches.
        for junk in ("var/lib/apt/lists", "var/cache/apt/archives"):
            shutil.rmtree(rootfs / junk, ignore_errors=True)
        ctr = _run(["buildah", "from", "scratch"])
        try:
            mnt = _run(["buildah", "mount", ctr])
            _run(["cp", "-a", f"{rootfs}/.", mnt])
            _run(["buildah", "umount", ctr])
            _run(["buildah", "config", "--cmd", "/bin/bash", "--env", "LANG=C.UTF-8", ctr])
            _run(["buildah", "commit", "--rm", ctr, ref])
        except subprocess.CalledProcessError:
            subprocess.run(["buildah", "rm", ctr], capture_output=True)
            raise
    if push:
        _push(s, ref)
    seconds = time.monotonic() - started
    (s.cache / "base-image-build.json").write_text(json.dumps({"ref": ref, "seconds": round(seconds, 1)}))
    _log(f"Built base image in {seconds:.0f} s")
    return ref


def _image_exists_locally(ref: str) -> bool:
    return subprocess.run(["buildah", "inspect", "--type", "image", ref], capture_output=True).returncode == 0


def _context_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            h.update(str(path.relative_to(folder)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def wheelhouse(s: Settings, requirements: Path, nodeps: Path | None = None) -> Path:
    """A folder of wheels for ``requirements`` (and, without their dependencies, for ``nodeps``),
    downloaded once per content of those files."""
    key = _hash(requirements.read_bytes(), nodeps.read_bytes() if nodeps else b"")
    folder = s.cache / "wheels" / key
    if (folder / ".complete").exists():
        return folder
    with _building(s, f"wheels/{key}"):
        return _wheelhouse(folder, requirements, nodeps)


def _wheelhouse(folder: Path, requirements: Path, nodeps: Path | None) -> Path:
    if (folder / ".complete").exists():
        return folder
    _log(f"Downloading wheels for {requirements} into {folder}")
    folder.mkdir(parents=True, exist_ok=True)
    # The host is the images' platform (Debian 12, glibc 2.36, CPython 3.11, x86_64).
    download = [sys.executable, "-m", "pip", "download", "-q", "-d", str(folder), "--only-binary=:all:"]
    subprocess.run([*download, "-r", str(requirements)], check=True)
    if nodeps is not None:
        subprocess.run([*download, "--no-deps", "-r", str(nodeps)], check=True)
    (folder / ".complete").touch()
    return folder


def build(s: Settings, context: Path, name: str, dockerfile: str = "Dockerfile", target: str | None = None,
          push: bool = True) -> str:
    """Build ``context/Dockerfile`` (its ``target`` stage when given) on the local base image and
    push it; return its reference.

    The build context gets a ``wheels/`` folder (hard links into the wheelhouse cache) when
    ``context/requirements.txt`` exists, for ``RUN --mount=type=bind,source=wheels,...``;
    ``requirements-nodeps.txt`` beside it adds wheels without their dependencies.

    ``push=False`` builds into buildah's storage only (no registry needed: ``make test`` builds
    the images in the background before the cluster is up); the first build with a registry
    then only pushes it.
    """
    context = context.resolve()
    base = base_image(s, push)
    reqs = context / "requirements.txt"
    nodeps = context / "requirements-nodeps.txt"
    wheels = wheelhouse(s, reqs, nodeps if nodeps.exists() else None) if reqs.exists() else None
    key = _hash(base, _context_hash(context), str(wheels), target or "")
    ref = f"{s.registry}/tuneforge/{name}:{key}"
    with _building(s, ref):
        return _build(s, context, ref, base, dockerfile, target, wheels, push)


def _build(s: Settings, context: Path, ref: str, base: str, dockerfile: str, target: str | None,
           wheels: Path | None, push: bool) -> str:
    if _served(s, ref, push):
        return ref
    started = time.monotonic()
    _log(f"Building image {ref} from {context / dockerfile}")
    with tempfile.TemporaryDirectory(dir=s.cache, prefix="context-") as tmp:
        ctx = Path(tmp) / "ctx"
        shutil.copytree(context, ctx, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        if wheels is not None:
            # Hard links: the wheelhouse costs no disk a second time.
            subprocess.run(["cp", "-al", str(wheels), str(ctx / "wheels")], check=True)
        subprocess.run(
            [
                "buildah", "bud", "--layers", "--network", "host", "--tls-verify=false",
                "--build-arg", f"BASE_IMAGE={base}", *(["--target", target] if target else []),
                "-f", str(ctx / dockerfile), "-t", ref, str(ctx),
            ],
            check=True,
            stdout=sys.stderr,
        )
    if push:
        _push(s, ref)
    _log(f"Built {ref}{' and pushed it' if push else ''} in {time.monotonic() - started:.0f} s")
    return ref


def disk_usage(s: Settings) -> dict[str, int]:
    """Bytes used by each cache and image store of the local cluster."""
    places = {
        "go binaries": s.cache / "bin",
        "wheelhouses": s.cache / "wheels",
        "registry": s.cache / "registry",
        "buildah storage": Path("/var/lib/containers/storage"),
        "containerd": s.runtime / "containerd" / "root",
        "go module cache": Path(os.environ.get("GOMODCACHE", Path.home() / "go" / "pkg" / "mod")),
        "go build cache": Path.home() / ".cache" / "go-build",
        "venvs": s.cache / "venv",
        "models": s.cache / "models",
    }
    usage = {}
    for label, path in places.items():
        if path.exists():
            out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True).stdout.split()
            usage[label] = int(out[0]) if out else 0
    return usage


KEEP_PER_IMAGE = 2
REGISTRY_CAP = 30 * 2**30


def gc(s: Settings, containerd_socket: Path | None = None) -> None:
    """Bound the image stores: the newest ``KEEP_PER_IMAGE`` tags of each of our images in
    buildah and containerd, the newest wheelhouses, and the registry's blobs under a cap
    (its blobs are a cache of buildah's layers; dropping them costs one full push). Skipped
    while any build is in progress (its intermediate layers are untagged: a prune would take
    them); the next start-up collects."""
    with open(_lock_file(s, "image-store.lock"), "w") as store:
        try:
            fcntl.flock(store, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _log("Image builds in progress: image store clean-up skipped this time")
            return
        _gc(s, containerd_socket)


def _gc(s: Settings, containerd_socket: Path | None) -> None:
    listing = subprocess.run(
        ["buildah", "images", "--format", "{{.Name}}:{{.Tag}} {{.CreatedAtRaw}}"], capture_output=True, text=True
    ).stdout.splitlines()
    by_repo: dict[str, list[tuple[str, str]]] = {}
    for line in listing:
        ref, _, created = line.partition(" ")
        if ref.startswith(f"{s.registry}/tuneforge/"):
            by_repo.setdefault(ref.rsplit(":", 1)[0], []).append((created, ref))
    stale = [ref for refs in by_repo.values() for _, ref in sorted(refs, reverse=True)[KEEP_PER_IMAGE:]]
    if stale:
        subprocess.run(["buildah", "rmi", *stale], capture_output=True)
    subprocess.run(["buildah", "rmi", "--prune"], capture_output=True)
    if containerd_socket is not None and containerd_socket.exists():
        ctr = ["ctr", "--address", str(containerd_socket), "-n", "k8s.io", "images"]
        keep = {ref for refs in by_repo.values() for _, ref in sorted(refs, reverse=True)[:KEEP_PER_IMAGE]}
        names = subprocess.run([*ctr, "ls", "-q"], capture_output=True, text=True).stdout.split()
        old = [n for n in names if n.rsplit(":", 1)[0] in by_repo and "@" not in n and n not in keep]
        if old:
            subprocess.run([*ctr, "rm", *old], capture_output=True)
    wheels = sorted((s.cache / "wheels").glob("*"), key=lambda p: p.stat().st_mtime, reverse=True)
    for folder in wheels[4:]:
        shutil.rmtree(folder, ignore_errors=True)
    registry = s.cache / "registry"
    if registry.exists() and sum(f.stat().st_size for f in registry.rglob("*") if f.is_file()) > REGISTRY_CAP:
        _log(f"Registry blobs exceed {REGISTRY_CAP / 2**30:.0f} GiB: dropping them (next pushes re-upload)")
        shutil.rmtree(registry)
        registry.mkdir()
