"""KV-cache quantisation: the cache stores fewer bits per element than ``deployment.kv_dtype``.

Why a technique beside ``deployment.kv_dtype``: the deployment's dtype names what the engine's kernels
store natively (bf16, fp8, int8). Methods such as KIVI, KVQuant and GEAR go further -- 2 to 4 bits, keys and
values at different precisions, a small fraction of outlier elements kept at 16 bits, one scale (and zero
point) per group of elements -- and pay a (de)quantisation step on the attention path. All of that is a
number of bytes per element and a number of operations per element, which is what this module derives.

How capsim models it (nothing fitted to a paper's speed-up):

* **Bytes per element** ``e = (key_bits + value_bits) / 16`` (the mean of keys and values, in bytes)
  ``+ outlier_fraction * (2 + outlier_index_bytes)`` (each outlier kept as a 16-bit value plus its position in
  a sparse side structure, as a dense-and-sparse layout stores it; the dense part keeps its slot)
  ``+ metadata_bytes / group_size`` (a scale and a zero point per group of ``group_size`` elements).
* **Memory**: the served model's KV bytes per token are multiplied by ``e / b`` (``b`` the bytes of
  ``deployment.kv_dtype``), so the same memory holds ``b / e`` times the tokens and the scheduler admits
  larger batches when KV capacity binds.
* **Attention path**: the decode and prefill attention rows read and write ``e`` bytes per KV element instead
  of ``b`` (their KV-read and KV-write coefficients); a ``kv_dequant`` row does ``dequant_flops``
  operations per element read and ``quant_flops`` per element written (unpack, scale, shift; quantise the
  new tokens' KV), priced at the device's FLOP rate. Calibrated attention curves are priced at ``e`` bytes
  per element through the table's attention geometry.

* **Residual tokens** (KIVI): each sequence keeps its newest ``residual_tokens`` tokens at ``deployment.kv_dtype``
  until they fill a group. Memory: that many tokens per sequence at the unquantised width, reserved for the
  scheduler's most sequences (``max_num_seqs``) so the batch the cache admits stays safe; attention: each decode
  sequence reads those tokens at ``b`` bytes per element (a per-sequence term of the decode-attention row).

Not modelled: low-rank error terms (GEAR) beyond
what ``metadata_bytes`` and ``outlier_fraction`` express; accuracy. The draft model of speculative decoding
keeps its own cache at ``deployment.kv_dtype``.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from pydantic import Field

from capsim.errors import CapsimError
from capsim.types import Count
from simulator.costmodel import features as F
from simulator.costmodel.operators import Operator, OperatorTable
from simulator.costmodel.precision import bytes_per_element
from simulator.costmodel.sharding import kv_heads_per_gpu
from simulator.techniques.base import TECHNIQUES, MemoryTerms, Technique, TechniqueParams
from simulator.techniques.context import BuildContext


class KVQuantParams(TechniqueParams):
    """Parameters of KV-cache quantisation (units in each description)."""

    bits: float = Field(4.0, ge=1, le=16, description="Bits per KV element of the dense part (keys and values).")
    key_bits: float | None = Field(
        None, ge=1, le=16, description="Bits per key element when keys and values differ (mixed precision); "
        "default: bits.")
    value_bits: float | None = Field(
        None, ge=1, le=16, description="Bits per value element when keys and values differ; default: bits.")
    outlier_fraction: float = Field(
        0.0, ge=0, lt=0.5, description="Fraction of elements also kept at 16 bits in a sparse side structure "
        "(dense-and-sparse outliers, e.g. 0.01).")
    outlier_index_bytes: float = Field(
        4.0, ge=0, description="Bytes of position stored with each outlier (a 32-bit index by default).")
    group_size: Count = Field(
        64, ge=1, description="Elements sharing one scale and zero point (quantisation group).")
    metadata_bytes: float = Field(
        4.0, ge=0, description="Bytes of scale and zero point per group (two fp16 numbers by default).")
    dequant_flops: float = Field(
        2.0, ge=0, description="Operations per KV element read to dequantise it (multiply by the scale, add the "
        "zero point).")
    quant_flops: float = Field(
        4.0, ge=0, description="Operations per KV element written to quantise it (shift, scale, round, clamp).")
    residual_tokens: int = Field(
        0, ge=0, description="Newest tokens of each sequence kept at deployment.kv_dtype until a group fills "
        "(KIVI keeps 32-128); 0: every token quantised.")

    def bytes_per_element(self) -> float:
        """Stored bytes per KV element, metadata and outliers included (the module docstring's ``e``)."""
        kb = self.bits if self.key_bits is None else self.key_bits
        vb = self.bits if self.value_bits is None else self.value_bits
        return (kb + vb) / 16.0 + self.outlier_fraction * (2.0 + self.outlier_index_bytes) + (
            self.metadata_bytes / self.group_size)


def quantised_table(table: OperatorTable, kv_heads: float, head_dim: float, old_bytes: float, new_bytes: float,
                    dequant_flops: float, quant_flops: float, residual_tokens: int = 0) -> OperatorTable:
    """``table`` with its attention rows reading and writing ``new_bytes`` per KV element instead of
    ``old_bytes``, and a ``kv_dequant`` row for the (de)quantisation arithmetic.

    Per token and layer a GPU holds ``2 * kv_heads * head_dim`` KV elements; the rows' KV-read coefficients
    (decode context, prefill KV read) and KV-write coefficients (one token per decode sequence, per prefill
    token) change by that many elements times the byte difference. The arithmetic is a row of its own
    (elementwise class, no bytes: its operands are the attention rows' reads) rather than more FLOPs on the
    attention rows, because a calibrated decode-attention curve charges those FLOPs per padded query row,
    while dequantisation is per KV element, however many queries share it. It has no launch of its own
    (the kernels that ship with these methods fuse it into attention), but its time adds to the attention
    row's rather than overlapping it: an upper bound at the device's FLOP rate.
    """
    elems = 2.0 * kv_heads * head_dim
    delta = elems * (new_bytes - old_bytes)
    cols = {"attention_decode": (F.DECODE_CONTEXT, F.DECODE_SEQS),
            "attention_prefill": (F.PREFILL_KV_READ, F.PREFILL_TOKENS)}

    def op(o: Operator) -> Operator:
        if o.op_class not in cols:
            return o
        read, write = cols[o.op_class]
        by = o.bytes.copy()
        by[read] += delta
        by[write] += delta
        if residual_tokens and o.op_class == "attention_decode":
            by[F.DECODE_SEQS] -= residual_tokens * delta  # each sequence's residual is read at the full width
        return replace(o, bytes=by)

    fl = np.zeros(F.NUM_FEATURES)
    fl[F.DECODE_CONTEXT] = fl[F.PREFILL_KV_READ] = elems * dequant_flops
    fl[F.DECODE_SEQS] = fl[F.PREFILL_TOKENS] = elems * quant_flops
    dequant = Operator("kv_dequant", "elementwise", flops=fl, bytes=np.zeros(F.NUM_FEATURES), launches=0.0)
    layer_ops = tuple(op(o) for o in table.layer_ops)
    if dequant_flops or quant_flops:
        layer_ops += (dequant,)
    geometry = table.attention
    if geometry is not None:
        geometry = replace(geometry, kv_bytes=new_bytes)
    return table.with_ops(layer_ops=layer_ops, iteration_ops=tuple(op(o) for o in table.iteration_ops),
                          attention=geometry)


@TECHNIQUES.register("kv-quantization", aliases=("kv-quant", "kvquant", "kv-quantisation"))
class KVQuantization(Technique):
    Params = KVQuantParams
    needs_key_value_heads = True
    summary = "Store the KV cache at fewer bits per element (mixed precision, outliers, group scales)."
    mechanism = __doc__
    sources = (
        "Liu et al. KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache. ICML 2024 (arXiv 2402.02750): "
        "keys per channel, values per token, grouped, 2 bits.",
        "Hooper et al. KVQuant: Towards 10 Million Context Length LLM Inference with KV Cache Quantization "
        "(arXiv 2401.18079): per-channel pre-RoPE keys, non-uniform levels, dense-and-sparse outliers.",
        "Kang et al. GEAR: An Efficient KV Cache Compression Recipe (arXiv 2403.05527): quantisation plus "
        "low-rank and sparse error terms.",
    )

    def _element_bytes(self, ctx: BuildContext) -> tuple[float, float]:
        """(bytes per element of deployment.kv_dtype, bytes per element quantised); refuses a setting that
        stores more than the deployment's dtype already does."""
        old = bytes_per_element(ctx.deployment.kv_dtype, field="deployment.kv_dtype")
        new = self.params.bytes_per_element()
        if new >= old:
            raise CapsimError(
                f"{new:.3f} bytes per KV element (bits, outliers and group metadata) is no smaller than the "
                f"{old:g} of deployment.kv_dtype={ctx.deployment.kv_dtype}",
                where=f"techniques[{self.index}].bits",
                fix="lower bits, outlier_fraction or metadata_bytes, raise group_size, or drop the technique",
            )
        return old, new

    def memory(self, terms: MemoryTerms, ctx: BuildContext) -> MemoryTerms:
        old, new = self._element_bytes(ctx)
        terms = terms.scaled(new / old, note=f"KV quantised to {new:.3f} B per element ({old:g} B unquantised)")
        r = self.params.residual_tokens
        if r:
            from simulator.memory_plan import kv_elements_per_layer_per_gpu

            dep = ctx.deployment
            layers = -(-ctx.model.num_layers // dep.pp)
            per_token = layers * kv_elements_per_layer_per_gpu(ctx.model, dep.tp) * (old - new)
            terms = terms.plus(reserved=ctx.max_batch_seqs * r * per_token,
                               note=f"{r} residual tokens per sequence at {old:g} B per element")
        return terms

    def operators(self, table: OperatorTable, ctx: BuildContext) -> OperatorTable:
        old, new = self._element_bytes(ctx)
        if table.attention is not None:
            kv_heads, head_dim = table.attention.kv_heads, table.attention.head_dim
        else:
            kv_heads, head_dim = float(kv_heads_per_gpu(ctx.model.num_kv_heads, ctx.deployment.tp)), ctx.model.head_dim
        p = self.params
        return quantised_table(table, kv_heads, head_dim, old, new, p.dequant_flops, p.quant_flops,
                               p.residual_tokens)


__all__ = ["KVQuantParams", "KVQuantization", "quantised_table"]
