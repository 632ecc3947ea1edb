"""Shared pieces of the trace loaders: the format registry and row validation.

Why one place: every loader must report a bad file the same way -- the file,
the 1-based data row (header not counted) or JSONL line, the offending value
and what to do -- and must never drop rows silently. Loaders differ only in
where they find the three columns.

Every loader returns a :class:`pandas.DataFrame` with the columns of
:data:`FRAME_COLUMNS`: ``arrival_s`` (float seconds from the earliest request,
NaN for length-only traces), ``prompt_tokens`` and ``output_tokens`` (int64
>= 1), and optionally ``prefix_block_hashes`` (one int64 array per row). Rows
keep the file's order, so row numbers in later messages still match the file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from capsim.errors import TraceFormatError
from capsim.lazy import lazy_module
from capsim.registry import Registry
from traces.loaders.table import TraceTable

pd = lazy_module("pandas")  # imported on first use: commands that read no trace start without it

FRAME_COLUMNS = ("arrival_s", "prompt_tokens", "output_tokens")

#: Seconds per unit for numeric arrival columns.
ARRIVAL_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


@dataclass(frozen=True)
class TraceFormat:
    """A registered trace file format.

    ``kind`` is the container (``csv`` or ``jsonl``); ``sniff`` says whether a
    file whose header (CSV) or first record's keys (JSONL) are ``names`` is in
    this format -- generic formats return False and are the fallback of
    ``format: auto``; ``load(path, columns)`` returns the normalised frame.
    ``read(path, columns)``, optional, returns the same columns as a
    :class:`~traces.loaders.table.TraceTable` without pandas when the file is
    plain and valid, else None -- then ``load`` reads it and reports any problem
    (:mod:`traces.loaders.fast`).
    """

    name: str
    kind: Literal["csv", "jsonl"]
    description: str
    sniff: Callable[[Sequence[str]], bool]
    load: Callable[..., pd.DataFrame]
    read: Callable[..., TraceTable | None] | None = None


TRACE_FORMATS: Registry[TraceFormat] = Registry("trace format")


def register_format(fmt: TraceFormat) -> TraceFormat:
    """Add ``fmt`` to :data:`TRACE_FORMATS` (called once by each loader module)."""
    TRACE_FORMATS.add(fmt.name, fmt)
    return fmt


# --------------------------------------------------------------------------- errors


def row_where(path: Path, row: int | None = None, *, word: str = "row") -> str:
    """``where=`` text for a file, optionally with a 1-based row (or line) number."""
    return f"{path} {word} {row}" if row is not None else str(path)


def missing_columns_error(path: Path, needed: Sequence[str], have: Sequence[str], fmt: str) -> TraceFormatError:
    """The error for a file that lacks columns its format requires."""
    missing = [c for c in needed if c not in have]
    return TraceFormatError(
        f"{fmt} trace is missing column(s) {', '.join(repr(c) for c in missing)}; "
        f"it needs {', '.join(repr(c) for c in needed)} and has {', '.join(repr(c) for c in have) or 'none'}",
        where=str(path),
        fix="if this is another layout, load it with format: csv (or jsonl) and map the columns, e.g. "
        "columns: {arrival: <time column>, prompt: <prompt tokens column>, output: <output tokens column>}",
    )


def require_file(path: Path) -> None:
    """Refuse a path that is missing or a directory before any loader opens it."""
    if path.is_dir():
        raise TraceFormatError(
            "is a directory, not a trace file", where=str(path), fix="point workload.trace.path at a CSV or JSONL file"
        )
    if not path.is_file():
        raise TraceFormatError("file not found", where=str(path), fix="check workload.trace.path")


def not_text_error(path: Path, exc: UnicodeDecodeError) -> TraceFormatError:
    """The error for a trace that is not UTF-8 text (a binary file, or another encoding)."""
    return TraceFormatError(
        f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}): a binary file, or text in "
        "another encoding",
        where=str(path),
        fix="a trace is a UTF-8 CSV or JSONL file; convert it (e.g. `iconv -f latin1 -t utf-8`) or check that "
        "workload.trace.path names the trace",
    )


# --------------------------------------------------------------------------- reading


def read_csv_table(path: Path) -> pd.DataFrame:
    """Read a CSV with a header into a frame; an empty file or a header without rows is an error."""
    try:
        frame = pd.read_csv(path, skipinitialspace=True)
    except FileNotFoundError as exc:
        raise TraceFormatError("file not found", where=str(path), fix="check the trace path") from exc
    except pd.errors.EmptyDataError as exc:
        raise TraceFormatError("file is empty", where=str(path), fix="point at a CSV with a header row") from exc
    except UnicodeDecodeError as exc:
        raise not_text_error(path, exc) from None
    except pd.errors.ParserError as exc:
        raise TraceFormatError(f"cannot parse as CSV: {exc}", where=str(path)) from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    if frame.empty:
        raise TraceFormatError("file has a header but no data rows", where=str(path))
    return frame


def read_jsonl_records(path: Path) -> tuple[list[dict], np.ndarray]:
    """Parse one JSON object per line; returns the records and their 1-based line numbers.

    Blank lines are skipped (their numbers are kept out of the result, so later
    messages still cite the right line). A line that is not a JSON object is an
    error naming the line.
    """
    records: list[dict] = []
    lines: list[int] = []
    try:
        handle = path.open("r", encoding="utf-8")
    except FileNotFoundError as exc:
        raise TraceFormatError("file not found", where=str(path), fix="check the trace path") from exc
    with handle:
        try:
            numbered = list(enumerate(handle, start=1))
        except UnicodeDecodeError as exc:
            raise not_text_error(path, exc) from None
        for number, text in numbered:
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                raise TraceFormatError(
                    f"not valid JSON ({exc.msg} at column {exc.colno}): {text.strip()[:80]!r}",
                    where=row_where(path, number, word="line"),
                    fix="each line must hold one JSON object",
                ) from exc
            if not isinstance(record, dict):
                raise TraceFormatError(
                    f"expected a JSON object, got {type(record).__name__}",
                    where=row_where(path, number, word="line"),
                    fix='each line must hold one JSON object such as {"timestamp": 0, ...}',
                )
            records.append(record)
            lines.append(number)
    if not records:
        raise TraceFormatError("file is empty", where=str(path), fix="point at a JSONL file with one request per line")
    return records, np.asarray(lines, dtype=np.int64)


def jsonl_frame(path: Path, records: list[dict], lines: np.ndarray, needed: Sequence[str], fmt: str) -> pd.DataFrame:
    """A frame of ``records``; a record lacking one of ``needed`` keys is an error naming its line."""
    frame = pd.DataFrame.from_records(records)
    have = list(frame.columns)
    if any(c not in have for c in needed):
        raise missing_columns_error(path, needed, have, fmt)
    for col in needed:
        absent = frame[col].isna().to_numpy()
        if absent.any():
            first = int(np.flatnonzero(absent)[0])
            raise TraceFormatError(
                f"record has no {col!r} (or it is null)",
                where=row_where(path, int(lines[first]), word="line"),
                fix=f"every line needs {', '.join(repr(c) for c in needed)}",
            )
    return frame


# --------------------------------------------------------------------------- columns


def _row_label(index: int, rows: np.ndarray | None) -> int:
    return int(rows[index]) if rows is not None else index + 1


def plain(value: object) -> object:
    """A cell as the plain Python value it holds, for messages: ``-3`` rather than numpy 2's ``np.int64(-3)``."""
    return value.item() if isinstance(value, np.generic) else value


def token_column(
    raw: pd.Series,
    *,
    path: Path,
    column: str,
    role: Literal["prompt", "output"],
    rows: np.ndarray | None = None,
    word: str = "row",
) -> np.ndarray:
    """Validate a token-count column and return it as int64.

    Rejects, naming the first offending row and its value: empty or non-numeric
    cells, fractional counts, negative counts and zero-length prompts. Zero
    output tokens are rejected too -- a request generates at least one token --
    with the count and first row numbers so the user can see how many there are.
    ``rows`` maps positions to reported row/line numbers (default: position + 1).
    """
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)

    def fail(mask: np.ndarray, problem: str, fix: str) -> None:
        first = int(np.flatnonzero(mask)[0])
        raise TraceFormatError(
            f"{role} tokens column {column!r} has {problem}: {plain(raw.iloc[first])!r}",
            where=row_where(path, _row_label(first, rows), word=word),
            fix=fix,
        )

    bad = ~np.isfinite(values)
    if bad.any():
        fail(bad, "a missing or non-numeric value", "token counts must be whole numbers >= 1")
    bad = values != np.round(values)
    if bad.any():
        fail(bad, "a fractional value", "token counts must be whole numbers >= 1")
    bad = values < 0
    if bad.any():
        fail(bad, "a negative value", "token counts must be whole numbers >= 1")
    zero = values == 0
    if zero.any():
        where_zero = np.flatnonzero(zero)
        labels = ", ".join(str(_row_label(int(i), rows)) for i in where_zero[:5])
        more = f" and {len(where_zero) - 5} more" if len(where_zero) > 5 else ""
        raise TraceFormatError(
            f"{len(where_zero)} {word}(s) have 0 {role} tokens in column {column!r} ({word}s {labels}{more})",
            where=row_where(path, _row_label(int(where_zero[0]), rows), word=word),
            fix=f"every request needs at least one {role} token; fix or remove those {word}s",
        )
    return values.astype(np.int64)


def arrival_column(
    raw: pd.Series,
    *,
    path: Path,
    column: str,
    unit: str | None = None,
    rows: np.ndarray | None = None,
    word: str = "row",
) -> np.ndarray:
    """Convert an arrival column to float seconds from the earliest request.

    Numeric columns are in ``unit`` (``s``, ``ms`` or ``us``; default ``s``).
    Text columns, or ``unit='datetime'``, are parsed as date-times (ISO 8601
    such as ``2023-11-16 18:15:46.6805900``; up to nanosecond digits). Missing
    or unparseable cells are errors naming the row; the result is re-based so
    the earliest arrival is 0 (row order is kept).
    """
    if unit not in (None, "datetime") and unit not in ARRIVAL_UNITS:
        raise TraceFormatError(
            f"unknown arrival unit {unit!r}",
            where=str(path),
            fix=f"use one of {', '.join(ARRIVAL_UNITS)} or datetime",
        )
    numeric = pd.to_numeric(raw, errors="coerce")
    as_datetime = unit == "datetime" or (unit is None and numeric.isna().all() and raw.notna().any())
    if as_datetime:
        stamps = pd.to_datetime(raw, format="ISO8601", errors="coerce")
        if stamps.isna().any():
            stamps = pd.to_datetime(raw, format="mixed", errors="coerce")
        bad = stamps.isna().to_numpy()
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise TraceFormatError(
                f"arrival column {column!r} has a value that is not a date-time: {plain(raw.iloc[first])!r}",
                where=row_where(path, _row_label(first, rows), word=word),
                fix="use ISO 8601 date-times (2023-11-16 18:15:46.68) or numbers with arrival_unit s/ms/us",
            )
        ns = stamps.to_numpy(dtype="datetime64[ns]").astype(np.int64)
        return (ns - ns.min()).astype(np.float64) * 1e-9
    values = numeric.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(values)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise TraceFormatError(
            f"arrival column {column!r} has a missing or non-numeric value: {plain(raw.iloc[first])!r}",
            where=row_where(path, _row_label(first, rows), word=word),
            fix="every request needs an arrival time (number, or date-time with arrival_unit: datetime)",
        )
    seconds = values * ARRIVAL_UNITS[unit or "s"]
    return seconds - seconds.min()


def normalised_frame(
    arrival_s: np.ndarray | None,
    prompt_tokens: np.ndarray,
    output_tokens: np.ndarray,
    **extra: object,
) -> pd.DataFrame:
    """Assemble the loader result; ``arrival_s=None`` marks a length-only trace (NaN arrivals)."""
    n = len(prompt_tokens)
    arrivals = np.full(n, np.nan) if arrival_s is None else np.asarray(arrival_s, dtype=np.float64)
    frame = pd.DataFrame({"arrival_s": arrivals, "prompt_tokens": prompt_tokens, "output_tokens": output_tokens})
    for name, value in extra.items():
        frame[name] = value
    return frame
