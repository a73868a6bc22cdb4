"""Data as real tools export it (issue 20, deliverable 5): files written the way spreadsheets, BI
tools and ticketing systems write them load, or are refused with the reason and the row; labels
that look like one class spelled differently are reported before training, with their counts."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from trainer_helpers import BANKING77
from tuneforge_trainer.config import parse_config
from tuneforge_trainer.data import DataError, load_rows, prepare_data
from tuneforge_trainer.tabular import label_variants, near_labels

ROWS = [
    ("I paid \u00a3500 at the caf\u00e9 and my card was declined", "card_not_working"),
    ("Where is my card? I ordered it \u00e0 Paris last week", "card_arrival"),
    ("What is the exchange rate for \u00fcber-expensive francs?", "exchange_rate"),
    ("My PIN is blocked after three tries", "pin_blocked"),
]
# A ticketing export: a description with a line break, quotes and the delimiter inside.
MULTILINE = ('Card "lost" yesterday, maybe stolen;\nplease block it', "lost_or_stolen_card")
WESTERN = ROWS + [("Charged \u20ac20 for a \u201ctop-up\u201d \u2013 why?", "top_up_limits")]


def delimited(rows: list[tuple[str, str]], delimiter: str, header: tuple[str, ...] = ("text", "category"),
              extra_cols: int = 0, blank_tail: int = 0, eol: str = "\r\n") -> str:
    """Rows as the csv module writes them for a tool's dialect (quoting only where needed)."""
    buf = io.StringIO()
    w = csv.writer(buf, delimiter=delimiter, lineterminator=eol)
    pad = [""] * extra_cols
    w.writerow([*header, *pad])
    for text, label in rows:
        w.writerow([text, label, *pad])
    for _ in range(blank_tail):
        w.writerow([""] * (len(header) + extra_cols))
    return buf.getvalue()


# (case, file name, bytes, rows expected, what the report says)
CASES: list[tuple[str, str, bytes, list[tuple[str, str]], str | None]] = [
    ("Excel 'CSV UTF-8' (BOM, CRLF)", "export.csv",
     b"\xef\xbb\xbf" + delimited(WESTERN, ",").encode("utf-8"), WESTERN, None),
    ("Excel 'Unicode text' (UTF-16 LE BOM, tabs)", "export.txt",
     delimited(WESTERN, "\t").encode("utf-16"), WESTERN, None),
    ("UTF-16 BE with BOM, tabs", "export.tsv",
     b"\xfe\xff" + delimited(WESTERN, "\t").encode("utf-16-be"), WESTERN, None),
    ("Excel 'CSV' on a European Windows (cp1252, semicolons)", "export.csv",
     delimited(WESTERN, ";").encode("cp1252"), WESTERN, "decoded as cp1252"),
    ("latin-1 BI export, LF", "report.csv",
     delimited(ROWS, ",", eol="\n").encode("latin-1"), ROWS, "decoded as cp1252"),
    ("ticketing export: quoted multiline field, semicolons", "tickets.csv",
     delimited([MULTILINE, *ROWS], ";").encode("utf-8"), [MULTILINE, *ROWS], None),
    ("sheet with trailing empty columns and rows", "sheet.csv",
     delimited(ROWS, ";", extra_cols=3, blank_tail=4).encode("utf-8-sig"), ROWS, None),
    ("header whitespace and case", "bi.csv",
     delimited(ROWS, ",", header=(" Text ", "CATEGORY")).encode("utf-8"), ROWS, "read as columns"),
    ("pipe delimited", "dump.txt", delimited(ROWS, "|").encode("utf-8"), ROWS, None),
    ("comma-rich text in a semicolon file", "semi.csv",
     delimited([("Hi, my card, the new one, has not arrived", "card_arrival"), *ROWS], ";").encode("utf-8"),
     [("Hi, my card, the new one, has not arrived", "card_arrival"), *ROWS], None),
]


@pytest.mark.parametrize(("case", "name", "raw", "expected", "note"), CASES, ids=[c[0] for c in CASES])
def test_exported_files_load(tmp_path: Path, case: str, name: str, raw: bytes,
                             expected: list[tuple[str, str]], note: str | None) -> None:
    p = tmp_path / name
    p.write_bytes(raw)
    notes: list[str] = []
    rows, dropped, fmt = load_rows(str(p), "auto", "text", "category", notes=notes)
    assert fmt == "csv" and not dropped, (case, dropped)
    assert [(r.text, r.target) for r in rows] == [(t.strip(), lab) for t, lab in expected], case
    # Row numbers are the sheet's: header row 1, a multiline field is one row.
    assert [r.row for r in rows] == list(range(2, 2 + len(expected)))
    if note:
        assert any(note in n for n in notes), notes
    else:
        assert not notes, notes


def _zip_bytes() -> bytes:
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("xl/workbook.xml", "<workbook/>")
    return buf.getvalue()


# (case, file name, bytes, load_rows keyword arguments, error pattern)
REFUSED: list[tuple[str, str, bytes, dict[str, Any], str]] = [
    ("an .xlsx workbook", "book.xlsx", _zip_bytes(), {}, r"zip archive .*export the sheet as 'CSV UTF-8'"),
    ("a legacy .xls workbook", "book.xls", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 64, {},
     r"legacy Excel \.xls workbook"),
    ("binary bytes", "blob.csv", bytes(range(256)) * 8, {}, r"(not text|NUL characters)"),
    ("forced UTF-8 on a cp1252 file", "export.csv", delimited(WESTERN, ";").encode("cp1252"),
     {"encoding": "utf-8"}, r"not utf-8 \(dataset.encoding\): byte 0x[0-9a-f]{2} at line 2"),
    ("unknown codec", "export.csv", b"text,category\nx,a\n", {"encoding": "klingon"}, r"unknown encoding 'klingon'"),
    ("two header cells fold to the wanted one", "dup.csv", b"TEXT,Text ,category\na,b,c\n", {},
     r"columns \['TEXT', 'Text '\] all match 'text'"),
    ("a row cut by an unquoted delimiter", "cut.csv",
     "text;category\r\nfine;card_arrival\r\nbroken; text;pin_blocked\r\n".encode("utf-8"), {},
     r"1 row\(s\) do not have the header's 2 fields: row 3 has 3"),
    ("no such columns under any delimiter", "other.csv", b"utterance,intent\nhi,a\n", {},
     r"missing column 'text' \(dataset.text_column\); columns are \['utterance', 'intent'\] "
     r"\(read as UTF-8, delimiter ','\)"),
]


@pytest.mark.parametrize(("case", "name", "raw", "kwargs", "error"), REFUSED, ids=[c[0] for c in REFUSED])
def test_unreadable_exports_are_refused_with_the_reason(tmp_path: Path, case: str, name: str, raw: bytes,
                                                        kwargs: dict[str, Any], error: str) -> None:
    p = tmp_path / name
    p.write_bytes(raw)
    with pytest.raises(DataError, match=error) as e:
        load_rows(str(p), "auto", "text", "category", **kwargs)
    assert str(p) in str(e.value)


def test_forced_encoding_and_delimiter(tmp_path: Path) -> None:
    # A cp1251 export read as its code page; a delimiter forced where the header alone is ambiguous.
    ru = [("\u0413\u0434\u0435 \u043c\u043e\u044f \u043a\u0430\u0440\u0442\u0430?", "card_arrival"),
          ("\u041a\u0430\u043a\u043e\u0439 \u043a\u0443\u0440\u0441?", "exchange_rate")]
    p = tmp_path / "ru.csv"
    p.write_bytes(delimited(ru, ";").encode("cp1251"))
    rows, _, _ = load_rows(str(p), "csv", "text", "category", encoding="cp1251", delimiter=";")
    assert [(r.text, r.target) for r in rows] == ru


def _cfg(tmp_path: Path, rows: list[tuple[str, str]], **data: Any) -> Any:
    p = tmp_path / "train.csv"
    p.write_text(delimited(rows, ","), encoding="utf-8")
    ds: dict[str, Any] = {"source": str(p), "label_column": "category"}
    ds.update(data.pop("dataset", {}))
    return parse_config({
        "model": {"source": "m"}, "dataset": ds,
        "data": {"eval_fraction": 0.25, "validation_fraction": 0, "min_rows_per_label": 1, **data},
        "output": {"dir": str(tmp_path / "out")},
    })


def _rows(spec: dict[str, int]) -> list[tuple[str, str]]:
    return [(f"{label} example {i}", label) for label, n in spec.items() for i in range(n)]


def test_label_spelled_two_ways_stops_before_training_with_counts(tmp_path: Path) -> None:
    rows = _rows({"card_arrival": 6, "Card Arrival": 2, "pin_blocked": 5, "PIN-blocked ": 1, "exchange_rate": 4})
    with pytest.raises(DataError) as e:
        prepare_data(_cfg(tmp_path, rows))
    msg = str(e.value)
    assert "'card_arrival' (6 rows, first at train row 2) vs 'Card Arrival' (2 rows, first at train row 8)" in msg
    assert "'pin_blocked' (5 rows, first at train row 10) vs 'PIN-blocked' (1 rows, first at train row 15)" in msg
    assert "data.label_variants: warn" in msg


def test_label_variants_warn_trains_them_apart_and_says_so(tmp_path: Path) -> None:
    rows = _rows({"card_arrival": 8, "Card Arrival": 4, "exchange_rate": 8})
    data = prepare_data(_cfg(tmp_path, rows, label_variants="warn"))
    assert data.labels == ["Card Arrival", "card_arrival", "exchange_rate"]  # not merged
    assert any("'card_arrival' (8 rows" in w and "trained as separate classes" in w for w in data.report.warnings)


def test_label_a_typo_apart_is_a_warning(tmp_path: Path) -> None:
    rows = _rows({"card_arrival": 8, "card_arival": 4, "exchange_rate": 8})
    data = prepare_data(_cfg(tmp_path, rows))
    assert len(data.labels) == 3
    assert [w for w in data.report.warnings if "spelled alike" in w] == [
        "labels 'card_arrival' (8 rows, first at train row 2) and 'card_arival' (4 rows, first at train row 10) "
        "are spelled alike (similarity 0.957): one class with a typo? Trained as separate classes"
    ]


def test_variant_of_an_included_label_is_not_filtered_away_unseen(tmp_path: Path) -> None:
    rows = _rows({"card_arrival": 6, "CARD_ARRIVAL": 3, "exchange_rate": 6, "Top Up": 2, "top_up": 2})
    with pytest.raises(DataError, match=r"'card_arrival' \(6 rows.*'CARD_ARRIVAL' \(3 rows") as e:
        prepare_data(_cfg(tmp_path, rows, dataset={"include_labels": ["card_arrival", "exchange_rate"]}))
    assert "top_up" not in str(e.value).lower()  # not in this run's labels: not its problem


def test_variants_across_train_and_eval_files_are_named(tmp_path: Path) -> None:
    ev = tmp_path / "test.csv"
    ev.write_text(delimited(_rows({"Card arrival": 2, "exchange_rate": 2}), ","), encoding="utf-8")
    cfg = _cfg(tmp_path, _rows({"card_arrival": 4, "exchange_rate": 4}), dataset={"eval_source": str(ev)})
    with pytest.raises(DataError, match=r"'card_arrival' \(4 rows, first at train row 2\) vs 'Card arrival' "
                                        r"\(2 rows, first at eval row 2\)"):
        prepare_data(cfg)


@pytest.mark.parametrize(("counts", "groups"), [
    ({"a_b": 3, "A B": 2, "a-b.": 1, "c": 4}, [[("a_b", 3), ("A B", 2), ("a-b.", 1)]]),
    ({"Refund": 1, "refund ": 5}, [[("refund ", 5), ("Refund", 1)]]),
    ({"x": 1, "y": 1}, []),
    ({"caf\u00e9": 2, "CAF\u00c9": 1}, [[("caf\u00e9", 2), ("CAF\u00c9", 1)]]),
])
def test_label_variants_table(counts: dict[str, int], groups: list[list[tuple[str, int]]]) -> None:
    assert label_variants(counts) == groups


def test_banking77_intents_raise_no_spelling_warning() -> None:
    # The threshold must not flag real, distinct intents (the closest pair of the 77 is 0.83).
    labels = json.loads((BANKING77 / "categories.json").read_text())
    counts = {lab: 1 for lab in labels}
    assert len(labels) == 77 and not label_variants(counts) and not near_labels(counts)
