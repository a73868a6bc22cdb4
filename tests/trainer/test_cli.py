"""The CLI as the container runs it: exit codes, one-line errors, JSON lines on stdout."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from trainer_helpers import run_cli
from tuneforge_trainer.summary import parse_summary


def setup(tmp_path: Path, rows: list[tuple[str, str]], header: tuple[str, str] = ("text", "label"), **extra: object) -> Path:
    data = tmp_path / "train.csv"
    with open(data, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    cfg = {
        "model": {"source": str(tmp_path)},
        "dataset": {"source": str(data)},
        "output": {"dir": str(tmp_path / "out"), "termination_message_path": str(tmp_path / "term")},
        **extra,
    }
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


ROWS = [(f"text {lab} {i}", lab) for lab in ("a", "b") for i in range(10)] + [("", "a"), ("text a 1", "a")]


def test_validate_ok_reports_rows_and_summary(tmp_path: Path) -> None:
    cfg = setup(tmp_path, ROWS)
    r = run_cli("validate", "--config", str(cfg), "--set", "data.eval_fraction=0.2")
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    data = next(e for e in events if e["event"] == "data")
    # 20 rows: 4 test (eval_fraction 0.2), then 2 validation (validation_fraction 0.1), 14 training
    assert data["train_rows"] == 14 and data["validation_rows"] == 2 and data["eval_rows"] == 4 and data["dropped"] == 2
    assert "dropped train row 22: empty input" in r.stderr
    assert "dropped train row 23: duplicate (of row 3)" in r.stderr
    s = parse_summary((tmp_path / "term").read_text())
    assert s.status == "validated" and s.n_train == 14 and s.n_validation == 2 and s.n_eval == 4
    assert (tmp_path / "out" / "progress.jsonl").is_file()


def test_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    cfg = setup(tmp_path, ROWS)
    r = run_cli("validate", "--config", str(cfg), "training.max_steps=0", "quantization=4bit", "lora.enabled=false")
    assert r.returncode == 2
    assert r.stderr.startswith("error: invalid trainer config: training.max_steps")
    assert len(r.stderr.strip().splitlines()) == 1


def test_bad_data_exits_3(tmp_path: Path) -> None:
    cfg = setup(tmp_path, ROWS, header=("text", "category"))
    r = run_cli("validate", "--config", str(cfg))
    assert r.returncode == 3
    assert r.stderr.splitlines()[0].startswith("error: train data")
    assert "missing column 'label'" in r.stderr.splitlines()[0]
    s = parse_summary((tmp_path / "term").read_text())
    assert s.status == "failed" and "missing column" in s.message


def test_too_few_rows_for_split_exits_3(tmp_path: Path) -> None:
    cfg = setup(tmp_path, [("x1", "a"), ("x2", "a"), ("x3", "a"), ("y", "b")])
    r = run_cli("validate", "--config", str(cfg))
    assert r.returncode == 3 and "label 'b' has 1 rows" in r.stderr


def test_schema_subcommand() -> None:
    r = run_cli("schema")
    assert r.returncode == 0
    assert "learning_rate" in json.loads(r.stdout)["$defs"]["TrainingConfig"]["properties"]


def test_a_device_config_error_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # bf16 on a GPU without it is a config error this device finds: exit 2 (not retried), not 1.
    from tuneforge_trainer import cli, pipeline
    from tuneforge_trainer.config import ConfigError

    cfg = setup(tmp_path, ROWS)

    def no_bf16(_cfg: object) -> int:
        raise ConfigError("training.precision bf16: this GPU does not support bfloat16; use fp16 or auto")

    monkeypatch.setattr(pipeline, "run_train", no_bf16)
    assert cli.main(["train", "--config", str(cfg)]) == cli.EXIT_CONFIG
    assert "training.precision bf16" in parse_summary((tmp_path / "term").read_text()).message
