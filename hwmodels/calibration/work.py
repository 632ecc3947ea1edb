"""FLOPs and bytes of a measured kernel, with the cost model's formulas.

Why here: the fit, the validation and the datasheet baseline must all price a
measured row exactly as the cost model prices the operator that row stands for
(``simulator/costmodel/operators.py``, docs/cost-model.md), otherwise a "calibrated"
efficiency would absorb a formula mismatch. The formulas, per op class:

* GEMM ``C[m,n] = A[m,k] B[k,n]``: ``2 m n k`` FLOPs; bytes
  ``(m k + m n) * b_act + n k * b_weight`` (weights read once, activations in and out).
* Prefill attention, ``batch`` sequences of ``seq`` new tokens after ``context``
  cached ones (causal): FLOPs ``4 h d_h * batch * seq * (context + seq/2)``;
  bytes: the chunk's KV read, ``batch (context + seq) 2 h_kv d_h b_kv``, plus per
  new token Q and O (``2 h d_h b_act``) and the KV written (``2 h_kv d_h b_kv``).
* Decode attention, ``batch`` sequences each with ``context`` cached tokens plus
  the one being decoded: with ``C = batch * (context + 1)`` context tokens in all,
  FLOPs ``4 h d_h C``, bytes ``C 2 h_kv d_h b_kv`` plus the per-sequence Q/O/KV-write
  terms above. (The engine's decode context counts the new token too.)
* Elementwise / copies / collectives: ``nbytes`` as recorded by the importer.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

ELEMENT_BYTES: Mapping[str, float] = {
    "fp32": 4.0, "tf32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5,
}


def element_bytes(dtype: str) -> float:
    """Bytes of one element of ``dtype`` (2 for unknown 16-bit spellings such as ``half``)."""
    return ELEMENT_BYTES.get(str(dtype).lower(), 2.0)


def _col(df: pd.DataFrame, name: str) -> np.ndarray:
    return df[name].to_numpy(dtype=float)


def gemm_bytes(m, n, k, act_bytes, weight_bytes, out_bytes=None):
    """Bytes of one GEMM: activations in and out at ``act_bytes`` (``out_bytes`` if given), weights once."""
    out = act_bytes if out_bytes is None else out_bytes
    return m * k * act_bytes + m * n * out + n * k * weight_bytes


def gemm_element_bytes(dtype_bytes):
    """(activation, weight) element bytes of a GEMM in a format of ``dtype_bytes`` per element.

    Sub-16-bit formats (fp8, int8) quantise the weights only as far as the cost
    model is concerned: its operator table keeps activations in the 16-bit
    activation format, so fp8 rows are priced with 2-byte activations here too.
    """
    eb = np.asarray(dtype_bytes, dtype=float)
    return np.maximum(eb, 2.0), eb


def attention_inputs(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """Aggregate features of attention rows as the cost model sees them.

    Prefill: ``tokens`` (new tokens in all), ``work`` (sum of q (c + q/2)),
    ``kv_read`` (sum of c + q). Decode: ``seqs`` and ``context`` (sum of
    context lengths including the decoded token).
    """
    b = _col(df, "batch")
    seq = np.nan_to_num(_col(df, "seq"), nan=1.0)
    ctx = np.nan_to_num(_col(df, "context"), nan=0.0)
    decode = (df["op_class"] == "attention_decode").to_numpy()
    tokens = np.where(decode, b, b * seq)
    work = np.where(decode, 0.0, b * seq * (ctx + seq / 2.0))
    kv_read = np.where(decode, 0.0, b * (ctx + seq))
    context = np.where(decode, b * (ctx + 1.0), 0.0)
    return {
        "tokens": tokens, "work": work, "kv_read": kv_read, "seqs": b, "context": context,
        "heads": _col(df, "heads"), "kv_heads": _col(df, "kv_heads"), "head_dim": _col(df, "head_dim"),
    }


def flops_and_bytes(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(FLOPs, bytes) of every row of a measurement table (NaN-free; 0 where not applicable)."""
    n_rows = len(df)
    flops = np.zeros(n_rows)
    nbytes = np.nan_to_num(_col(df, "nbytes"), nan=0.0)
    eb = np.array([element_bytes(d) for d in df["dtype"]], dtype=float)
    cls = df["op_class"].to_numpy()

    g = cls == "gemm"
    if g.any():
        m, n, k = _col(df, "m")[g], _col(df, "n")[g], _col(df, "k")[g]
        flops[g] = 2.0 * m * n * k
        act, weight = gemm_element_bytes(eb[g])
        nbytes[g] = gemm_bytes(m, n, k, act, weight)

    a = (cls == "attention_prefill") | (cls == "attention_decode")
    if a.any():
        x = attention_inputs(df[a])
        h, hkv, dh, e = x["heads"], x["kv_heads"], x["head_dim"], eb[a]
        per_token = 2.0 * h * dh * e + 2.0 * hkv * dh * e
        pre = (df["op_class"][a] == "attention_prefill").to_numpy()
        flops[a] = np.where(pre, 4.0 * h * dh * x["work"], 4.0 * h * dh * x["context"])
        nbytes[a] = np.where(
            pre,
            x["kv_read"] * 2.0 * hkv * dh * e + x["tokens"] * per_token,
            x["context"] * 2.0 * hkv * dh * e + x["seqs"] * per_token,
        )
    return flops, nbytes
