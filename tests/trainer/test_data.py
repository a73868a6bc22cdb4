"""Data preparation: loading four shapes, cleaning, dedup, split, balance, leak check, formatting."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tuneforge_trainer.config import parse_config
from tuneforge_trainer.data import (
    DataError,
    Example,
    balance,
    dedup,
    detect_format,
    format_example,
    leak_check,
    load_rows,
    normalize,
    prepare_data,
    stratified_split,
)


def ex(text: str, label: str, row: int = 0) -> Example:
    return Example(text=text, target=label, row=row)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Hello,  World!", "hello world"),
        ("  where's MY card?? ", "where s my card"),
        ("Ｆｕｌｌwidth", "fullwidth"),
        ("tabs\tand\nnewlines", "tabs and newlines"),
        ("", ""),
    ],
)
def test_normalize(raw: str, expected: str) -> None:
    assert normalize(raw) == expected


@pytest.mark.parametrize(
    ("mode", "kept_rows", "dropped_rows"),
    [
        ("none", [1, 2, 3, 4, 5], []),
        ("exact", [1, 2, 4, 5], [3]),
        ("normalized", [1, 2, 5], [3, 4]),
    ],
)
def test_dedup(mode: str, kept_rows: list[int], dropped_rows: list[int]) -> None:
    rows = [
        ex("Where is my card?", "a", 1),
        ex("Where is my card?", "b", 2),  # same text, other label: not a duplicate
        ex("Where is my card?", "a", 3),
        ex("where is my card", "a", 4),
        ex("Something else", "a", 5),
    ]
    kept, dropped = dedup(rows, mode)
    assert [e.row for e in kept] == kept_rows
    assert [d.row for d in dropped] == dropped_rows
    assert all("duplicate (of row" in d.reason for d in dropped)


def test_stratified_split_keeps_every_label_and_fraction() -> None:
    rows = [ex(f"t{i}", lab, i) for i, lab in enumerate(["a"] * 50 + ["b"] * 20 + ["c"] * 3)]
    train, held = stratified_split(rows, 0.1, seed=1)
    assert Counter(e.target for e in held) == {"a": 5, "b": 2, "c": 1}
    assert len(train) + len(held) == len(rows)
    assert not {e.row for e in train} & {e.row for e in held}
    # Deterministic for a seed.
    assert [e.row for e in stratified_split(rows, 0.1, seed=1)[1]] == [e.row for e in held]


def test_stratified_split_too_few_rows_names_the_label() -> None:
    rows = [ex("x", "a", 1), ex("y", "a", 2), ex("z", "a", 3), ex("w", "rare", 4)]
    with pytest.raises(DataError, match="label 'rare' has 1 rows"):
        stratified_split(rows, 0.2, seed=0, min_rows=1)


@pytest.mark.parametrize(
    ("mode", "cap", "expected"),
    [
        ("none", None, {"a": 10, "b": 4, "c": 2}),
        ("undersample", None, {"a": 2, "b": 2, "c": 2}),
        ("undersample", 3, {"a": 3, "b": 3, "c": 2}),
        ("oversample", None, {"a": 10, "b": 10, "c": 10}),
        ("oversample", 6, {"a": 10, "b": 6, "c": 6}),
    ],
)
def test_balance(mode: str, cap: int | None, expected: dict[str, int]) -> None:
    rows = [ex(f"{lab}{i}", lab, i) for lab, n in (("a", 10), ("b", 4), ("c", 2)) for i in range(n)]
    out = balance(rows, mode, cap, seed=0)
    assert dict(Counter(e.target for e in out)) == expected


def test_leak_check_uses_normalised_text() -> None:
    train = [ex("Where is my card?", "a"), ex("Change my PIN", "b")]
    held = [ex("where is my CARD", "a"), ex("new text", "b")]
    assert leak_check(train, held) == {"where is my card"}


@pytest.mark.parametrize(
    ("example", "labels", "system", "expected_user"),
    [
        (ex("my card?", "card_arrival"), ["a", "b"], None, "Classify the message into one of these categories: a, b.\nMessage: my card?\nCategory:"),
        (Example(text="in", target="out", row=1, instruction="Do it"), [], None, "Do it\n\nin"),
        (Example(text="Do it", target="out", row=1, instruction="Do it"), [], "sys", "Do it"),
    ],
)
def test_format_example(example: Example, labels: list[str], system: str | None, expected_user: str) -> None:
    row = format_example(example, "Classify the message into one of these categories: {labels}.\nMessage: {text}\nCategory:", labels, system)
    user = [m for m in row["prompt"] if m["role"] == "user"]
    assert user[-1]["content"] == expected_user
    assert row["completion"] == [{"role": "assistant", "content": example.target}]
    assert (row["prompt"][0] == {"role": "system", "content": system}) if system else row["prompt"][0]["role"] == "user"


def test_format_example_chat_keeps_turns() -> None:
    e = Example(text="hi", target="hello", row=1, messages=[{"role": "user", "content": "hi"}])
    row = format_example(e, "{text}", [], "be brief")
    assert row["prompt"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_load_instruction_jsonl_reports_bad_rows(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "d.jsonl", [
        {"instruction": "Classify", "input": "x", "output": "a"},
        "{not json",
        {"instruction": "Classify"},
        {"instruction": "Classify", "input": "y", "output": "b"},
    ])
    assert detect_format(str(p)) == "instruction_jsonl"
    rows, dropped, fmt = load_rows(str(p), "auto", "text", "label")
    assert fmt == "instruction_jsonl"
    assert [(r.row, r.text, r.target) for r in rows] == [(1, "x", "a"), (4, "y", "b")]
    assert [(d.row, d.reason.split(" (")[0]) for d in dropped] == [(2, "invalid JSON"), (3, "needs instruction and output fields")]


def test_load_chat_jsonl(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "c.jsonl", [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "greeting"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}]},
    ])
    assert detect_format(str(p)) == "chat_jsonl"
    rows, dropped, _ = load_rows(str(p), "auto", "text", "label")
    assert rows[0].messages == [{"role": "user", "content": "hi"}] and rows[0].target == "greeting"
    assert dropped[0].row == 2 and "assistant" in dropped[0].reason


def test_load_csv_missing_column_is_fatal(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_text("text,category\nhello,a\n")
    with pytest.raises(DataError, match=r"missing column 'label' \(dataset.label_column\)"):
        load_rows(str(p), "csv", "text", "label")
    rows, _, _ = load_rows(str(p), "csv", "text", "category")
    assert rows[0].row == 2  # file line numbers: the header is line 1


def test_load_hf_dataset_folder(tmp_path: Path) -> None:
    import datasets
    d = datasets.Dataset.from_list([{"text": "hello", "label": "a"}, {"text": "bye", "label": "b"}])
    d.save_to_disk(str(tmp_path / "ds"))
    assert detect_format(str(tmp_path / "ds")) == "hf_dataset"
    rows, dropped, fmt = load_rows(str(tmp_path / "ds"), "auto", "text", "label")
    assert fmt == "hf_dataset" and [r.target for r in rows] == ["a", "b"] and not dropped


def unreadable_path(tmp_path: Path) -> str:
    return str(tmp_path / "nope.csv")


def csv_file(path: Path, rows: list[tuple[str, str]]) -> Path:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return path


def make_cfg(tmp_path: Path, **data: Any) -> Any:
    base: dict[str, Any] = {
        "model": {"source": "/m"},
        "dataset": {"source": str(tmp_path / "train.csv")},
        "output": {"dir": str(tmp_path / "out")},
    }
    for k, v in data.items():
        section, _, field = k.partition("__")
        base.setdefault(section, {})[field] = v
    return parse_config(base)


def test_prepare_data_end_to_end(tmp_path: Path) -> None:
    rows = [(f"text {lab} {i}", lab) for lab in ("a", "b", "c") for i in range(10)]
    rows += [("", "a"), ("text a 1", "a"), ("orphan", ""), ("x" * 200, "b")]
    csv_file(tmp_path / "train.csv", rows)
    cfg = make_cfg(tmp_path, data__max_chars=100, data__eval_fraction=0.2)
    prep = prepare_data(cfg)
    assert prep.labels == ["a", "b", "c"]
    assert Counter(e.target for e in prep.eval) == {"a": 2, "b": 2, "c": 2}
    # validation rows (data.validation_fraction 0.1) come out of the remaining 8 per label
    assert Counter(e.target for e in prep.validation) == {"a": 1, "b": 1, "c": 1}
    assert len(prep.train) == 21
    assert not {id(e) for e in prep.validation} & ({id(e) for e in prep.train} | {id(e) for e in prep.eval})
    reasons = sorted(d.reason.split(" (")[0] for d in prep.report.dropped)
    assert reasons == ["duplicate", "empty input", "empty target", "over data.max_chars"]
    assert {d.row for d in prep.report.dropped} == {32, 33, 34, 35}


def test_prepare_data_fatal_problems(tmp_path: Path) -> None:
    csv_file(tmp_path / "train.csv", [(f"t{lab}{i}", lab) for lab in ("a", "b") for i in range(6)])
    csv_file(tmp_path / "eval.csv", [("ta0", "a"), ("zz", "z")])
    with pytest.raises(DataError, match=r"unknown labels in eval rows: \['z'\]"):
        prepare_data(make_cfg(tmp_path, dataset__eval_source=str(tmp_path / "eval.csv")))
    with pytest.raises(DataError, match="data.min_rows_per_label"):
        prepare_data(make_cfg(tmp_path, data__min_rows_per_label=10, data__eval_fraction=0.1))
    with pytest.raises(DataError, match="unreadable"):
        prepare_data(make_cfg(tmp_path, dataset__eval_source=str(tmp_path / "missing.csv")))


def test_prepare_data_leak_threshold(tmp_path: Path) -> None:
    csv_file(tmp_path / "train.csv", [(f"t{lab}{i}", lab) for lab in ("a", "b") for i in range(6)])
    csv_file(tmp_path / "eval.csv", [("TA0!", "a"), ("fresh b", "b"), ("fresh a", "a"), ("fresh a2", "a")])
    with pytest.raises(DataError, match=r"data.leak_threshold: 1 of 4 eval rows"):
        prepare_data(make_cfg(tmp_path, dataset__eval_source=str(tmp_path / "eval.csv")))
    prep = prepare_data(make_cfg(tmp_path, dataset__eval_source=str(tmp_path / "eval.csv"), data__leak_threshold=0.5))
    assert prep.report.leaked == 1
    assert "ta0" not in {e.text for e in prep.train}
    assert any(d.reason == "also in eval (leak)" for d in prep.report.dropped)


def test_prepare_data_subset_caps_and_token_length(tmp_path: Path) -> None:
    csv_file(tmp_path / "train.csv", [(f"t{lab}{i}" + " long" * (i == 0), lab) for lab in ("a", "b", "c") for i in range(20)])
    cfg = make_cfg(
        tmp_path, dataset__include_labels=["a", "b"], dataset__max_rows_per_label=5, dataset__max_eval_rows_per_label=1,
        training__max_seq_length=16,
    )
    prep = prepare_data(cfg, token_length=lambda e: 100 if "long" in e.text else 10)
    assert prep.labels == ["a", "b"]
    assert set(Counter(e.target for e in prep.eval).values()) == {1}
    assert all(v <= 5 for v in Counter(e.target for e in prep.train).values())
    assert not any("long" in e.text for e in prep.train)


def test_csv_row_with_more_fields_than_the_header_fails_by_default(tmp_path: Path) -> None:
    # An unquoted comma cut "hello, world" in two and shifted its label out of the label column.
    p = tmp_path / "train.csv"
    p.write_text("text,label\nfine,a\nhello, world,a\nok,b\n\nshort\nx,y,z,b\n")
    with pytest.raises(DataError) as e:
        load_rows(str(p), "csv", "text", "label")
    msg = str(e.value)
    assert "3 row(s) do not have the header's 2 fields: row 3 has 3, row 5 has 1, row 6 has 4" in msg
    assert "dataset.csv_bad_rows: drop" in msg and "\n" not in msg


def test_csv_bad_rows_drop_names_them(tmp_path: Path) -> None:
    p = tmp_path / "train.csv"
    p.write_text("text,label\nfine,a\nhello, world,a\nok,b\n")
    rows, dropped, _ = load_rows(str(p), "csv", "text", "label", csv_bad_rows="drop")
    assert [(r.row, r.text, r.target) for r in rows] == [(2, "fine", "a"), (4, "ok", "b")]
    assert [(d.row, d.reason) for d in dropped] == [(3, "field count differs from the header (3 fields, expected 2)")]


def test_csv_bad_rows_through_validate(tmp_path: Path) -> None:
    """``validate`` stops with the rows named (default), or lists them as dropped rows."""
    import csv
    import io

    rows = [(f"text {lab} {i}", lab) for lab in ("a", "b") for i in range(10)]
    buf = io.StringIO()
    csv.writer(buf).writerows([("text", "label"), *rows])
    (tmp_path / "train.csv").write_text(buf.getvalue() + "cut, here,a\n")
    with pytest.raises(DataError, match="row 22 has 3"):
        prepare_data(make_cfg(tmp_path))
    prep = prepare_data(make_cfg(tmp_path, dataset__csv_bad_rows="drop"))
    assert [(d.row, d.reason.split(" (")[0]) for d in prep.report.dropped] == [(22, "field count differs from the header")]
    assert prep.report.to_dict()["dropped_by_reason"] == {"field count differs from the header": 1}


def test_stratified_sample_keeps_each_labels_share() -> None:
    from tuneforge_trainer.data import stratified_sample

    # Sorted by label, as exported files often are: the first 10 rows would be one label.
    rows = [Example(text=f"{lab}{i}", target=lab, row=i) for lab, n in (("a", 30), ("b", 15), ("c", 5)) for i in range(n)]
    got = stratified_sample(rows, 10, seed=1)
    assert Counter(e.target for e in got) == {"a": 6, "b": 3, "c": 1}
    assert got == sorted(got, key=rows.index)  # file order kept
    assert got == stratified_sample(rows, 10, seed=1) and got != stratified_sample(rows, 10, seed=2)
    assert stratified_sample(rows, None, 0) == rows and stratified_sample(rows, 99, 0) == rows
    assert len(stratified_sample(rows, 7, 0)) == 7


def test_eval_file_gets_the_train_paths_hygiene(tmp_path: Path) -> None:
    """``evaluate --eval-file`` rows: bad rows dropped, dedup, leak check, seeded stratified sample."""
    from tuneforge_trainer.data import prepare_eval_rows

    train = [Example(text=f"train {lab} {i}", target=lab, row=i) for lab in ("a", "b") for i in range(10)]
    held = [(f"held a {i}", "a") for i in range(12)] + [(f"held b {i}", "b") for i in range(12)]
    held += [("Held A 0!", "a"), ("", "b"), ("train a 3", "a")]  # a duplicate, an empty input, a leak
    csv_file(tmp_path / "eval.csv", held)
    cfg = make_cfg(tmp_path, eval__max_rows=8, data__leak_threshold=0.1)
    rows, report = prepare_eval_rows(cfg, str(tmp_path / "eval.csv"), train, ["a", "b"])
    assert Counter(e.target for e in rows) == {"a": 4, "b": 4}  # not the first 8 rows (all "a")
    reasons = sorted(d.reason.split(" (")[0] for d in report.dropped)
    assert reasons == ["also in training", "duplicate", "empty input"]
    assert report.leaked == 1 and report.eval_counts == {"a": 4, "b": 4}
    # Over the leak threshold is fatal, as on the train path.
    csv_file(tmp_path / "leaky.csv", [(f"train a {i}", "a") for i in range(5)] + [("fresh", "b")])
    with pytest.raises(DataError, match="data.leak_threshold"):
        prepare_eval_rows(cfg, str(tmp_path / "leaky.csv"), train, ["a", "b"])
    csv_file(tmp_path / "unknown.csv", [("x", "zzz")])
    with pytest.raises(DataError, match="unknown labels"):
        prepare_eval_rows(cfg, str(tmp_path / "unknown.csv"), train, ["a", "b"])


def test_three_way_split_validation_before_the_cap(tmp_path: Path) -> None:
    """Train / validation (selection) / test (reported, gated): disjoint, stratified, and the
    per-label cap bounds the training rows only; test rows never occur in validation."""
    rows = [(f"text {lab} {i}", lab) for lab in ("a", "b") for i in range(40)]
    csv_file(tmp_path / "train.csv", rows)
    csv_file(tmp_path / "test.csv", [(f"test {lab} {i}", lab) for lab in ("a", "b") for i in range(5)] + [("TEXT a 3", "a")])
    cfg = make_cfg(tmp_path, dataset__eval_source=str(tmp_path / "test.csv"), dataset__max_rows_per_label=10,
                   data__validation_fraction=0.25, data__leak_threshold=0.2)
    prep = prepare_data(cfg)
    assert Counter(e.target for e in prep.train) == {"a": 10, "b": 10}
    assert Counter(e.target for e in prep.validation) == {"a": 10, "b": 10}  # 25 % of 40, before the cap
    assert len(prep.eval) == 11
    texts = lambda rs: {e.text.lower() for e in rs}  # noqa: E731
    assert not texts(prep.train) & texts(prep.validation)
    assert "text a 3" not in texts(prep.validation) | texts(prep.train)  # the leaked row left both
    assert prep.report.validation_counts == {"a": 10, "b": 10}
    # No validation rows: nothing to select on, so selection settings are refused at load.
    prep0 = prepare_data(make_cfg(tmp_path, data__validation_fraction=0))
    assert prep0.validation == []
    with pytest.raises(Exception, match="data.validation_fraction"):
        make_cfg(tmp_path, data__validation_fraction=0, training__load_best_model=True)


def test_a_label_too_small_for_validation_stays_in_training(tmp_path: Path) -> None:
    # 3 rows of "c": one goes to test, two remain; validation needs none of them to select a model.
    rows = [(f"text {lab} {i}", lab) for lab, n in (("a", 20), ("b", 20), ("c", 3)) for i in range(n)]
    csv_file(tmp_path / "train.csv", rows)
    prep = prepare_data(make_cfg(tmp_path, data__validation_fraction=0.2))
    assert Counter(e.target for e in prep.eval)["c"] == 1
    assert Counter(e.target for e in prep.train)["c"] == 2 and "c" not in {e.target for e in prep.validation}
    assert Counter(e.target for e in prep.validation) == {"a": 4, "b": 4}


def _kubelet_config_map(root: Path, files: dict[str, str]) -> Path:
    """A ConfigMap volume as the kubelet lays it out: each key is a symlink through ``..data`` to
    a timestamped folder (swapped atomically on update)."""
    stamp = root / "..2026_01_01_00_00_00.000000001"
    stamp.mkdir(parents=True)
    for key, text in files.items():
        (stamp / key).write_text(text)
    (root / "..data").symlink_to(stamp.name)
    for key in files:
        (root / key).symlink_to(f"..data/{key}")
    return root


@pytest.mark.parametrize("key,fmt,expected", [
    ("train.csv", "auto", "csv"),
    ("train.jsonl", "auto", "instruction_jsonl"),
    ("rows.txt", "csv", "csv"),  # no telling extension: dataset.format decides
])
def test_config_map_key_loads_like_a_file(tmp_path: Path, key: str, fmt: str, expected: str) -> None:
    """configmap://name/key reaches the trainer as /mnt/configmap/name/key (operator's mount)."""
    csv_text = "text,label\nwhere is my card,card_arrival\nmy card was stolen,lost_or_stolen_card\n"
    jsonl_text = json.dumps({"instruction": "Classify", "input": "where is my card", "output": "card_arrival"}) + "\n"
    folder = _kubelet_config_map(tmp_path / "intents", {key: jsonl_text if key.endswith(".jsonl") else csv_text})
    rows, dropped, got = load_rows(str(folder / key), fmt, "text", "label")
    assert got == expected and not dropped
    assert rows[0].target == "card_arrival"


def test_a_refit_trains_on_the_validation_rows_it_was_chosen_on(tmp_path: Path) -> None:
    """data.train_on_validation (spec.search's winner retrain): the same seeded validation rows
    are split off, then trained on; the cap still bounds the pool and test rows stay out."""
    rows = [(f"text {lab} {i}", lab) for lab in ("a", "b") for i in range(40)]
    csv_file(tmp_path / "train.csv", rows)
    csv_file(tmp_path / "test.csv", [(f"test {lab} {i}", lab) for lab in ("a", "b") for i in range(5)])
    kw = {"dataset__eval_source": str(tmp_path / "test.csv"), "dataset__max_rows_per_label": 10,
          "data__validation_fraction": 0.25}
    chosen_on = prepare_data(make_cfg(tmp_path, **kw))
    refit = prepare_data(make_cfg(tmp_path, data__train_on_validation=True, **kw))
    assert refit.validation == [] and refit.report.validation_counts == {}
    assert Counter(e.target for e in refit.train) == {"a": 20, "b": 20}
    assert {e.text for e in refit.train} == {e.text for e in chosen_on.train + chosen_on.validation}
    assert {e.text for e in refit.eval} == {e.text for e in chosen_on.eval}
    assert not {e.text for e in refit.train} & {e.text for e in refit.eval}


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"training__load_best_model": True}, "training.load_best_model"),
        ({"training__load_best_model": True, "training__early_stopping_patience": 2}, "training.load_best_model"),
        ({"eval__split": "validation"}, "eval.split 'validation'"),
    ],
)
def test_a_refit_refuses_what_selects_on_validation_rows(tmp_path: Path, extra: dict[str, Any], field: str) -> None:
    csv_file(tmp_path / "train.csv", [(f"t{lab}{i}", lab) for lab in ("a", "b") for i in range(6)])
    with pytest.raises(Exception, match=f"{re.escape(field)} selects on .*data.train_on_validation"):
        make_cfg(tmp_path, data__train_on_validation=True, **extra)


def test_a_validation_run_needs_no_test_rows(tmp_path: Path) -> None:
    """Selecting settings (eval.split validation) never needs the test rows: with no eval source
    and no test split the run prepares and scores its validation rows."""
    csv_file(tmp_path / "train.csv", [(f"t{lab}{i}", lab) for lab in ("a", "b") for i in range(10)])
    prep = prepare_data(make_cfg(tmp_path, data__eval_fraction=0, data__validation_fraction=0.2, eval__split="validation"))
    assert prep.eval == [] and Counter(e.target for e in prep.validation) == {"a": 2, "b": 2}
