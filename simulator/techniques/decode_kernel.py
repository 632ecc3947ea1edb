"""The decode-attention kernel as a choice: how its work is cut into thread blocks decides how many SMs stream KV.

A decode step has one query per sequence, so attention is a read of every sequence's KV cache, and the
bandwidth it reaches depends on how many SMs are reading. Per layer and GPU, with ``b`` decode sequences,
``h_kv`` KV heads on the GPU and ``S`` SMs (``deployment`` device's ``num_sms``, times its share under SM
partitioning), each kernel launches CTAs (thread blocks) as follows:

* ``flash-attention-2``: one CTA per (sequence, KV head) -- the query heads that share a KV head ride in its
  tile -- each walking its whole context. ``u = b h_kv`` CTAs; at one sequence of Llama-3.1-8B (8 KV heads)
  on an H100 that is 8 of 132 SMs.
* ``flash-decoding`` (split-KV, Dao et al. 2023): every context is cut into ``s`` chunks, one CTA each, and a
  second kernel merges the chunks' partial outputs. ``u s`` CTAs. ``s`` is the ``splits`` parameter, or
  FlashAttention's published heuristic (:func:`hwmodels.calibration.attention_curves.fa_splits`: no split
  once ``u`` fills 80 % of the SMs; else the smallest ``s`` whose wave efficiency is within 85 % of the best,
  capped by the context's KV blocks of ``block_tokens``).
* ``lean`` (Lean Attention, stream-K): the KV blocks of all (sequence, KV head) pairs form one stream split
  evenly over the SMs, so ``min(S, u ceil(c / block))`` SMs work whatever the batch, and the partial results
  at SM boundaries are merged in the kernel.

**Occupancy.** Bandwidth (and FLOP/s) reached is ``occ = min(1, CTAs / S)`` of the device's: the roofline's
compute and memory times of the row are divided by ``occ``. Wave tails above one wave are not charged (a
memory-bound kernel keeps several CTAs per SM in flight; FlashAttention's heuristic itself aims at full waves).

**Reduction.** A split writes each chunk's partial output and log-sum-exp in ``partial_bytes`` per element
(fp32) and the merge reads them back: ``2 s h (d_h + 1) partial_bytes`` bytes per sequence (``h`` query heads),
plus one launch of the merge kernel. Lean Attention fixes up at most one partial per SM boundary, each of the
``h / h_kv`` query heads of one tile: ``2 min(S, tiles) (h / h_kv) (d_h + 1) partial_bytes`` bytes, no
extra launch.

The row is priced on the device's roofline constants with this occupancy. Without the technique the row
takes the roofline at full bandwidth whatever the batch -- what ``lean`` and ``flash-decoding`` reach at long
contexts, less the small reduction -- or a calibrated profile's decode-attention curve, which was measured on
vLLM's FlashAttention build with its own split-KV heuristic (the profile's ``attention-decode-v2`` family
models that split count). With the technique on, the kernel model *replaces* that curve for the decode
row, never multiplies it, so occupancy is counted once; prefill attention and every other row keep their
curves.

For a fixed batch the occupancy is a constant, so a run of decode steps stays two lines in the summed
context; where the split count (or Lean's occupied SMs) follows the context's KV blocks, runs are cut at
block boundaries as they are for the calibrated FlashAttention-2 curve (``split_regime``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from pydantic import Field

from capsim.errors import CapsimError
from capsim.types import OptionalCount
from hwmodels.calibration.attention_curves import fa_splits, kv_block_tokens
from hwmodels.calibration.pricing import ZERO, Priced
from hwmodels.links import Link
from simulator.costmodel import features as F
from simulator.costmodel.operators import AttentionGeometry, Operator, OperatorTable
from simulator.costmodel.pricers import PRICERS, DecodeLine, PricingContext, RowPricer
from simulator.techniques.base import TECHNIQUES, Technique, TechniqueParams, attention_geometry
from simulator.techniques.context import BuildContext

KERNEL_PLACEMENT = "decode-kernel"
"""Placement (and link kind) of a decode-attention row priced by a chosen kernel's occupancy model. The row
still runs on the replica's GPUs: it keeps the ``device`` lane in overlap groups."""

Kernel = Literal["flash-attention-2", "flash-decoding", "lean"]


@dataclass(frozen=True)
class DecodeKernelSpec(Link):
    """The chosen kernel, carried by the operator table as a pseudo-link so its row's pricer can read it (no
    bytes travel over it)."""

    kernel: str = "flash-decoding"
    sms: int = 1
    splits: int = 0  # flash-decoding: a fixed split count; 0: FlashAttention's heuristic
    block_tokens: int = 128
    partial_bytes: float = 4.0


class DecodeKernelParams(TechniqueParams):
    """Parameters of the decode-attention kernel model (units in each description)."""

    kernel: Kernel = Field(
        "flash-decoding",
        description="Decode-attention kernel: 'flash-attention-2' (one CTA per sequence and KV "
        "head, no split), 'flash-decoding' (split-KV with a merge kernel) or 'lean' (stream-K over all SMs).",
    )
    splits: OptionalCount = Field(
        None,
        ge=1,
        le=1024,
        description="flash-decoding only: KV splits per sequence and KV head (None: "
        "FlashAttention's num_splits heuristic for the batch, heads and context).",
    )
    block_tokens: OptionalCount = Field(
        None,
        ge=1,
        description="KV tokens per block a CTA walks at a time (caps the splits at short contexts; "
        "None: FlashAttention-2's block for the head size, 128 for head size 128).",
    )
    sms: OptionalCount = Field(
        None, ge=1, description="Streaming multiprocessors of one GPU (None: the device's num_sms)."
    )
    partial_bytes: float = Field(
        4.0, gt=0, le=8, description="Bytes per element of a split's partial output and log-sum-exp (fp32: 4)."
    )


@TECHNIQUES.register("decode-kernel", aliases=("lean-attention", "flash-decoding"))
class DecodeKernel(Technique):
    Params = DecodeKernelParams
    summary = "Prices decode attention by its kernel's SM occupancy (FlashAttention-2, split-KV or stream-K)."
    mechanism = __doc__
    needs_key_value_heads = True
    # Each of these moves the decode-attention row to other hardware or lanes of its own.
    incompatible = ("attention-offload", "attention-in-memory", "nanoflow")
    sources = (
        "Sanovar et al. Lean Attention: Hardware-Aware Scalable Attention Mechanism for the Decode-Phase of "
        "Transformers (arXiv 2405.10480): stream-K partitioning of decode attention over all SMs.",
        "Dao, Haziza, Massa, Sizov. Flash-Decoding for long-context inference (PyTorch blog, 2023): split the "
        "KV sequence, attend the chunks in parallel, merge with the log-sum-exp.",
        "Dao. FlashAttention-2: Faster Attention with Better Parallelism and Work Partitioning (arXiv "
        "2307.08691); num_splits heuristic of its flash_api.cpp.",
    )

    def _sms(self, ctx: BuildContext) -> int:
        if self.params.sms is not None:
            return int(self.params.sms)
        sms = ctx.device.num_sms
        if sms is None:
            raise CapsimError(
                f"device {ctx.device.name!r} gives no num_sms, which the decode-kernel model needs",
                where=f"techniques[{self.index}].sms",
                fix="set sms: to the device's streaming multiprocessors (or add num_sms to the device)",
            )
        return int(sms)

    def operators(self, table: OperatorTable, ctx: BuildContext) -> OperatorTable:
        p = self.params
        if p.splits is not None and p.kernel != "flash-decoding":
            raise CapsimError(
                f"splits applies to kernel 'flash-decoding', not {p.kernel!r}",
                where=f"techniques[{self.index}].splits",
                fix="remove splits or set kernel: flash-decoding",
            )
        g = attention_geometry(table, self.where)
        spec = DecodeKernelSpec(
            KERNEL_PLACEMENT,
            float("inf"),
            0.0,
            kind=KERNEL_PLACEMENT,
            kernel=p.kernel,
            sms=self._sms(ctx),
            splits=int(p.splits or 0),
            block_tokens=int(p.block_tokens or kv_block_tokens(g.head_dim)),
            partial_bytes=float(p.partial_bytes),
        )
        ops = tuple(
            replace(op, placement=KERNEL_PLACEMENT, lane="device")
            if op.op_class == "attention_decode" and op.placement == "device"
            else op
            for op in table.layer_ops
        )
        links = tuple(ln for ln in table.links if ln.name != KERNEL_PLACEMENT) + (spec,)
        return table.with_ops(layer_ops=ops, links=links)


class DecodeKernelPricer(RowPricer):
    """Decode attention on the roofline at the kernel's occupancy, plus its split reduction (module doc)."""

    reads_context = True

    def __init__(self, op: Operator, spec: DecodeKernelSpec, ctx: PricingContext, geometry: AttentionGeometry):
        dev = ctx.device
        self.spec = spec
        self.sms = max(1, round(spec.sms * dev.compute_share))
        self.inv_c = 1.0 / dev.effective_flops
        self.inv_m = 1.0 / dev.effective_bandwidth
        self.launch = op.launches * dev.launch_overhead_s
        self.merge_launch = dev.launch_overhead_s
        self.flops_per_context = op.flops[F.DECODE_CONTEXT]
        self.bytes_per_context = op.bytes[F.DECODE_CONTEXT]
        self.kv_heads = geometry.kv_heads
        self.heads = geometry.heads
        self.partial_elems = geometry.head_dim + 1.0  # the output row and its log-sum-exp
        self.attended = op.attended
        self.block = spec.block_tokens
        self.source = f"roofline x {spec.kernel} occupancy ({self.sms} SMs)"
        context_free = spec.kernel == "flash-attention-2" or (spec.kernel == "flash-decoding" and spec.splits)
        self.split_block_tokens = 0 if context_free else self.block / self.attended

    # -- the kernel's decomposition --------------------------------------------------------------------
    def _blocks(self, context_per_seq: float | None) -> int:
        """KV blocks of one sequence's attended context (0: the long-context limit)."""
        if context_per_seq is None:
            return 0
        return max(1, math.ceil(context_per_seq * self.attended / self.block))

    def regime(self, seqs: float, blocks: int) -> tuple[float, float, float]:
        """(occupancy, reduction bytes, extra launches) of one layer's step of ``seqs`` sequences."""
        spec, sms = self.spec, self.sms
        units = max(1, round(seqs * self.kv_heads))
        if spec.kernel == "flash-attention-2":
            return min(1.0, units / sms), 0.0, 0.0
        if spec.kernel == "flash-decoding":
            s = spec.splits or fa_splits(units, sms, blocks)
            if s <= 1:
                return min(1.0, units / sms), 0.0, 0.0
            red = 2.0 * seqs * self.heads * s * self.partial_elems * spec.partial_bytes
            return min(1.0, units * s / sms), red, 1.0
        tiles = units * blocks if blocks else sms
        worked = min(sms, tiles)
        red = 2.0 * worked * (self.heads / self.kv_heads) * self.partial_elems * spec.partial_bytes
        return worked / sms, red, 0.0

    def split_regime(self, seqs: float, context: float) -> int:
        if not self.split_block_tokens:
            return 0
        blocks = self._blocks(context / seqs if seqs else 0.0)
        units = max(1, round(seqs * self.kv_heads))
        if self.spec.kernel == "lean":
            return min(self.sms, units * blocks)
        return fa_splits(units, self.sms, blocks)

    # -- pricing -----------------------------------------------------------------------------------------
    def price(self, x: Sequence[float], flops: float, nbytes: float) -> Priced:
        if flops == 0.0 and nbytes == 0.0:
            return ZERO
        seqs = x[F.DECODE_SEQS]
        if seqs <= 0:
            return ZERO
        occ, red, extra = self.regime(seqs, self._blocks(x[F.DECODE_CONTEXT] / seqs))
        tc = flops * self.inv_c / occ
        tm = nbytes * self.inv_m / occ + red * self.inv_m
        return Priced((tc if tc >= tm else tm) + self.launch + extra * self.merge_launch, tc, tm)

    def decode_line(
        self, batch: int, flops: float, nbytes: float, context_per_seq: float | None, layers: float
    ) -> DecodeLine:
        occ, red, extra = self.regime(float(batch), self._blocks(context_per_seq))
        ic, im = self.inv_c / occ, self.inv_m / occ
        return DecodeLine(
            self.launch + extra * self.merge_launch,
            layers * self.flops_per_context * ic,
            layers * flops * ic,
            layers * self.bytes_per_context * im,
            layers * (nbytes * im + red * self.inv_m),
        )


@PRICERS.register("attention_decode", placement=KERNEL_PLACEMENT)
def decode_kernel_pricer(op: Operator, ctx: PricingContext) -> RowPricer:
    """Decode attention priced by the kernel the ``decode-kernel`` technique chose (its spec rides on the table)."""
    spec = ctx.link(op)
    if not isinstance(spec, DecodeKernelSpec):
        raise CapsimError(
            f"row {op.name!r} is placed on {op.placement!r}, which carries no decode kernel",
            where=f"operator table row {op.name!r}",
            fix="add it with the decode-kernel technique",
        )
    return DecodeKernelPricer(op, spec, ctx, ctx.geometry(op))


__all__ = ["KERNEL_PLACEMENT", "DecodeKernel", "DecodeKernelParams", "DecodeKernelPricer", "DecodeKernelSpec"]
