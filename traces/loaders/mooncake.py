"""Mooncake FAST'25 traces (https://github.com/kvcache-ai/Mooncake, ``FAST25-release/traces``).

One JSON object per line: ``timestamp`` in **milliseconds** from the trace
start, ``input_length`` (prompt tokens), ``output_length`` and ``hash_ids``:
one id per 512-token prompt block, equal ids meaning a shared prefix block
(Qin et al., "Mooncake", USENIX FAST 2025). The ids are kept per request in
the ``prefix_block_hashes`` column for prefix-cache modelling.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from capsim.errors import TraceFormatError
from capsim.lazy import lazy_module
from traces.loaders.common import (
    TraceFormat,
    arrival_column,
    jsonl_frame,
    normalised_frame,
    read_jsonl_records,
    register_format,
    row_where,
    token_column,
)
from traces.loaders.fast import json_arrivals, json_counts, json_values
from traces.loaders.table import TraceTable, trace_table

pd = lazy_module("pandas")  # imported on first use: commands that read no trace start without it

NEEDED = ("timestamp", "input_length", "output_length")

#: Tokens covered by one hash id (FAST25-release/README.md of the Mooncake repository).
HASH_BLOCK_TOKENS = 512


def sniff(names: Sequence[str]) -> bool:
    """A Mooncake record has a millisecond ``timestamp`` and ``input_length``/``output_length``."""
    return all(c in names for c in NEEDED)


def _hashes(frame: pd.DataFrame, path: Path, lines: np.ndarray) -> list[np.ndarray] | None:
    if "hash_ids" not in frame.columns:
        return None
    out: list[np.ndarray] = []
    for i, ids in enumerate(frame["hash_ids"].tolist()):
        if not isinstance(ids, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in ids):
            raise TraceFormatError(
                f"hash_ids must be a list of integers, got {ids!r:.80}",
                where=row_where(path, int(lines[i]), word="line"),
            )
        out.append(np.asarray(ids, dtype=np.int64))
    return out


def load(path: str | Path, columns: object = None) -> pd.DataFrame:
    """Load a Mooncake JSONL trace (timestamps converted from ms to s); ``columns`` is not used."""
    path = Path(path)
    records, lines = read_jsonl_records(path)
    frame = jsonl_frame(path, records, lines, NEEDED, "mooncake")
    common = {"path": path, "rows": lines, "word": "line"}
    result = normalised_frame(
        arrival_column(frame["timestamp"], column="timestamp", unit="ms", **common),
        token_column(frame["input_length"], column="input_length", role="prompt", **common),
        token_column(frame["output_length"], column="output_length", role="output", **common),
    )
    hashes = _hashes(frame, path, lines)
    if hashes is not None:
        column = np.empty(len(hashes), dtype=object)  # filled one by one: equal-length lists must not become 2-D
        for i, ids in enumerate(hashes):
            column[i] = ids
        result["prefix_block_hashes"] = column
        result.attrs["hash_block_tokens"] = HASH_BLOCK_TOKENS
    return result


def _plain_hashes(records: list[dict]) -> np.ndarray | None:
    """The ``hash_ids`` column as int64 arrays when every record holds a list of integers, else None."""
    column = np.empty(len(records), dtype=object)  # filled one by one: equal-length lists must not become 2-D
    for i, record in enumerate(records):
        ids = record.get("hash_ids")
        if type(ids) is not list or not all(type(x) is int for x in ids):
            return None
        try:
            column[i] = np.asarray(ids, dtype=np.int64)
        except OverflowError:
            return None
    return column


def read(path: str | Path, columns: object = None) -> TraceTable | None:
    """The table of a valid Mooncake file without pandas, else None (then :func:`load` reads it)."""
    path = Path(path)
    records, _ = read_jsonl_records(path)  # a line that is not a JSON object is reported here, as by load
    stamps, prompt, output = (json_values(records, key) for key in NEEDED)
    if stamps is None or prompt is None or output is None:
        return None
    arrivals, prompt, output = json_arrivals(stamps, "ms"), json_counts(prompt), json_counts(output)
    if arrivals is None or prompt is None or output is None:
        return None
    extra = {}
    if any("hash_ids" in record for record in records):
        hashes = _plain_hashes(records)
        if hashes is None:
            return None
        extra["prefix_block_hashes"] = hashes
    table = trace_table(arrivals, prompt, output, **extra)
    if extra:
        table.attrs["hash_block_tokens"] = HASH_BLOCK_TOKENS
    return table


FORMAT = register_format(
    TraceFormat(
        name="mooncake",
        kind="jsonl",
        description="Mooncake FAST'25 JSONL: timestamp (ms), input_length, output_length, hash_ids",
        sniff=sniff,
        load=load,
        read=read,
    )
)
