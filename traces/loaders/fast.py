"""Reading plain trace files without pandas: the common, valid case of each shipped format.

Why: ``capsim validate`` of a scenario that replays a trace spent more time importing pandas than doing anything
else. Most trace files are plain -- a header, then rows of whole numbers and ISO date-times -- and for those the
result does not depend on how pandas infers types, so the csv and json modules with numpy give the same arrays.

The rule that keeps one set of checks: a reader here returns the table only when every cell it uses is a value
whose reading is unambiguous and valid (a whole token count >= 1, an integer or finite JSON number of arrival
time, a date-time of the strict form ``YYYY-MM-DD HH:MM:SS[.fffffffff]``); anything else -- an empty or
non-numeric cell, a decimal fraction in a CSV, a zero count, quotes, blank lines, ragged rows, a byte-order mark,
text that is not UTF-8 -- makes it return None, and the pandas loader of the format reads the file and reports
the problem with its usual message, row and fix. A missing column or a bad column mapping, which does not
depend on how cells are parsed, is reported by the readers here through the same functions as by the pandas
loaders. So every error a user sees comes from the same checks; ``tests/test_traces_fast.py`` checks, on every
shipped trace and on generated files (valid, corrupt and odd), that a reader here returns None, or the pandas
loader's columns bit for bit, or the pandas loader's error.

Decimal fractions in CSV cells are left to pandas on purpose: its parser is not the correctly rounded
``float()``, so the last bit of a time could differ.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from traces.loaders.common import ARRIVAL_UNITS

#: Columns of token counts or integer times this module reads itself, cells joined by newlines: ASCII digits, at
#: most 15 (below 2**53, so the float64 round trip of the pandas path is exact). One match over the joined column
#: is several times faster than one per cell.
_WHOLE = re.compile(r"[0-9]{1,15}(?:\n[0-9]{1,15})*")
_SIGNED = re.compile(r"-?[0-9]{1,15}(?:\n-?[0-9]{1,15})*")
#: The date-times read here: ISO 8601 without a zone, seconds given, up to nanosecond digits, years 1700-2199
#: (inside the span numpy's and pandas' nanosecond stamps can hold).
_STAMP = re.compile(
    r"(?:1[7-9]|2[01])[0-9]{2}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])[ T]"
    r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,9})?"
)
#: Integers a JSON value may be and still convert to float64 exactly (pandas' path goes through float64).
_EXACT = 2**53


def csv_columns(path: Path) -> tuple[list[str], list[tuple[str, ...]]] | None:
    """The stripped header names and the columns (cell text, row order) of a plain CSV, else None.

    Plain: UTF-8 without a byte-order mark, no quote characters or NUL bytes, no lone carriage returns, a header
    of distinct non-empty names, at least one data row, and every row with as many cells as the header (so no
    blank line and no index column, which pandas would read its own way).
    """
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    if text.startswith("\ufeff") or '"' in text or "\x00" in text:
        return None
    text = text.replace("\r\n", "\n")
    if "\r" in text:
        return None
    rows = list(csv.reader(io.StringIO(text), skipinitialspace=True))
    if len(rows) < 2:
        return None
    names = [name.strip() for name in rows[0]]
    if not all(names) or len(set(names)) != len(names):
        return None
    if set(map(len, rows)) != {len(names)}:
        return None
    return names, list(zip(*rows[1:], strict=True))


def csv_named_columns(path: Path) -> tuple[list[str], dict[str, tuple[str, ...]]] | None:
    """:func:`csv_columns` keyed by header name (the names kept in order too, for checks and messages), else None."""
    plain = csv_columns(path)
    if plain is None:
        return None
    names, cells = plain
    return names, dict(zip(names, cells, strict=True))


def csv_header(path: Path) -> list[str] | None:
    """The stripped header names of a plain CSV (as :func:`csv_columns` defines it, rows unchecked), else None."""
    try:
        with path.open("r", encoding="utf-8", newline="") as handle:
            first = handle.readline()
    except (OSError, UnicodeDecodeError):
        return None
    if first.startswith("\ufeff") or '"' in first or "\x00" in first or not first.strip():
        return None
    first = first.removesuffix("\n").removesuffix("\r")
    if "\r" in first:
        return None
    names = [name.strip() for name in next(csv.reader([first], skipinitialspace=True))]
    if not all(names) or len(set(names)) != len(names):
        return None
    return names


def whole_counts(cells: Sequence[str]) -> np.ndarray | None:
    """Token counts as int64 when every cell is a whole number >= 1 written in digits, else None."""
    if not _WHOLE.fullmatch("\n".join(cells)):
        return None
    values = np.fromiter(map(int, cells), dtype=np.int64, count=len(cells))
    return None if (values == 0).any() else values


def csv_arrivals(cells: Sequence[str], unit: str | None) -> np.ndarray | None:
    """Arrival seconds from the earliest request, as the pandas path computes them, for integer cells (numeric
    units, or no unit) or strict date-times (``datetime``, or no unit); else None."""
    if unit != "datetime" and _SIGNED.fullmatch("\n".join(cells)):
        if unit is not None and unit not in ARRIVAL_UNITS:
            return None  # the pandas path names the unknown unit
        values = np.fromiter(map(int, cells), dtype=np.int64, count=len(cells)).astype(np.float64)
        return rebased(values, unit)
    if unit in (None, "datetime") and all(map(_STAMP.fullmatch, cells)):
        return stamps(cells)
    return None


def rebased(values: np.ndarray, unit: str | None) -> np.ndarray:
    """Numeric arrival times in ``unit`` as seconds from the earliest (the same operations as the pandas path)."""
    seconds = values * ARRIVAL_UNITS[unit or "s"]
    return seconds - seconds.min()


def stamps(cells: Sequence[str]) -> np.ndarray | None:
    """Strict ISO date-times as seconds from the earliest; None for a date that does not exist (30 February)."""
    try:
        ns = np.array(cells, dtype="datetime64[ns]").astype(np.int64)
    except ValueError:
        return None
    return (ns - ns.min()).astype(np.float64) * 1e-9


def json_values(records: Sequence[dict], key: str) -> list | None:
    """The values of ``key`` in every record, or None when a record lacks it or holds null."""
    values = [record.get(key) for record in records]
    return None if any(value is None for value in values) else values


def json_counts(values: Sequence[object]) -> np.ndarray | None:
    """Token counts as int64 when every value is a JSON integer in 1 .. 2**53, else None."""
    if not all(type(v) is int and 0 < v < _EXACT for v in values):
        return None
    return np.array(values, dtype=np.int64)


def json_arrivals(values: Sequence[object], unit: str | None) -> np.ndarray | None:
    """Arrival seconds from the earliest request for JSON numbers (integers exact in float64, finite floats) in
    a numeric unit, or strict date-time strings (``datetime`` or no unit); else None."""
    if unit != "datetime" and all(_plain_number(v) for v in values):
        if unit is not None and unit not in ARRIVAL_UNITS:
            return None
        return rebased(np.array(values, dtype=np.float64), unit)
    if unit in (None, "datetime") and all(type(v) is str and _STAMP.fullmatch(v) for v in values):
        return stamps(values)
    return None


def _plain_number(value: object) -> bool:
    if type(value) is int:
        return -_EXACT < value < _EXACT
    return type(value) is float and math.isfinite(value)
