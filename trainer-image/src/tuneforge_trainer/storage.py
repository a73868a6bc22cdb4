"""Where models, data and artifacts live: local paths, ``hf://`` ids and ``s3://`` URIs.

``hf://org/name`` resolves through the Hugging Face hub cache laid out as ``huggingface_hub``
writes it (``models--org--name/{refs,snapshots}``): online by default (token from the
environment, cache folder configurable so a PVC can hold it), offline only when asked
(``hub.offline`` or ``HF_HUB_OFFLINE=1``). ``s3://`` goes through boto3 (endpoint from ``AWS_ENDPOINT_URL``). boto3 and
huggingface_hub are imported inside the functions that use them.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
from pathlib import Path

from tuneforge_trainer.lineage import BASE_MODEL_PATTERNS, SAFETENSORS_PATTERNS, TORCH_WEIGHT_PATTERNS

__all__ = [
    "HUB_MODEL_PATTERNS",
    "StorageError",
    "download_s3",
    "hf_cache_dir",
    "hub_offline",
    "join_uri",
    "resolve_hf",
    "resolve_source",
    "s3_plan",
    "split_s3",
    "upload_dir",
    "upload_file",
]

log = logging.getLogger(__name__)

# What a model repo download takes: the files its lineage digest covers (safetensors weights).
HUB_MODEL_PATTERNS = (*BASE_MODEL_PATTERNS, *SAFETENSORS_PATTERNS)


class StorageError(RuntimeError):
    """A source that cannot be found or fetched."""


def hf_cache_dir(override: str | None = None) -> Path:
    """The hub cache folder: ``override`` (hub.cache_dir), else HF_HUB_CACHE, else HF_HOME/hub."""
    if override:
        return Path(override)
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home) / "hub"


def hub_offline(offline: bool = False) -> bool:
    """Whether the hub may not be contacted: hub.offline, or HF_HUB_OFFLINE in the environment."""
    return offline or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _cached_snapshot(folder: Path, rev: str) -> Path | None:
    commit = rev
    ref = folder / "refs" / rev
    if ref.is_file():
        commit = ref.read_text().strip()
    snap = folder / "snapshots" / commit
    return snap if snap.is_dir() else None


def resolve_hf(
    uri: str, revision: str | None = None, token_env: str = "HF_TOKEN", kind: str = "model",
    cache_dir: str | None = None, offline: bool = False,
) -> str:
    """Local snapshot folder of ``hf://org/name`` (``hf://datasets/org/name`` for datasets).

    Online (the default) the hub is asked which commit the revision names and only missing files
    are downloaded (endpoint from HF_ENDPOINT, token from the ``token_env`` variable), into
    ``cache_dir`` — a mounted PVC keeps them across pods; a cached commit pin needs no request.
    Offline (``offline`` or HF_HUB_OFFLINE) the snapshot must already be in the cache.
    """
    repo = uri[len("hf://") :].strip("/")
    if repo.startswith("datasets/"):
        kind, repo = "dataset", repo[len("datasets/") :]
    rev = revision or "main"
    cache = hf_cache_dir(cache_dir)
    cached = _cached_snapshot(cache / f"{kind}s--{repo.replace('/', '--')}", rev)
    is_commit = len(rev) == 40 and all(c in "0123456789abcdef" for c in rev)
    if cached is not None and (is_commit or hub_offline(offline)):
        return str(cached)
    if hub_offline(offline):
        raise StorageError(
            f"{uri}@{rev}: not in the hub cache {cache} and the hub is offline (hub.offline or "
            "HF_HUB_OFFLINE); download it into that cache first or go online"
        )
    from huggingface_hub import snapshot_download

    log.info("Fetching %s@%s from the hub into %s", uri, rev, cache)
    token = os.environ.get(token_env) or None
    # A model repo: only the files that define the model (a Llama repo's original/*.pth alone is
    # 16 GB); a dataset repo is all data.
    patterns = list(HUB_MODEL_PATTERNS) if kind == "model" else None
    snap = snapshot_download(repo_id=repo, revision=rev, repo_type=kind, token=token, cache_dir=str(cache), allow_patterns=patterns)
    if patterns and not any(p.suffix == ".safetensors" for p in Path(snap).iterdir()):
        log.info("%s has no safetensors weights; fetching its PyTorch weights", uri)
        snap = snapshot_download(repo_id=repo, revision=rev, repo_type=kind, token=token, cache_dir=str(cache),
                                 allow_patterns=[*BASE_MODEL_PATTERNS, *TORCH_WEIGHT_PATTERNS])
    return str(snap)


def split_s3(uri: str) -> tuple[str, str]:
    """('bucket', 'key/prefix') of an s3:// URI; rejects '.' and '..' segments."""
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    key = key.strip("/")
    if not bucket or bucket in (".", "..") or any(seg in (".", "..") for seg in key.split("/")):
        raise StorageError(f"{uri}: an s3:// URI needs a bucket and no '.' or '..' segments")
    return bucket, key


def _s3_client():  # type: ignore[no-untyped-def]
    import boto3

    return boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)


def _safe_join(dest: str, rel: str, key: str) -> str:
    """``dest/rel``, refusing any relative key that would land outside ``dest``."""
    parts = rel.split("/")
    if rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise StorageError(f"refusing S3 key {key!r}: its path {rel!r} is not a plain relative path")
    root = os.path.realpath(dest)
    local = os.path.realpath(os.path.join(root, *parts))
    if os.path.commonpath([root, local]) != root or local == root:
        raise StorageError(f"refusing S3 key {key!r}: it would be written outside {dest}")
    return local


def s3_plan(uri: str, keys: list[str], dest: str) -> list[tuple[str, str]]:
    """Pure: which keys of a listing ``uri`` names, and the local path of each.

    ``s3://b/p`` is the object ``p`` when it exists (never ``p.gz`` beside it), else every object
    under the folder ``p/`` (never ``p-other/...``: a prefix ends at a ``/``). Folder marker keys
    (ending in ``/``) are skipped; a key whose path would leave ``dest`` fails the whole copy.
    """
    _, key = split_s3(uri)
    if key and key in keys:
        name = key.rsplit("/", 1)[-1]
        return [(key, _safe_join(dest, name, key))]
    folder = f"{key}/" if key else ""
    plan = []
    for k in keys:
        if not k.startswith(folder) or k.endswith("/"):
            continue
        plan.append((k, _safe_join(dest, k[len(folder) :], k)))
    return plan


def download_s3(uri: str, dest: str) -> str:
    """Copy the object ``uri`` names, or every object under it as a folder, to ``dest``.

    Returns the local file (an object) or ``dest`` (a folder).
    """
    bucket, key = split_s3(uri)
    s3 = _s3_client()
    paginator = s3.get_paginator("list_objects_v2")
    keys: list[str] = []
    if key:
        # With the delimiter, only keys at this level list ("key", "key.gz"; "key/" and
        # "key-1.7b/" collapse into common prefixes), so this is one short page whatever lies below.
        level = (
            o["Key"]
            for page in paginator.paginate(Bucket=bucket, Prefix=key, Delimiter="/")
            for o in page.get("Contents", [])
        )
        if key in level:
            keys = [key]
    if not keys:
        keys = [
            o["Key"]
            for page in paginator.paginate(Bucket=bucket, Prefix=f"{key}/" if key else "")
            for o in page.get("Contents", [])
        ]
    plan = s3_plan(uri, keys, dest)
    if not plan:
        raise StorageError(f"{uri}: no such object or prefix")
    for k, local in plan:
        os.makedirs(os.path.dirname(local), exist_ok=True)
        s3.download_file(bucket, k, local)
    return plan[0][1] if plan[0][0] == key else dest


def upload_dir(local: str, uri: str) -> None:
    """Upload every file under ``local`` to ``s3://bucket/prefix``."""
    bucket, prefix = split_s3(uri)
    s3 = _s3_client()
    for root, _, files in os.walk(local):
        for name in files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, local)
            s3.upload_file(path, bucket, f"{prefix}/{rel}" if prefix else rel)


def upload_file(local: str, uri: str) -> None:
    """Upload one file to the object ``s3://bucket/key``."""
    bucket, key = split_s3(uri)
    _s3_client().upload_file(local, bucket, key)


def join_uri(base: str, *parts: str) -> str:
    """Join a local path or s3:// URI with more parts."""
    if base.startswith("s3://"):
        return "/".join([base.rstrip("/"), *parts])
    return os.path.join(base, *parts)


def resolve_source(
    uri: str, cache: str, revision: str | None = None, token_env: str = "HF_TOKEN", kind: str = "model",
    hf_cache: str | None = None, offline: bool = False,
) -> str:
    """A local path for a model or dataset source (downloading s3:// into ``cache`` once;
    hf:// through the hub cache ``hf_cache``, see :func:`resolve_hf`)."""
    if uri.startswith("hf://"):
        return resolve_hf(uri, revision, token_env, kind, hf_cache, offline)
    if uri.startswith("s3://"):
        bucket, key = split_s3(uri)
        # One folder per URI, named by its hash: distinct keys never share a folder.
        digest = hashlib.sha256(f"{bucket}/{key}".encode()).hexdigest()[:16]
        dest = os.path.join(cache, "s3", bucket, digest)
        marker = dest + ".complete"
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        # torchrun's processes in one pod share this cache: one downloads, the others wait for
        # it and read its marker (without the lock, one would delete the other's half-done copy).
        with open(dest + ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if os.path.exists(marker):
                with open(marker) as f:
                    return f.read().strip()
            if os.path.isdir(dest):
                shutil.rmtree(dest)
            log.info("Downloading %s to %s", uri, dest)
            local = download_s3(uri, dest)
            with open(marker, "w") as f:
                f.write(local)
            return local
    path = os.path.expanduser(uri)
    if not os.path.exists(path):
        raise StorageError(f"{uri}: no such file or folder")
    return path
