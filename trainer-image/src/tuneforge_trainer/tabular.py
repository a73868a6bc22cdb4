"""Delimited text as spreadsheets, BI tools and ticketing systems save it, and label spellings.

A file saved by Excel, LibreOffice, Google Sheets, Power BI or a ticketing export is rarely the
UTF-8, comma, LF file a parser expects: Excel's "CSV UTF-8" starts with a byte-order mark, its
"Unicode text" is UTF-16 with tabs, plain "CSV" on Windows is cp1252, European locales separate
with semicolons, every row ends in CRLF, and sheets carry trailing empty columns and rows. This
module turns such bytes into a header and records, or refuses with the reason:

- :func:`decode`: a byte-order mark decides (UTF-8/16/32); else strict UTF-8; else
  charset-normalizer's best guess, reported as a guess; workbooks (.xlsx/.xls) and bytes that
  are no known text are refused with what to do.
- :func:`pick_delimiter`: the delimiter whose header holds the wanted columns, trying
  ``csv.Sniffer``'s guess first, then comma, semicolon, tab and pipe.
- :func:`match_columns`: the header cell for each wanted column, exactly or after trimming
  whitespace and folding case (two cells that fold alike are refused as ambiguous).
- :func:`read_records`: ``csv`` parsing (quoted multiline fields, CRLF), trailing empty columns
  and fully empty rows dropped, rows whose field count differs from the header's listed.

Labels that look like the same class spelled differently are found by :func:`label_variants`
(equal after folding case, whitespace, punctuation and underscores) and :func:`near_labels`
(a small edit apart, ``difflib``). Pure Python: the standard library and charset-normalizer.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import io
import itertools
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "DELIMITERS",
    "Decoded",
    "Table",
    "TabularError",
    "decode",
    "label_key",
    "label_variants",
    "match_columns",
    "near_labels",
    "pick_delimiter",
    "read_records",
    "read_table",
]

# Tried in this order after csv.Sniffer's guess: what spreadsheets and exports write.
DELIMITERS = (",", ";", "\t", "|")

# Longest BOM first: UTF-32 LE starts with the UTF-16 LE mark.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le", "UTF-32 LE"),
    (codecs.BOM_UTF32_BE, "utf-32-be", "UTF-32 BE"),
    (codecs.BOM_UTF8, "utf-8", "UTF-8 with BOM"),
    (codecs.BOM_UTF16_LE, "utf-16-le", "UTF-16 LE"),
    (codecs.BOM_UTF16_BE, "utf-16-be", "UTF-16 BE"),
)
# Windows ANSI code pages by use (Western, Central European, Cyrillic, Greek, Turkish, Hebrew,
# Arabic, Baltic, Vietnamese), and how much messier than the best guess one may decode (the mess
# ratio of charset-normalizer, 0..1) and still be preferred.
_ANSI_PAGES = ("cp1252", "cp1250", "cp1251", "cp1253", "cp1254", "cp1255", "cp1256", "cp1257", "cp1258")
_CHAOS_MARGIN = 0.02
_WORKBOOKS = (
    (b"PK\x03\x04", "a zip archive (an Excel .xlsx or OpenDocument .ods workbook?)"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "a legacy Excel .xls workbook"),
)


class TabularError(ValueError):
    """A file that cannot be read as delimited text; ``str()`` names the file, the reason and,
    where there is one, the row (data.py turns it into a DataError)."""


@dataclass
class Decoded:
    """A file's text and how it was decoded (``guessed``: no BOM and not UTF-8)."""

    text: str
    encoding: str
    guessed: bool = False


@dataclass
class Table:
    """A delimited file as read: the header, ``(row number, record)`` pairs, the rows whose field
    count differs from the header's as ``(row number, field count)``, and what was detected."""

    header: list[str]
    records: list[tuple[int, dict[str, str]]]
    bad: list[tuple[int, int]]
    encoding: str
    delimiter: str
    notes: list[str] = field(default_factory=list)


def decode(raw: bytes, where: str, encoding: str = "auto") -> Decoded:
    """The text of ``raw``: ``encoding`` when given, else by BOM, UTF-8 or charset-normalizer."""
    for magic, what in _WORKBOOKS:
        if raw.startswith(magic):
            raise TabularError(
                f"{where}: {what}, not delimited text; export the sheet as 'CSV UTF-8' (or UTF-16 "
                "'Unicode text') and point the dataset at that file"
            )
    if encoding != "auto":
        try:
            return Decoded(raw.decode(encoding), encoding)
        except LookupError:
            raise TabularError(f"{where}: unknown encoding {encoding!r} (dataset.encoding)") from None
        except UnicodeDecodeError as e:
            raise TabularError(f"{where}: not {encoding} (dataset.encoding): {_where_bad(raw, e)}") from None
    for bom, codec, name in _BOMS:
        if raw.startswith(bom):
            try:
                return Decoded(raw[len(bom) :].decode(codec), name)
            except UnicodeDecodeError as e:
                raise TabularError(f"{where}: starts with a {name} byte-order mark but is not {name}: {_where_bad(raw, e)}") from None
    try:
        return Decoded(raw.decode("utf-8"), "UTF-8")
    except UnicodeDecodeError as e:
        first_bad = _where_bad(raw, e)
    from charset_normalizer import from_bytes

    matches = list(from_bytes(raw))
    best = matches[0] if matches else None
    if best is not None:
        # On a few hundred bytes several code pages decode equally cleanly (a cp1252 file with
        # a euro sign and curly quotes came out as Baltic cp775); what spreadsheets save when
        # not UTF-8 is the Windows ANSI code page, so among the near-equally clean candidates
        # the ANSI pages win, in order of use.
        close = {m.encoding: m for m in matches if m.chaos <= best.chaos + _CHAOS_MARGIN}
        best = next((close[c] for c in _ANSI_PAGES if c in close), best)
    if best is None or "\x00" in str(best):
        raise TabularError(
            f"{where}: not text in an encoding that could be recognised (not UTF-8: {first_bad}); "
            "save it as 'CSV UTF-8', or set dataset.encoding"
        )
    return Decoded(str(best), best.encoding, guessed=True)


def _where_bad(raw: bytes, e: UnicodeDecodeError) -> str:
    line = raw.count(b"\n", 0, e.start) + 1
    return f"byte 0x{raw[e.start]:02x} at line {line} ({e.reason})"


def _fold(name: str) -> str:
    return unicodedata.normalize("NFKC", name).strip().casefold()


def match_columns(header: Sequence[str], wanted: Sequence[str]) -> dict[str, str] | None:
    """For each wanted column the header cell that names it (exactly, else the one cell equal
    after trimming and case folding); None when one is missing. Two cells that fold to a wanted
    name raise :class:`TabularError` (which one is meant cannot be told)."""
    found: dict[str, str] = {}
    for col in wanted:
        if col in header:
            found[col] = col
            continue
        loose = [h for h in header if _fold(h) == _fold(col)]
        if len(loose) > 1:
            raise TabularError(f"columns {loose} all match {col!r} after trimming and case folding; rename one")
        if not loose:
            return None
        found[col] = loose[0]
    return found


def _header_row(text: str, delimiter: str) -> list[str]:
    for fields in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter):
        if any(f.strip() for f in fields):
            return fields
    return []


def pick_delimiter(text: str, wanted: Sequence[str], default: str = ",") -> str:
    """The delimiter whose header row holds every wanted column: ``csv.Sniffer``'s guess on the
    first lines first, then :data:`DELIMITERS`; ``default`` when none does (the caller then names
    the missing column and the columns it did find)."""
    order = list(DELIMITERS)
    try:
        sniffed = csv.Sniffer().sniff(text[:20_000], delimiters="".join(DELIMITERS)).delimiter
        order.remove(sniffed)
        order.insert(0, sniffed)
    except csv.Error:
        pass  # no consistent delimiter in the sample: the header decides alone
    for d in order:
        try:
            if match_columns(_header_row(text, d), wanted) is not None:
                return d
        except TabularError:
            return d  # this delimiter finds the columns, ambiguously: read_records says so
    return default


def read_records(text: str, delimiter: str) -> tuple[list[str], list[tuple[int, dict[str, str]]], list[tuple[int, int]]]:
    """Header, ``(row number, record)`` pairs and ``(row number, field count)`` of the rows whose
    field count differs from the header's.

    Row numbers are a spreadsheet's: the header is row 1 and a quoted multiline field stays one
    row. Trailing empty header cells (a sheet's unused columns) are dropped with the empty fields
    under them; rows with no text in any field (blank lines, a sheet's ``;;;`` tail) are skipped.
    """
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] = []
    good: list[tuple[int, dict[str, str]]] = []
    bad: list[tuple[int, int]] = []
    i = 0
    for fields in reader:
        if not any(f.strip() for f in fields):
            continue
        i += 1
        if not header:
            header = list(fields)
            while header and not header[-1].strip():
                header.pop()
            continue
        while len(fields) > len(header) and not fields[-1].strip():
            fields.pop()
        if len(fields) != len(header):
            bad.append((i, len(fields)))
        else:
            good.append((i, dict(zip(header, fields))))
    return header, good, bad


def read_table(
    raw: bytes, where: str, wanted: Sequence[str], encoding: str = "auto", delimiter: str = "auto",
    default_delimiter: str = ",",
) -> Table:
    """Decode, pick the delimiter and read ``raw``; records are keyed by the wanted column names
    (the header cells matched loosely are renamed to them)."""
    dec = decode(raw, where, encoding)
    if "\x00" in dec.text:
        raise TabularError(f"{where}: holds NUL characters after decoding as {dec.encoding}: not delimited text")
    text = dec.text.lstrip("\ufeff")  # a BOM written twice, or after a guessed decode
    delim = pick_delimiter(text, wanted, default_delimiter) if delimiter == "auto" else delimiter
    header, records, bad = read_records(text, delim)
    notes: list[str] = []
    if dec.guessed:
        notes.append(
            f"{where}: not UTF-8; decoded as {dec.encoding} (charset-normalizer's guess): check accented "
            "characters, or set dataset.encoding"
        )
    try:
        cols = match_columns(header, wanted)
    except TabularError as e:
        raise TabularError(f"{where}: {e}") from None
    if cols:
        renamed = {cell: col for col, cell in cols.items() if cell != col}
        if renamed:
            notes.append(f"{where}: header cells {sorted(renamed)} read as columns {sorted(renamed.values())}")
            records = [(r, {renamed.get(k, k): v for k, v in rec.items()}) for r, rec in records]
            header = [renamed.get(h, h) for h in header]
    return Table(header, records, bad, dec.encoding, delim, notes)


def label_key(label: str) -> str:
    """A label folded for comparison: Unicode form, case, punctuation, underscores, hyphens and
    whitespace ('Card Arrival', 'card_arrival' and ' card-arrival.' have one key)."""
    t = unicodedata.normalize("NFKC", label).casefold()
    t = re.sub(r"[\W_]+", " ", t, flags=re.UNICODE)
    return t.strip()


def label_variants(counts: Mapping[str, int]) -> list[list[tuple[str, int]]]:
    """Groups of two or more labels with one :func:`label_key`, each ``(label, rows)``, most rows
    first; groups in order of their largest label."""
    groups: dict[str, list[tuple[str, int]]] = {}
    for label, n in counts.items():
        groups.setdefault(label_key(label), []).append((label, n))
    out = [sorted(g, key=lambda x: (-x[1], x[0])) for g in groups.values() if len(g) > 1]
    return sorted(out, key=lambda g: (-g[0][1], g[0][0]))


def near_labels(counts: Mapping[str, int], threshold: float = 0.9) -> list[tuple[tuple[str, int], tuple[str, int], float]]:
    """Pairs of labels whose keys differ but are similar (``difflib`` ratio >= ``threshold``:
    a typo such as 'card_arival' next to 'card_arrival'), the larger label first, as
    ``((label, rows), (label, rows), ratio)``. The threshold sits above every pair of BANKING77's
    77 intents (the closest, 'get_physical_card'/'order_physical_card', is 0.83)."""
    by_key: dict[str, tuple[str, int]] = {}
    for label, n in counts.items():
        k = label_key(label)
        if k not in by_key or n > by_key[k][1]:
            by_key[k] = (label, n)
    pairs = []
    for a, b in itertools.combinations(sorted(by_key), 2):
        ratio = difflib.SequenceMatcher(None, a, b).ratio()
        if ratio >= threshold:
            x, y = sorted((by_key[a], by_key[b]), key=lambda t: (-t[1], t[0]))
            pairs.append((x, y, round(ratio, 3)))
    return sorted(pairs, key=lambda p: -p[2])
