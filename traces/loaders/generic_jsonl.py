"""Generic JSON-lines traces: one object per line, keys found by name or by ``workload.trace.columns``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from capsim.lazy import lazy_module
from traces.loaders.common import TraceFormat, read_jsonl_records, register_format
from traces.loaders.generic import frame_from_table

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


FORMAT = register_format(
    TraceFormat(
        name="jsonl",
        kind="jsonl",
        description="any JSON-lines file; keys by common names or workload.trace.columns",
        sniff=sniff,
        load=load,
    )
)
