"""The tidy results table: one row per configuration, every input and every metric a column.

Why flattened dotted columns: ``deployment.tp``, ``scheduler.chunk_size`` and
``workload.prompt.mean`` are then plain columns that pandas, a spreadsheet or
the dashboard can filter and plot, tables of different sweeps concatenate, and
a field added to the scenario schema appears as a new column by itself.
Lists (empirical length values, inline catalog entries) are stored as JSON
text so that every cell is a scalar and the table round-trips through Parquet.

Column order: ``name``, the bookkeeping columns (:data:`RUN_COLUMNS`), the
inputs sorted by path, then the metrics in :data:`~simulator.metrics.summary.SUMMARY_KEYS` order.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from capsim.errors import CapsimError
from simulator.metrics.summary import SUMMARY_KEYS

#: Per-run bookkeeping columns (not inputs, not metrics).
RUN_COLUMNS: tuple[str, ...] = ("run_key", "capsim_version", "status", "error", "rejected", "workload_source")
#: Metrics that measure this machine, not the simulated system: they differ between runs of the same scenario.
TIMING_COLUMNS: tuple[str, ...] = ("wall_time_s", "sim_speed_rps")


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{'a': {'b': 1}, 'c': [1, 2]}`` -> ``{'a.b': 1, 'c': '[1, 2]'}`` (lists as JSON text)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            if value:
                out.update(flatten(value, path + "."))
            else:
                out[path] = None
        elif isinstance(value, (list, tuple)):
            out[path] = json.dumps(value, sort_keys=True)
        else:
            out[path] = value
    return out


def result_row(scenario_dump: Mapping[str, Any], key: str, version: str, result: Mapping[str, Any]) -> dict[str, Any]:
    """One table row from a scenario and its worker result."""
    inputs = flatten(scenario_dump)
    clash = sorted(set(inputs) & (set(SUMMARY_KEYS) | set(RUN_COLUMNS)))
    if clash:  # a schema field named like a metric would silently overwrite it
        raise CapsimError(f"input field(s) {clash} collide with metric columns", where="sweep table",
                          fix="rename the scenario field (this is a capsim bug if it is a built-in field)")
    summary = result.get("summary") or {}
    row: dict[str, Any] = {
        "name": inputs.pop("name", None),
        "run_key": key,
        "capsim_version": version,
        "status": result.get("status"),
        "error": result.get("error"),
        "rejected": result.get("rejected"),
        "workload_source": result.get("workload"),
    }
    row.update(inputs)
    for metric in SUMMARY_KEYS:
        value = summary.get(metric)
        row[metric] = np.nan if value is None else value
    # simulation.intervals: each metric's prediction interval as <metric>_lo / <metric>_hi (absent when off).
    for metric, (lo, hi) in ((summary.get("intervals") or {}).get("metrics") or {}).items():
        row[f"{metric}_lo"], row[f"{metric}_hi"] = lo, hi
    return row


def tidy_table(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Rows (from :func:`result_row`) as a DataFrame with the column order described above."""
    frame = pd.DataFrame(list(rows))
    if frame.empty:
        return frame
    head = ["name", *RUN_COLUMNS]
    metrics = [m for m in SUMMARY_KEYS if m in frame.columns]
    inputs = sorted(c for c in frame.columns if c not in head and c not in metrics)
    return arrow_safe(frame[[*head, *inputs, *metrics]])


def arrow_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with every object column holding a single type, so that it can be written as Parquet."""
    frame = frame.copy()
    for column in frame.columns:
        if frame[column].dtype == object:
            frame[column] = _one_type(frame[column])
    return frame


def _one_type(column: pd.Series) -> pd.Series:
    """An object column holding one scalar type (plus missing values); mixed types become text.

    Parquet needs one type per column; a field that is a number in one row and
    text in another (a device given by id in one row, an unusual value in
    another) is kept as its text in every row.
    """
    present = column.dropna()
    kinds = {type(v) for v in present}
    if len(kinds) <= 1 or kinds <= {int, float}:
        if kinds <= {int, float} and kinds:
            return pd.to_numeric(column)
        return column
    return column.map(lambda v: None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))


def write_table(frame: pd.DataFrame, out_dir: str | Path, stem: str = "results") -> list[Path]:
    """Write ``<stem>.parquet`` and ``<stem>.csv`` into ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parquet, csv = out / f"{stem}.parquet", out / f"{stem}.csv"
    frame.to_parquet(parquet, index=False)
    frame.to_csv(csv, index=False)
    return [parquet, csv]


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` without the timing columns, sorted by run key: what must match between executors."""
    keep = [c for c in frame.columns if c not in TIMING_COLUMNS]
    return frame[keep].sort_values("run_key").reset_index(drop=True)
