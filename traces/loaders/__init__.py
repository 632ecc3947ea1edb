"""Trace file loaders, one module per format, registered in :data:`TRACE_FORMATS`.

Adding a format is one module: write ``load(path, columns=None)`` returning
the normalised frame (see :mod:`traces.loaders.common`) and a ``sniff`` for
``format: auto``, register a :class:`TraceFormat`, and import the module
below.

>>> sorted(TRACE_FORMATS.names())
['azure', 'csv', 'jsonl', 'mooncake', 'vidur']
"""

from __future__ import annotations

import json
from pathlib import Path

from capsim.lazy import lazy_module
from traces.loaders import azure, generic_csv, generic_jsonl, mooncake, vidur  # noqa: F401  (registration)
from traces.loaders.common import FRAME_COLUMNS, TRACE_FORMATS, TraceFormat, require_file

pd = lazy_module("pandas")  # imported on first use: commands that read no trace start without it

__all__ = ["FRAME_COLUMNS", "TRACE_FORMATS", "TraceFormat", "detect_format", "load_file"]

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
    """Header names (CSV) or the first record's keys (JSONL); empty when unreadable (the loader then explains)."""
    try:
        if kind == "csv":
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


def load_file(path: str | Path, format: str = "auto", columns: object = None) -> pd.DataFrame:
    """Load any trace file into the normalised frame (``arrival_s``, ``prompt_tokens``, ``output_tokens``, ...).

    ``format`` is a name in :data:`TRACE_FORMATS` or ``auto``; ``columns`` is
    the mapping for the generic ``csv``/``jsonl`` formats (with ``auto``, a
    mapping selects the generic format of the file's container).
    """
    path = Path(path)
    require_file(path)
    if format != "auto":
        name = TRACE_FORMATS.canonical(format)
    elif columns:  # a column mapping only makes sense for the generic formats
        name = _container(path)
    else:
        name = detect_format(path)
    return TRACE_FORMATS.get(name).load(path, columns)
