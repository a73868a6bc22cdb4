"""s3:// downloads without a server: which keys a URI names and where each lands.

A small in-memory client (trainer_helpers.FakeS3) stands in for boto3: ``Prefix``,
``Delimiter``, pagination; the real S3-compatible server is exercised by test_s3.py on the local
cluster.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer_helpers import FakeS3
from tuneforge_trainer import storage
from tuneforge_trainer.storage import StorageError, resolve_source, s3_plan, split_s3

BUCKET = {
    "models/smollm2/config.json": b"{}",
    "models/smollm2/model.safetensors": b"w",
    "models/smollm2/sub/tokenizer.json": b"t",
    "models/smollm2/": b"",  # a folder marker, as consoles create them
    "models/smollm2-1.7b/config.json": b"big",
    "models/smollm2-1.7b/model.safetensors": b"BIG",
    "data/train.csv": b"text,label\n",
    "data/train.csv.gz": b"gz",
    "data/train.csv.bak/x": b"x",
}


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeS3:
    s3 = FakeS3(dict(BUCKET))
    monkeypatch.setattr(storage, "_s3_client", lambda: s3)
    return s3


def test_prefix_ends_at_a_slash(fake: FakeS3, tmp_path: Path) -> None:
    out = storage.download_s3("s3://b/models/smollm2", str(tmp_path / "m"))
    assert out == str(tmp_path / "m")
    assert sorted(fake.downloaded) == [
        "models/smollm2/config.json", "models/smollm2/model.safetensors", "models/smollm2/sub/tokenizer.json",
    ]
    got = sorted(str(p.relative_to(tmp_path / "m")) for p in (tmp_path / "m").rglob("*") if p.is_file())
    assert got == ["config.json", "model.safetensors", "sub/tokenizer.json"]
    # a trailing slash names the same folder
    fake.downloaded.clear()
    storage.download_s3("s3://b/models/smollm2/", str(tmp_path / "m2"))
    assert len(fake.downloaded) == 3


def test_an_object_is_exactly_that_object(fake: FakeS3, tmp_path: Path) -> None:
    out = storage.download_s3("s3://b/data/train.csv", str(tmp_path / "d"))
    assert out == str(tmp_path / "d" / "train.csv")
    assert fake.downloaded == ["data/train.csv"]
    assert Path(out).read_bytes() == b"text,label\n"
    # Found without relying on listing order, and without listing what lies below the prefix.
    assert fake.listed == [("data/train.csv", "/")]


def test_the_object_is_found_among_many_siblings(fake: FakeS3, tmp_path: Path) -> None:
    for i in range(7):
        fake.objects[f"data/train.csv.{i}.bak"] = b"old"
    fake.objects = dict(sorted(fake.objects.items(), reverse=True))  # order must not matter
    out = storage.download_s3("s3://b/data/train.csv", str(tmp_path / "d"))
    assert fake.downloaded == ["data/train.csv"] and Path(out).name == "train.csv"


def test_missing_object_or_prefix(fake: FakeS3, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="no such object"):
        storage.download_s3("s3://b/models/smoll", str(tmp_path / "x"))  # a mere string prefix is not a folder
    with pytest.raises(StorageError, match="no such object"):
        storage.download_s3("s3://b/data/train", str(tmp_path / "x"))


@pytest.mark.parametrize(
    "key",
    [
        "models/smollm2/../../escape.txt",
        "models/smollm2/sub/../../../escape.txt",
        "models/smollm2//etc/passwd",
        "models/smollm2/./config.json",
    ],
)
def test_no_key_writes_outside_the_destination(fake: FakeS3, tmp_path: Path, key: str) -> None:
    fake.objects[key] = b"evil"
    with pytest.raises(StorageError, match="refusing S3 key"):
        storage.download_s3("s3://b/models/smollm2", str(tmp_path / "dest"))
    assert not (tmp_path / "escape.txt").exists()
    assert fake.downloaded == []  # the whole listing is checked before anything is written


def test_symlinked_destination_parent_still_contained(tmp_path: Path) -> None:
    # A key can only name paths below dest, even when dest is reached through a symlink.
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    plan = s3_plan("s3://b/p", ["p/a/b.txt"], str(tmp_path / "link"))
    assert plan == [("p/a/b.txt", str(real / "a" / "b.txt"))]


@pytest.mark.parametrize("uri", ["s3://b/..", "s3://b/a/../b", "s3://../x", "s3:///key", "s3://b/./x"])
def test_dot_segments_in_uris_are_rejected(uri: str) -> None:
    with pytest.raises(StorageError, match="segments"):
        split_s3(uri)


def test_cache_folders_are_distinct_per_uri(fake: FakeS3, tmp_path: Path) -> None:
    # The cache folder used to be the key with '/' turned into '__': 'a/b' and 'a__b' collided.
    fake.objects["data__train.csv"] = b"other"
    a = resolve_source("s3://b/data/train.csv", str(tmp_path / "cache"), kind="dataset")
    b = resolve_source("s3://b/data__train.csv", str(tmp_path / "cache"), kind="dataset")
    assert a != b and Path(a).read_bytes() == b"text,label\n" and Path(b).read_bytes() == b"other"
    # and a second resolve is served from the cache
    n = len(fake.downloaded)
    assert resolve_source("s3://b/data/train.csv", str(tmp_path / "cache"), kind="dataset") == a
    assert len(fake.downloaded) == n
