"""Content digests of model and adapter folders, and the adapter manifest the trainer writes.

The digest is the format both sides agree on (the trainer computes it when it saves an adapter,
the launcher recomputes it before vLLM starts; tests/server checks that the two agree):

    sha256( canonical JSON of [{"path", "sha256", "size"} for every file, sorted by path] )

written ``sha256:<hex>``. Paths are POSIX and relative to the folder; the manifest file
(``tuneforge.json``) itself is not part of it, so the manifest can carry the digest, and neither
are hidden files (``.complete`` markers, ``.cache/`` folders of hub downloads): they are not content.

A base model's digest (``base_digest``, what an adapter's lineage records) is the same format
over the files that define the model only: the top-level config, generation config, tokenizer
files and weights (``*.safetensors`` and their index; ``pytorch_model*.bin`` when there is no
safetensors file). A mirror without the Hub snapshot's README, ``original/*.pth`` or ``onnx/``
is the same base. The trainer computes it by the same rule (``tuneforge_trainer.lineage``).
"""

from __future__ import annotations

import hashlib
import json
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

__all__ = ["MANIFEST_NAME", "FileEntry", "base_digest", "base_entries", "digest_of", "file_entries", "folder_digest", "read_manifest"]

BASE_MODEL_PATTERNS = (
    "config.json", "generation_config.json", "tokenizer*", "special_tokens_map.json", "added_tokens.json",
    "vocab.*", "merges.txt", "chat_template.*",
)
SAFETENSORS_PATTERNS = ("*.safetensors", "*.safetensors.index.json")
TORCH_WEIGHT_PATTERNS = ("pytorch_model*.bin", "pytorch_model*.bin.index.json")

MANIFEST_NAME = "tuneforge.json"
_CHUNK = 1 << 20

FileEntry = dict[str, Any]


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_entries(folder: str | Path) -> list[FileEntry]:
    """Every regular file under ``folder`` (symlinks followed; the manifest and hidden files left
    out), sorted by path."""
    root = Path(folder)

    def content(p: Path) -> bool:
        rel = p.relative_to(root)
        return p.is_file() and rel.as_posix() != MANIFEST_NAME and not any(part.startswith(".") for part in rel.parts)

    found = (p for p in root.rglob("*") if content(p))
    return sorted(
        ({"path": p.relative_to(root).as_posix(), "sha256": _sha256_file(p), "size": p.stat().st_size} for p in found),
        key=lambda e: e["path"],
    )


def _base_names(root: Path) -> list[str]:
    names = [p.name for p in root.iterdir() if not p.name.startswith(".") and p.is_file()]
    weights = SAFETENSORS_PATTERNS if any(fnmatch(n, "*.safetensors") for n in names) else TORCH_WEIGHT_PATTERNS
    patterns = (*BASE_MODEL_PATTERNS, *weights)
    return sorted(n for n in names if any(fnmatch(n, p) for p in patterns))


def base_entries(folder: str | Path) -> list[FileEntry]:
    """The files that define the base model in ``folder`` (see the module docstring)."""
    root = Path(folder)
    return [{"path": n, "sha256": _sha256_file(root / n), "size": (root / n).stat().st_size} for n in _base_names(root)]


def base_digest(folder: str | Path, memo_dir: str | Path | None = None) -> str:
    """The base model's digest (what an adapter's lineage records).

    With ``memo_dir`` (the pod's cache) the digest is remembered under the files' names, sizes
    and mtimes: a restarted container whose weights are still in its cache volume does not read
    every byte again (hundreds of GB for a large model). A changed file changes its mtime. Only
    the server process writes there, and a process that could rewrite the memo could rewrite the
    weights beside it."""
    root = Path(folder)
    if memo_dir is None:
        return digest_of(base_entries(root))
    stats = [[n, (root / n).stat().st_size, (root / n).stat().st_mtime_ns] for n in _base_names(root)]
    memo = Path(memo_dir) / ".digests" / (hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:32] + ".json")
    try:
        known = json.loads(memo.read_text(encoding="utf-8"))
        if known.get("files") == stats and isinstance(known.get("digest"), str):
            return str(known["digest"])
    except (OSError, ValueError):
        pass
    digest = digest_of(base_entries(root))
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        part = memo.with_suffix(".part")
        part.write_text(json.dumps({"files": stats, "digest": digest}), encoding="utf-8")
        part.replace(memo)
    except OSError:
        pass  # a read-only or full cache only costs the next start a re-hash
    return digest


def digest_of(entries: list[FileEntry]) -> str:
    """The content digest of a file list (order-independent)."""
    canonical = json.dumps(sorted(entries, key=lambda e: e["path"]), sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def folder_digest(folder: str | Path) -> str:
    """The content digest of a folder's files."""
    return digest_of(file_entries(folder))


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The adapter's ``tuneforge.json`` (digest, files, lineage), or None when it has none."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else None
