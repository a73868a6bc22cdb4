"""The termination summary (<= 4 KiB, parseable by the operator) and progress events."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from tuneforge_trainer.progress import ProgressReporter, read_progress
from tuneforge_trainer.summary import (
    MAX_SUMMARY_BYTES,
    BaselineScore,
    AdapterVersion,
    ClassScore,
    SourceRef,
    TrainerSummary,
    parse_summary,
    write_summary,
)


def full_summary(n_classes: int = 5, message: str = "ok") -> TrainerSummary:
    return TrainerSummary(
        status="succeeded", command="train", message=message, task="classification",
        accuracy=0.95, macro_f1=0.94, eval_loss=0.12,
        worst_classes=[ClassScore(label=f"class_{i:03d}_" + "x" * 40, f1=0.5, support=10) for i in range(n_classes)],
        baselines=[BaselineScore(name="zero_shot", accuracy=0.1), BaselineScore(name="tfidf_lr", accuracy=0.97, macro_f1=0.97)],
        artifacts={"adapter": "s3://b/run/adapter", "metrics": "s3://b/run/metrics.json"},
        adapter=AdapterVersion(
            uri="s3://b/run/adapter", digest="sha256:" + "a" * 64,
            base_model=SourceRef(uri="s3://b/models/base", digest="sha256:" + "b" * 64),
            dataset=SourceRef(uri="s3://b/data/train.csv", digest="sha256:" + "c" * 64),
        ),
        train_seconds=240.5,
    )


def test_round_trip() -> None:
    s = full_summary()
    back = parse_summary(s.to_json())
    assert back == s
    assert back.baselines[1].name == "tfidf_lr"


@pytest.mark.parametrize(("n_classes", "message"), [(5, "ok"), (200, "ok"), (5, "m" * 10000), (300, "é" * 5000)])
def test_summary_fits_termination_message(n_classes: int, message: str) -> None:
    text = full_summary(n_classes, message).to_json()
    assert len(text.encode()) <= MAX_SUMMARY_BYTES
    back = parse_summary(text)
    assert back.accuracy == 0.95 and back.status == "succeeded"
    # The adapter version survives every trim: it is what a ModelServe serves.
    assert back.adapter is not None and back.adapter.digest == "sha256:" + "a" * 64


def test_parse_ignores_unknown_keys_and_rejects_garbage() -> None:
    data = json.loads(full_summary().to_json())
    data["from_the_future"] = 1
    assert parse_summary(json.dumps(data)).accuracy == 0.95
    with pytest.raises(ValueError):
        parse_summary("not json")


def test_write_summary(tmp_path: Path) -> None:
    p = tmp_path / "termination-log"
    write_summary(full_summary(), str(p))
    assert parse_summary(p.read_text()).macro_f1 == 0.94
    write_summary(full_summary(), str(tmp_path / "missing-dir" / "log"))  # no error, nothing written
    write_summary(full_summary(), None)
    assert not (tmp_path / "missing-dir").exists()


def test_progress_lines_on_stream_and_file(tmp_path: Path) -> None:
    stream = io.StringIO()
    rep = ProgressReporter(str(tmp_path / "p" / "progress.jsonl"), stream=stream, enabled=True)
    rep.emit("progress", step=3, max_steps=10, loss=float("nan"), eval_loss=None, learning_rate=1e-3)
    rep.emit("done", accuracy=0.9)
    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert [x["event"] for x in lines] == ["progress", "done"]
    assert lines[0]["step"] == 3 and lines[0]["loss"] is None and "eval_loss" not in lines[0]
    assert read_progress(str(tmp_path / "p" / "progress.jsonl")) == lines


def test_progress_silent_on_other_ranks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    stream = io.StringIO()
    rep = ProgressReporter(str(tmp_path / "progress.jsonl"), stream=stream)
    rep.emit("progress", step=1)
    assert stream.getvalue() == "" and not (tmp_path / "progress.jsonl").exists()


def test_saved_summary_is_whole_and_replaces_atomically(tmp_path: Path) -> None:
    from tuneforge_trainer.summary import SUMMARY_FILE, remove_saved_summary, save_summary

    s = full_summary(n_classes=300)  # far over the 4 KiB termination-message limit
    path = save_summary(s, str(tmp_path / "art"))
    assert path == str(tmp_path / "art" / SUMMARY_FILE)
    back = parse_summary(Path(path).read_text())
    assert back == s and len(back.worst_classes) == 300  # nothing trimmed
    assert Path(path).stat().st_mode & 0o777 == 0o644
    assert [p.name for p in (tmp_path / "art").iterdir()] == [SUMMARY_FILE]
    remove_saved_summary(str(tmp_path / "art"))
    remove_saved_summary(str(tmp_path / "art"))  # absent is fine
    assert not Path(path).exists()


def test_a_failed_train_leaves_its_summary_beside_the_artifacts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tuneforge_trainer import storage
    from tuneforge_trainer.cli import _fail_summary
    from tuneforge_trainer.config import parse_config

    base = {"model": {"source": "/m"}, "dataset": {"source": "/d.csv"}}
    cfg = parse_config(base | {"output": {"dir": str(tmp_path / "out"), "termination_message_path": str(tmp_path / "term")}})
    _fail_summary(cfg, "train", "RuntimeError: CUDA out of memory\ntraceback...")
    saved = parse_summary((tmp_path / "out" / "summary.json").read_text())
    assert saved.status == "failed" and saved.message == "RuntimeError: CUDA out of memory"
    assert parse_summary((tmp_path / "term").read_text()) == saved

    uploads: list[tuple[str, str, str]] = []

    class Client:
        def upload_file(self, local: str, bucket: str, key: str) -> None:
            uploads.append((Path(local).read_text(), bucket, key))

    monkeypatch.setattr(storage, "_s3_client", lambda: Client())
    cfg = parse_config(base | {"output": {"dir": "s3://b/runs/r1", "work_dir": str(tmp_path / "w"), "termination_message_path": None}})
    _fail_summary(cfg, "train", "boom")
    assert [(b, k) for _, b, k in uploads] == [("b", "runs/r1/summary.json")]
    assert parse_summary(uploads[0][0]).message == "boom"
    # validate failures are the validation pod's business, not the run's result
    _fail_summary(parse_config(base | {"output": {"dir": str(tmp_path / "v")}}), "validate", "bad rows")
    assert not (tmp_path / "v" / "summary.json").exists()
