"""The tidy measurement table: one row per timed kernel shape.

Why one schema: measurements come from very different places -- our own
microbenchmarks, NVIDIA's aiconfigurator tables (milliseconds, message sizes in
elements), vidur's profiler dumps (milliseconds, bytes) -- and the fit and the
validation must not care which. Every importer converts into these columns and
units (seconds, bytes, element counts), and :func:`check_frame` refuses a table
that does not follow them, naming the column and row.

Shape columns are left empty (NaN) where they do not apply (a GEMM has no
``heads``, a collective no ``m``). Columns:

========== ======================================================================
device     catalog device id (``h100-sxm``) or ``cpu`` for this machine's CPU
op_class   what kind of kernel; one of :data:`OP_CLASSES`
op         the specific operator (``qkv_proj``, ``mlp_down_proj``, ``rmsnorm``, ``all_reduce``)
model      the model the shape belongs to (empty for shape grids)
family     held-out group label (see :mod:`hwmodels.calibration.folds`)
dtype      arithmetic / element format (``bf16``, ``fp16``, ``fp8``, ``fp32``)
m n k      GEMM ``C[m,n] = A[m,k] B[k,n]``: m tokens, n output features, k input features
batch      sequences (attention), batch size (CPU overheads)
seq        new tokens per sequence (prefill chunk; 1 for decode)
context    tokens already in the KV cache per sequence, before this step
heads      query heads on this GPU;  kv_heads: KV heads on this GPU;  head_dim
hidden     row width of an elementwise op (elements)
tokens     rows of an elementwise op
nbytes     bytes moved: message size of a collective, size of a copy, bytes of an elementwise op
group_size ranks taking part in a collective
tp         tensor-parallel degree the shape was sharded for (1 when unsharded)
link       fabric of a collective / copy (``nvlink-switch``, ``nvlink-pairwise``, ``pcie``, ``host``)
kernel     kernel or backend that ran (``torch.nn.functional.linear``, ``nccl``)
measured_s measured time, seconds (median or mean of ``repeats`` runs; see ``source``)
repeats    runs behind ``measured_s`` (0 when the source does not say)
spread_s   spread of the runs, seconds (std or IQR; NaN when unknown)
timestamp  ISO time of the measurement or of the import
versions   library versions (``numpy 2.4.6``, ``vllm 0.24.0``)
source     where the row comes from: file and row, or ``measure.py``
========== ======================================================================
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from capsim.errors import CapsimError

OP_CLASSES: tuple[str, ...] = (
    "gemm",
    "attention_prefill",
    "attention_decode",
    "elementwise",
    "memcpy",  # device-memory copy (read + write of nbytes)
    "host_copy",  # host <-> device copy of nbytes
    "all_reduce",
    "all_gather",
    "reduce_scatter",
    "all_to_all",
    "send_recv",
    "cpu_overhead",  # serving-engine CPU time per iteration (see overheads.py)
)
"""Kernel kinds the fit and the validation know."""

COLLECTIVES: tuple[str, ...] = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv")

TEXT_COLUMNS: tuple[str, ...] = (
    "device", "op_class", "op", "model", "family", "dtype", "link", "kernel", "timestamp", "versions", "source",
)
NUMBER_COLUMNS: tuple[str, ...] = (
    "m", "n", "k", "batch", "seq", "context", "heads", "kv_heads", "head_dim", "hidden", "tokens",
    "nbytes", "group_size", "tp", "measured_s", "repeats", "spread_s",
)
COLUMNS: tuple[str, ...] = (
    "device", "op_class", "op", "model", "family", "dtype",
    "m", "n", "k", "batch", "seq", "context", "heads", "kv_heads", "head_dim", "hidden", "tokens",
    "nbytes", "group_size", "tp", "link", "kernel",
    "measured_s", "repeats", "spread_s", "timestamp", "versions", "source",
)
"""Column order of every measurement CSV."""

REQUIRED_SHAPE: Mapping[str, tuple[str, ...]] = {
    "gemm": ("m", "n", "k"),
    "attention_prefill": ("batch", "seq", "context", "heads", "kv_heads", "head_dim"),
    "attention_decode": ("batch", "context", "heads", "kv_heads", "head_dim"),
    "elementwise": ("nbytes",),
    "memcpy": ("nbytes",),
    "host_copy": ("nbytes",),
    "all_reduce": ("nbytes", "group_size"),
    "all_gather": ("nbytes", "group_size"),
    "reduce_scatter": ("nbytes", "group_size"),
    "all_to_all": ("nbytes", "group_size"),
    "send_recv": ("nbytes", "group_size"),
    "cpu_overhead": ("batch", "tp"),
}
"""Shape columns that must be filled for each op class."""


def make_frame(records: Iterable[Mapping[str, Any]] | pd.DataFrame) -> pd.DataFrame:
    """A measurement table with every schema column, in schema order, with schema types.

    Missing text columns become ``""``, missing numbers NaN; unknown columns are an
    error (a typo would otherwise silently drop data).
    """
    df = records.copy() if isinstance(records, pd.DataFrame) else pd.DataFrame(list(records))
    unknown = [c for c in df.columns if c not in COLUMNS]
    if unknown:
        raise CapsimError(
            f"unknown measurement column(s) {', '.join(map(repr, unknown))}",
            where="measurement table",
            fix=f"use the schema columns: {', '.join(COLUMNS)}",
        )
    for col in TEXT_COLUMNS:
        df[col] = df[col].fillna("").astype(str) if col in df else ""
    for col in NUMBER_COLUMNS:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float) if col in df else np.nan
    return df[list(COLUMNS)].reset_index(drop=True)


def check_frame(df: pd.DataFrame, *, where: str) -> pd.DataFrame:
    """Validate a measurement table; return it in schema form.

    Raises :class:`~capsim.errors.CapsimError` naming ``where``, the row and the
    column of the first problem: a missing column, an unknown op class, a
    non-positive or non-numeric time, or an empty required shape column.
    """
    missing = [c for c in ("device", "op_class", "measured_s") if c not in df.columns]
    if missing:
        raise CapsimError(
            f"missing column(s) {', '.join(missing)}",
            where=where,
            fix=f"a measurement CSV needs at least device, op_class and measured_s (schema: {', '.join(COLUMNS)})",
        )
    raw_time = df["measured_s"]
    frame = make_frame(df)
    bad_class = ~frame["op_class"].isin(OP_CLASSES)
    if bad_class.any():
        i = int(np.flatnonzero(bad_class.to_numpy())[0])
        raise CapsimError(
            f"unknown op_class {frame['op_class'].iat[i]!r}",
            where=f"{where} row {i + 1}, column op_class",
            fix=f"use one of {', '.join(OP_CLASSES)}",
        )
    t = frame["measured_s"].to_numpy()
    bad_time = ~(np.isfinite(t) & (t > 0))
    if bad_time.any():
        i = int(np.flatnonzero(bad_time)[0])
        raise CapsimError(
            f"measured_s must be a positive number of seconds, got {raw_time.iat[i]!r}",
            where=f"{where} row {i + 1}, column measured_s",
            fix="remove the row or correct the value (times are in seconds)",
        )
    for op_class, cols in REQUIRED_SHAPE.items():
        rows = frame["op_class"].to_numpy() == op_class
        if not rows.any():
            continue
        for col in cols:
            vals = frame[col].to_numpy()
            bad = rows & ~(np.isfinite(vals) & (vals >= 0))
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise CapsimError(
                    f"{op_class} rows need a non-negative number in {col!r}",
                    where=f"{where} row {i + 1}, column {col}",
                    fix=f"fill {', '.join(cols)} for every {op_class} row",
                )
    return frame


def read_measurements(path: str | Path) -> pd.DataFrame:
    """Read and validate a measurement CSV written by :func:`write_measurements`."""
    path = Path(path)
    if not path.is_file():
        raise CapsimError(
            "measurement file not found",
            where=str(path),
            fix="run `capsim calibrate measure` or `capsim calibrate import` first, or pass --measurements",
        )
    try:
        raw = pd.read_csv(path, dtype={c: str for c in TEXT_COLUMNS}, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise CapsimError(f"cannot parse the CSV: {err}", where=str(path)) from None
    return check_frame(raw, where=str(path))


def write_measurements(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a measurement table as CSV in schema column order (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    make_frame(df).to_csv(path, index=False, float_format="%.9g")
    return path
