"""Where models, data and artifacts live: local paths, ``hf://`` ids and ``s3://`` URIs.

``hf://org/name`` resolves against the Hugging Face hub cache laid out as ``huggingface_hub``
writes it (``models--org--name/{refs,snapshots}``); with ``HF_HUB_OFFLINE=1`` nothing is
downloaded. ``s3://`` goes through boto3 (endpoint from ``AWS_ENDPOINT_URL``). boto3 and
huggingface_hub are imported inside the functions that use them.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

__all__ = [
    "StorageError",
    "download_s3",
    "hf_cache_dir",
    "join_uri",
    "resolve_hf",
    "resolve_source",
    "split_s3",
    "upload_dir",
]

log = logging.getLogger(__name__)


class StorageError(RuntimeError):
    """A source that cannot be found or fetched."""


def hf_cache_dir() -> Path:
    """The hub cache folder (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home) / "hub"


def resolve_hf(uri: str, revision: str | None = None, token_env: str = "HF_TOKEN", kind: str = "model") -> str:
    """Local snapshot folder of ``hf://org/name`` (``hf://datasets/org/name`` for datasets)."""
    repo = uri[len("hf://") :].strip("/")
    if repo.startswith("datasets/"):
        kind, repo = "dataset", repo[len("datasets/") :]
    rev = revision or "main"
    folder = hf_cache_dir() / f"{kind}s--{repo.replace('/', '--')}"
    commit = rev
    ref = folder / "refs" / rev
    if ref.is_file():
        commit = ref.read_text().strip()
    snap = folder / "snapshots" / commit
    if snap.is_dir():
        return str(snap)
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise StorageError(f"{uri}@{rev}: not in the hub cache {hf_cache_dir()} and HF_HUB_OFFLINE is set")
    from huggingface_hub import snapshot_download

    return str(
        snapshot_download(
            repo_id=repo, revision=rev, repo_type=kind, token=os.environ.get(token_env) or None,
            cache_dir=str(hf_cache_dir()),
        )
    )


def split_s3(uri: str) -> tuple[str, str]:
    """('bucket', 'key/prefix') of an s3:// URI."""
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    return bucket, key.strip("/")


def _s3_client():  # type: ignore[no-untyped-def]
    import boto3

    return boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)


def download_s3(uri: str, dest: str) -> str:
    """Copy an object or every object under a prefix to ``dest``; returns the local path."""
    bucket, key = split_s3(uri)
    s3 = _s3_client()
    paginator = s3.get_paginator("list_objects_v2")
    keys = [
        o["Key"]
        for page in paginator.paginate(Bucket=bucket, Prefix=key)
        for o in page.get("Contents", [])
    ]
    if not keys:
        raise StorageError(f"{uri}: no such object or prefix")
    if keys == [key]:
        os.makedirs(dest, exist_ok=True)
        local = os.path.join(dest, os.path.basename(key))
        s3.download_file(bucket, key, local)
        return local
    for k in keys:
        rel = os.path.relpath(k, key) if key else k
        local = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(local), exist_ok=True)
        s3.download_file(bucket, k, local)
    return dest


def upload_dir(local: str, uri: str) -> None:
    """Upload every file under ``local`` to ``s3://bucket/prefix``."""
    bucket, prefix = split_s3(uri)
    s3 = _s3_client()
    for root, _, files in os.walk(local):
        for name in files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, local)
            s3.upload_file(path, bucket, f"{prefix}/{rel}" if prefix else rel)


def join_uri(base: str, *parts: str) -> str:
    """Join a local path or s3:// URI with more parts."""
    if base.startswith("s3://"):
        return "/".join([base.rstrip("/"), *parts])
    return os.path.join(base, *parts)


def resolve_source(uri: str, cache: str, revision: str | None = None, token_env: str = "HF_TOKEN", kind: str = "model") -> str:
    """A local path for a model or dataset source (downloading s3:// into ``cache`` once)."""
    if uri.startswith("hf://"):
        return resolve_hf(uri, revision, token_env, kind)
    if uri.startswith("s3://"):
        bucket, key = split_s3(uri)
        dest = os.path.join(cache, "s3", bucket, key.replace("/", "__") or "_root")
        marker = dest + ".complete"
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
