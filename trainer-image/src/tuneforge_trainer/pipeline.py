"""The three subcommands as functions: ``run_validate``, ``run_train``, ``run_evaluate``.

``run_validate`` is CPU-only and light (no torch import): it loads and prepares the data and
reports bad rows with their row numbers. Training and evaluation live in ``train.py`` and
``evaluate.py`` and are imported only when those subcommands run.
"""

from __future__ import annotations

import logging
import os
import sys

from tuneforge_trainer.config import TrainerConfig
from tuneforge_trainer.data import DataError, PreparedData, prepare_data
from tuneforge_trainer.progress import ProgressReporter, is_rank_zero
from tuneforge_trainer.storage import StorageError, resolve_source
from tuneforge_trainer.summary import TrainerSummary, write_summary

__all__ = ["prepare", "run_evaluate", "run_train", "run_validate"]

log = logging.getLogger(__name__)

MAX_LISTED_ROWS = 50


def cache_dir() -> str:
    """Local cache for s3:// downloads."""
    return os.environ.get("TUNEFORGE_TRAINER_CACHE", "/tmp/tuneforge-cache")


def prepare(cfg: TrainerConfig, token_length=None) -> PreparedData:  # type: ignore[no-untyped-def]
    """Resolve the dataset sources and run data preparation."""

    def resolve(uri: str) -> str:
        try:
            return resolve_source(
                uri, cache_dir(), token_env=cfg.model.token_env, kind="dataset",
                hf_cache=cfg.hub.cache_dir, offline=cfg.hub.offline,
            )
        except StorageError as e:
            raise DataError(f"dataset: {e}") from None

    return prepare_data(cfg, resolve=resolve, token_length=token_length)


def report_data(data: PreparedData, progress: ProgressReporter) -> None:
    """Bad rows to stderr (row numbers and reasons) and a ``data`` progress event."""
    rep = data.report
    for d in rep.dropped[:MAX_LISTED_ROWS]:
        print(f"dropped {d.source} row {d.row}: {d.reason}", file=sys.stderr)
    if len(rep.dropped) > MAX_LISTED_ROWS:
        print(f"... and {len(rep.dropped) - MAX_LISTED_ROWS} more dropped rows", file=sys.stderr)
    for w in rep.warnings:
        log.warning("Data: %s", w)
    progress.emit(
        "data",
        train_rows=len(data.train),
        validation_rows=len(data.validation),
        eval_rows=len(data.eval),
        labels=len(data.labels),
        **{k: v for k, v in rep.to_dict().items() if k not in ("train_counts", "eval_counts", "validation_counts")},
    )


def run_validate(cfg: TrainerConfig) -> int:
    """Check the config, the model source and the data; 0 when training can start."""
    progress = ProgressReporter(cfg.progress_path() if not cfg.output.dir.startswith("s3://") else None)
    src = cfg.model.source
    if "://" not in src and not os.path.exists(os.path.expanduser(src)):
        raise DataError(f"model.source {src}: no such folder")
    data = prepare(cfg)
    report_data(data, progress)
    if is_rank_zero():
        write_summary(
            TrainerSummary(
                status="validated",
                command="validate",
                task=cfg.task.type,
                message=f"{len(data.train)} training rows, {len(data.validation)} validation rows, "
                f"{len(data.eval)} test rows, {len(data.report.dropped)} dropped",
                n_train=len(data.train),
                n_validation=len(data.validation),
                n_eval=len(data.eval),
                n_dropped=len(data.report.dropped),
            ),
            cfg.output.termination_message_path,
        )
    return 0


def run_train(cfg: TrainerConfig) -> int:
    """Validate, train, evaluate and export (see ``train.py``)."""
    from tuneforge_trainer.train import train_main

    return train_main(cfg)


def run_evaluate(cfg: TrainerConfig, adapter: str | None = None, eval_file: str | None = None) -> int:
    """Evaluate an existing adapter on held-out rows (see ``train.py``)."""
    from tuneforge_trainer.train import evaluate_main

    return evaluate_main(cfg, adapter=adapter, eval_file=eval_file)
