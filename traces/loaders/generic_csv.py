"""Generic CSV traces: any header, columns found by name or by ``workload.trace.columns``.

The arrival column may be numbers (``arrival_unit`` s, ms or us) or
date-time text; without an arrival column the trace supplies lengths only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from capsim.lazy import lazy_module
from traces.loaders.common import TraceFormat, read_csv_table, register_format
from traces.loaders.fast import csv_arrivals, csv_named_columns, whole_counts
from traces.loaders.generic import frame_from_table, table_from_columns
from traces.loaders.table import TraceTable

pd = lazy_module("pandas")  # imported on first use: commands that read no trace start without it


def sniff(names: Sequence[str]) -> bool:
    """Never claims a file: generic CSV is the fallback of ``format: auto`` for non-JSONL files."""
    return False


def load(path: str | Path, columns: object = None) -> pd.DataFrame:
    """Load a CSV with a header; ``columns`` maps ``arrival``/``prompt``/``output`` (+ ``arrival_unit``)."""
    path = Path(path)
    return frame_from_table(read_csv_table(path), columns, path)


def read(path: str | Path, columns: object = None) -> TraceTable | None:
    """The table of a plain, valid CSV without pandas, else None (then :func:`load` reads it)."""
    path = Path(path)
    plain = csv_named_columns(path)
    if plain is None:
        return None
    names, by_name = plain
    return table_from_columns(names, by_name.__getitem__, columns, path, counts=whole_counts, arrivals=csv_arrivals)


FORMAT = register_format(
    TraceFormat(
        name="csv",
        kind="csv",
        description="any CSV with a header; columns by common names or workload.trace.columns",
        sniff=sniff,
        load=load,
        read=read,
    )
)
