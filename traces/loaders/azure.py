"""Azure LLM inference trace 2023 (Splitwise, ISCA 2024).

Layout (https://github.com/Azure/AzurePublicDataset, ``AzureLLMInferenceDataset2023.md``):
``TIMESTAMP`` wall-clock arrival as text with 7 fractional digits
(``2023-11-16 18:15:46.6805900``, no time zone), ``ContextTokens`` (prompt) and
``GeneratedTokens`` (output). Arrivals become seconds from the first request.
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

COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


def sniff(names: Sequence[str]) -> bool:
    """An Azure 2023 file has exactly its three documented columns."""
    return all(c in names for c in COLUMNS)


def load(path: str | Path, columns: object = None) -> pd.DataFrame:
    """Load an Azure 2023 CSV; ``columns`` is not used (the layout is fixed)."""
    path = Path(path)
    table = read_csv_table(path)
    if not sniff(list(table.columns)):
        raise missing_columns_error(path, COLUMNS, list(table.columns), "azure")
    return normalised_frame(
        arrival_column(table["TIMESTAMP"], path=path, column="TIMESTAMP", unit="datetime"),
        token_column(table["ContextTokens"], path=path, column="ContextTokens", role="prompt"),
        token_column(table["GeneratedTokens"], path=path, column="GeneratedTokens", role="output"),
    )


def read(path: str | Path, columns: object = None) -> TraceTable | None:
    """The table of a plain, valid Azure 2023 file without pandas, else None (then :func:`load` reads it)."""
    path = Path(path)
    plain = csv_named_columns(path)
    if plain is None:
        return None
    names, column = plain
    if not sniff(names):
        raise missing_columns_error(path, COLUMNS, names, "azure")
    arrivals = csv_arrivals(column["TIMESTAMP"], "datetime")
    prompt, output = whole_counts(column["ContextTokens"]), whole_counts(column["GeneratedTokens"])
    if arrivals is None or prompt is None or output is None:
        return None
    return trace_table(arrivals, prompt, output)


FORMAT = register_format(
    TraceFormat(
        name="azure",
        kind="csv",
        description="Azure LLM inference trace 2023: TIMESTAMP (date-time), ContextTokens, GeneratedTokens",
        sniff=sniff,
        load=load,
        read=read,
    )
)
