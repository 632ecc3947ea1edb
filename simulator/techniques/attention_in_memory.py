"""Attention in memory: the KV cache lives in a memory tier that computes, and decode attention runs there.

Why: a decode step's attention reads every context token's keys and values once and does about one
multiply-add per byte read (Op/B near 1 at 16-bit), far below a GPU's ridge point, so it is bound by the
bandwidth the KV is read at. Memory that computes reads its own cells faster than any external link can carry
them: HBM-PIM puts a multiply-add unit beside every pair of banks and reads them in parallel, several times the
stack's external bandwidth (AttAcc, NeuPIMs); a computational storage drive runs attention on an accelerator
inside the SSD at the bandwidth of all its flash channels, well above its PCIe link (InstInfer). Keeping the KV
there and shipping only the query in and the attention output out turns a bandwidth-bound read of the whole
context into two small per-token transfers.

How capsim models it -- an edit of the operator table, priced by the same pricers as every row:

* **Tier.** ``tier`` names a memory tier of the device that declares compute (``compute_tflops``,
  ``internal_bandwidth_gbs``; docs/devices-and-tiers.md) and a link to the device memory.
* **Placement.** Each layer's decode-attention row is placed in the tier: it keeps its FLOPs and bytes (the
  context's keys and values, the query, the new token's KV written) and is priced by the tier's roofline,
  ``max(FLOPs / compute, bytes / internal bandwidth)`` at the device's efficiency constants, plus the tier's
  latency per layer. Every other row (projections, MLP, prefill attention) stays on the GPU.
* **Transfers.** An ``attention_io`` row of class ``transfer`` per layer on the tier's link carries, per decode
  sequence, the query in and the attention output out (``heads * head_dim`` activations each) and the new
  token's key and value in; per prefill chunk, the prompt's KV written out and the chunk's earlier context read
  back (``prefill_kv_read`` KV tokens).
* **Prefill stays on the GPU.** Prefill attention does ``O(chunk)`` FLOPs per KV byte, compute-bound on the GPU;
  a PIM or CSD processor has a few TFLOP/s against the GPU's hundreds, so running it there would be slower
  (tests/test_attention_in_memory.py prices both).
* **Memory.** The whole KV cache moves to the tier: the GPU keeps none, ``kv_gib`` of the tier per replica holds
  it (default: the tier's capacity times the replica's GPUs).
* **Overlap.** Without it (the default) a layer's GPU rows, its transfer and its in-memory attention add up: the
  attention needs the layer's query and the GPU's next projection needs its output. With ``overlap`` they form
  one group costing the longest lane, the ideal of pipelining sub-batches (NeuPIMs, AttAcc) with no sub-batch
  overheads.

Not modelled: attention kernels beyond the roofline inside the tier (PIM command scheduling, flash page reads
of a sparse selection); InstInfer's sparse KV retrieval (the whole context is read each step); the GPU's idle
bandwidth while the tier computes; several GPUs sharing one tier's processor.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from pydantic import Field

from capsim.errors import CapsimError, DoesNotFitError
from capsim.types import Flag
from hwmodels.device import MemoryTier
from hwmodels.roofline import RooflineDevice
from simulator.costmodel import features as F
from simulator.costmodel.operators import Operator, OperatorTable
from simulator.costmodel.precision import bytes_per_element
from simulator.memory_plan import GIB
from simulator.techniques.base import TECHNIQUES, MemoryTerms, Technique, TechniqueParams, attention_geometry
from simulator.techniques.context import BuildContext

OVERLAP_GROUP = "in_memory"
"""The overlap group of a layer's GPU rows, its in-memory attention and their transfers (with ``overlap``)."""


class AttentionInMemoryParams(TechniqueParams):
    """Parameters of attention placed in a memory tier that computes."""

    tier: str = Field(
        description="Memory tier that holds the KV cache and computes decode attention, by name (a "
        "tier of the device with compute_tflops and internal_bandwidth_gbs, e.g. 'pim', 'csd')."
    )
    kv_gib: float | None = Field(
        None,
        gt=0,
        description="Memory of the tier set aside for KV per replica, GiB (None: the tier's capacity "
        "times the replica's GPUs).",
    )
    overlap: Flag = Field(
        False,
        description="Run the layer's GPU rows, transfers and in-memory attention concurrently (the longest "
        "lane; an ideal of sub-batch pipelining); False: they add up, as the data dependences of one batch require.",
    )


@TECHNIQUES.register("attention-in-memory", aliases=("pim-attention", "csd-attention", "attacc", "instinfer"))
class AttentionInMemory(Technique):
    Params = AttentionInMemoryParams
    needs_key_value_heads = True
    summary = "KV in a memory tier that computes (HBM-PIM, a computational SSD); decode attention runs there."
    mechanism = __doc__
    incompatible = ("sparse-attention", "nanoflow")  # both also move the KV or regroup every layer row
    sources = (
        "Park et al. AttAcc! Unleashing the Power of PIM for Batched Transformer-based Generative Model "
        "Inference. ASPLOS 2024: attention of batched decode on HBM-PIM beside the xPU running the FC layers.",
        "Lee et al. Hardware Architecture and Software Stack for PIM Based on Commercial DRAM Technology. "
        "ISCA 2021 (Samsung HBM-PIM, Aquabolt-XL).",
        "Pan et al. InstInfer: In-Storage Attention Offloading for Cost-Effective Long-Context LLM Inference "
        "(arXiv 2409.04992, 2024): KV on flash in computational storage drives, decode attention in the drive.",
    )

    def _tier(self, ctx: BuildContext) -> MemoryTier:
        return ctx.device.computing_tier(self.params.tier, where=f"{self.where}.tier", runs="attention")

    def processor(self, ctx: BuildContext) -> RooflineDevice:
        """The tier's compute as a roofline: its peak, its internal bandwidth, the device's efficiency constants."""
        tier = self._tier(ctx)
        eff = ctx.device.efficiency
        return RooflineDevice(
            name=tier.name,
            peak_flops=tier.compute_tflops * 1e12,
            memory_bandwidth=tier.internal_bandwidth_gbs * 1e9,
            compute_efficiency=eff.compute,
            memory_efficiency=eff.memory,
            launch_overhead_s=tier.latency_us * 1e-6,
        )

    def operators(self, table: OperatorTable, ctx: BuildContext) -> OperatorTable:
        g = attention_geometry(table, self.where)
        proc = self.processor(ctx)
        dev = ctx.device
        link = dev.transfer_link(dev.main_tier, self.params.tier, where=f"{self.where}.tier")
        group = OVERLAP_GROUP if self.params.overlap else ""
        act = bytes_per_element(g.act_dtype, field="deployment.act_dtype")
        kv_token = 2.0 * g.kv_heads * g.head_dim * g.kv_bytes  # keys and values of one token, one layer
        q_out = 2.0 * g.heads * g.head_dim * act  # the query in, the output back
        io = np.zeros(F.NUM_FEATURES)
        io[F.DECODE_SEQS] = q_out + kv_token
        io[F.PREFILL_KV_READ] = kv_token  # the chunk's KV written out, its earlier context read back
        ops: list[Operator] = []
        for op in table.layer_ops:
            if op.op_class == "attention_decode":
                ops.append(replace(op, placement=proc.name, overlap=group))
                ops.append(
                    Operator(
                        "attention_io",
                        "transfer",
                        flops=np.zeros(F.NUM_FEATURES),
                        bytes=io,
                        placement=link.name,
                        overlap=group,
                    )
                )
            elif group and not op.overlap and op.placement == "device":
                ops.append(replace(op, overlap=group))
            else:
                ops.append(op)
        links = table.links if any(ln.name == link.name for ln in table.links) else (*table.links, link)
        return table.with_ops(layer_ops=tuple(ops), links=links, processors=(*table.processors, proc))

    def tiers(self, ctx: BuildContext) -> tuple[str, ...]:
        return (self.params.tier,)

    def memory(self, terms: MemoryTerms, ctx: BuildContext) -> MemoryTerms:
        if ctx.table is None:
            return terms
        g = attention_geometry(ctx.table, self.where)
        dep = ctx.deployment
        tier = self._tier(ctx)
        gpus = dep.tp * dep.pp
        if self.params.kv_gib is None:
            if tier.capacity_gib is None:
                raise CapsimError(
                    f"tier {tier.name!r} gives no capacity_gib, so the KV it holds is not known",
                    where=f"{self.where}.kv_gib",
                    fix="set kv_gib (GiB of the tier for KV per replica)",
                )
            per_gpu = tier.capacity_gib * GIB
        else:
            per_gpu = self.params.kv_gib * GIB / gpus
            if tier.capacity_gib is not None and per_gpu > tier.capacity_gib * GIB:
                raise DoesNotFitError(
                    f"kv_gib sets aside {per_gpu / GIB:.1f} GiB per GPU in tier {tier.name!r}, which holds "
                    f"{tier.capacity_gib:g} GiB per device",
                    where=f"{self.where}.kv_gib",
                    fix=f"set kv_gib to at most {tier.capacity_gib * gpus:g} (the tier's capacity over the replica's GPUs)",
                )
        layers = -(-ctx.model.num_layers // dep.pp)  # the most loaded stage
        per_token = layers * 2.0 * g.kv_heads * g.head_dim * g.kv_bytes
        return terms.on_host(
            0.0,
            per_token,
            per_gpu,
            note=f"KV in tier {tier.name!r}: {per_token:.0f} B per token per GPU, {per_gpu / GIB:.1f} GiB per GPU",
        )


__all__ = ["AttentionInMemory", "AttentionInMemoryParams"]
