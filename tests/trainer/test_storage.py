"""Model/data sources: hf:// against a local hub-cache-shaped folder (offline), local paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneforge_trainer.storage import StorageError, join_uri, resolve_source, split_s3


def fake_hub(root: Path, repo: str, commits: dict[str, str], kind: str = "models") -> None:
    """A folder laid out like huggingface_hub's cache: refs/<rev> -> snapshots/<commit>/."""
    folder = root / f"{kind}--{repo.replace('/', '--')}"
    for ref, commit in commits.items():
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / ref).write_text(commit)
        snap = folder / "snapshots" / commit
        snap.mkdir(parents=True, exist_ok=True)
        (snap / "config.json").write_text(f'{{"rev": "{ref}"}}')


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "hub"
    fake_hub(root, "HuggingFaceTB/SmolLM2-135M-Instruct", {"main": "a" * 40, "v1": "b" * 40})
    fake_hub(root, "org/data", {"main": "c" * 40}, kind="datasets")
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return root


@pytest.mark.parametrize(
    ("uri", "revision", "suffix"),
    [
        ("hf://HuggingFaceTB/SmolLM2-135M-Instruct", None, "a" * 40),
        ("hf://HuggingFaceTB/SmolLM2-135M-Instruct", "v1", "b" * 40),
        ("hf://HuggingFaceTB/SmolLM2-135M-Instruct", "b" * 40, "b" * 40),  # a commit pin
        ("hf://datasets/org/data", None, "c" * 40),
    ],
)
def test_resolve_hf_from_cache(hub: Path, uri: str, revision: str | None, suffix: str) -> None:
    path = resolve_source(uri, "/unused", revision=revision)
    assert path.endswith(suffix) and (Path(path) / "config.json").is_file()


def test_resolve_hf_missing_offline(hub: Path) -> None:
    with pytest.raises(StorageError, match="HF_HUB_OFFLINE"):
        resolve_source("hf://HuggingFaceTB/SmolLM2-135M-Instruct", "/unused", revision="nope")


def test_local_and_uri_helpers(tmp_path: Path) -> None:
    assert resolve_source(str(tmp_path), "/unused") == str(tmp_path)
    with pytest.raises(StorageError, match="no such file"):
        resolve_source(str(tmp_path / "missing"), "/unused")
    assert split_s3("s3://bucket/a/b/") == ("bucket", "a/b")
    assert join_uri("s3://b/p/", "adapter") == "s3://b/p/adapter"
    assert join_uri("/out", "plots", "x.png") == "/out/plots/x.png"
