"""Checkpoints that outlive the pod (s3:// outputs): mirrored when saved, fetched by a new pod."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer_helpers import FakeS3
from tuneforge_trainer import storage
from tuneforge_trainer.checkpoints import (
    MARKER, check_run, fetch_latest, last_complete, record_run, remote_steps, upload_checkpoint,
)
from tuneforge_trainer.config import parse_config

STORE = "s3://b/runs/r1/checkpoints"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeS3:
    s3 = FakeS3({})
    monkeypatch.setattr(storage, "_s3_client", lambda: s3)
    return s3


def checkpoint(root: Path, step: int) -> Path:
    d = root / f"checkpoint-{step}"
    (d / "sub").mkdir(parents=True)
    (d / "adapter_model.safetensors").write_bytes(b"w%d" % step)
    (d / "sub" / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
    return d


def test_upload_keeps_the_newest_and_marks_them_complete(fake: FakeS3, tmp_path: Path) -> None:
    for step in (10, 20, 30):
        upload_checkpoint(str(checkpoint(tmp_path, step)), STORE, keep=2)
    assert remote_steps(STORE) == [20, 30]
    assert not any("checkpoint-10/" in k for k in fake.objects)
    assert f"runs/r1/checkpoints/checkpoint-30/{MARKER}" in fake.objects
    assert fake.objects["runs/r1/checkpoints/checkpoint-30/sub/trainer_state.json"] == b'{"global_step": 30}'


def test_a_new_pod_fetches_the_newest_complete_checkpoint(fake: FakeS3, tmp_path: Path) -> None:
    for step in (20, 30):
        upload_checkpoint(str(checkpoint(tmp_path / "old-pod", step)), STORE, keep=2)
    fake.objects["runs/r1/checkpoints/checkpoint-40/adapter_model.safetensors"] = b"half"  # no marker
    got = fetch_latest(STORE, str(tmp_path / "new-pod"))
    assert got == str(tmp_path / "new-pod" / "checkpoint-30")
    # The marker comes along: the local copy is complete, and resumed from.
    assert sorted(p.name for p in Path(got).rglob("*")) == [MARKER, "adapter_model.safetensors", "sub", "trainer_state.json"]
    assert last_complete(str(tmp_path / "new-pod")) == got
    assert fetch_latest("s3://b/empty", str(tmp_path / "x")) is None


def test_where_checkpoints_persist() -> None:
    base = {"model": {"source": "/m"}, "dataset": {"source": "/d.csv"}}
    assert parse_config(base | {"output": {"dir": "/pvc/out"}}).checkpoint_store() is None
    assert parse_config(base | {"output": {"dir": "s3://b/runs/r1/"}}).checkpoint_store() == STORE
    cfg = parse_config(base | {"output": {"dir": "/pvc/out", "checkpoint_uri": "s3://c/ck/"}})
    assert cfg.checkpoint_store() == "s3://c/ck"
    with pytest.raises(Exception, match="output.checkpoint_uri"):
        parse_config(base | {"output": {"dir": "/o", "checkpoint_uri": "/local"}})


def test_a_checkpoint_of_another_run_is_refused(tmp_path: Path) -> None:
    from tuneforge_trainer.config import ConfigError

    ck = checkpoint(tmp_path, 5)
    check_run(str(ck), "uid-2/r1")  # no record (an older trainer): not checked
    record_run(str(ck), "uid-1/r1")
    check_run(str(ck), "uid-1/r1")
    check_run(str(ck), None)
    with pytest.raises(ConfigError, match="output.run_id"):
        check_run(str(ck), "uid-2/r1")


def test_a_checkpoint_cut_mid_write_is_not_resumed(tmp_path: Path) -> None:
    """A PVC output: the Trainer writes checkpoint-<step> in place; SIGKILL, an OOM or a lost node
    can end it halfway. Only checkpoints the trainer marked complete after saving are resumed."""
    from transformers.trainer_utils import get_last_checkpoint

    from tuneforge_trainer.train import _progress_callback

    class Progress:
        def emit(self, event: str, **kw: object) -> None:
            pass

    saved = checkpoint(tmp_path, 10)
    callback = _progress_callback(Progress(), None, None, 2, "uid-1/r1")  # type: ignore[arg-type]
    args, state = type("A", (), {"output_dir": str(tmp_path)})(), type("S", (), {"global_step": 10, "is_world_process_zero": True})()
    callback.on_save(args, state, None)
    assert (saved / MARKER).exists()
    checkpoint(tmp_path, 20)  # cut mid-write: no marker
    assert get_last_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-20")  # what was resumed before
    assert last_complete(str(tmp_path)) == str(saved)
    assert last_complete(str(tmp_path / "none")) is None
