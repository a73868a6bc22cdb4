"""Metrics (classification and generation), the model card and the plots."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneforge_trainer.metrics import (
    classification_metrics,
    exact_match,
    field_f1,
    generation_metrics,
    latency_summary,
    worst_classes,
)
from tuneforge_trainer.report import cost_estimate, cost_per_1k_predictions, plot_confusion, plot_loss, render_model_card


def test_classification_metrics() -> None:
    labels = ["a", "b", "c"]
    m = classification_metrics(["a", "a", "b", "c"], ["a", "b", "b", "garbage"], labels)
    assert m["accuracy"] == 0.5
    assert m["per_class"]["a"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert m["per_class"]["c"]["f1"] == 0.0
    assert m["labels"] == ["a", "b", "c", "<other>"]
    assert m["confusion_matrix"][2] == [0, 0, 0, 1]  # c predicted as <other>
    assert m["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    worst = worst_classes(m["per_class"], 2)
    assert [w["label"] for w in worst] == ["c", "a"]


@pytest.mark.parametrize(
    ("truth", "pred", "expected"),
    [
        ('{"a": 1, "b": "x"}', '{"a": 1, "b": "x"}', 1.0),
        ('{"a": 1, "b": "x"}', '{"b": "x", "a": 1}', 1.0),
        ('{"a": 1, "b": "x"}', '{"a": 1, "b": "y"}', 0.5),
        ('{"a": 1, "b": "x"}', '{"a": 1}', pytest.approx(2 / 3)),
        ('{"a": {"c": [1, 2]}}', '{"a": {"c": [1, 3]}}', 0.5),
        ('{"a": 1}', "not json", 0.0),
        ("plain text", "plain text", None),
    ],
)
def test_field_f1(truth: str, pred: str, expected: object) -> None:
    assert field_f1(truth, pred) == expected


def test_generation_metrics_and_exact_match() -> None:
    assert exact_match(["Paris", "Rome"], [" Paris.", "rome"]) == 0.5
    m = generation_metrics(['{"x": 1}', "Paris"], ['{"x": 1}', "Paris"])
    assert m["exact_match"] == 1.0 and m["field_f1"] == 1.0 and m["json_rows"] == 1


@pytest.mark.parametrize(
    ("timings", "expected"),
    [
        ([], None),
        ([(1, 0.010)], {"p50_ms": 10.0, "p99_ms": 10.0, "rows_per_request": 1}),
        # a row of a batch waited for the whole batch: 8 rows at 0.4 s outweigh 2 rows at 0.1 s
        ([(8, 0.4), (2, 0.1)], {"p50_ms": 400.0, "p99_ms": 400.0, "rows_per_request": 8}),
        # 99 fast single rows and one slow one: the p99 sits between them (linear interpolation)
        ([(1, 0.01)] * 99 + [(1, 1.01)], {"p50_ms": 10.0, "p99_ms": 20.0, "rows_per_request": 1}),
    ],
)
def test_latency_summary_per_row(timings: list[tuple[int, float]], expected: dict | None) -> None:
    assert latency_summary(timings) == expected


@pytest.mark.parametrize(
    ("result", "kwargs", "expected"),
    [
        # 100 rows in 36 s on 1 GPU at 2/h: 0.36 GPU-s per row -> 360 GPU-s per 1,000 -> 0.2
        ({"n": 100, "seconds": 36.0}, {"gpus": 1, "gpu_hour_price": 2.0}, 0.2),
        ({"n": 100, "seconds": 36.0}, {"gpus": 2, "gpu_hour_price": 2.0}, 0.4),
        ({"n": 100, "seconds": 36.0}, {"gpus": 0, "gpu_hour_price": 2.0}, None),  # GPUs unknown
        ({"n": 100, "seconds": 36.0}, {"gpus": 1, "gpu_hour_price": None}, None),  # no price
        ({"n": 0, "seconds": 0.0}, {"gpus": 1, "gpu_hour_price": 2.0}, None),
        # an endpoint billed by token: 10 rows, 1,000 prompt + 20 completion tokens at 2.5 and 10 per million
        ({"n": 10, "usage": {"prompt_tokens": 1000, "completion_tokens": 20, "rows_without_usage": 0}},
         {"gpus": 1, "gpu_hour_price": 2.0, "token_prices": (2.5, 10.0)}, 0.27),
        ({"n": 10, "usage": {"prompt_tokens": 1000, "completion_tokens": 20, "rows_without_usage": 1}},
         {"gpus": 1, "gpu_hour_price": 2.0, "token_prices": (2.5, 10.0)}, None),  # a row without usage
        ({"n": 10, "usage": {"prompt_tokens": 1000, "completion_tokens": 20, "rows_without_usage": 0}},
         {"gpus": 1, "gpu_hour_price": 2.0, "token_prices": (2.5, None)}, None),
    ],
)
def test_cost_per_1k_predictions(result: dict, kwargs: dict, expected: float | None) -> None:
    assert cost_per_1k_predictions(result, **kwargs) == (pytest.approx(expected) if expected is not None else None)


def test_model_card_prices_and_times_the_adapter_against_the_baselines() -> None:
    r = report_fixture()
    r["config"]["cost"] = {"gpus": 1, "gpu_hour_price": 3.6, "currency": "EUR"}
    r["config"]["eval"] = {"baselines": {"openai": {"model": "m", "input_token_price": 2.5, "output_token_price": 10.0}}}
    r["eval"].update(seconds=5.0, latency={"p50_ms": 400.0, "p99_ms": 410.0, "rows_per_request": 8})
    r["baselines"]["tfidf_lr"].update(n=10, seconds=0.2, hardware="cpu", latency={"p50_ms": 0.4, "p99_ms": 1.26, "rows_per_request": 1})
    r["baselines"]["openai:m"] = {"accuracy": 0.8, "macro_f1": 0.7, "n": 10, "seconds": 9.0,
                                  "latency": {"p50_ms": 800.0, "p99_ms": 2100.0, "rows_per_request": 1},
                                  "usage": {"prompt_tokens": 1000, "completion_tokens": 20, "rows_without_usage": 0}}
    card = render_model_card(r)
    # 5 s for 10 rows on 1 GPU at 3.6/h: 0.5 s per row -> 0.5 EUR per 1,000
    assert "| fine-tuned adapter | 90.0 % | 85.0 % | – | 400.0 ms | 410.0 ms | 8 | 0.5 EUR |" in card
    assert "| tfidf_lr | 95.0 % | 95.0 % | – | 0.4 ms | 1.3 ms | 1 | no GPU |" in card
    assert "| openai:m | 80.0 % | 70.0 % | – | 800.0 ms | 2100.0 ms | 1 | 0.27 EUR |" in card
    # without a time or a price the columns say so
    assert "| zero_shot | 10.0 % | 5.0 % | 40.0 % | – | – | – | – |" in card


def report_fixture() -> dict:
    return {
        "config": {"run_name": "r", "model": {"source": "/m"}, "task": {"type": "classification"},
                   "dataset": {"source": "/d.csv"}, "lora": {"r": 16, "alpha": 32}, "training": {"learning_rate": 1e-3}},
        "data": {"format": "csv", "loaded": 10, "dropped": 1, "train_counts": {"a": 4}, "eval_counts": {"a": 1},
                 "validation_counts": {"a": 2}},
        "training": {"steps": 5, "train_loss": 0.3, "eval_loss": 0.2, "quantization": "none"},
        "eval": {"accuracy": 0.9, "macro_f1": 0.85, "n": 10, "method": "loglik",
                 "per_class": {"a": {"precision": 1.0, "recall": 0.8, "f1": 0.89, "support": 5}}},
        "baselines": {"zero_shot": {"accuracy": 0.1, "macro_f1": 0.05, "accuracy_norm": 0.4}, "tfidf_lr": {"accuracy": 0.95, "macro_f1": 0.95},
                      "openai:m": {"error": "URLError: refused"}},
        "artifacts": {"loss_plot": "x", "confusion_plot": "y"},
    }


def test_model_card_has_results_baselines_and_per_class() -> None:
    card = render_model_card(report_fixture())
    assert "| fine-tuned adapter | 90.0 % | 85.0 % |" in card
    assert "| zero_shot | 10.0 % | 5.0 % | 40.0 % |" in card
    assert "**the gate uses this accuracy**" in card and "acc_norm" in card
    assert "| tfidf_lr | 95.0 % |" in card
    assert "error: URLError" in card
    # which rows are which: selection on validation rows, the results and the gate on test rows
    assert "Rows: 4 training; 2 validation (the eval loss, the best checkpoint and early stopping" in card
    assert "10 test (scored once after training; the results below and the gate)" in card
    assert "| a | 1.000 | 0.800 | 0.890 | 5 |" in card
    assert "LoRA r=16 alpha=32" in card
    assert "![loss](plots/loss.png)" in card


def test_plots(tmp_path: Path) -> None:
    hist = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0}, {"step": 2, "eval_loss": 1.1}]
    assert plot_loss(hist, str(tmp_path / "loss.png"))
    assert plot_confusion([[3, 1], [0, 4]], ["a", "b"], str(tmp_path / "cm.png"))
    for name in ("loss.png", "cm.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644
    assert not plot_loss([], str(tmp_path / "none.png"))


def _selection(winner: int = 1) -> dict:
    return {
        "winner": winner,
        "rule": "cheapest (GPU-seconds) of the trials with validation accuracy >= 0.9360",
        "trials": [
            {"index": 0, "params": {"head": "lm", "maxSteps": 100}, "phase": "Succeeded",
             "validation_accuracy": 0.957, "validation_rows": 93, "gpu_seconds": 1400.0},
            {"index": 1, "params": {"head": "classifier", "maxSteps": 100}, "phase": "Succeeded",
             "validation_accuracy": 0.946, "validation_rows": 93, "gpu_seconds": 610.0},
            {"index": 2, "params": {"head": "lm", "maxSteps": 50}, "phase": "Failed"},
        ],
    }


def test_model_card_says_which_head_the_search_chose_and_by_how_much() -> None:
    from tuneforge_trainer.report import selection_lines

    text = "\n".join(selection_lines(_selection(), "classifier"))
    # The classifier won by cost within one SE; the card states its margin honestly (negative).
    assert "**Head: `classifier`**, validation accuracy 94.6 %" in text
    assert "the best `lm` trial 95.7 % (-1.1 points for `classifier`)" in text
    assert "| 1 (winner) | head classifier, maxSteps 100 | 94.6 % | 93 | 610 |" in text
    assert "| 2 | head lm, maxSteps 50 | Failed | – | – |" in text
    assert "never the test rows" in text and "cheapest (GPU-seconds)" in text
    # One head only, and no search at all.
    one = _selection(0)
    one["trials"] = [t for t in one["trials"] if t["params"]["head"] == "lm"]
    assert "Head: `lm` (every trial used it)." in "\n".join(selection_lines(one, "lm"))
    assert selection_lines(None, "classifier") == ["Head: `classifier` (task.head; not chosen by a search).", ""]
    # And in the card itself, from the run's config (the trainer's parser accepts the block).
    from tuneforge_trainer.config import parse_config

    cfg = parse_config({"model": {"source": "/m"}, "dataset": {"source": "/d.csv"}, "task": {"head": "classifier"},
                        "selection": _selection(), "output": {"dir": "/o"}})
    report = report_fixture()
    report["config"] = cfg.model_dump(mode="json")
    assert "## How the settings were chosen" in render_model_card(report)
    with pytest.raises(Exception, match="winner 7 is not one of the trials"):
        parse_config({"model": {"source": "/m"}, "dataset": {"source": "/d.csv"},
                      "selection": {**_selection(), "winner": 7}, "output": {"dir": "/o"}})


@pytest.mark.parametrize("seconds, gpus, price, expected", [
    (1800.0, 2, 2.5, {"gpu_seconds": 3600.0, "gpus": 2, "gpu_hour_price": 2.5, "currency": "USD", "estimated": 2.5}),
    (1800.0, 0, 2.5, None),   # GPUs unknown (a CPU run)
    (1800.0, 2, None, None),  # no price set
])
def test_cost_estimate(seconds: float, gpus: int, price: float | None, expected: dict | None) -> None:
    assert cost_estimate(seconds, gpus, price, "USD") == expected


def test_model_card_has_the_cost_table_when_priced() -> None:
    report = report_fixture()
    assert "## Cost" not in render_model_card(report)
    report["cost"] = cost_estimate(900.0, 4, 3.0, "EUR")
    card = render_model_card(report)
    assert "| GPUs | GPU-seconds | price per GPU-hour | estimated cost |" in card
    assert "| 4 | 3600 | 3 EUR | 3.00 EUR |" in card


def test_a_negative_price_is_refused_naming_the_field() -> None:
    from tuneforge_trainer.config import ConfigError, parse_config

    with pytest.raises((ConfigError, ValueError), match="cost.gpu_hour_price"):
        parse_config({"model": {"source": "/m"}, "dataset": {"source": "/d.jsonl"}, "output": {"dir": "/o"},
                      "cost": {"gpus": 1, "gpu_hour_price": -1}})
