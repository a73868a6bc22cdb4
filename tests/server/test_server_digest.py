"""The adapter content digest: one format shared by the trainer (writer) and the launcher (checker)."""

from __future__ import annotations

import os
from pathlib import Path

from tuneforge_server.digest import MANIFEST_NAME, digest_of, file_entries, folder_digest, read_manifest
from tuneforge_trainer import lineage

from server_helpers import make_adapter, make_base


def test_trainer_and_server_compute_the_same_digest(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base")
    digest = make_adapter(tmp_path / "a", base)
    assert digest == folder_digest(tmp_path / "a") == read_manifest(tmp_path / "a")["digest"]  # type: ignore[index]
    assert lineage.manifest_files(str(tmp_path / "a")) == file_entries(tmp_path / "a")
    assert digest.startswith("sha256:") and len(digest) == 7 + 64


def test_digest_is_stable_across_file_order_and_creation_order(tmp_path: Path) -> None:
    for name, order in (("x", ["a.bin", "b/c.json", "z.txt"]), ("y", ["z.txt", "b/c.json", "a.bin"])):
        for rel in order:
            p = tmp_path / name / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(rel.encode() * 10)
    entries = file_entries(tmp_path / "x")
    assert folder_digest(tmp_path / "x") == folder_digest(tmp_path / "y") == digest_of(list(reversed(entries)))


def test_one_byte_changes_the_digest_and_metadata_files_do_not(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base")
    before = make_adapter(tmp_path / "a", base)
    (tmp_path / "a" / ".complete").write_text("marker")  # hidden: not content
    (tmp_path / "a" / MANIFEST_NAME).write_text("{}")  # the manifest itself: not content
    assert folder_digest(tmp_path / "a") == before
    weights = tmp_path / "a" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0x01
    weights.write_bytes(bytes(data))
    assert folder_digest(tmp_path / "a") != before


def test_symlinked_files_are_hashed_by_content(tmp_path: Path) -> None:
    # Hub snapshot folders are symlinks into a blob store.
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / "abc").write_bytes(b"weights")
    (tmp_path / "snap").mkdir()
    os.symlink(tmp_path / "blobs" / "abc", tmp_path / "snap" / "model.safetensors")
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "model.safetensors").write_bytes(b"weights")
    assert folder_digest(tmp_path / "snap") == folder_digest(tmp_path / "copy")
