"""Checkpoints that outlive the pod: mirrored to the output store and fetched back on resume.

Every checkpoint folder gets a ``.complete`` marker once the Trainer has saved it whole, and
only marked ones are resumed (:func:`last_complete`): with a local or PVC output the work folder
is the output folder, so checkpoints persist already, and one cut halfway (SIGKILL at the end of
the grace period, an OOM, a lost node) must not be resumed.
With an ``s3://`` output the work folder is pod-local (an emptyDir): every checkpoint the Trainer
saves is uploaded to ``<store>/checkpoint-<step>/`` with a ``.complete`` marker written last (a
half-uploaded checkpoint is never resumed), checkpoints beyond ``training.save_total_limit`` are
deleted there (marker first), and a new pod without a local checkpoint downloads the newest
complete one before training. boto3 is imported by :mod:`tuneforge_trainer.storage` only.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil

from tuneforge_trainer import storage
from tuneforge_trainer.storage import download_s3, join_uri, split_s3, upload_dir

__all__ = ["MARKER", "RUN_FILE", "check_run", "fetch_latest", "last_complete", "mark_complete", "record_run",
           "remote_steps", "upload_checkpoint"]

log = logging.getLogger(__name__)

MARKER = ".complete"
# Written into every checkpoint folder: which run (output.run_id) saved it.
RUN_FILE = "tuneforge-run.json"
_STEP = re.compile(r"(?:^|/)checkpoint-(\d+)/" + re.escape(MARKER) + "$")
_FOLDER = re.compile(r"^checkpoint-(\d+)$")


def mark_complete(checkpoint: str) -> None:
    """Mark a saved checkpoint folder whole (written after everything else in it)."""
    if os.path.isdir(checkpoint):
        with open(os.path.join(checkpoint, MARKER), "w"):
            pass


def last_complete(folder: str) -> str | None:
    """The newest marked ``checkpoint-<step>`` folder in ``folder`` (None: none)."""
    if not os.path.isdir(folder):
        return None
    steps = [(int(m.group(1)), name) for name in os.listdir(folder)
             if (m := _FOLDER.match(name)) and os.path.isfile(os.path.join(folder, name, MARKER))]
    return os.path.join(folder, max(steps)[1]) if steps else None


def _keys(uri: str) -> list[str]:
    bucket, prefix = split_s3(uri)
    pages = storage._s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/" if prefix else "")
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def remote_steps(store: str) -> list[int]:
    """Steps of the complete checkpoints under ``store``, oldest first."""
    return sorted({int(m.group(1)) for k in _keys(store) if (m := _STEP.search(k))})


def upload_checkpoint(local: str, store: str, keep: int) -> str:
    """Upload the checkpoint folder ``local`` (``.../checkpoint-<step>``), then its marker; delete
    the complete checkpoints beyond the newest ``keep``. Returns the checkpoint's URI."""
    name = os.path.basename(local.rstrip("/"))
    uri = join_uri(store, name)
    upload_dir(local, uri)
    bucket, key = split_s3(join_uri(uri, MARKER))
    s3 = storage._s3_client()
    s3.put_object(Bucket=bucket, Key=key, Body=b"")
    steps = remote_steps(store)
    for step in steps[: max(0, len(steps) - keep)]:
        old = join_uri(store, f"checkpoint-{step}")
        _, old_prefix = split_s3(old)
        # The marker goes first: a checkpoint deleted halfway must not look complete.
        s3.delete_object(Bucket=bucket, Key=f"{old_prefix}/{MARKER}")
        rest = _keys(old)
        for i in range(0, len(rest), 1000):
            s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in rest[i : i + 1000]]})
    return uri


def fetch_latest(store: str, local_dir: str) -> str | None:
    """Download the newest complete checkpoint under ``store`` into ``local_dir``; its path, or
    None when the store holds none."""
    steps = remote_steps(store)
    if not steps:
        return None
    name = f"checkpoint-{steps[-1]}"
    dest = os.path.join(local_dir, name)
    tmp = dest + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    download_s3(join_uri(store, name), tmp)
    mark_complete(tmp)  # the store's marker came along; the local copy is as whole
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)  # the Trainer only ever sees a whole checkpoint
    log.info("Fetched checkpoint %s from %s", name, store)
    return dest


def record_run(checkpoint: str, run_id: str | None) -> None:
    """Note in a checkpoint folder which run saved it (nothing to note without a run id)."""
    if run_id and os.path.isdir(checkpoint):
        with open(os.path.join(checkpoint, RUN_FILE), "w", encoding="utf-8") as f:
            json.dump({"run_id": run_id}, f)


def check_run(checkpoint: str, run_id: str | None) -> None:
    """Refuse to resume another run's checkpoint: a FineTuneJob deleted and re-created under the
    same name (a GitOps replace) must not continue the old one's training, perhaps of another spec.

    Raises :class:`~tuneforge_trainer.config.ConfigError` naming both runs; a checkpoint without a
    record (an older trainer) or a run without an id is not checked.
    """
    from tuneforge_trainer.config import ConfigError

    path = os.path.join(checkpoint, RUN_FILE)
    if not run_id or not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        theirs = json.load(f).get("run_id")
    if theirs and theirs != run_id:
        raise ConfigError(
            f"training.resume: the checkpoint {checkpoint} belongs to run {theirs!r}, not this run "
            f"{run_id!r} (output.run_id); give this run its own output location or set "
            "training.resume: false"
        )
