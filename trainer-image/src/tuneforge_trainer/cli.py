"""The ``tuneforge-train`` entrypoint: parse arguments and the config, then run one subcommand.

    tuneforge-train validate --config FILE.yaml [--set a.b=v ...] [a.b=v ...]
    tuneforge-train train    --config FILE.yaml [overrides]
    tuneforge-train evaluate --config FILE.yaml [--adapter DIR] [--eval-file FILE] [overrides]
    tuneforge-train schema                      (prints the config's JSON schema)

Exit codes: 0 success, 2 invalid config or arguments, 3 fatal data problem, 1 other failure,
143 preempted by SIGTERM (a checkpoint was saved; rerunning resumes). Heavy libraries are
imported by the subcommands, never here.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Sequence

from tuneforge_trainer.config import ConfigError, TrainerConfig, config_json_schema, load_config
from tuneforge_trainer.summary import TrainerSummary, write_summary

__all__ = ["EXIT_CONFIG", "EXIT_DATA", "EXIT_FAILED", "EXIT_PREEMPTED", "main"]

EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_DATA = 3
EXIT_PREEMPTED = 143

DEFAULT_TERMINATION_PATH = "/dev/termination-log"

log = logging.getLogger("tuneforge_trainer")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tuneforge-train", description="Tuneforge LoRA/QLoRA trainer")
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (
        ("validate", "check the config and the data (CPU only, seconds)"),
        ("train", "validate, train, evaluate and export"),
        ("evaluate", "evaluate an existing adapter on held-out rows"),
    ):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--config", required=True, help="trainer config YAML")
        s.add_argument(
            "--set",
            dest="sets",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config field by dotted path (repeatable), e.g. training.max_steps=50",
        )
        s.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="more overrides")
        s.add_argument("--log-level", default="INFO", help="stderr log level")
        if name == "evaluate":
            s.add_argument("--adapter", help="adapter folder (default: <output.dir>/adapter)")
            s.add_argument("--eval-file", help="held-out file (default: the config's eval rows)")
    sub.add_parser("schema", help="print the config JSON schema")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (also used by ``python -m``)."""
    args = _parser().parse_args(argv)
    if args.command == "schema":
        print(json.dumps(config_json_schema(), indent=2))
        return 0
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        cfg = load_config(args.config, [*args.sets, *args.overrides])
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        _fail_summary(None, args.command, str(e))
        return EXIT_CONFIG
    try:
        if args.command == "validate":
            from tuneforge_trainer.pipeline import run_validate

            return run_validate(cfg)
        if args.command == "train":
            from tuneforge_trainer.pipeline import run_train

            return run_train(cfg)
        from tuneforge_trainer.pipeline import run_evaluate

        return run_evaluate(cfg, adapter=args.adapter, eval_file=args.eval_file)
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line, a summary, non-zero
        from tuneforge_trainer.data import DataError

        # A config that only this device can reject (e.g. bf16 on a GPU without it) is still a
        # config error: retrying on the same node cannot fix it.
        code = EXIT_DATA if isinstance(e, DataError) else EXIT_CONFIG if isinstance(e, ConfigError) else EXIT_FAILED
        msg = f"{type(e).__name__}: {e}" if code == EXIT_FAILED else str(e)
        print(f"error: {msg}", file=sys.stderr)
        if code == EXIT_FAILED:
            traceback.print_exc(file=sys.stderr)
        _fail_summary(cfg, args.command, msg)
        return code


def _fail_summary(cfg: TrainerConfig | None, command: str, message: str) -> None:
    from tuneforge_trainer.progress import ProgressReporter, is_rank_zero

    if not is_rank_zero():
        return
    path = cfg.output.termination_message_path if cfg else DEFAULT_TERMINATION_PATH
    summary = TrainerSummary(status="failed", command=command, message=message.splitlines()[0][:2000])  # type: ignore[arg-type]
    write_summary(summary, path)
    if cfg is not None and command == "train":
        _persist_failure(cfg, summary)
    try:
        ProgressReporter(cfg.progress_path() if cfg else None).emit("error", message=message)
    except OSError:
        pass


def _persist_failure(cfg: TrainerConfig, summary: TrainerSummary) -> None:
    """Best effort: the failed run's summary beside the artifacts, where the operator looks for
    the result when the pod is gone (an earlier run's summary there would otherwise stand)."""
    from tuneforge_trainer.storage import join_uri, upload_file
    from tuneforge_trainer.summary import SUMMARY_FILE, save_summary

    try:
        if cfg.output.dir.startswith("s3://"):
            local = save_summary(summary, os.path.join(cfg.work_dir(), "artifacts"))
            upload_file(local, join_uri(cfg.output.dir, SUMMARY_FILE))
        else:
            save_summary(summary, cfg.output.dir)
    except Exception as e:  # noqa: BLE001 - the run already failed; this must not mask why
        log.warning("Could not save the failure summary to %s: %s", cfg.output.dir, e)


if __name__ == "__main__":
    sys.exit(main())
