"""eval.split: a search trial scores the validation rows only (the operator's spec.search sets
it; tests/operator/test_search.py renders it). On the tiny random model of test_train_tiny: the
rows scored are exactly the validation rows, never a test row, and the summary counts them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from test_train_tiny import run, tiny_model  # noqa: F401  (the fixture)
from tuneforge_trainer.config import parse_config
from tuneforge_trainer.summary import parse_summary


def test_a_validation_split_scores_the_validation_rows_only(
        tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    rc, events = run(tiny_model, tmp_path, capsys,
                     eval={"split": "validation", "baselines": {"zero_shot": False, "few_shot": 0, "tfidf_lr": False}})
    assert rc == 0
    data = next(e for e in events if e["event"] == "data")
    assert (data["validation_rows"], data["eval_rows"]) == (4, 6)
    out = tmp_path / "out"
    saved = parse_summary((out / "summary.json").read_text())
    assert saved.n_eval == 4 and saved.n_validation == 4 and not saved.baselines
    scored = {json.loads(line)["messages"][-1]["content"] for line in (out / "predictions.jsonl").read_text().splitlines()}
    assert len(scored) == 4
    # The same seeded split as the run: its validation rows, none of its test rows.
    from tuneforge_trainer.pipeline import prepare

    prepared = prepare(parse_config({"model": {"source": str(tiny_model)}, "dataset": {"source": str(tmp_path / "train.csv")},
                                     "data": {"eval_fraction": 0.25, "validation_fraction": 0.25},
                                     "training": {"max_seq_length": 128}, "output": {"dir": str(tmp_path / "x")}}))
    def shown(text: str) -> bool:  # "lost 1" must not match "lost 11"
        return any(re.search(re.escape(text) + r"(?!\d)", s) for s in scored)

    assert all(shown(e.text) for e in prepared.validation)
    assert not any(shown(e.text) for e in prepared.eval)


def test_a_validation_split_needs_validation_rows() -> None:
    with pytest.raises(ValueError, match="eval.split 'validation' scores the validation rows and data.validation_fraction is 0"):
        parse_config({"model": {"source": "m"}, "dataset": {"source": "d.csv"}, "data": {"validation_fraction": 0},
                      "eval": {"split": "validation"}, "output": {"dir": "/tmp/o"}})
    # No test rows are needed for a trial.
    cfg = parse_config({"model": {"source": "m"}, "dataset": {"source": "d.csv"}, "data": {"eval_fraction": 0},
                        "eval": {"split": "validation"}, "output": {"dir": "/tmp/o"}})
    assert cfg.eval.split == "validation"
