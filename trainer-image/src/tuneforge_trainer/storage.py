"""Where models, data and artifacts live: local paths, ``hf://`` ids and ``s3://`` URIs.

``hf://org/name`` resolves against the Hugging Face hub cache laid out as ``huggingface_hub``
writes it (``models--org--name/{refs,snapshots}``); with ``HF_HUB_OFFLINE=1`` nothing is
downloaded. ``s3://`` goes through boto3 (endpoint from ``AWS_ENDPOINT_URL``). boto3 and
huggingface_hub are imported inside the functions that use them.
"""

from __future__ import annotations

import hashlib
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
    "s3_plan",
    "split_s3",
    "upload_dir",
    "upload_file",
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
    keys: list[str] = []
    if key:
        # Keys list in byte order, so the object itself (if any) comes before "key.gz" or "key/..."
        first = s3.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1).get("Contents", [])
        if first and first[0]["Key"] == key:
            keys = [key]
    if not keys:
        paginator = s3.get_paginator("list_objects_v2")
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


def resolve_source(uri: str, cache: str, revision: str | None = None, token_env: str = "HF_TOKEN", kind: str = "model") -> str:
    """A local path for a model or dataset source (downloading s3:// into ``cache`` once)."""
    if uri.startswith("hf://"):
        return resolve_hf(uri, revision, token_env, kind)
    if uri.startswith("s3://"):
        bucket, key = split_s3(uri)
        # One folder per URI, named by its hash: distinct keys never share a folder.
        digest = hashlib.sha256(f"{bucket}/{key}".encode()).hexdigest()[:16]
        dest = os.path.join(cache, "s3", bucket, digest)
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
