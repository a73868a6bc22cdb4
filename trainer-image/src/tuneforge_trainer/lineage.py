"""Adapter versions: the content digest of a saved adapter and the lineage written beside it.

The trainer writes ``<adapter>/tuneforge.json``: the adapter's files with their sizes and
sha256, its content digest, and where it came from (base model URI and digest, dataset URI and
digest, the FineTuneJob and revision, the evaluation). The server's launcher recomputes the
digest before vLLM starts. The format is the contract between the two images (they share no
code; tests/server/test_digest.py checks that both compute the same digest):

    digest = "sha256:" + sha256(canonical JSON of [{"path", "sha256", "size"}, ...] sorted by path)

over every regular file of the folder except the manifest itself and hidden files. The base
model's digest in the lineage (``base_model_digest``) is the same format over the files that
define the model only: the top-level config, generation config, tokenizer files and weights
(``*.safetensors`` and their index; ``pytorch_model*.bin`` when there is no safetensors file).
A mirror of the base without the Hub snapshot's README, ``original/*.pth`` or ``onnx/`` is the
same base; the server computes it by the same rule (tests/server/test_server_digest.py). No
torch import: the operator may import this module.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from fnmatch import fnmatch
from typing import Any

__all__ = [
    "BASE_MODEL_PATTERNS", "MANIFEST_API_VERSION", "MANIFEST_NAME", "SAFETENSORS_PATTERNS", "TORCH_WEIGHT_PATTERNS",
    "base_model_digest", "base_model_files", "content_digest", "digest_rows", "manifest_files", "write_manifest",
]

MANIFEST_NAME = "tuneforge.json"
MANIFEST_API_VERSION = "tuneforge.dev/adapter-manifest/v1"
# The files that define a base model besides its weights (top-level names, fnmatch patterns).
BASE_MODEL_PATTERNS = (
    "config.json", "generation_config.json", "tokenizer*", "special_tokens_map.json", "added_tokens.json",
    "vocab.*", "merges.txt", "chat_template.*",
)
SAFETENSORS_PATTERNS = ("*.safetensors", "*.safetensors.index.json")
TORCH_WEIGHT_PATTERNS = ("pytorch_model*.bin", "pytorch_model*.bin.index.json")


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest_files(folder: str) -> list[dict[str, Any]]:
    """The content files of ``folder`` as ``{"path", "sha256", "size"}``, sorted by path."""
    out: list[dict[str, Any]] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for fn in filenames:
            full = os.path.join(dirpath, fn)
            rel = os.path.relpath(full, folder).replace(os.sep, "/")
            if fn.startswith(".") or rel == MANIFEST_NAME or not os.path.isfile(full):
                continue
            out.append({"path": rel, "sha256": _file_sha256(full), "size": os.path.getsize(full)})
    out.sort(key=lambda e: str(e["path"]))
    return out


def base_model_files(folder: str) -> list[dict[str, Any]]:
    """The files that define the base model in ``folder`` (see the module docstring), as
    ``manifest_files`` lists them."""
    names = [n for n in os.listdir(folder) if not n.startswith(".") and os.path.isfile(os.path.join(folder, n))]
    weights = SAFETENSORS_PATTERNS if any(fnmatch(n, "*.safetensors") for n in names) else TORCH_WEIGHT_PATTERNS
    patterns = (*BASE_MODEL_PATTERNS, *weights)
    chosen = sorted(n for n in names if any(fnmatch(n, p) for p in patterns))
    return [{"path": n, "sha256": _file_sha256(os.path.join(folder, n)), "size": os.path.getsize(os.path.join(folder, n))} for n in chosen]


def base_model_digest(folder: str) -> str:
    """The base model's digest recorded in an adapter's lineage."""
    return content_digest(base_model_files(folder))


def content_digest(files: list[dict[str, Any]]) -> str:
    """``sha256:<hex>`` of the canonical file list (see the module docstring)."""
    text = json.dumps(sorted(files, key=lambda e: e["path"]), sort_keys=True, separators=(",", ":"))
    return f"sha256:{hashlib.sha256(text.encode()).hexdigest()}"


def digest_rows(rows: Iterable[Any]) -> str:
    """``sha256:<hex>`` of data rows as the trainer used them (canonical JSON lines, in order)."""
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode())
        h.update(b"\n")
    return f"sha256:{h.hexdigest()}"


def write_manifest(folder: str, lineage: dict[str, Any]) -> str:
    """Write ``<folder>/tuneforge.json`` and return the adapter's content digest."""
    files = manifest_files(folder)
    digest = content_digest(files)
    path = os.path.join(folder, MANIFEST_NAME)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"apiVersion": MANIFEST_API_VERSION, "digest": digest, "files": files, "lineage": lineage}, f, indent=2, sort_keys=True)
    os.chmod(path, 0o644)
    return digest
