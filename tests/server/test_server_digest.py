"""The adapter content digest: one format shared by the trainer (writer) and the launcher (checker)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import shutil

from tuneforge_server.digest import MANIFEST_NAME, base_digest, digest_of, file_entries, folder_digest, read_manifest
from tuneforge_trainer import lineage, storage

from server_helpers import add_hub_extras, make_adapter, make_base


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


def test_base_digest_covers_the_files_that_define_the_model(tmp_path: Path) -> None:
    """SRV-3: the base's lineage digest is over config, tokenizer and safetensors (+ index) only,
    computed the same on both sides: a mirror without the README, original/*.pth or onnx/ of
    the Hub snapshot is the same base; a changed weight or config is not."""
    full = add_hub_extras(make_base(tmp_path / "snapshot"))
    (full / "model.safetensors.index.json").write_text('{"weight_map": {}}')
    (full / "generation_config.json").write_text('{"do_sample": false}')
    mirror = tmp_path / "mirror"
    shutil.copytree(full, mirror, ignore=shutil.ignore_patterns("README.md", "original", "onnx"))
    assert lineage.base_model_digest(str(full)) == base_digest(full) == base_digest(mirror)
    assert folder_digest(full) != folder_digest(mirror)  # the old, whole-folder digest told them apart
    covered = {e["path"] for e in lineage.base_model_files(str(full))}
    assert covered == {"config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json", "tokenizer.json"}
    for rel, data in (("model.safetensors", b"\x09" * 4096), ("config.json", '{"model_type": "qwen2"}'.encode())):
        changed = tmp_path / f"changed-{rel}"
        shutil.copytree(mirror, changed)
        (changed / rel).write_bytes(data)
        assert base_digest(changed) != base_digest(mirror)


def test_a_base_without_safetensors_is_digested_by_its_pytorch_weights(tmp_path: Path) -> None:
    base = make_base(tmp_path / "bin")
    (base / "model.safetensors").unlink()
    (base / "pytorch_model.bin").write_bytes(b"\x07" * 512)
    (base / "training_args.bin").write_bytes(b"\x08")
    assert {e["path"] for e in lineage.base_model_files(str(base))} == {"config.json", "pytorch_model.bin", "tokenizer.json"}
    assert lineage.base_model_digest(str(base)) == base_digest(base)


def test_the_trainer_downloads_what_the_base_digest_covers() -> None:
    """The hub download's allow_patterns take in every file the digest reads (top-level)."""
    from fnmatch import fnmatch

    names = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
             "special_tokens_map.json", "model-00001-of-00002.safetensors", "model.safetensors.index.json", "vocab.json", "merges.txt"]
    assert all(any(fnmatch(n, p) for p in storage.HUB_MODEL_PATTERNS) for n in names)
    assert not any(fnmatch(n, p) for p in storage.HUB_MODEL_PATTERNS for n in ("README.md", "original/consolidated.00.pth", "onnx/model.onnx"))


def test_a_restarted_container_reuses_the_verified_base_digest(tmp_path: Path, monkeypatch: Any) -> None:
    """SRV-2: the base digest is remembered in the cache keyed by the files' sizes and mtimes,
    so a container restart (same emptyDir) does not read every byte of the weights again; a
    changed file is hashed again."""
    from tuneforge_server import digest as server_digest

    base = add_hub_extras(make_base(tmp_path / "base"))
    memo = tmp_path / "cache"
    first = base_digest(base, memo)
    assert first == base_digest(base)

    def no_hashing(path: Path) -> str:
        raise AssertionError(f"hashed {path} again")

    monkeypatch.setattr(server_digest, "_sha256_file", no_hashing)
    assert base_digest(base, memo) == first
    monkeypatch.undo()
    weights = base / "model.safetensors"
    weights.write_bytes(b"\x03" * 4096)  # same size, new content and mtime
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1_000_000_000))
    assert base_digest(base, memo) == base_digest(base) != first
