"""NanoFlow: intra-device parallelism -- nano-batches overlap compute-, memory- and network-bound operators.

Why: within one iteration a serving engine runs its operators one after another, so while a GEMM keeps the
tensor cores busy the memory bus idles, and while decode attention streams the KV cache the tensor cores
idle; a tensor-parallel all-reduce idles both. NanoFlow (Zhu et al. 2024) splits the batch into nano-batches
and runs different operators of different nano-batches at the same time on one GPU (streams with SM
partitions), so an iteration approaches the time of its busiest resource instead of the sum of every
operator's time.

How capsim models it -- an edit of the operator table, priced by the same pricers as everything else:

* **Lanes.** Every per-layer row joins one overlap group (``nanoflow``) in a lane by the resource that binds
  it: ``compute`` (GEMMs, prefill attention), ``memory`` (decode attention, the bandwidth-bound elementwise
  rows, KV selection) and ``network`` (the tensor-parallel all-reduces, moved from the collectives into
  transfer rows on the same alpha-beta link that prices them today); a row on another link (sparse
  attention's KV fetch over PCIe) keeps a lane of its own, so that overlap carries over. Lanes run
  concurrently; rows in a lane add up.
* **Nano-batches.** Each grouped row runs ``nano_batches`` times over ``1/n`` of the iteration's tokens
  (prefill tokens, decode sequences, attention pairs, contexts) and, each time, reads all of its weights
  and pays its launch and per-message latency again. That is the split overhead, and it comes out of the
  cost model rather than a factor: a roofline GEMM re-reads its weights ``n`` times (ruinous at a small
  batch, hidden at a large one); a calibrated GEMM curve prices the smaller GEMMs at their own ``m``; an
  all-reduce pays ``n`` latencies.
* **Shared resources.** The lanes share one GPU: a layer takes at least the summed compute time and the
  summed memory time of its device rows (every nano-batch's), whichever is larger -- NanoFlow's bound --
  as well as its longest lane. So the gain is at most the gap between the sum of the rows' rooflines and
  the larger of the summed resources, minus the split overhead.

Per layer: ``time = max(compute lane, memory lane, network lane, sum of compute parts, sum of memory
parts)``, each over ``n`` nano-batches; with ``adaptive`` (the default) an iteration whose rows would finish
sooner whole, one after another, runs that way (NanoFlow searches its split per batch size offline; a lone
decode step is not worth splitting). The LM head (once per iteration) and pipeline sends stay outside.

Not modelled: interference between co-running kernels beyond sharing the peaks (NanoFlow measures and
tunes SM shares per operator; here every resource is assumed available to whichever lane needs it); a
fitted all-reduce curve of a calibrated profile (the network lane uses the link model); NanoFlow's
asynchronous scheduling and KV offload. A decode run under this technique is priced step by step (a
maximum of lanes is not affine in the context), so simulations are slower.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from pydantic import Field

from capsim.types import Count, Flag
from hwmodels.links import Link
from simulator.costmodel import features as F
from simulator.costmodel.operators import Collective, Operator, OperatorTable
from simulator.costmodel.pricers import PRICERS, LinkPricer, PricingContext, RowPricer
from simulator.techniques.base import TECHNIQUES, Technique, TechniqueParams
from simulator.techniques.context import BuildContext

GROUP = "nanoflow"
"""The overlap group every per-layer row joins."""

FABRIC = "tp-fabric"
"""Placement (and link name) of the tensor-parallel all-reduce rows this technique makes from collectives."""

COMPUTE_CLASSES = frozenset({"gemm", "attention_prefill"})
"""Operator classes in the compute lane; other device rows are bandwidth-bound and go to the memory lane."""


class NanoFlowParams(TechniqueParams):
    """Parameters of NanoFlow's nano-batching."""

    nano_batches: Count = Field(
        2,
        ge=1,
        le=64,
        description="Nano-batches each iteration is split into (NanoFlow uses 2 to 4 per "
        "operator); 1 switches overlap off.",
    )
    adaptive: Flag = Field(
        True,
        description="Run an iteration whole (operators one after another) when that is cheaper than "
        "splitting it -- a small or single-resource batch -- as NanoFlow's offline search picks the split per "
        "batch size; false: every iteration is split.",
    )
    overlap_network: Flag = Field(
        True,
        description="Run the tensor-parallel all-reduces in their own lane beside compute and memory "
        "(false: they stay after the layer's kernels, as without NanoFlow).",
    )


def lane_of(op: Operator) -> str:
    """The lane a row runs in: by the resource that binds its operator class."""
    if op.placement == FABRIC:
        return "network"
    if op.placement != "device":  # another link (a KV fetch over PCIe): a lane of its own
        return op.placement
    return "compute" if op.op_class in COMPUTE_CLASSES else "memory"


def collective_row(c: Collective, count: int) -> tuple[Operator, Link]:
    """``count`` passes of collective ``c`` per layer as a transfer row on a link priced like ``c``.

    ``c.time = fixed * one + per_token * tokens`` (the alpha-beta ring) becomes a link of latency ``fixed``
    and bandwidth ``bytes per token / per-token seconds``, carrying ``c.bytes`` per GPU: the same seconds for
    any batch, and ``fixed`` paid again by each nano-batch.
    """
    per_token_s = float(c.time[F.PREFILL_TOKENS])
    per_token_b = float(c.bytes[F.PREFILL_TOKENS])
    link = Link(FABRIC, per_token_b / per_token_s, float(c.time[F.ONE]))
    bytes_ = np.array(c.bytes, dtype=float) * count
    bytes_[F.ONE] = 0.0
    row = Operator(
        c.name,
        "transfer",
        flops=np.zeros(F.NUM_FEATURES),
        bytes=bytes_,
        launches=float(count),
        placement=link.name,
        overlap=GROUP,
        lane="network",
    )
    return row, link


@PRICERS.register("transfer", placement=FABRIC)
def fabric_transfer_pricer(op: Operator, ctx: PricingContext) -> RowPricer:
    """A tensor-parallel all-reduce as a transfer row (alpha-beta link model, the collective's own terms)."""
    return LinkPricer(op, ctx.link(op))


@TECHNIQUES.register("nanoflow", aliases=("nano-batching",))
class NanoFlow(Technique):
    Params = NanoFlowParams
    summary = "Nano-batches overlap compute-, memory- and network-bound operators within an iteration."
    mechanism = __doc__
    sources = (
        "Zhu et al. NanoFlow: Towards Optimal Large Language Model Serving Throughput (arXiv 2408.12757, "
        "OSDI 2025): nano-batches, operator-level overlap of compute, memory and network on one GPU, and the "
        "optimal-throughput analysis from the binding resource.",
    )

    def operators(self, table: OperatorTable, ctx: BuildContext) -> OperatorTable:
        p = self.params
        if p.nano_batches == 1:
            return table  # one nano-batch: operators run one after another, as without the technique
        ops = [replace(op, overlap=GROUP, lane=lane_of(op)) for op in table.layer_ops]
        comms, links = table.layer_comms, table.links
        if p.overlap_network and comms:
            # The per-layer all-reduces (two per layer, identical) become one row of that many passes; any other
            # collective (none today) stays where it was.
            first = comms[0]
            same = [c for c in comms if c.name == first.name]
            if float(first.time[F.PREFILL_TOKENS]) > 0 and float(first.bytes[F.PREFILL_TOKENS]) > 0:
                row, link = collective_row(first, len(same))
                ops.append(row)
                links = (*[lk for lk in links if lk.name != FABRIC], link)
                comms = tuple(c for c in comms if c.name != first.name)
        return table.with_ops(
            layer_ops=tuple(ops), layer_comms=comms, links=links, nano_batches=p.nano_batches, nano_adaptive=p.adaptive
        )


__all__ = ["NanoFlow", "NanoFlowParams", "collective_row", "lane_of"]
