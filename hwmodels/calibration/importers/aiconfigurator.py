"""Reader for NVIDIA aiconfigurator's measured kernel tables (``shared/data/aiconfigurator``).

Source: github.com/ai-dynamo/aiconfigurator, commit 095f58a (2026-08-21), Apache-2.0;
converted to CSV as described in that folder's SOURCE.md. Units there:
``latency`` in MILLISECONDS (CUDA events around a CUDA-graph replay, so no CPU
launch cost), collective ``message_size`` in ELEMENTS. Here: seconds and bytes.

Tables read (per system folder ``a100_sxm``, ``h100_sxm``, ``h200_sxm``):

* ``gemm_bf16.csv`` / ``gemm_fp8.csv``: ``m, n, k, latency`` -> op_class ``gemm``;
* ``context_attention_bf16.csv``: prefill (``isl`` new tokens, no cache) -> ``attention_prefill``;
* ``generation_attention_bf16.csv``: decode of ``batch_size`` sequences against
  ``step`` cached tokens -> ``attention_decode``;
* ``nccl.csv``: nccl-tests all_reduce / all_gather / reduce_scatter / alltoall;
* ``vllm_custom_allreduce.csv``: vLLM's own all-reduce (CUDA graph and eager rows).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from hwmodels.calibration.importers.common import read_csv_strict, relpath
from hwmodels.calibration.schema import make_frame

SYSTEMS: dict[str, tuple[str, str]] = {
    "a100_sxm": ("a100-80gb-sxm", "vllm 0.14.0"),
    "h100_sxm": ("h100-sxm", "vllm 0.24.0"),
    "h200_sxm": ("h200", "vllm 0.24.0"),
}
"""aiconfigurator system folder -> (capsim device id, framework version of the kernel tables)."""

TIMESTAMP = "2026-08-21"  # date of the aiconfigurator commit the tables come from
MS = 1e-3
NCCL_OPS = {"all_reduce": "all_reduce", "all_gather": "all_gather", "reduce_scatter": "reduce_scatter",
            "alltoall": "all_to_all"}
NCCL_DTYPES = {"half": ("fp16", 2.0), "int8": ("int8", 1.0), "bfloat16": ("bf16", 2.0), "float": ("fp32", 4.0)}
ATTN_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "fp8": "fp8"}


def _sources(path: Path, root: Path, n: int) -> list[str]:
    rel = relpath(path, root)
    return [f"{rel} row {i + 1}" for i in range(n)]


def _gemm(path: Path, root: Path, device: str, versions: str) -> pd.DataFrame:
    df = read_csv_strict(
        path, required=["gemm_dtype", "m", "n", "k", "latency"], numeric=["m", "n", "k", "latency"],
        label=relpath(path, root),
    )
    dtype = df["gemm_dtype"].map({"bfloat16": "bf16", "fp8": "fp8", "float16": "fp16"}).fillna(df["gemm_dtype"])
    return pd.DataFrame({
        "device": device, "op_class": "gemm", "op": "gemm", "dtype": dtype,
        "m": df["m"], "n": df["n"], "k": df["k"],
        "kernel": df.get("kernel_source", ""), "measured_s": df["latency"] * MS,
        "repeats": 0, "timestamp": TIMESTAMP, "versions": versions, "source": _sources(path, root, len(df)),
    })


def _attention(path: Path, root: Path, device: str, versions: str, op_class: str) -> pd.DataFrame:
    cols = ["batch_size", "isl", "num_heads", "num_key_value_heads", "head_dim", "step", "latency"]
    df = read_csv_strict(path, required=cols, numeric=cols, label=relpath(path, root))
    if "window_size" in df:
        df = df[pd.to_numeric(df["window_size"], errors="coerce").fillna(0) == 0]
    dtype = df.get("attn_dtype", pd.Series("bfloat16", index=df.index)).map(ATTN_DTYPES).fillna("bf16")
    return pd.DataFrame({
        "device": device, "op_class": op_class, "op": op_class, "dtype": dtype,
        "batch": df["batch_size"], "seq": df["isl"], "context": df["step"],
        "heads": df["num_heads"], "kv_heads": df["num_key_value_heads"], "head_dim": df["head_dim"],
        "kernel": df.get("kernel_source", ""), "measured_s": df["latency"] * MS,
        "repeats": 0, "timestamp": TIMESTAMP, "versions": versions,
        "source": [f"{relpath(path, root)} row {i + 1}" for i in df.index],
    })


def _nccl(path: Path, root: Path, device: str) -> pd.DataFrame:
    df = read_csv_strict(
        path, required=["op_name", "nccl_dtype", "num_gpus", "message_size", "latency"],
        numeric=["num_gpus", "message_size", "latency"], label=relpath(path, root),
    )
    df = df[df["op_name"].isin(list(NCCL_OPS))]
    dt = df["nccl_dtype"].map(lambda d: NCCL_DTYPES.get(str(d), ("fp16", 2.0)))
    return pd.DataFrame({
        "device": device, "op_class": df["op_name"].map(NCCL_OPS), "op": "nccl_" + df["op_name"].map(NCCL_OPS),
        "dtype": [d[0] for d in dt], "nbytes": df["message_size"] * np.array([d[1] for d in dt]),
        "group_size": df["num_gpus"], "link": "nvswitch", "kernel": "nccl-tests",
        "measured_s": df["latency"] * MS, "repeats": 0, "timestamp": TIMESTAMP, "versions": "nccl-tests",
        "source": [f"{relpath(path, root)} row {i + 1}" for i in df.index],
    })


def _custom_allreduce(path: Path, root: Path, device: str, versions: str) -> pd.DataFrame:
    df = read_csv_strict(
        path, required=["kernel_source", "num_gpus", "message_size", "latency"],
        numeric=["num_gpus", "message_size", "latency"], label=relpath(path, root),
    )
    graph = df["kernel_source"].str.contains("graph", case=False)
    return pd.DataFrame({
        "device": device, "op_class": "all_reduce",
        "op": np.where(graph, "vllm_custom_allreduce_graph", "vllm_custom_allreduce_eager"),
        "dtype": "bf16", "nbytes": df["message_size"] * 2.0, "group_size": df["num_gpus"], "link": "nvswitch",
        "kernel": df["kernel_source"], "measured_s": df["latency"] * MS, "repeats": 0,
        "timestamp": TIMESTAMP, "versions": versions, "source": _sources(path, root, len(df)),
    })


def import_aiconfigurator(data_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    """Every table under ``data_dir/aiconfigurator/perf`` in schema form, and notes on what was read."""
    base = data_dir / "aiconfigurator" / "perf"
    frames: list[pd.DataFrame] = []
    notes: list[str] = []
    if not base.is_dir():
        return make_frame([]), [f"aiconfigurator: {base} not found, skipped"]
    for folder, (device, versions) in SYSTEMS.items():
        d = base / folder
        if not d.is_dir():
            notes.append(f"aiconfigurator: {folder} missing, skipped")
            continue
        for gemm in sorted(d.glob("gemm_*.csv")):
            frames.append(_gemm(gemm, data_dir, device, versions))
        for name, op_class in (("context_attention_bf16.csv", "attention_prefill"),
                               ("generation_attention_bf16.csv", "attention_decode")):
            if (d / name).is_file():
                frames.append(_attention(d / name, data_dir, device, versions, op_class))
        if (d / "nccl.csv").is_file():
            frames.append(_nccl(d / "nccl.csv", data_dir, device))
        if (d / "vllm_custom_allreduce.csv").is_file():
            frames.append(_custom_allreduce(d / "vllm_custom_allreduce.csv", data_dir, device, versions))
    df = make_frame(pd.concat(frames, ignore_index=True)) if frames else make_frame([])
    for (dev, cls), n in df.groupby(["device", "op_class"]).size().items():
        notes.append(f"aiconfigurator: {dev} {cls}: {n} rows")
    return df, notes
