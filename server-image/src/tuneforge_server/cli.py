"""The ``tuneforge-server`` entrypoint.

    tuneforge-server launch    --config FILE   fetch, pre-flight, (merge,) then exec vLLM's OpenAI server
    tuneforge-server preflight --config FILE   fetch and pre-flight only
    tuneforge-server probe     --config FILE   readiness: every configured model is listed (by hand; the
                                               pod's probe is the lighter ``python -S -m tuneforge_server.probe``)
    tuneforge-server probe     --config FILE --liveness   /health answers
    tuneforge-server args      --config FILE   print the vLLM command line (paths as configured)

Exit codes: 0 ok, 1 other failure, 2 invalid config, 3 pre-flight refused an adapter or the
base, 4 a source could not be fetched. A failure prints one line naming the field, with the
traceback for unexpected errors, and writes it to the termination-message file so that
``kubectl describe pod`` shows it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from tuneforge_server.args import VLLM_MODULE, ServedAdapter, build_vllm_args, build_vllm_env, served_names
from tuneforge_server.config import ConfigError, ServerConfig, load_config, resolved_device, resolved_mode

__all__ = ["EXIT_CONFIG", "EXIT_FETCH", "EXIT_PREFLIGHT", "main"]

EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_PREFLIGHT = 3
EXIT_FETCH = 4
TERMINATION_LOG = "/dev/termination-log"

log = logging.getLogger("tuneforge_server")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tuneforge-server", description="Tuneforge vLLM server launcher")
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (
        ("launch", "fetch, pre-flight and start vLLM's OpenAI-compatible server"),
        ("preflight", "fetch and pre-flight the base model and adapters, then exit"),
        ("probe", "readiness (or --liveness) probe of the local server"),
        ("args", "print the vLLM command line"),
    ):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--config", required=True, help="server config YAML")
        if name == "probe":
            s.add_argument("--liveness", action="store_true", help="check /health instead of the served models")
            s.add_argument("--timeout", type=float, default=3.0, help="seconds per HTTP request")
    return p


def _termination(message: str) -> None:
    path = os.environ.get("TUNEFORGE_TERMINATION_LOG", TERMINATION_LOG)
    if os.path.exists(path):
        try:
            Path(path).write_text(message[:4000], encoding="utf-8")
        except OSError:
            pass


def pod_cpus(cpu_max: str = "/sys/fs/cgroup/cpu.max") -> int:
    """The cores this process may use: the cgroup v2 CPU limit (a pod's ``resources.limits.cpu``),
    rounded up, within the CPUs it is allowed to run on."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = Path(cpu_max).read_text().split()[:2]
    except (OSError, ValueError):
        return cores
    if quota == "max":
        return cores
    return max(1, min(cores, -(-int(quota) // int(period))))


def write_ready_file(cfg: ServerConfig, mode: str, tmp: str | Path | None = None) -> Path:
    """Tell the readiness probe what to check (see ``tuneforge_server.probe``)."""
    from tuneforge_server import probe

    return probe.write(cfg.port, served_names(cfg, mode), cfg.api_key_env, tmp)


def prepare(cfg: ServerConfig) -> tuple[list[str], dict[str, str]]:
    """Fetch and pre-flight everything; the vLLM argv and environment to exec."""
    from tuneforge_server import headers
    from tuneforge_server.fetch import fetch
    from tuneforge_server.preflight import preflight

    device = resolved_device(cfg)
    mode = resolved_mode(cfg, device)
    env = build_vllm_env(cfg, device, os.environ, pod_cpus())
    base = fetch(cfg.model.uri, cfg)
    folders = [fetch(a.uri, cfg) for a in cfg.adapters]
    checked = preflight(cfg, base, folders)
    for a in checked:
        job = a.lineage.get("fineTuneJob") or {}
        log.info(
            "Adapter %s passed pre-flight: digest %s, rank %d%s", a.name, a.digest[:19], a.rank,
            f", from FineTuneJob {job.get('namespace')}/{job.get('name')} revision {job.get('revision')}" if job else "",
        )
    env[headers.ENV] = headers.header_value({a.name: a.digest for a in checked})
    model_path = base
    if mode == "merged":
        from tuneforge_server.merge import merge

        model_path = merge(base, checked[0].path, checked[0].digest, Path(cfg.cache_dir), device, cfg.head)
    elif cfg.head == "classifier":
        from tuneforge_server.merge import classifier_base

        model_path = classifier_base(base, checked[0].path, Path(cfg.cache_dir))
    if cfg.head == "classifier":
        log.info("Classifier labels (class index order): %s", ", ".join(checked[0].labels))
    for var in ("VLLM_CACHE_ROOT", "VLLM_RPC_BASE_PATH", "HF_HOME"):
        Path(env[var]).mkdir(parents=True, exist_ok=True)
    served = [ServedAdapter(a.name, a.path, a.rank) for a in checked]
    argv = [sys.executable, "-m", VLLM_MODULE, *build_vllm_args(cfg, model_path, served, device, mode)]
    write_ready_file(cfg, mode)
    log.info("Serving %s in %s mode on %s: %s", ", ".join(served_names(cfg, mode)), mode, device, " ".join(argv[3:]))
    return argv, env


def _probe(cfg: ServerConfig, liveness: bool, timeout: float) -> int:
    from tuneforge_server.probe import api_key, check_health, check_ready

    device = resolved_device(cfg)
    if liveness:
        ok, msg = check_health(cfg.port, timeout)
    else:
        ok, msg = check_ready(cfg.port, served_names(cfg, resolved_mode(cfg, device)), api_key(cfg.api_key_env), timeout)
    print(msg)
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (``launch`` does not return when vLLM starts)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        _termination(str(e))
        return EXIT_CONFIG
    if args.command == "probe":
        return _probe(cfg, args.liveness, args.timeout)
    if args.command == "args":
        device = resolved_device(cfg)
        mode = resolved_mode(cfg, device)
        served = [ServedAdapter(a.name, Path(a.uri), cfg.max_lora_rank or 16) for a in cfg.adapters]
        print(" ".join(["python", "-m", VLLM_MODULE, *build_vllm_args(cfg, Path(cfg.model.uri), served, device, mode)]))
        return 0
    from tuneforge_server.fetch import FetchError
    from tuneforge_server.preflight import PreflightError

    try:
        vllm_argv, env = prepare(cfg)
    except (PreflightError, FetchError, ValueError) as e:
        code = EXIT_PREFLIGHT if isinstance(e, PreflightError) else EXIT_FETCH if isinstance(e, FetchError) else EXIT_CONFIG
        kind = "pre-flight failed" if code == EXIT_PREFLIGHT else "error"
        print(f"{kind}: {e}", file=sys.stderr)
        _termination(f"{kind}: {e}")
        return code
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line, the traceback, non-zero
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        traceback.print_exc(file=sys.stderr)
        _termination(f"{type(e).__name__}: {e}")
        return EXIT_FAILED
    if args.command == "preflight":
        return 0
    sys.stdout.flush()
    sys.stderr.flush()
    # exec: vLLM becomes the container's main process and receives SIGTERM itself (drain).
    os.execve(vllm_argv[0], vllm_argv, env)
    return EXIT_FAILED  # not reached
