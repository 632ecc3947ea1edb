"""Reader for Microsoft vidur's profiling tables (``shared/data/vidur/profiling``).

Source: github.com/microsoft/vidur (MIT), commits listed in that folder's
SOURCE.md. Units there: every ``time_stats.*`` column in MILLISECONDS (Kineto
CUDA time, so kernel time without CPU launch cost); network ``size`` in BYTES;
CPU overheads in milliseconds. Here: seconds and bytes. We read the ``median``
column and keep the ``std`` as the spread.

* ``compute/<gpu>/<org>/<model>/mlp.csv``: per-layer operators of one model,
  sharded for TP 1..8, for ``num_tokens`` tokens: the four projection GEMMs
  (``attn_pre_proj`` = fused QKV, ``attn_post_proj``, ``mlp_up_proj`` = fused
  gate+up when gated, ``mlp_down_proj``) become ``gemm`` rows with their (m, n, k);
  norms, rotary embedding, activation, residual add and embedding become
  ``elementwise`` rows with the bytes the cost model charges them;
* ``compute_legacy/a100/attention_llama2-70b_tp2.csv``: prefill and decode
  attention of Llama-2-70B at TP2 (32 query / 4 KV heads per GPU);
* ``network/<node>/{all_reduce,send_recv}.csv``: NCCL collectives;
* ``cpu_overheads_legacy/<gpu>_cpu_overheads.csv``: the serving engine's CPU time
  per iteration (op_class ``cpu_overhead``; see :mod:`~hwmodels.calibration.overheads`).

Skipped on purpose: ``network/h100_pairwise_nvlink/send_recv.csv`` is a byte
copy of the A100 file in the source (SOURCE.md caveat), so it is not an H100
measurement.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from hwmodels.calibration.importers.common import read_csv_strict, relpath
from hwmodels.calibration.schema import make_frame

GPUS = {"a100": "a100-80gb-sxm", "h100": "h100-sxm", "a40": "a40"}
"""vidur compute folder -> capsim device id (``a40`` is not in the catalog; imported, not fitted)."""

NODES: dict[str, tuple[str, str]] = {
    "a100_dgx": ("a100-80gb-sxm", "nvswitch"),
    "h100_dgx": ("h100-sxm", "nvswitch"),
    "a100_pairwise_nvlink": ("a100-80gb-pcie", "nvlink-pair"),
    "h100_pairwise_nvlink": ("h100-nvl", "nvlink-pair"),
    "a40_pairwise_nvlink": ("a40", "nvlink-pair"),
}
"""vidur network node type -> (device id, intra-node fabric). Rows spanning nodes get link ``ib``."""

SKIP = {"network/h100_pairwise_nvlink/send_recv.csv": "byte copy of the A100 file in the source (SOURCE.md)"}
TIMESTAMP = "2024-11-19"  # vidur commit 7d47513
LEGACY_TIMESTAMP = "2024-05-08"
MS = 1e-3
VERSIONS = "vidur 7d47513 (sarathi-serve kernels, fp16)"

GEMM_OPS = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")
ELEMENTWISE_OPS = ("input_layernorm", "post_attention_layernorm", "attn_rope", "mlp_act", "add", "emb")
ELEMENTWISE_NAMES = {"input_layernorm": "norm", "post_attention_layernorm": "norm", "emb": "embedding",
                     "attn_rope": "rope", "mlp_act": "activation", "add": "residual_add"}
"""vidur operator -> capsim elementwise op (the cost model's ``norm`` and ``embedding`` rows use the first two)."""
SHAPE_COLS = ("n_head", "n_kv_head", "n_embd", "n_expanded_embd", "num_tokens", "num_tensor_parallel_workers")


def _stat(df: pd.DataFrame, op: str, stat: str) -> pd.Series:
    return df[f"time_stats.{op}.{stat}"]


def _mlp_table(path: Path, root: Path, device: str) -> pd.DataFrame:
    model = path.parent.name
    timing = [f"time_stats.{op}.median" for op in GEMM_OPS]
    # Elementwise operators differ by architecture (phi-2 has no post-attention norm): read those present.
    with path.open(encoding="utf-8") as fh:
        header = fh.readline()
    optional = [f"time_stats.{op}.median" for op in ELEMENTWISE_OPS if f"time_stats.{op}.median" in header]
    df = read_csv_strict(
        path, required=[*SHAPE_COLS, "use_gated_mlp", *timing], numeric=[*SHAPE_COLS, *timing, *optional],
        label=relpath(path, root),
    )
    t = df["num_tensor_parallel_workers"]
    h, hkv, d, f = df["n_head"], df["n_kv_head"], df["n_embd"], df["n_expanded_embd"]
    dh = d / h
    gated = df["use_gated_mlp"].astype(str).str.lower().isin(["true", "1"])
    tokens = df["num_tokens"]
    kv_gpu = np.maximum(hkv / t, 1.0)
    shapes = {
        "attn_pre_proj": ((h / t + 2 * kv_gpu) * dh, d),
        "attn_post_proj": (d, h / t * dh),
        "mlp_up_proj": (np.where(gated, 2.0, 1.0) * f / t, d),
        "mlp_down_proj": (d, f / t),
    }
    b = 2.0  # fp16
    elem_bytes = {
        "input_layernorm": 2.0 * d * b,  # read and write the residual stream (operator table: 2 d b_a)
        "post_attention_layernorm": 2.0 * d * b,
        "attn_rope": 2.0 * (h / t + kv_gpu) * dh * b,  # read and write q and k
        "mlp_act": np.where(gated, 3.0, 2.0) * f / t * b,  # read gate and up, write the product
        "add": 3.0 * d * b,  # two inputs, one output
        "emb": 2.0 * d * b,  # gather one row, write it (operator table: 2 d b_a)
    }
    rel = relpath(path, root)
    src = [f"{rel} row {i + 1}" for i in range(len(df))]
    common = {
        "device": device, "model": model, "dtype": "fp16", "tp": t, "hidden": d,
        "repeats": 0, "timestamp": TIMESTAMP, "versions": VERSIONS, "kernel": "sarathi-serve", "source": src,
    }
    frames = []
    for op, (n, k) in shapes.items():
        frames.append(pd.DataFrame({
            **common, "op_class": "gemm", "op": op, "m": tokens, "n": n, "k": k,
            "measured_s": _stat(df, op, "median") * MS, "spread_s": _stat(df, op, "std") * MS,
        }))
    for op, per_token in elem_bytes.items():
        if f"time_stats.{op}.median" not in df:
            continue
        frames.append(pd.DataFrame({
            **common, "op_class": "elementwise", "op": ELEMENTWISE_NAMES.get(op, op), "tokens": tokens, "nbytes": tokens * per_token,
            "measured_s": _stat(df, op, "median") * MS, "spread_s": _stat(df, op, "std") * MS,
        }))
    out = pd.concat(frames, ignore_index=True)
    return out[np.isfinite(out["measured_s"]) & (out["measured_s"] > 0)]


def _legacy_attention(path: Path, root: Path) -> pd.DataFrame:
    cols = ["n_embd", "n_q_head", "n_kv_head", "num_tensor_parallel_workers", "batch_size",
            "prefill_chunk_size", "kv_cache_size"]
    df = read_csv_strict(path, required=[*cols, "is_prefill"], numeric=cols, label=relpath(path, root))
    t = df["num_tensor_parallel_workers"]
    pre = df["is_prefill"].astype(str).str.lower().isin(["true", "1"])
    time = np.where(pre, pd.to_numeric(df["time_stats.attn_prefill.median"], errors="coerce"),
                    pd.to_numeric(df["time_stats.attn_decode.median"], errors="coerce"))
    spread = np.where(pre, pd.to_numeric(df["time_stats.attn_prefill.std"], errors="coerce"),
                      pd.to_numeric(df["time_stats.attn_decode.std"], errors="coerce"))
    rel = relpath(path, root)
    out = pd.DataFrame({
        "device": "a100-80gb-sxm", "op_class": np.where(pre, "attention_prefill", "attention_decode"),
        "op": np.where(pre, "attn_prefill", "attn_decode"), "model": "Llama-2-70b-hf", "dtype": "fp16",
        "batch": df["batch_size"], "seq": np.where(pre, df["prefill_chunk_size"], 1), "context": df["kv_cache_size"],
        "heads": df["n_q_head"] / t, "kv_heads": df["n_kv_head"] / t, "head_dim": df["n_embd"] / df["n_q_head"],
        "hidden": df["n_embd"], "tp": t, "kernel": "flash-attention (vidur legacy)",
        "measured_s": time * MS, "spread_s": spread * MS, "repeats": 0,
        "timestamp": LEGACY_TIMESTAMP, "versions": "vidur acb95f6 (fp16)",
        "source": [f"{rel} row {i + 1}" for i in range(len(df))],
    })
    return out[np.isfinite(out["measured_s"]) & (out["measured_s"] > 0)]


def _network(path: Path, root: Path, node: str) -> pd.DataFrame:
    collective = path.stem  # all_reduce | send_recv
    med = f"time_stats.{collective}.median"
    cols = ["num_workers", "size", "devices_per_node", med]
    df = read_csv_strict(path, required=cols, numeric=[*cols, f"time_stats.{collective}.std"],
                         label=relpath(path, root))
    device, fabric = NODES[node]
    spans = df["num_workers"] > df["devices_per_node"]
    rel = relpath(path, root)
    return pd.DataFrame({
        "device": device, "op_class": collective, "op": f"nccl_{collective}", "dtype": "fp16",
        "nbytes": df["size"], "group_size": df["num_workers"], "link": np.where(spans, "ib", fabric),
        "kernel": "nccl (torch.distributed)", "measured_s": df[med] * MS,
        "spread_s": df[f"time_stats.{collective}.std"] * MS, "repeats": 0, "timestamp": TIMESTAMP,
        "versions": "vidur 7d47513", "source": [f"{rel} row {i + 1}" for i in range(len(df))],
    })


CPU_TERMS = ("schedule", "sampler_e2e", "prepare_inputs_e2e", "model_execution_e2e", "process_model_outputs")


def _cpu_overheads(path: Path, root: Path, device: str) -> pd.DataFrame:
    cols = [f"{term}_median" for term in CPU_TERMS] + ["batch_size", "tensor_parallel_degree", "ray_comm_time_mean"]
    df = read_csv_strict(path, required=[*cols, "model_name"], numeric=cols, label=relpath(path, root))
    rel = relpath(path, root)
    frames = []
    for term, col in [(t, f"{t}_median") for t in CPU_TERMS] + [("ray_comm_time", "ray_comm_time_mean")]:
        frames.append(pd.DataFrame({
            "device": device, "op_class": "cpu_overhead", "op": term, "model": df["model_name"],
            "batch": df["batch_size"], "tp": df["tensor_parallel_degree"], "measured_s": df[col] * MS,
            "repeats": 0, "timestamp": "2024-05-09", "versions": "vidur 6d98aa8 (vLLM-style engine)",
            "kernel": "cpu", "source": [f"{rel} row {i + 1}" for i in range(len(df))],
        }))
    out = pd.concat(frames, ignore_index=True)
    return out[out["measured_s"] > 0]


def import_vidur(data_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    """Every vidur profiling table under ``data_dir/vidur/profiling`` in schema form, with notes."""
    base = data_dir / "vidur" / "profiling"
    if not base.is_dir():
        return make_frame([]), [f"vidur: {base} not found, skipped"]
    frames: list[pd.DataFrame] = []
    notes: list[str] = []
    for gpu, device in GPUS.items():
        for path in sorted((base / "compute" / gpu).glob("*/*/mlp.csv")):
            frames.append(_mlp_table(path, data_dir, device))
    legacy = base / "compute_legacy" / "a100" / "attention_llama2-70b_tp2.csv"
    if legacy.is_file():
        frames.append(_legacy_attention(legacy, data_dir))
    for node in NODES:
        for name in ("all_reduce.csv", "send_recv.csv"):
            path = base / "network" / node / name
            key = f"network/{node}/{name}"
            if key in SKIP:
                notes.append(f"vidur: skipped {key}: {SKIP[key]}")
                continue
            if path.is_file():
                frames.append(_network(path, data_dir, node))
    for gpu, device in (("a100", "a100-80gb-sxm"), ("a40", "a40")):
        path = base / "cpu_overheads_legacy" / f"{gpu}_cpu_overheads.csv"
        if path.is_file():
            frames.append(_cpu_overheads(path, data_dir, device))
    df = make_frame(pd.concat(frames, ignore_index=True)) if frames else make_frame([])
    for (dev, cls), n in df.groupby(["device", "op_class"]).size().items():
        notes.append(f"vidur: {dev} {cls}: {n} rows")
    return df, notes
