"""Bring the base model and the adapters into the pod before vLLM starts.

``pvc://claim/path`` is a PersistentVolumeClaim the pod mounts under ``pvc_root``; a plain path
or ``file://`` is used where it is; ``s3://bucket/prefix`` is copied into ``cache_dir`` (endpoint
and credentials from the usual ``AWS_*`` variables). Nothing is downloaded from a model hub.

An S3 prefix names a folder: it ends at a ``/`` boundary (``models/smollm2`` never picks up
``models/smollm2-1.7b/…``), and no key may land outside the destination folder.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

from tuneforge_server.config import ServerConfig

__all__ = ["FetchError", "fetch", "local_path", "s3_destination"]

log = logging.getLogger(__name__)

PARALLEL_FILES = 8


class FetchError(RuntimeError):
    """A source that cannot be brought into the pod; the message names the URI."""


def local_path(uri: str, cfg: ServerConfig) -> Path | None:
    """Where a non-S3 source is in the pod (None for s3://)."""
    if uri.startswith("s3://"):
        return None
    if uri.startswith("pvc://"):
        return Path(cfg.pvc_root) / uri.removeprefix("pvc://")
    return Path(uri.removeprefix("file://"))


def s3_destination(dest: Path, prefix: str, key: str) -> Path | None:
    """The local file for ``key`` under folder ``prefix``; None when the key is not inside the
    folder (another folder sharing the prefix's characters) or is a folder marker. Raises
    ``FetchError`` for a key that would land outside ``dest``."""
    folder = prefix.rstrip("/") + "/"
    if not key.startswith(folder) or key.endswith("/"):
        return None
    rel = PurePosixPath(key[len(folder):])
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise FetchError(f"s3 key {key!r} would be written outside {dest}")
    return dest.joinpath(*rel.parts)


def _s3_client():  # type: ignore[no-untyped-def]
    import boto3  # heavy; only when an s3:// source is used
    from botocore.config import Config

    return boto3.client("s3", config=Config(retries={"max_attempts": 8, "mode": "adaptive"}, s3={"addressing_style": "path"}))


def _fetch_s3(uri: str, dest: Path) -> Path:
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    if not bucket or not prefix.strip("/"):
        raise FetchError(f"{uri}: needs s3://bucket/folder")
    client = _s3_client()
    todo: list[tuple[str, Path]] = []
    count = 0
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix.rstrip("/") + "/"):
            for obj in page.get("Contents", []):
                target = s3_destination(dest, prefix, obj["Key"])
                if target is None:
                    continue
                count += 1
                if target.is_file() and target.stat().st_size == obj["Size"]:
                    continue  # already fetched (a restarted container keeps its cache volume)
                todo.append((obj["Key"], target))

        def download(key: str, target: Path) -> None:
            target.parent.mkdir(parents=True, exist_ok=True)
            part = target.with_name(target.name + ".part")
            client.download_file(bucket, key, str(part))
            os.replace(part, target)

        # A large model is many shards: several at a time (boto3 clients are thread-safe, and each
        # file is itself a multipart download), not one after another.
        with ThreadPoolExecutor(max_workers=PARALLEL_FILES) as pool:
            for done in [pool.submit(download, key, target) for key, target in todo]:
                done.result()
    except FetchError:
        raise
    except Exception as e:  # noqa: BLE001 - botocore's errors have no common base worth naming
        raise FetchError(f"{uri}: {type(e).__name__}: {e}") from None
    if count == 0:
        raise FetchError(f"{uri}: no objects under s3://{bucket}/{prefix.rstrip('/')}/")
    return dest


def fetch(uri: str, cfg: ServerConfig) -> Path:
    """A local folder holding ``uri``'s files."""
    path = local_path(uri, cfg)
    if path is not None:
        if not path.is_dir():
            raise FetchError(f"{uri}: no such folder in the pod ({path})")
        return path
    bucket_and_prefix = uri.removeprefix("s3://").strip("/")
    dest = Path(cfg.cache_dir) / "s3" / bucket_and_prefix
    log.info("Fetching %s into %s", uri, dest)
    return _fetch_s3(uri, dest)
