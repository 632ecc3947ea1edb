"""Generic JSON-lines traces: one object per line, keys found by name or by ``workload.trace.columns``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from capsim.lazy import lazy_module
from traces.loaders.common import TraceFormat, read_jsonl_records, register_format
from traces.loaders.fast import json_arrivals, json_counts, json_values
from traces.loaders.generic import frame_from_table, table_from_columns
from traces.loaders.table import TraceTable

pd = lazy_module("pandas")  # imported on first use: commands that read no trace start without it


def sniff(names: Sequence[str]) -> bool:
    """Never claims a file: generic JSONL is the fallback of ``format: auto`` for ``.jsonl``/``.json`` files."""
    return False


def load(path: str | Path, columns: object = None) -> pd.DataFrame:
    """Load a JSONL file; ``columns`` maps ``arrival``/``prompt``/``output`` (+ ``arrival_unit``) to keys."""
    path = Path(path)
    records, lines = read_jsonl_records(path)
    table = pd.DataFrame.from_records(records)
    return frame_from_table(table, columns, path, rows=lines, word="line")


def read(path: str | Path, columns: object = None) -> TraceTable | None:
    """The table of a valid JSONL file without pandas, else None (then :func:`load` reads it)."""
    path = Path(path)
    records, _ = read_jsonl_records(path)  # a line that is not a JSON object is reported here, as by load
    names = list(dict.fromkeys(key for record in records for key in record))  # a frame's columns: first seen first
    return table_from_columns(
        names, lambda name: json_values(records, name), columns, path, counts=json_counts, arrivals=json_arrivals
    )


FORMAT = register_format(
    TraceFormat(
        name="jsonl",
        kind="jsonl",
        description="any JSON-lines file; keys by common names or workload.trace.columns",
        sniff=sniff,
        load=load,
        read=read,
    )
)
