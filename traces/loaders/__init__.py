"""Trace file loaders, one module per format, registered in :data:`TRACE_FORMATS`.

Adding a format is one module: write ``load(path, columns=None)`` returning
the normalised frame (see :mod:`traces.loaders.common`) and a ``sniff`` for
``format: auto``, register a :class:`TraceFormat`, and import the module
below. A ``read`` that returns the same columns without pandas for plain,
valid files (:mod:`traces.loaders.fast`) is optional: without it the format
is read by ``load`` everywhere.

>>> sorted(TRACE_FORMATS.names())
['azure', 'csv', 'jsonl', 'mooncake', 'vidur']
"""

from __future__ import annotations

import json
from pathlib import Path

from capsim.lazy import lazy_module
from traces.loaders import azure, generic_csv, generic_jsonl, mooncake, vidur  # noqa: F401  (registration)
from traces.loaders.common import FRAME_COLUMNS, TRACE_FORMATS, TraceFormat, require_file
from traces.loaders.fast import csv_header
from traces.loaders.table import TraceTable

pd = lazy_module("pandas")  # imported on first use: commands that read no trace start without it

__all__ = ["FRAME_COLUMNS", "TRACE_FORMATS", "TraceFormat", "TraceTable", "detect_format", "load_file", "read_table"]

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")


def _container(path: Path) -> str:
    """``jsonl`` by extension, else by whether the first non-blank character opens a JSON object."""
    if path.suffix.lower() in JSONL_SUFFIXES:
        return "jsonl"
    with path.open("r", encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.strip():
                return "jsonl" if line.lstrip().startswith("{") else "csv"
    return "csv"


def _first_names(path: Path, kind: str) -> list[str]:
    """Header names (CSV) or the first record's keys (JSONL); empty when unreadable (the loader then explains).

    A plain CSV header is read without pandas (:func:`traces.loaders.fast.csv_header`); pandas reads any other.
    """
    try:
        if kind == "csv":
            names = csv_header(path)
            if names is not None:
                return names
            return [str(c).strip() for c in pd.read_csv(path, nrows=0, skipinitialspace=True).columns]
        with path.open("r", encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    record = json.loads(line)
                    return list(record) if isinstance(record, dict) else []
    except (ValueError, UnicodeDecodeError, pd.errors.EmptyDataError, pd.errors.ParserError):
        return []
    return []


def detect_format(path: str | Path) -> str:
    """The registered format of a file: the first specific format whose ``sniff`` accepts it, else ``csv``/``jsonl``.

    Why sniff the header and not trust the extension alone: Azure and vidur
    files are both ``.csv`` but need different parsing of the arrival column.
    """
    path = Path(path)
    require_file(path)
    kind = _container(path)
    names = _first_names(path, kind)
    for name in TRACE_FORMATS.names():
        fmt = TRACE_FORMATS.get(name)
        if fmt.kind == kind and fmt.sniff(names):
            return name
    return kind


def read_table(path: str | Path, format: str = "auto", columns: object = None) -> TraceTable:
    """Read any trace file into the normalised columns (``arrival_s``, ``prompt_tokens``, ``output_tokens``, ...).

    ``format`` is a name in :data:`TRACE_FORMATS` or ``auto``; ``columns`` is
    the mapping for the generic ``csv``/``jsonl`` formats (with ``auto``, a
    mapping selects the generic format of the file's container).

    Why a table and two readers: the format's pandas-free ``read`` takes plain,
    valid files (every shipped trace), so ``capsim validate`` of a replay does not
    import pandas; any other file goes to its pandas ``load``, which reports what
    is wrong with it. Both give the same columns (``tests/test_traces_fast.py``).
    """
    path = Path(path)
    require_file(path)
    if format != "auto":
        name = TRACE_FORMATS.canonical(format)
    elif columns:  # a column mapping only makes sense for the generic formats
        name = _container(path)
    else:
        name = detect_format(path)
    fmt = TRACE_FORMATS.get(name)
    table = fmt.read(path, columns) if fmt.read is not None else None
    return table if table is not None else TraceTable.from_frame(fmt.load(path, columns))


def load_file(path: str | Path, format: str = "auto", columns: object = None) -> pd.DataFrame:
    """Load any trace file into the normalised frame (``arrival_s``, ``prompt_tokens``, ``output_tokens``, ...).

    The frame of :func:`read_table` (same arguments).
    """
    return read_table(path, format, columns).to_frame()
