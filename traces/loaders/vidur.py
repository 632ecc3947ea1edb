"""Vidur's processed traces (https://github.com/microsoft/vidur, ``data/processed_traces``).

Two layouts share the token columns ``num_prefill_tokens`` (prompt) and
``num_decode_tokens`` (output): request traces add ``arrived_at`` (seconds
from the trace start, e.g. ``splitwise_conv.csv``), and the length-statistics
files (``*_stats_*.csv``, e.g. ShareGPT) have no arrival column at all -- they
load with NaN arrivals and can only supply lengths.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from capsim.lazy import lazy_module
from traces.loaders.common import (
    TraceFormat,
    arrival_column,
    missing_columns_error,
    normalised_frame,
    read_csv_table,
    register_format,
    token_column,
)
from traces.loaders.fast import csv_arrivals, csv_named_columns, whole_counts
from traces.loaders.table import TraceTable, trace_table

pd = lazy_module("pandas")  # imported on first use: commands that read no trace start without it

TOKEN_COLUMNS = ("num_prefill_tokens", "num_decode_tokens")
ARRIVAL = "arrived_at"


def sniff(names: Sequence[str]) -> bool:
    """Vidur files are recognised by their two token columns."""
    return all(c in names for c in TOKEN_COLUMNS)


def load(path: str | Path, columns: object = None) -> pd.DataFrame:
    """Load a vidur processed trace; ``columns`` is not used (the layout is fixed)."""
    path = Path(path)
    table = read_csv_table(path)
    if not sniff(list(table.columns)):
        raise missing_columns_error(path, TOKEN_COLUMNS, list(table.columns), "vidur")
    arrivals = arrival_column(table[ARRIVAL], path=path, column=ARRIVAL, unit="s") if ARRIVAL in table.columns else None
    return normalised_frame(
        arrivals,
        token_column(table["num_prefill_tokens"], path=path, column="num_prefill_tokens", role="prompt"),
        token_column(table["num_decode_tokens"], path=path, column="num_decode_tokens", role="output"),
    )


def read(path: str | Path, columns: object = None) -> TraceTable | None:
    """The table of a plain, valid vidur file without pandas, else None (then :func:`load` reads it)."""
    path = Path(path)
    plain = csv_named_columns(path)
    if plain is None:
        return None
    names, column = plain
    if not sniff(names):
        raise missing_columns_error(path, TOKEN_COLUMNS, names, "vidur")
    prompt, output = whole_counts(column["num_prefill_tokens"]), whole_counts(column["num_decode_tokens"])
    arrivals = csv_arrivals(column[ARRIVAL], "s") if ARRIVAL in column else None
    if prompt is None or output is None or (ARRIVAL in column and arrivals is None):
        return None
    return trace_table(arrivals, prompt, output)


FORMAT = register_format(
    TraceFormat(
        name="vidur",
        kind="csv",
        description="vidur processed trace: [arrived_at (s)], num_prefill_tokens, num_decode_tokens",
        sniff=sniff,
        load=load,
        read=read,
    )
)
