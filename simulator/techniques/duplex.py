"""Duplex-style placement by operational intensity: low-Op/B rows run on a logic-die PIM, the rest on the xPU.

Why: in a decode step the MoE experts and the attention are the low-Op/B rows. Decode attention does about
``2 h / (h_kv b_kv)`` FLOPs per KV byte (4 for a GQA model with four query heads per KV head at 16 bits), whatever
the batch; an expert's GEMMs do two FLOPs per weight per token routed to it, ``m`` FLOPs per byte at bf16 for
``m`` tokens, so the experts' Op/B moves with the batch continuous batching forms each step. A GPU's ridge is a
few hundred FLOP/B, so both are bound by its memory bandwidth, while PIM in DRAM dies suits only Op/B under one. Duplex (Yun et
al., MICRO 2024, arXiv 2409.01141) puts processing units on the logic die of the HBM stacks, fed by extra TSVs
at a multiple of the external bandwidth ("Logic-PIM", suited to Op/B from a few to a few dozen) and picks the
processor for each layer by its Op/B.

How capsim models it -- a placement policy over the operator table, priced by the same pricers as every row:

* **The processor.** ``tier`` names a tier of the device that computes (``compute_tflops``,
  ``internal_bandwidth_gbs``): the logic die of the device's own HBM. KV and weights stay where they are (the
  logic die reads the same DRAM dies), so the memory plan does not change and nothing crosses a link.
* **The threshold, in closed form.** A row with ``F`` FLOPs and ``B`` bytes costs ``max(F / P_pim, B / W_pim)``
  on the PIM and ``max(F / P_xpu, B / W_xpu)`` on the xPU (peaks times the device's efficiency constants). With
  ``W_pim > W_xpu`` and ``P_pim < P_xpu`` the PIM is faster exactly when ``F / B < P_pim / W_xpu``: below that
  Op/B even its compute side beats the xPU's memory side. That crossover is the default ``op_b_max``; a
  scenario may set its own.
* **Decided per iteration without per-token Python.** Each eligible row is placed on ``op-b``; its pricer
  compares ``F <= op_b_max * B`` on the row's own FLOPs and bytes at the iteration's features (two products
  already computed to price it) and prices it by the PIM's roofline or by the row's ordinary xPU pricer
  (calibrated curve or roofline). For the experts that flips at a batch size
  (:func:`experts_threshold_tokens`). Decode attention's Op/B is the ratio of its context coefficients (no batch
  changes it; the per-sequence query and output bytes only lower it), so its placement is decided once from
  them and its decode runs keep their closed form.
* **Prefill stays on the xPU by the same rule**: a prompt's tokens make the experts' Op/B high, and prefill
  attention is not eligible (``O(chunk)`` FLOPs per KV byte).
* **Sequential by default.** The rows placed on the PIM run between the xPU's rows of the layer, as the data
  dependences of one batch require, so the gains are the placement's alone.
* **Co-processing** (``coprocess: true``). Duplex runs the PIM's rows *concurrently* with the xPU's (expert and
  attention co-processing: different experts, different requests -- a prefill's attention on the xPU beside the
  decodes' attention on the PIM). Each layer's rows then form one overlap group whose lanes are the xPU and the
  PIM; an expert row joins the lane of the processor its Op/B picks at that iteration (``OpBPricer.lane_of``).
  The layer takes the longer lane -- the ideal of perfect sub-batch pipelining, an upper bound on the gain --
  and, with ``bank_contention`` (default on), at least the layer's bytes over the DRAM dies' internal bandwidth:
  both processors read the same banks, the xPU through the standard TSVs and the PIM through the added ones,
  and capsim takes the banks to deliver no more than ``internal_bandwidth_gbs`` in total (times the memory
  efficiency). That floor is capsim's derivation, not a figure from the paper. Decode runs are then priced
  step by step (the maximum of lanes has no closed form).

Not modelled: the data dependences inside one sub-batch under co-processing (the ideal overlap); the PIM's power
and price (the device's figures stand for the whole package); bank-level PIM for Op/B under one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from pydantic import Field

from capsim.errors import CapsimError
from capsim.types import Flag
from hwmodels.calibration.pricing import Priced
from hwmodels.device import DeviceSpec, MemoryTier
from hwmodels.roofline import RooflineDevice
from simulator.costmodel import features as F
from simulator.costmodel.operators import Operator, OperatorTable
from simulator.costmodel.pricers import PRICERS, InMemoryPricer, PricingContext, RowPricer
from simulator.techniques.base import TECHNIQUES, Technique, TechniqueParams
from simulator.techniques.context import BuildContext

OP_B_PLACEMENT = "op-b"
"""Placement of rows whose processor (xPU or logic-die PIM) is chosen by their Op/B at each iteration."""

COPROCESS_GROUP = "duplex"
"""Overlap group of each layer's rows under co-processing (lanes: the xPU, ``device``; the PIM, ``op-b``)."""

RowKind = Literal["attention", "experts"]


@dataclass(frozen=True)
class OpBProcessor(RooflineDevice):
    """The logic-die PIM's roofline, carrying the Op/B at or below which a row placed on ``op-b`` runs on it."""

    op_b_max: float = 0.0
    # Co-processing: the overlap group of each layer's rows, and the DRAM dies' effective bandwidth shared by the
    # xPU and the PIM (the group's floor, simulator.costmodel.scopes.shared_banks); "" and 0 without.
    bank_group: str = ""
    bank_bandwidth: float = 0.0


class OpBPricer(RowPricer):
    """Prices a row on the PIM when its FLOPs are at most ``op_b_max`` times its bytes, else on the xPU."""

    def __init__(self, xpu: RowPricer, pim: RowPricer, op_b_max: float):
        self.xpu, self.pim, self.op_b_max = xpu, pim, op_b_max
        self.reads_context = xpu.reads_context
        self.source = f"Op/B <= {op_b_max:.3g}: {pim.source}; else {xpu.source}"

    def on_pim(self, flops: float, nbytes: float) -> bool:
        """Whether a row with this work runs on the PIM (the closed-form comparison the policy makes)."""
        return flops <= self.op_b_max * nbytes

    def lane_of(self, flops: float, nbytes: float) -> str:
        """The processor a co-processed row runs on at this work: its lane in the layer's overlap group."""
        return OP_B_PLACEMENT if flops <= self.op_b_max * nbytes else "device"

    def price(self, x: Sequence[float], flops: float, nbytes: float) -> Priced:
        if flops <= self.op_b_max * nbytes:
            return self.pim.price(x, flops, nbytes)
        return self.xpu.price(x, flops, nbytes)

    def price_many(self, X: np.ndarray, flops: np.ndarray, nbytes: np.ndarray) -> np.ndarray | None:
        on_xpu = self.xpu.price_many(X, flops, nbytes)
        on_pim = self.pim.price_many(X, flops, nbytes)
        if on_xpu is None or on_pim is None:
            return None
        return np.where(flops <= self.op_b_max * nbytes, on_pim, on_xpu)


def _processor(ctx: PricingContext, op: Operator) -> OpBProcessor:
    proc = next((p for p in ctx.processors if isinstance(p, OpBProcessor)), None)
    if proc is None:
        raise CapsimError(
            f"row {op.name!r} is placed on {OP_B_PLACEMENT!r}, but its operator table carries no Op/B processor",
            where=f"operator table row {op.name!r}",
            fix="place rows there with the duplex technique",
        )
    return proc


def _attention_on_pim(op: Operator, proc: OpBProcessor) -> bool:
    """Decode attention's placement: its Op/B is its context coefficients' ratio, fixed by the model."""
    return bool(op.flops[F.DECODE_CONTEXT] <= proc.op_b_max * op.bytes[F.DECODE_CONTEXT])


@PRICERS.register("attention_decode", placement=OP_B_PLACEMENT)
def op_b_attention_pricer(op: Operator, ctx: PricingContext) -> RowPricer:
    """Decode attention: its Op/B is its context coefficients' ratio, fixed by the model, so placed once."""
    proc = _processor(ctx, op)
    if _attention_on_pim(op, proc):
        return InMemoryPricer(op, proc)
    return PRICERS.for_row(replace(op, placement="device"), ctx)


@PRICERS.register("gemm", placement=OP_B_PLACEMENT)
def op_b_gemm_pricer(op: Operator, ctx: PricingContext) -> RowPricer:
    """MoE experts: placed per iteration by the Op/B of the batch's work (it changes with the batch)."""
    proc = _processor(ctx, op)
    return OpBPricer(PRICERS.for_row(replace(op, placement="device"), ctx), InMemoryPricer(op, proc), proc.op_b_max)


class DuplexParams(TechniqueParams):
    """Parameters of the Op/B placement policy."""

    tier: str = Field(
        description="The logic-die PIM, by tier name: a tier of the device with compute_tflops and "
        "internal_bandwidth_gbs (its units read the device's own HBM at that bandwidth)."
    )
    op_b_max: float | None = Field(
        None,
        gt=0,
        description="Rows with at most this many FLOPs per byte at an iteration run on the PIM, FLOP/B (None: "
        "the roofline crossover, the PIM's effective compute over the xPU's effective memory bandwidth).",
    )
    rows: tuple[RowKind, ...] = Field(
        ("attention", "experts"),
        min_length=1,
        description="Which rows the policy may place on the PIM: 'attention' (decode attention) and/or "
        "'experts' (MoE expert FFNs).",
    )
    coprocess: Flag = Field(
        False,
        description="Run the rows placed on the PIM concurrently with the xPU's rows of the same layer (Duplex's "
        "expert and attention co-processing): each layer takes its longer lane, not the sum (the ideal overlap). "
        "False: one after the other.",
    )
    bank_contention: Flag = Field(
        True,
        description="With coprocess: the xPU and the PIM read the same DRAM banks, so a layer also takes at least "
        "its bytes over the tier's internal bandwidth (x the memory efficiency). False: each reads at its own "
        "full bandwidth while the other runs.",
    )


def _is_experts(op: Operator) -> bool:
    """A MoE expert row: a GEMM whose weight bytes follow the experts the batch hits."""
    return op.op_class == "gemm" and op.bytes[F.EXPERTS_HIT] != 0.0


@TECHNIQUES.register("duplex", aliases=("op-b-placement", "logic-pim"))
class Duplex(Technique):
    Params = DuplexParams
    summary = "Op/B placement: decode attention and small-batch MoE experts on a logic-die PIM, the rest on the xPU."
    mechanism = __doc__
    # Each of these also moves decode attention elsewhere or puts every layer row in an overlap group of its own
    # (which would make a row on the PIM concurrent with the xPU's in a way co-processing does not choose).
    incompatible = ("attention-in-memory", "attention-offload", "sparse-attention", "nanoflow", "weight-offload")
    sources = (
        "Yun et al. Duplex: A Device for Large Language Models with Mixture of Experts, Grouped Query Attention, "
        "and Continuous Batching. MICRO 2024 (arXiv 2409.01141): xPU plus Logic-PIM in one device, the processor "
        "of each layer chosen by its Op/B.",
    )

    def _tier(self, dev: DeviceSpec) -> MemoryTier:
        tier = dev.computing_tier(self.params.tier, where=f"{self.where}.tier", runs="a row")
        if tier.internal_bandwidth_gbs <= dev.memory_bandwidth_gbs:
            raise CapsimError(
                f"tier {tier.name!r} reads at {tier.internal_bandwidth_gbs:g} GB/s, no more than the xPU's "
                f"{dev.memory_bandwidth_gbs:g} GB/s, so no row would be faster on it",
                where=f"{self.where}.tier",
                fix="give the tier its internal (TSV) bandwidth, above the device memory's bandwidth",
            )
        return tier

    def processor(self, dev: DeviceSpec) -> OpBProcessor:
        """The PIM's roofline (the device's efficiency constants) and the Op/B threshold of the policy."""
        tier = self._tier(dev)
        eff = dev.efficiency
        peak, internal = tier.compute_tflops * 1e12, tier.internal_bandwidth_gbs * 1e9
        crossover = peak * eff.compute / (dev.memory_bandwidth * eff.memory)
        banked = self.params.coprocess and self.params.bank_contention
        return OpBProcessor(
            name=tier.name,
            peak_flops=peak,
            memory_bandwidth=internal,
            compute_efficiency=eff.compute,
            memory_efficiency=eff.memory,
            launch_overhead_s=tier.latency_us * 1e-6,
            op_b_max=crossover if self.params.op_b_max is None else self.params.op_b_max,
            bank_group=COPROCESS_GROUP if banked else "",
            bank_bandwidth=internal * eff.memory if banked else 0.0,
        )

    def operators(self, table: OperatorTable, ctx: BuildContext) -> OperatorTable:
        proc = self.processor(ctx.device)
        kinds = set(self.params.rows)
        group = COPROCESS_GROUP if self.params.coprocess else ""
        ops: list[Operator] = []
        moved = 0
        for op in table.layer_ops:
            eligible = op.placement == "device" and (
                ("attention" in kinds and op.op_class == "attention_decode") or ("experts" in kinds and _is_experts(op))
            )
            moved += eligible
            if not group:
                ops.append(replace(op, placement=OP_B_PLACEMENT) if eligible else op)
            elif eligible and not (op.op_class == "attention_decode" and not _attention_on_pim(op, proc)):
                ops.append(replace(op, placement=OP_B_PLACEMENT, overlap=group))
            elif op.placement == "device" and not op.overlap:
                ops.append(replace(op, overlap=group))  # the xPU's lane (decode attention it keeps, too)
            else:
                ops.append(op)
        if not moved:
            raise CapsimError(
                f"no row of {ctx.model.name} is one the policy may place ({', '.join(self.params.rows)})",
                where=f"{self.where}.rows",
                fix="include 'attention', or serve a mixture-of-experts model for 'experts'",
            )
        return table.with_ops(layer_ops=tuple(ops), processors=(*table.processors, proc))


def experts_threshold_tokens(table: OperatorTable, op_b_max: float, limit: int = 1 << 20) -> int | None:
    """The most tokens an iteration may carry for its MoE expert row to run on the PIM (the flip point), or None
    when even one token's experts exceed ``op_b_max``; ``limit`` when none up to it does. The experts' Op/B
    grows with the tokens (more tokens share each expert's weights), so the flip is found by bisection."""
    op = next((o for o in table.layer_ops if _is_experts(o)), None)
    if op is None:
        raise CapsimError(
            "the operator table has no MoE expert row", where="duplex.rows", fix="serve a mixture-of-experts model"
        )

    def on_pim(n: int) -> bool:
        x = np.zeros(F.NUM_FEATURES)
        x[F.ONE], x[F.DECODE_SEQS], x[F.LOGIT_SEQS] = 1.0, n, n
        x[F.EXPERTS_HIT] = F.expected_experts_hit(n, table.num_experts, table.experts_per_token)
        return float(op.flops @ x) <= op_b_max * float(op.bytes @ x)

    if not on_pim(1):
        return None
    if on_pim(limit):
        return limit
    lo, hi = 1, limit  # on_pim(lo) and not on_pim(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if on_pim(mid) else (lo, mid)
    return lo


__all__ = [
    "COPROCESS_GROUP",
    "OP_B_PLACEMENT",
    "Duplex",
    "DuplexParams",
    "OpBPricer",
    "OpBProcessor",
    "experts_threshold_tokens",
]
