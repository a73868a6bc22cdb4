"""Data preparation: load rows in four shapes, clean, dedup, split, leak-check, balance, format.

Everything here is pure Python (csv/json); only the saved-HF-dataset reader imports ``datasets``,
inside the function. ``prepare_data(cfg)`` is what ``validate`` and ``train`` run; the small
pieces (:func:`normalize`, :func:`dedup`, :func:`stratified_split`, :func:`balance`,
:func:`leak_check`, :func:`format_example`) are unit-tested table-driven.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tuneforge_trainer.config import TrainerConfig
from tuneforge_trainer.tabular import TabularError, label_variants, near_labels, read_table

__all__ = [
    "DataError",
    "DataReport",
    "DroppedRow",
    "Example",
    "PreparedData",
    "balance",
    "dedup",
    "detect_format",
    "format_example",
    "check_label_spellings",
    "leak_check",
    "load_rows",
    "normalize",
    "prepare_data",
    "prepare_eval_rows",
    "stratified_sample",
    "stratified_split",
]


class DataError(ValueError):
    """A fatal data problem; ``str()`` is one line a user can act on."""


@dataclass
class Example:
    """One row after loading: the input, the target, and where it came from."""

    text: str
    target: str
    row: int
    source: str = "train"
    instruction: str | None = None
    messages: list[dict[str, str]] | None = None

    @property
    def label(self) -> str:
        return self.target


@dataclass
class DroppedRow:
    """A row removed by preparation, with its 1-based row number and the reason."""

    source: str
    row: int
    reason: str


@dataclass
class DataReport:
    """What preparation did, for ``validate``, the model card and metrics.json."""

    format: str = ""
    loaded: int = 0
    loaded_eval: int = 0
    dropped: list[DroppedRow] = field(default_factory=list)
    leaked: int = 0
    train_counts: dict[str, int] = field(default_factory=dict)
    eval_counts: dict[str, int] = field(default_factory=dict)
    validation_counts: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        reasons = Counter(d.reason.split(" (")[0] for d in self.dropped)
        return {
            "format": self.format,
            "loaded": self.loaded,
            "loaded_eval": self.loaded_eval,
            "dropped": len(self.dropped),
            "dropped_by_reason": dict(reasons),
            "leaked": self.leaked,
            "train_counts": self.train_counts,
            "eval_counts": self.eval_counts,
            "validation_counts": self.validation_counts,
            "warnings": self.warnings,
        }


@dataclass
class PreparedData:
    """Training, test (``eval``) and validation rows ready to format, the label set, and the report."""

    train: list[Example]
    eval: list[Example]
    labels: list[str]
    report: DataReport
    # Rows for model selection (eval loss, best checkpoint, early stopping); ``eval`` holds the
    # test rows, scored once at the end.
    validation: list[Example] = field(default_factory=list)


_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)
_SPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    """Fold case, Unicode forms, punctuation and whitespace (dedup and leak checks)."""
    t = unicodedata.normalize("NFKC", text).casefold()
    t = _PUNCT.sub(" ", t)
    return _SPACE.sub(" ", t).strip()


def detect_format(path: str) -> str:
    """Guess the dataset format from the path (and the first JSONL row)."""
    if os.path.isdir(path):
        return "hf_dataset"
    lower = path.lower()
    # .txt: Excel's "Unicode text" and "Text (Tab delimited)"; .xlsx/.xls are refused when read.
    if lower.endswith((".csv", ".tsv", ".txt", ".tab", ".xlsx", ".xls", ".ods")):
        return "csv"
    if lower.endswith((".jsonl", ".json", ".ndjson")):
        try:
            with open(path, encoding="utf-8-sig") as f:
                for line in f:
                    if line.strip():
                        first = json.loads(line)
                        return "chat_jsonl" if isinstance(first, dict) and "messages" in first else "instruction_jsonl"
        except (OSError, json.JSONDecodeError):
            return "instruction_jsonl"
        return "instruction_jsonl"
    raise DataError(f"dataset: cannot tell the format of {path!r}; set dataset.format")


def _from_record(
    rec: Any, fmt: str, row: int, source: str, text_col: str, label_col: str
) -> Example | DroppedRow:
    if not isinstance(rec, dict):
        return DroppedRow(source, row, "not an object")
    if fmt == "chat_jsonl" or (fmt == "hf_dataset" and "messages" in rec):
        msgs = rec.get("messages")
        if not isinstance(msgs, list) or len(msgs) < 2:
            return DroppedRow(source, row, "messages must be a list of at least two turns")
        if not all(isinstance(m, dict) and "role" in m and "content" in m for m in msgs):
            return DroppedRow(source, row, "each message needs role and content")
        if msgs[-1]["role"] != "assistant":
            return DroppedRow(source, row, "last message is not from the assistant")
        prompt = [{"role": str(m["role"]), "content": str(m["content"] or "")} for m in msgs[:-1]]
        text = "\n".join(m["content"] for m in prompt if m["role"] == "user")
        return Example(text=text, target=str(msgs[-1]["content"] or "").strip(), row=row, source=source, messages=prompt)
    if fmt == "instruction_jsonl" or (fmt == "hf_dataset" and "instruction" in rec):
        if "instruction" not in rec or "output" not in rec:
            return DroppedRow(source, row, "needs instruction and output fields")
        instr = str(rec.get("instruction") or "").strip()
        inp = str(rec.get("input") or "").strip()
        return Example(
            text=inp or instr, target=str(rec.get("output") or "").strip(), row=row, source=source, instruction=instr
        )
    # csv-like
    return Example(text=str(rec.get(text_col) or "").strip(), target=str(rec.get(label_col) or "").strip(), row=row, source=source)


def load_rows(
    path: str, fmt: str, text_col: str, label_col: str, source: str = "train", csv_bad_rows: str = "fail",
    encoding: str = "auto", delimiter: str = "auto", notes: list[str] | None = None,
) -> tuple[list[Example], list[DroppedRow], str]:
    """Read a local file/folder; returns (rows, dropped rows, resolved format).

    ``csv_bad_rows`` (``dataset.csv_bad_rows``): what a CSV row whose field count differs from the
    header does, "fail" (a :class:`DataError` naming the rows) or "drop" (a dropped row).
    Delimited text is read as tools export it (:mod:`tuneforge_trainer.tabular`: BOMs, UTF-16,
    cp1252, semicolons or tabs, CRLF, trailing empty columns and rows, header case and spaces);
    ``encoding`` and ``delimiter`` (``dataset.encoding``/``dataset.delimiter``) override the
    detection, and what was guessed is appended to ``notes`` (the report's warnings).
    """
    if fmt == "auto":
        fmt = detect_format(path)
    rows: list[Example] = []
    dropped: list[DroppedRow] = []

    def add(item: Example | DroppedRow) -> None:
        (rows if isinstance(item, Example) else dropped).append(item)  # type: ignore[arg-type]

    try:
        if fmt == "csv":
            with open(path, "rb") as fb:
                raw = fb.read()
            default = "\t" if path.lower().endswith((".tsv", ".tab", ".txt")) else ","
            try:
                table = read_table(raw, f"{source} data {path}", [text_col, label_col], encoding, delimiter, default)
            except TabularError as e:
                raise DataError(str(e)) from None
            if notes is not None:
                notes.extend(table.notes)
            cols, records, bad = table.header, table.records, table.bad
            for col, name in ((text_col, "dataset.text_column"), (label_col, "dataset.label_column")):
                if col not in cols:
                    shown = "tab" if table.delimiter == "\t" else repr(table.delimiter)
                    raise DataError(
                        f"{source} data {path}: missing column {col!r} ({name}); columns are {cols} "
                        f"(read as {table.encoding}, delimiter {shown})"
                    )
            # More fields than the header is the usual sign of an unquoted comma that cut the
            # text (the label column then holds a piece of the text); fewer, of a cut row.
            if bad and csv_bad_rows == "fail":
                listed = ", ".join(f"row {r} has {n}" for r, n in bad[:5])
                more = f" (and {len(bad) - 5} more rows)" if len(bad) > 5 else ""
                raise DataError(
                    f"{source} data {path}: {len(bad)} row(s) do not have the header's {len(cols)} "
                    f"fields: {listed}{more}; an unquoted delimiter or quote in the text usually "
                    "causes this. Quote the text, or set dataset.csv_bad_rows: drop to drop such rows"
                )
            for r, n in bad:
                dropped.append(DroppedRow(
                    source, r, f"field count differs from the header ({n} fields, expected {len(cols)})"
                ))
            for i, rec in records:
                add(_from_record(rec, fmt, i, source, text_col, label_col))
            dropped.sort(key=lambda d: d.row)
        elif fmt in ("instruction_jsonl", "chat_jsonl"):
            with open(path, encoding="utf-8-sig") as f:
                for i, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as e:
                        dropped.append(DroppedRow(source, i, f"invalid JSON ({e.msg})"))
                        continue
                    add(_from_record(rec, fmt, i, source, text_col, label_col))
        elif fmt == "hf_dataset":
            import datasets  # heavy: only for saved HF datasets

            saved = any(os.path.exists(os.path.join(path, f)) for f in ("dataset_dict.json", "state.json"))
            if saved:  # a folder written by save_to_disk
                ds = datasets.load_from_disk(path)
            else:
                # A dataset repo of parquet/CSV/JSON(L) files (an hf:// snapshot or a folder), read
                # as load_dataset reads a hub repo: splits from file names, else one train split.
                try:
                    ds = datasets.load_dataset(path)
                except Exception as e:  # noqa: BLE001 - datasets raises many types for bad folders
                    raise DataError(f"{source} data {path}: not a dataset folder datasets can read ({e})") from None
            if isinstance(ds, datasets.DatasetDict):
                split = "train" if source == "train" or "test" not in ds else "test"
                ds = ds[split if split in ds else next(iter(ds))]
            cols = ds.column_names
            if "messages" not in cols and "instruction" not in cols:
                for col, name in ((text_col, "dataset.text_column"), (label_col, "dataset.label_column")):
                    if col not in cols:
                        raise DataError(f"{source} data {path}: missing column {col!r} ({name}); columns are {cols}")
            for i, rec in enumerate(ds, start=1):
                add(_from_record(rec, fmt, i, source, text_col, label_col))
        else:
            raise DataError(f"dataset.format: unknown format {fmt!r}")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{source} data {path}: unreadable ({getattr(e, 'strerror', None) or e})") from None
    return rows, dropped, fmt


def check_label_spellings(
    rows: Sequence[Example], include: Sequence[str] | None, mode: str, report: DataReport
) -> None:
    """Labels that look like one class spelled differently, reported before training with their
    row counts (``data.label_variants``).

    Labels equal after folding case, whitespace, punctuation and underscores ('card_arrival',
    'Card Arrival') are one class written two ways far more often than two classes: trained
    apart they split the class, and the user would find out only at evaluation, from a confusion
    matrix. So by default (``fail``) they stop the run, naming each spelling, its row count and
    its first row; ``warn`` records them in the report's warnings and trains them as written.
    Nothing is merged silently either way: which spelling is right is the data owner's call.
    Labels a typo apart (:func:`~tuneforge_trainer.tabular.near_labels`) can be real, distinct
    classes, so they are always a warning. With ``include`` only groups touching an included
    label are reported (the filter would drop the other spellings' rows unseen).
    """
    from tuneforge_trainer.tabular import label_key

    counts = Counter(e.target for e in rows if e.target)
    first: dict[str, str] = {}
    for e in rows:
        first.setdefault(e.target, f"{e.source} row {e.row}")
    inc = {label_key(x) for x in include} if include is not None else None

    def relevant(labels: Sequence[str]) -> bool:
        return inc is None or any(label_key(x) in inc for x in labels)

    groups = [g for g in label_variants(counts) if relevant([lab for lab, _ in g])]
    if groups:
        desc = "; ".join(
            " vs ".join(f"{lab!r} ({n} rows, first at {first[lab]})" for lab, n in g) for g in groups[:5]
        )
        more = f" (and {len(groups) - 5} more groups)" if len(groups) > 5 else ""
        msg = f"labels that differ only in case, spaces, punctuation or underscores: {desc}{more}"
        if mode == "fail":
            raise DataError(
                f"{msg}; one class spelled two ways would train as two classes. Correct the spellings "
                "in the data, or set data.label_variants: warn to train them as separate classes"
            )
        report.warnings.append(f"{msg}; trained as separate classes (data.label_variants: warn)")
    for (a, na), (b, nb), ratio in near_labels(counts):
        if relevant([a, b]):
            report.warnings.append(
                f"labels {a!r} ({na} rows, first at {first[a]}) and {b!r} ({nb} rows, first at {first[b]}) "
                f"are spelled alike (similarity {ratio}): one class with a typo? Trained as separate classes"
            )


def dedup(rows: Sequence[Example], mode: str) -> tuple[list[Example], list[DroppedRow]]:
    """Keep the first of each duplicate (same input and target); ``mode`` none|exact|normalized."""
    if mode == "none":
        return list(rows), []
    seen: dict[tuple[str, str], int] = {}
    kept: list[Example] = []
    dropped: list[DroppedRow] = []
    for ex in rows:
        key_text = f"{ex.instruction or ''}\n{ex.text}"
        key = (normalize(key_text), normalize(ex.target)) if mode == "normalized" else (key_text, ex.target)
        if key in seen:
            dropped.append(DroppedRow(ex.source, ex.row, f"duplicate (of row {seen[key]})"))
            continue
        seen[key] = ex.row
        kept.append(ex)
    return kept, dropped


def stratified_split(
    rows: Sequence[Example], fraction: float, seed: int, min_rows: int = 2, field_name: str = "data.eval_fraction",
    strict: bool = True,
) -> tuple[list[Example], list[Example]]:
    """Split by label so each label keeps its share in the held-out part (at least one row each).

    Raises :class:`DataError` naming the label when a label has too few rows to split; with
    ``strict`` False such a label stays whole in the first part instead (validation rows only
    steer model selection, which does not need every label).
    """
    by_label: dict[str, list[Example]] = defaultdict(list)
    for ex in rows:
        by_label[ex.target].append(ex)
    rng = random.Random(seed)
    train: list[Example] = []
    held: list[Example] = []
    need = max(2, min_rows + 1)
    for label in sorted(by_label):
        group = list(by_label[label])
        if len(group) < need and not strict:
            train.extend(group)
            continue
        if len(group) < need:
            raise DataError(
                f"label {label!r} has {len(group)} rows; a held-out split ({field_name}) needs "
                f"at least {need} (data.min_rows_per_label + 1)"
            )
        rng.shuffle(group)
        n_eval = max(1, round(len(group) * fraction))
        n_eval = min(n_eval, len(group) - min_rows)
        held.extend(group[:n_eval])
        train.extend(group[n_eval:])
    train.sort(key=lambda e: e.row)
    held.sort(key=lambda e: e.row)
    return train, held


def cap_per_label(rows: Sequence[Example], cap: int | None, seed: int) -> list[Example]:
    """Keep at most ``cap`` rows per label (a seeded random choice, file order kept)."""
    if cap is None:
        return list(rows)
    by_label: dict[str, list[Example]] = defaultdict(list)
    for ex in rows:
        by_label[ex.target].append(ex)
    rng = random.Random(seed)
    keep: set[int] = set()
    for label in sorted(by_label):
        group = by_label[label]
        chosen = rng.sample(range(len(group)), min(cap, len(group)))
        keep.update(id(group[i]) for i in chosen)
    return [ex for ex in rows if id(ex) in keep]


def stratified_sample(rows: Sequence[Example], k: int | None, seed: int) -> list[Example]:
    """At most ``k`` rows, each label keeping its share (largest remainder), seeded, in file order.

    Files are often sorted by label, so the first ``k`` rows would be a few labels only; a plain
    random sample can miss a small label. Rows without a label set (generation) are one group.
    """
    if not k or len(rows) <= k:
        return list(rows)
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(rows):
        by_label[ex.target].append(i)
    n = len(rows)
    quota = {lab: len(ix) * k / n for lab, ix in by_label.items()}
    take = {lab: int(q) for lab, q in quota.items()}
    # Hand the remaining rows to the largest remainders (ties by label, for determinism).
    for lab in sorted(quota, key=lambda lab: (-(quota[lab] - take[lab]), lab))[: k - sum(take.values())]:
        take[lab] += 1
    rng = random.Random(seed)
    keep: set[int] = set()
    for lab in sorted(by_label):
        keep.update(rng.sample(by_label[lab], take[lab]))
    return [ex for i, ex in enumerate(rows) if i in keep]


def prepare_eval_rows(
    cfg: TrainerConfig, path: str, train: Sequence[Example], labels: Sequence[str]
) -> tuple[list[Example], DataReport]:
    """Held-out rows from a separate file (``evaluate --eval-file``), with the train path's hygiene.

    The same loading, bad-row drops, dedup, label filter and per-label cap as ``dataset.eval_source``
    rows get; the leak check against ``train`` (over ``data.leak_threshold`` is fatal; below it the
    leaked rows leave the held-out set, since training is already done); then a seeded stratified
    sample of ``eval.max_rows``.
    """
    ds, dp = cfg.dataset, cfg.data
    report = DataReport()
    held, dropped, fmt = load_rows(
        path, ds.format, ds.text_column, ds.label_column, "eval", ds.csv_bad_rows, ds.encoding, ds.delimiter,
        report.warnings,
    )
    report.format = fmt
    report.loaded_eval = len(held) + len(dropped)
    report.dropped.extend(dropped)
    if ds.include_labels is not None:
        wanted = set(ds.include_labels)
        held = [e for e in held if e.target in wanted]
    held, d = _drop_bad(held, dp.max_chars)
    report.dropped.extend(d)
    held, d = dedup(held, dp.dedup)
    report.dropped.extend(d)
    if cfg.task.type == "classification":
        unknown = sorted({e.target for e in held} - set(labels))
        if unknown:
            raise DataError(f"--eval-file: unknown labels in eval rows: {unknown[:10]}")
        held = cap_per_label(held, ds.max_eval_rows_per_label, dp.seed)
    elif ds.max_eval_rows_per_label:
        held = held[: ds.max_eval_rows_per_label]
    leaked = leak_check(train, held)
    if held and leaked:
        n_leaked = _count_leaked(held, leaked, dp.leak_threshold, report, "--eval-file rows")
        held = _without_leaked(held, leaked, "eval", "also in training (leak)", report)
        report.warnings.append(f"{n_leaked} --eval-file rows also occurred in training; removed from the held-out rows")
    held = stratified_sample(held, cfg.eval.max_rows, dp.seed)
    if not held:
        raise DataError("--eval-file: no held-out rows left after preparation")
    classification = cfg.task.type == "classification"
    report.eval_counts = dict(sorted(Counter(e.target for e in held).items())) if classification else {"rows": len(held)}
    return held, report


def balance(rows: Sequence[Example], mode: str, cap: int | None, seed: int) -> list[Example]:
    """Rebalance labels: none | undersample (to cap or the smallest) | oversample (to cap or the largest)."""
    if mode == "none":
        return list(rows)
    by_label: dict[str, list[Example]] = defaultdict(list)
    for ex in rows:
        by_label[ex.target].append(ex)
    if not by_label:
        return []
    sizes = [len(g) for g in by_label.values()]
    rng = random.Random(seed)
    out: list[Example] = []
    for label in sorted(by_label):
        group = list(by_label[label])
        if mode == "undersample":
            target = cap if cap else min(sizes)
            out.extend(rng.sample(group, min(target, len(group))))
        elif mode == "oversample":
            # The cap bounds oversampling; a label already above it is kept whole.
            target = cap if cap else max(sizes)
            out.extend(group)
            if len(group) < target:
                out.extend(rng.choice(group) for _ in range(target - len(group)))
        else:
            raise ValueError(f"unknown balance mode {mode!r}")
    rng.shuffle(out)
    return out


def leak_check(train: Sequence[Example], held: Sequence[Example]) -> set[str]:
    """Normalised inputs that occur in both training and held-out rows."""
    train_keys = {_leak_key(e) for e in train}
    return {k for e in held if (k := _leak_key(e)) in train_keys}


def _leak_key(e: Example) -> str:
    return normalize(f"{e.instruction or ''}\n{e.text}")


def _count_leaked(held: list[Example], leaked: set[str], threshold: float, report: DataReport, what: str) -> int:
    """How many held-out rows also occur in training (recorded in the report); fails above the threshold."""
    n = sum(1 for e in held if _leak_key(e) in leaked)
    frac = n / len(held)
    report.leaked = n
    if frac > threshold:
        raise DataError(f"data.leak_threshold: {n} of {len(held)} {what} ({frac:.1%}) also occur in training (limit {threshold:.1%})")
    return n


def _without_leaked(rows: list[Example], leaked: set[str], source: str, reason: str, report: DataReport) -> list[Example]:
    """``rows`` minus the leaked ones, each recorded as dropped with its row number."""
    kept = []
    for e in rows:
        if _leak_key(e) in leaked:
            report.dropped.append(DroppedRow(source, e.row, reason))
        else:
            kept.append(e)
    return kept


def render_prompt(ex: Example, template: str, labels: Sequence[str], system: str | None) -> list[dict[str, str]]:
    """The chat prompt (messages before the answer) for one row."""
    if ex.messages is not None:
        msgs = list(ex.messages)
        if system and not (msgs and msgs[0]["role"] == "system"):
            msgs.insert(0, {"role": "system", "content": system})
        return msgs
    if ex.instruction is not None:
        content = ex.instruction if ex.text == ex.instruction else f"{ex.instruction}\n\n{ex.text}"
    else:
        content = template.format(text=ex.text, labels=", ".join(labels))
    msgs = [{"role": "system", "content": system}] if system else []
    msgs.append({"role": "user", "content": content})
    return msgs


def format_example(
    ex: Example, template: str, labels: Sequence[str], system: str | None = None
) -> dict[str, list[dict[str, str]]]:
    """A conversational prompt/completion row as trl's SFTTrainer takes it."""
    return {
        "prompt": render_prompt(ex, template, labels, system),
        "completion": [{"role": "assistant", "content": ex.target}],
    }


def _drop_bad(rows: Iterable[Example], max_chars: int) -> tuple[list[Example], list[DroppedRow]]:
    kept: list[Example] = []
    dropped: list[DroppedRow] = []
    for ex in rows:
        if not ex.text.strip() and not (ex.instruction or "").strip():
            dropped.append(DroppedRow(ex.source, ex.row, "empty input"))
        elif not ex.target:
            dropped.append(DroppedRow(ex.source, ex.row, "empty target"))
        elif len(ex.text) + len(ex.instruction or "") + len(ex.target) > max_chars:
            dropped.append(DroppedRow(ex.source, ex.row, f"over data.max_chars ({max_chars})"))
        else:
            kept.append(ex)
    return kept, dropped


def prepare_data(
    cfg: TrainerConfig,
    resolve: Callable[[str], str] = lambda p: p,
    token_length: Callable[[Example], int] | None = None,
) -> PreparedData:
    """Run the whole preparation; raises :class:`DataError` on fatal problems.

    ``resolve`` maps a dataset URI (s3://, hf://) to a local path; ``token_length`` (when given)
    measures a formatted row in tokens so over-length rows can be dropped.
    """
    ds, dp = cfg.dataset, cfg.data
    classification = cfg.task.type == "classification"
    report = DataReport()
    path = resolve(ds.source)
    train, dropped, fmt = load_rows(
        path, ds.format, ds.text_column, ds.label_column, "train", ds.csv_bad_rows, ds.encoding, ds.delimiter,
        report.warnings,
    )
    report.format = fmt
    report.loaded = len(train) + len(dropped)
    report.dropped.extend(dropped)
    held: list[Example] = []
    if ds.eval_source:
        held, d2, _ = load_rows(
            resolve(ds.eval_source), ds.format, ds.text_column, ds.label_column, "eval", ds.csv_bad_rows,
            ds.encoding, ds.delimiter, report.warnings,
        )
        report.loaded_eval = len(held) + len(d2)
        report.dropped.extend(d2)
    if not train:
        raise DataError(f"dataset.source {ds.source}: no usable rows")
    if classification:
        # Before the label filter: a variant spelling of an included label would be dropped by it.
        check_label_spellings(train + held, ds.include_labels, dp.label_variants, report)

    if ds.include_labels is not None:
        wanted = set(ds.include_labels)
        missing = wanted - {e.target for e in train}
        if missing:
            raise DataError(f"dataset.include_labels: no training rows for {sorted(missing)}")
        train = [e for e in train if e.target in wanted]
        held = [e for e in held if e.target in wanted]

    train, d = _drop_bad(train, dp.max_chars)
    report.dropped.extend(d)
    held, d = _drop_bad(held, dp.max_chars)
    report.dropped.extend(d)
    train, d = dedup(train, dp.dedup)
    report.dropped.extend(d)
    held, d = dedup(held, dp.dedup)
    report.dropped.extend(d)

    labels: list[str] = []
    if classification:
        labels = list(cfg.task.labels) if cfg.task.labels else sorted({e.target for e in train})
        known = set(labels)
        kept = []
        for e in train:
            if e.target in known:
                kept.append(e)
            else:
                report.dropped.append(DroppedRow("train", e.row, f"label {e.target!r} not in task.labels"))
        train = kept
        unknown = sorted({e.target for e in held} - known)
        if unknown:
            raise DataError(f"dataset.eval_source: unknown labels in eval rows: {unknown[:10]}")
        if len(labels) < 2:
            raise DataError(f"task: classification needs at least two labels, found {labels}")

    if not ds.eval_source and dp.eval_fraction > 0:
        if classification:
            train, held = stratified_split(train, dp.eval_fraction, dp.seed, dp.min_rows_per_label)
        else:
            rng = random.Random(dp.seed)
            order = list(range(len(train)))
            rng.shuffle(order)
            n_eval = max(1, round(len(train) * dp.eval_fraction))
            idx = set(order[:n_eval])
            held = [e for i, e in enumerate(train) if i in idx]
            train = [e for i, e in enumerate(train) if i not in idx]

    # Validation rows come out of the training pool before the cap, so the cap still bounds the
    # rows trained on; they select the model, the test rows above only score it.
    validation: list[Example] = []
    if dp.validation_fraction > 0:
        if classification:
            train, validation = stratified_split(
                train, dp.validation_fraction, dp.seed + 1, dp.min_rows_per_label, "data.validation_fraction",
                strict=False,
            )
        else:
            rng = random.Random(dp.seed + 1)
            order = list(range(len(train)))
            rng.shuffle(order)
            idx = set(order[: max(1, round(len(train) * dp.validation_fraction))])
            validation = [e for i, e in enumerate(train) if i in idx]
            train = [e for i, e in enumerate(train) if i not in idx]

    if classification:
        train = cap_per_label(train, ds.max_rows_per_label, dp.seed)
    elif ds.max_rows_per_label:
        train = train[: ds.max_rows_per_label]
    if classification:
        held = cap_per_label(held, ds.max_eval_rows_per_label, dp.seed)
    elif ds.max_eval_rows_per_label:
        held = held[: ds.max_eval_rows_per_label]

    # Test rows must not occur in the rows that train or select the model.
    leaked = leak_check(train + validation, held)
    if held and leaked:
        n_leaked_eval = _count_leaked(held, leaked, dp.leak_threshold, report, "eval rows")
        train = _without_leaked(train, leaked, "train", "also in eval (leak)", report)
        validation = _without_leaked(validation, leaked, "train", "also in eval (leak)", report)
        report.warnings.append(f"{n_leaked_eval} eval rows also occurred in training; removed from training")

    if token_length is not None:

        def fits(rows: list[Example]) -> list[Example]:
            kept = []
            for e in rows:
                n = token_length(e)
                if n > cfg.training.max_seq_length and dp.drop_over_length:
                    report.dropped.append(DroppedRow("train", e.row, f"over training.max_seq_length ({n} tokens)"))
                else:
                    kept.append(e)
            return kept

        train, validation = fits(train), fits(validation)

    if dp.train_on_validation:
        # A refit after selection: the rows the settings were chosen on train too (after the cap,
        # which bounds the training pool the choice was made with, and after the leak check).
        train, validation = train + validation, []

    if classification:
        counts = Counter(e.target for e in train)
        few = sorted(lab for lab in labels if counts.get(lab, 0) < dp.min_rows_per_label)
        if few:
            raise DataError(
                f"data.min_rows_per_label: labels with fewer than {dp.min_rows_per_label} training rows: "
                + ", ".join(f"{lab} ({counts.get(lab, 0)})" for lab in few[:10])
            )
        train = balance(train, dp.balance, dp.balance_cap, dp.seed)
    if not train:
        raise DataError("dataset: no training rows left after preparation")
    if cfg.eval.enabled and cfg.eval.split == "test" and not held:
        raise DataError("dataset: no held-out rows left for evaluation")
    report.train_counts = dict(sorted(Counter(e.target for e in train).items())) if classification else {"rows": len(train)}
    report.eval_counts = dict(sorted(Counter(e.target for e in held).items())) if classification else {"rows": len(held)}
    report.validation_counts = (
        dict(sorted(Counter(e.target for e in validation).items())) if classification else {"rows": len(validation)}
    )
    return PreparedData(train=train, eval=held, labels=labels, report=report, validation=validation)
