"""Column mapping shared by the generic CSV and JSONL loaders.

Why a mapping: most home-grown traces hold the same three facts under other
names. Without a mapping the loaders look for common names (listed below);
with one (``workload.trace.columns``) they use exactly the named columns.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from capsim.errors import TraceFormatError
from capsim.lazy import lazy_module
from traces.loaders.common import arrival_column, normalised_frame, token_column
from traces.loaders.table import TraceTable, trace_table

pd = lazy_module("pandas")  # imported on first use: commands that read no trace start without it

#: Names tried, in order, when no mapping is given (case-insensitive).
DEFAULT_NAMES: dict[str, tuple[str, ...]] = {
    "arrival": ("arrival_s", "arrival", "arrival_time", "arrived_at", "timestamp", "time", "t"),
    "prompt": (
        "prompt_tokens",
        "input_tokens",
        "prompt_len",
        "input_len",
        "input_length",
        "prompt_length",
        "num_prefill_tokens",
        "contexttokens",
    ),
    "output": (
        "output_tokens",
        "generated_tokens",
        "output_len",
        "output_length",
        "completion_tokens",
        "num_decode_tokens",
        "generatedtokens",
    ),
}
ROLES = ("arrival", "prompt", "output")
MAPPING_KEYS = (*ROLES, "arrival_unit")


def as_mapping(columns: object) -> dict[str, str]:
    """Accept a plain dict or a pydantic ``ColumnMap``; drop unset entries."""
    if columns is None:
        return {}
    if hasattr(columns, "model_dump"):
        columns = columns.model_dump(exclude_none=True)
    if not isinstance(columns, Mapping):
        raise TypeError(f"columns must be a mapping, got {type(columns).__name__}")
    unknown = [k for k in columns if k not in MAPPING_KEYS]
    if unknown:
        raise TraceFormatError(
            f"unknown key(s) in the column mapping: {', '.join(map(repr, unknown))}",
            where="workload.trace.columns",
            fix=f"use {', '.join(MAPPING_KEYS)}",
        )
    return {k: str(v) for k, v in columns.items() if v is not None}


def resolve(names: Sequence[str], columns: Mapping[str, str], path: Path) -> dict[str, str | None]:
    """Pick the file column for each role; ``arrival`` may be None (length-only trace)."""
    have = list(names)
    lower = {n.lower(): n for n in have}
    chosen: dict[str, str | None] = {}
    for role in ROLES:
        if role in columns:
            if columns[role] not in have:
                raise TraceFormatError(
                    f"the column mapping names {role} column {columns[role]!r}, which is not in the file; "
                    f"its columns are {', '.join(map(repr, have))}",
                    where=str(path),
                    fix=f"set workload.trace.columns.{role} to one of the file's columns",
                )
            chosen[role] = columns[role]
            continue
        chosen[role] = next((lower[c] for c in DEFAULT_NAMES[role] if c in lower), None)
    missing = [r for r in ("prompt", "output") if chosen[r] is None]
    if missing:
        looked = "; ".join(f"{r}: {', '.join(DEFAULT_NAMES[r])}" for r in missing)
        raise TraceFormatError(
            f"cannot find the {' and '.join(missing)} token column(s); the file has columns "
            f"{', '.join(map(repr, have))} (looked for {looked})",
            where=str(path),
            fix="map them, e.g. workload.trace.columns: {arrival: <time column>, prompt: <column>, output: <column>}",
        )
    return chosen


def frame_from_table(
    table: pd.DataFrame,
    columns: object,
    path: Path,
    *,
    rows: np.ndarray | None = None,
    word: str = "row",
) -> pd.DataFrame:
    """Normalise a raw table with the (given or guessed) column mapping."""
    mapping = as_mapping(columns)
    chosen = resolve([str(c) for c in table.columns], mapping, path)
    common = {"path": path, "rows": rows, "word": word}
    arrival = chosen["arrival"]
    arrivals = (
        arrival_column(table[arrival], column=arrival, unit=mapping.get("arrival_unit"), **common)
        if arrival is not None
        else None
    )
    return normalised_frame(
        arrivals,
        token_column(table[chosen["prompt"]], column=chosen["prompt"], role="prompt", **common),
        token_column(table[chosen["output"]], column=chosen["output"], role="output", **common),
    )


def table_from_columns(
    names: Sequence[str],
    column: Callable[[str], Sequence[object] | None],
    columns: object,
    path: Path,
    *,
    counts: Callable[[Sequence[object]], np.ndarray | None],
    arrivals: Callable[[Sequence[object], str | None], np.ndarray | None],
) -> TraceTable | None:
    """:func:`frame_from_table` without pandas, for the fast readers (:mod:`traces.loaders.fast`).

    ``names`` are the file's columns, ``column(name)`` the values of one (None when some are absent);
    ``counts`` and ``arrivals`` convert values or return None when they are not plain and valid, and then this
    returns None too (the pandas loader reads the file and reports the problem). A bad mapping is reported
    here, by the same checks as :func:`frame_from_table`.
    """
    mapping = as_mapping(columns)
    chosen = resolve(names, mapping, path)
    values = {role: column(name) for role, name in chosen.items() if name is not None}
    if any(v is None for v in values.values()):
        return None
    prompt, output = counts(values["prompt"]), counts(values["output"])
    if prompt is None or output is None:
        return None
    times = None
    if "arrival" in values:
        times = arrivals(values["arrival"], mapping.get("arrival_unit"))
        if times is None:
            return None
    return trace_table(times, prompt, output)
