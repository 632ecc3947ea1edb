"""Pricing one operator row: a typed interface, the roofline and the calibrated curves as its implementations.

Why an interface: a technique that changes how a row is priced (a draft model's
GEMMs, a LoRA GEMM, a KV transfer, a row offloaded to another device) must be
written once and reach every question the cost model answers -- one iteration,
many shapes at once, a run of decode steps -- instead of once per pricing path.
So every row of an operator table gets a :class:`RowPricer` when the cost model
is built, chosen by the row's class and placement from :data:`PRICERS`; a row
whose class has no pricer is an error that names it, never a guess.

The ``device`` placement's pricers take the calibrated profile's curve for the
row where the profile has one (GEMM, prefill and decode attention, the
bandwidth-bound kernels it measured) and the roofline with the device's
constant efficiencies otherwise. That choice is recorded on the pricer
(``source``) and shown in ``capsim estimate``'s breakdown.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from capsim.errors import CapsimError
from hwmodels.calibration import pricing
from hwmodels.calibration.attention_curves import kv_block_tokens
from hwmodels.calibration.pricing import ZERO, Priced
from hwmodels.calibration.profile import Curve
from hwmodels.links import Link
from hwmodels.roofline import RooflineDevice
from simulator.costmodel import features as F
from simulator.costmodel.operators import AttentionGeometry, Operator

__all__ = [
    "IN_MEMORY",
    "BudgetedPricer",
    "PRICERS",
    "DecodeLine",
    "Priced",
    "PricerRegistry",
    "PricingContext",
    "RooflinePricer",
    "RowPricer",
]


@dataclass(frozen=True, slots=True)
class DecodeLine:
    """A context-dependent row of a decode step of a fixed batch, as lines in the summed context ``C``.

    The row takes ``max(compute_slope * C + compute_base, memory_slope * C + memory_base)``
    seconds over all layers, plus ``static_s`` per layer whatever the context (a launch).
    Lines let a run of decode steps be priced in closed form (the engine's hot path).
    """

    static_s: float
    compute_slope: float
    compute_base: float
    memory_slope: float
    memory_base: float


class RowPricer(ABC):
    """Prices one operator row from its FLOPs and bytes at a batch's features.

    ``price`` is the scalar path (one shape, plain floats: the engine meets new shapes one
    at a time), ``price_many`` the vectorised one (many shapes in one call), ``decode_line``
    the closed form of a decode run. The defaults say "cannot": the cost model then
    prices shape by shape.
    """

    source: str = "roofline"  # what prices the row, for the breakdown ("roofline", "profile gemm/bf16", ...)
    # Whether ``price`` reads the decode context from ``x`` (beyond the row's FLOPs and bytes): such a row is
    # re-priced at every context even where its work does not follow the context (see ``RowByRow.time_keyed``).
    reads_context: bool = False
    # The features ``price`` reads from ``x`` beyond the row's FLOPs and bytes (None: not declared, so any):
    # ``RowByRow.time_keyed`` reuses a row's price across mixed iterations only where it declares none that
    # such iterations vary (the prefill chunk's attention work and KV read, the decode context).
    reads_features: tuple[int, ...] | None = None
    # Whether ``price`` is a function of its arguments alone (the features it reads, the FLOPs and bytes): no state
    # that changes its answers, no randomness. The mixed-iteration fast path (``costmodel/exact_mixed.py``) then
    # keeps a row's time by those features across iterations; a pricer that does not say so is priced every time.
    pure: bool = False
    split_block_tokens: float = 0  # KV tokens per block of a kernel whose split count follows the context (of the summed context for a sparse row)

    @abstractmethod
    def price(self, x: Sequence[float], flops: float, nbytes: float) -> Priced:
        """The row at features ``x`` (as a list) with ``flops`` and ``nbytes`` of work; ``ZERO`` when idle."""

    def price_many(self, X: np.ndarray, flops: np.ndarray, nbytes: np.ndarray) -> np.ndarray | None:
        """Seconds of the row at each shape (rows of ``X``), every one with work; None where not vectorised."""
        return None

    def time_s(self, x: Sequence[float], flops: float, nbytes: float) -> float:
        """``price(x, flops, nbytes).time_s``, the same number; a pricer may skip building the compute and
        memory parts nobody reads (the mixed-iteration fast path, ``costmodel/exact_mixed.py``)."""
        return self.price(x, flops, nbytes).time_s

    def decode_line(
        self, batch: int, flops: float, nbytes: float, context_per_seq: float | None, layers: float
    ) -> DecodeLine | None:
        """The row in a decode step of ``batch`` sequences as lines in the summed context (``flops``, ``nbytes``
        at zero context; ``context_per_seq`` picks a kernel's split regime), times ``layers``; None when the
        row's time is not two lines in the context."""
        return None

    def split_regime(self, seqs: float, context: float) -> int:
        """The kernel's split count where it depends on the context (decode runs are cut there), else 0."""
        return 0

    def work(self, x: Sequence[float], flops: float, nbytes: float) -> tuple[float, float]:
        """The (FLOPs, bytes) the row really does at ``x``, for breakdowns: its coefficients' unless the pricer
        prices less work than they count (a per-sequence token budget)."""
        return flops, nbytes


class RooflinePricer(RowPricer):
    """The roofline with the device's constant efficiencies, plus a launch cost when the row has work."""

    reads_features = ()
    pure = True

    def __init__(self, op: Operator, device: RooflineDevice):
        self.inv_c = 1.0 / device.effective_flops
        self.inv_m = 1.0 / device.effective_bandwidth
        self.launch = op.launches * device.launch_overhead_s
        self.flops_per_context = op.flops[F.DECODE_CONTEXT]
        self.bytes_per_context = op.bytes[F.DECODE_CONTEXT]

    def price(self, x: Sequence[float], flops: float, nbytes: float) -> Priced:
        if flops == 0.0 and nbytes == 0.0:
            return ZERO
        tc, tm = flops * self.inv_c, nbytes * self.inv_m
        return Priced((tc if tc >= tm else tm) + self.launch, tc, tm)

    def price_many(self, X: np.ndarray, flops: np.ndarray, nbytes: np.ndarray) -> np.ndarray:
        return np.maximum(flops * self.inv_c, nbytes * self.inv_m) + self.launch

    def decode_line(
        self, batch: int, flops: float, nbytes: float, context_per_seq: float | None, layers: float
    ) -> DecodeLine:
        # A context-dependent row always has work in a decode step, so it always launches.
        return DecodeLine(
            self.launch,
            layers * self.flops_per_context * self.inv_c, layers * flops * self.inv_c,
            layers * self.bytes_per_context * self.inv_m, layers * nbytes * self.inv_m,
        )


# ------------------------------------------------------------------------ calibrated


class GemmCurvePricer(RowPricer):
    """A GEMM row priced by the profile's GEMM curve at each of its GEMMs' shapes (per expert for MoE)."""

    reads_features = (F.EXPERTS_HIT,)
    pure = True  # memos of pure functions only

    def __init__(self, gemm: pricing.GemmPricer, moe: bool, source: str):
        self.gemm, self.moe, self.source = gemm, moe, source
        # A dense row's price is a function of its (FLOPs, bytes) alone, which follow the iteration's token
        # count: memoised by them, since batches of different make-up (a chunk of 500 beside 12 decodes,
        # one of 510 beside 2) often share it and a GEMM curve costs ~10 us a row.
        self._memo: dict[tuple[float, float], Priced] = {}

    def price(self, x: Sequence[float], flops: float, nbytes: float) -> Priced:
        if self.moe:
            return self.gemm.price(flops, nbytes, max(x[F.EXPERTS_HIT], 1e-9))
        key = (flops, nbytes)
        hit = self._memo.get(key)
        if hit is None:
            hit = self._memo[key] = self.gemm.price(flops, nbytes)
        return hit

    def price_many(self, X: np.ndarray, flops: np.ndarray, nbytes: np.ndarray) -> np.ndarray:
        if self.moe:
            return self.gemm.price_many(flops, nbytes, np.maximum(X[:, F.EXPERTS_HIT], 1e-9)).time_s
        return self.gemm.price_many(flops, nbytes).time_s


class PrefillCurvePricer(RowPricer):
    """Causal prefill attention priced by the profile's curve from the batch's tokens, work and KV read."""

    reads_features = (F.PREFILL_TOKENS, F.PREFILL_ATTN_WORK, F.PREFILL_KV_READ)
    pure = True  # memos of pure functions only

    def __init__(self, attention: pricing.PrefillPricer, source: str):
        self.attention, self.source = attention, source
        # Memoised by everything the curve reads: a chunked-prefill replay meets the same chunk (a prompt's
        # first 512 tokens, say) beside many different decode batches, and the curve costs ~30 us a call.
        self._memo: dict[tuple[float, float, float, float, float], Priced] = {}

    def price(self, x: Sequence[float], flops: float, nbytes: float) -> Priced:
        key = (x[F.PREFILL_TOKENS], x[F.PREFILL_ATTN_WORK], x[F.PREFILL_KV_READ], flops, nbytes)
        hit = self._memo.get(key)
        if hit is None:
            hit = self._memo[key] = self.attention.price(key[0], key[1], flops, nbytes, key[2])
        return hit

    def price_many(self, X: np.ndarray, flops: np.ndarray, nbytes: np.ndarray) -> np.ndarray:
        return self.attention.price_many(
            X[:, F.PREFILL_TOKENS], X[:, F.PREFILL_ATTN_WORK], flops, nbytes, X[:, F.PREFILL_KV_READ]).time_s


class DecodeCurvePricer(RowPricer):
    """Decode attention priced by the profile's curve; its terms depend on the batch only, so a run's steps
    are lines in the context (two for the ``-v2`` form)."""

    reads_context = True
    reads_features = (F.DECODE_SEQS, F.DECODE_CONTEXT)
    pure = True

    def __init__(self, attention: pricing.DecodePricer, op: Operator, source: str):
        self.attention, self.source = attention, source
        self.flops_per_context = op.flops[F.DECODE_CONTEXT]
        self.bytes_per_context = op.bytes[F.DECODE_CONTEXT]
        # A sparse row attends ``attended`` of each context: the kernel runs over that many tokens (its split
        # count and per-context terms follow them), and its regimes change every block / attended tokens.
        self.attended = op.attended
        self.split_block_tokens = kv_block_tokens(attention.dh)
        if self.attended != 1.0:
            self.split_block_tokens = self.split_block_tokens / self.attended

    def price(self, x: Sequence[float], flops: float, nbytes: float) -> Priced:
        if self.attended != 1.0:
            return self.attention.price(x[F.DECODE_SEQS], x[F.DECODE_CONTEXT] * self.attended, flops, nbytes)
        return self.attention.price(x[F.DECODE_SEQS], x[F.DECODE_CONTEXT], flops, nbytes)

    def time_s(self, x: Sequence[float], flops: float, nbytes: float) -> float:
        if self.attended != 1.0:
            return self.attention.time_s(x[F.DECODE_SEQS], x[F.DECODE_CONTEXT] * self.attended, flops, nbytes)
        return self.attention.time_s(x[F.DECODE_SEQS], x[F.DECODE_CONTEXT], flops, nbytes)

    def decode_line(
        self, batch: int, flops: float, nbytes: float, context_per_seq: float | None, layers: float
    ) -> DecodeLine | None:
        d = self.attention
        a = self.attended  # lines in the attended context a * C, written in the summed context C
        if d.v2:  # fixed + max(flat, base + slope * C)
            if a != 1.0:
                ln = d.lines(float(batch), nbytes, None if context_per_seq is None else context_per_seq * a)
                return DecodeLine(0.0, 0.0, layers * (ln.fixed + ln.flat), layers * ln.slope * a,
                                  layers * (ln.fixed + ln.base))
            ln = d.lines(float(batch), nbytes, context_per_seq)
            return DecodeLine(0.0, 0.0, layers * (ln.fixed + ln.flat), layers * ln.slope, layers * (ln.fixed + ln.base))
        t = d.terms(float(batch))
        if flops != 0.0 and t.serial != 0.0:
            return None  # max(FLOPs x per_flop, serial x C) with context-free FLOPs: not a line
        # Compute and serial sides are lines through the origin in C: their maximum is the steeper one.
        slope = max(self.flops_per_context * t.per_flop, t.serial * a if a != 1.0 else t.serial)
        return DecodeLine(
            0.0, layers * slope, layers * (flops * t.per_flop + t.fixed),
            layers * self.bytes_per_context * t.per_byte, layers * (nbytes * t.per_byte + t.fixed),
        )

    def split_regime(self, seqs: float, context: float) -> int:
        if self.attended != 1.0:
            return self.attention.split_regime(seqs, context * self.attended)
        return self.attention.split_regime(seqs, context)


class MemoryCurvePricer(RowPricer):
    """A bandwidth-bound kernel (RoPE, activation, residual add) priced by the profile's curve for it."""

    reads_features = ()
    pure = True  # memos of pure functions only

    def __init__(self, memory: pricing.MemoryPricer, launches: float, source: str):
        self.memory, self.launches, self.source = memory, launches, source
        self._memo: dict[tuple[float, float], Priced] = {}  # by (FLOPs, bytes), as GemmCurvePricer's

    def price(self, x: Sequence[float], flops: float, nbytes: float) -> Priced:
        key = (flops, nbytes)
        hit = self._memo.get(key)
        if hit is None:
            hit = self._memo[key] = self.memory.price(flops, nbytes, self.launches)
        return hit

    def price_many(self, X: np.ndarray, flops: np.ndarray, nbytes: np.ndarray) -> np.ndarray:
        return self.memory.price_many(flops, nbytes, self.launches).time_s


class LinkPricer(RowPricer):
    """A data transfer over a link (the alpha-beta model): ``bytes / bandwidth`` plus the link's latency per
    launch. The row's FLOPs are ignored (a copy engine does no arithmetic); its time counts as the memory
    side, so breakdowns call it memory-bound."""

    reads_features = ()
    pure = True

    source = "link model"

    def __init__(self, op: Operator, link: Link):
        self.inv_bw = 1.0 / link.bandwidth
        self.latency = op.launches * link.latency_s
        self.bytes_per_context = op.bytes[F.DECODE_CONTEXT]
        self.source = f"link model ({link.name})"

    def price(self, x: Sequence[float], flops: float, nbytes: float) -> Priced:
        if nbytes == 0.0:
            return ZERO
        tm = nbytes * self.inv_bw
        return Priced(tm + self.latency, 0.0, tm)

    def price_many(self, X: np.ndarray, flops: np.ndarray, nbytes: np.ndarray) -> np.ndarray:
        return nbytes * self.inv_bw + self.latency

    def decode_line(
        self, batch: int, flops: float, nbytes: float, context_per_seq: float | None, layers: float
    ) -> DecodeLine:
        return DecodeLine(self.latency, 0.0, 0.0, layers * self.bytes_per_context * self.inv_bw,
                          layers * nbytes * self.inv_bw)


class BudgetedPricer(RowPricer):
    """A row that reads at most ``budget_tokens`` of each sequence's context in ``budget_share`` of the layers,
    priced by its own pricer at the context it attends.

    Why a wrapper: ``min(c_i, B)`` summed over a batch is not a function of the summed context ``C`` the
    features carry, so the row's coefficients (which count every context token) are applied to the mean-field
    attended context ``C - s max(0, C - b B)``: each of the ``b`` sequences taken at the batch's mean context.
    That is exact for one sequence and for batches whose contexts are all above or all below ``B``, and
    otherwise reads more than the sequences would (``min`` is concave), never less. The wrapped pricer (roofline,
    calibrated curve, link) prices the row at that context. A run of decode steps is priced step by step (no
    lines): the budget's kink and the wrapped row's own regimes need not line up.
    """

    reads_context = True

    def __init__(self, inner: RowPricer, op: Operator):
        self.inner = inner
        self.source = f"{inner.source}, {op.budget_tokens:g}-token budget"
        self.budget = float(op.budget_tokens)
        self.share = float(op.budget_share)
        self.flops_per_context = float(op.flops[F.DECODE_CONTEXT])
        self.bytes_per_context = float(op.bytes[F.DECODE_CONTEXT])

    def attended(self, seqs: float, context: float) -> float:
        """The summed context the row reads (see the class doc)."""
        over = context - seqs * self.budget
        return context - self.share * over if over > 0.0 else context

    def price(self, x: Sequence[float], flops: float, nbytes: float) -> Priced:
        c = x[F.DECODE_CONTEXT]
        cut = c - self.attended(x[F.DECODE_SEQS], c)
        if cut <= 0.0:
            return self.inner.price(x, flops, nbytes)
        x2 = list(x)
        x2[F.DECODE_CONTEXT] = c - cut
        return self.inner.price(x2, flops - self.flops_per_context * cut, nbytes - self.bytes_per_context * cut)

    def work(self, x: Sequence[float], flops: float, nbytes: float) -> tuple[float, float]:
        cut = x[F.DECODE_CONTEXT] - self.attended(x[F.DECODE_SEQS], x[F.DECODE_CONTEXT])
        return flops - self.flops_per_context * cut, nbytes - self.bytes_per_context * cut


# ------------------------------------------------------------------------ context and registry


@dataclass(frozen=True)
class PricingContext:
    """What a pricer factory may read besides its row: the device (with its profile, if any) and the
    attention rows' per-GPU geometry."""

    device: RooflineDevice
    attention: AttentionGeometry | None
    links: tuple[Link, ...] = ()
    processors: tuple[RooflineDevice, ...] = ()  # compute inside memory tiers, by tier name (IN_MEMORY rows)

    def processor(self, op: Operator) -> RooflineDevice:
        """The in-memory processor a row is placed on; an error naming the row when the table has none."""
        for proc in self.processors:
            if proc.name == op.placement:
                return proc
        raise CapsimError(
            f"operator {op.name!r} is placed in tier {op.placement!r}, which its operator table carries no "
            "processor for", where=f"operator table row {op.name!r}",
            fix="add the tier's processor to OperatorTable.processors where the row is placed")

    def link(self, op: Operator) -> Link:
        """The link a row is placed on (its ``placement`` names it); an error naming the row when the table has none."""
        for link in self.links:
            if link.name == op.placement:
                return link
        raise CapsimError(
            f"operator {op.name!r} is placed on link {op.placement!r}, which its operator table does not carry "
            f"(links: {', '.join(ln.name for ln in self.links) or 'none'})",
            where=f"operator table row {op.name!r}",
            fix="add the link to OperatorTable.links where the row is added (e.g. the device's PCIe link)",
        )

    def curve(self, key: str, dtype: str) -> Curve | None:
        """The profile's fitted curve for ``key`` at ``dtype``; None without a profile or such a curve."""
        profile = self.device.profile
        return profile.curve(key, dtype) if profile is not None else None

    def peaks(self, dtype: str) -> tuple[float, float]:
        """(FLOP/s, bytes/s) the profile's curves were fitted against (efficiencies are fractions of them)."""
        dev = self.device
        peaks = (dev.profile.doc.get("peaks") or {}) if dev.profile is not None else {}
        flops = peaks.get("flops_per_s") or {}
        peak = flops.get(dtype) or flops.get({"bf16": "fp16", "fp16": "bf16"}.get(dtype, ""))
        bw = peaks.get("memory_bandwidth_Bps")
        # A view of part of the GPU (SM partitioning) scales the fitted peaks as it scales the datasheet's.
        peak = float(peak) * dev.compute_share if peak else dev.peak_flops
        bw = float(bw) * dev.bandwidth_share if bw else dev.memory_bandwidth
        return peak, bw

    def geometry(self, op: Operator) -> AttentionGeometry:
        """The attention geometry a calibrated attention row needs; an error naming the row without it."""
        if self.attention is None:
            raise CapsimError(
                f"attention row {op.name!r} has a calibrated curve but its operator table carries no attention "
                "geometry (heads, KV heads, head size per GPU)",
                where=f"operator table row {op.name!r}",
                fix="build the table with build_operator_table, or set OperatorTable.attention",
            )
        return self.attention


IN_MEMORY = "in-memory"
"""Placement key of pricers for rows placed inside a memory tier that computes (PIM, a computational storage
drive): a row whose placement names one of the table's ``processors`` finds the pricer registered here."""

PricerFactory = Callable[[Operator, PricingContext], RowPricer]


class PricerRegistry:
    """Pricer factories keyed by ``(op_class, placement)``.

    Why keyed by class and placement, not by operator name: a new row (a draft model's
    GEMMs, a Medusa head) of a known class is priced like its class without a line of
    code, and a row of a new class, or placed somewhere no pricer covers, fails loudly.
    """

    def __init__(self, factories: dict[tuple[str, str], PricerFactory] | None = None):
        self._factories: dict[tuple[str, str], PricerFactory] = dict(factories or {})

    def register(self, op_class: str, placement: str = "device") -> Callable[[PricerFactory], PricerFactory]:
        """Decorator registering a factory ``(op, context) -> RowPricer`` for rows of ``op_class`` at ``placement``."""

        def decorate(factory: PricerFactory) -> PricerFactory:
            self.add(op_class, factory, placement)
            return factory

        return decorate

    def add(self, op_class: str, factory: PricerFactory, placement: str = "device") -> None:
        key = (op_class, placement)
        if key in self._factories:
            raise ValueError(f"a pricer for {op_class!r} rows on {placement!r} is registered twice")
        self._factories[key] = factory

    def copy(self) -> PricerRegistry:
        """An independent registry with the same factories (to extend without touching this one)."""
        return PricerRegistry(self._factories)

    def known(self) -> list[str]:
        """``class@placement`` of every registered factory."""
        return sorted(f"{c}@{p}" for c, p in self._factories)

    def for_row(self, op: Operator, context: PricingContext) -> RowPricer:
        """The pricer of ``op``; a :class:`CapsimError` naming the row when its class has none at its placement."""
        factory = self._factories.get((op.op_class, op.placement))
        if factory is None and op.placement != "device":  # a row on a named link: priced as its kind
            kind = next((ln.kind for ln in context.links if ln.name == op.placement and ln.kind), "")
            if kind:
                factory = self._factories.get((op.op_class, kind))
            elif any(proc.name == op.placement for proc in context.processors):  # a tier that computes
                factory = self._factories.get((op.op_class, IN_MEMORY))
        if factory is not None and op.budget_tokens:
            return BudgetedPricer(factory(op, context), op)
        if factory is None:
            raise CapsimError(
                f"no pricer for operator {op.name!r} of class {op.op_class!r} placed on {op.placement!r} "
                f"(known: {', '.join(self.known())})",
                where=f"operator table row {op.name!r}",
                fix="give the row one of the known classes, or register a pricer for its class and placement "
                "(simulator.costmodel.pricers.PRICERS.register; see docs/extending.md)",
            )
        return factory(op, context)


PRICERS = PricerRegistry()


@PRICERS.register("gemm")
def gemm_pricer(op: Operator, ctx: PricingContext) -> RowPricer:
    """The profile's GEMM curve at the row's GEMM shapes, else the roofline."""
    curve = ctx.curve("gemm", ctx.device.compute_format)
    if curve is None:
        return RooflinePricer(op, ctx.device)
    if not op.gemms:
        raise CapsimError(
            f"GEMM row {op.name!r} has no GEMM shapes, so the calibrated GEMM curve cannot price it",
            where=f"operator table row {op.name!r}",
            fix="give the Operator its gemms=((n, k, count), ...) where its sharding is computed",
        )
    peak, bw = ctx.peaks(curve.dtype)
    moe = op.bytes[F.EXPERTS_HIT] != 0  # weights read per expert hit: the GEMMs run once per expert
    return GemmCurvePricer(pricing.GemmPricer(curve, op.gemms, peak, bw), moe, f"profile gemm/{curve.dtype}")


@PRICERS.register("attention_prefill")
def prefill_attention_pricer(op: Operator, ctx: PricingContext) -> RowPricer:
    """The profile's prefill-attention curve, else the roofline (always for MLA, whose kernels no profile measured)."""
    act = ctx.attention.act_dtype if ctx.attention is not None else "bf16"
    curve = ctx.curve("attention_prefill", act)
    if curve is None or (ctx.attention is not None and ctx.attention.latent):  # MLA: no fitted kernel
        return RooflinePricer(op, ctx.device)
    g = ctx.geometry(op)
    peak, bw = ctx.peaks(curve.dtype)
    return PrefillCurvePricer(
        pricing.PrefillPricer(curve, g.heads, g.kv_heads, g.head_dim, peak, bw, g.kv_bytes),
        f"profile attention_prefill/{curve.dtype}",
    )


@PRICERS.register("attention_decode")
def decode_attention_pricer(op: Operator, ctx: PricingContext) -> RowPricer:
    """The profile's decode-attention curve, else the roofline (always for MLA, whose kernels no profile measured)."""
    act = ctx.attention.act_dtype if ctx.attention is not None else "bf16"
    curve = ctx.curve("attention_decode", act)
    if curve is None or (ctx.attention is not None and ctx.attention.latent):  # MLA: no fitted kernel
        return RooflinePricer(op, ctx.device)
    g = ctx.geometry(op)
    peak, bw = ctx.peaks(curve.dtype)
    # Per attended token (a sparse row's coefficients count only the share of the context it reads).
    per_token_flops, per_token_bytes = op.flops[F.DECODE_CONTEXT], op.bytes[F.DECODE_CONTEXT]
    if op.attended != 1.0:
        per_token_flops, per_token_bytes = per_token_flops / op.attended, per_token_bytes / op.attended
    d = pricing.DecodePricer(curve, g.heads, g.kv_heads, peak, bw, g.head_dim, per_token_flops, per_token_bytes)
    return DecodeCurvePricer(d, op, f"profile attention_decode/{curve.dtype}")


@PRICERS.register("elementwise")
def elementwise_pricer(op: Operator, ctx: PricingContext) -> RowPricer:
    """The profile's curve for this kernel (profiles fit each bandwidth-bound kernel apart), else the roofline."""
    act = ctx.attention.act_dtype if ctx.attention is not None else "bf16"
    key = f"elementwise:{op.name}"
    curve = ctx.curve(key, act)
    if curve is None:
        return RooflinePricer(op, ctx.device)
    peak, bw = ctx.peaks(curve.dtype)
    return MemoryCurvePricer(pricing.MemoryPricer(curve, peak, bw), max(op.launches, 1.0), f"profile {key}/{curve.dtype}")


@PRICERS.register("transfer", placement="pcie")
def pcie_transfer_pricer(op: Operator, ctx: PricingContext) -> RowPricer:
    """Bytes moved between host memory and the GPU over the table's PCIe link (KV kept in host memory)."""
    return LinkPricer(op, ctx.link(op))


def link_transfer_pricer(op: Operator, ctx: PricingContext) -> RowPricer:
    """Bytes moved between two memory tiers over the link the row is placed on (alpha-beta)."""
    return LinkPricer(op, ctx.link(op))


# Every other kind of tier link (hwmodels.device.LINK_KINDS) prices its transfers the same way: a row placed on a
# link named e.g. 'c2c' or 'nvme-pcie' finds the pricer of its kind (PricerRegistry.for_row).
for _kind in ("nvlink", "c2c", "cxl", "p2p", "tsv", "network", "ufs"):
    PRICERS.add("transfer", link_transfer_pricer, _kind)


@PRICERS.register("kv_select")
def kv_select_pricer(op: Operator, ctx: PricingContext) -> RowPricer:
    """Sparse-attention bookkeeping on the GPU (scoring page summaries, estimating a sparse pattern): no
    profile measures these kernels, so the roofline prices them."""
    return RooflinePricer(op, ctx.device)


class InMemoryPricer(RooflinePricer):
    """The roofline of a processor inside a memory tier (its compute peak and internal bandwidth). A class of its
    own so that a table with such a row is summed row by row, never as the device's roofline block."""

    def __init__(self, op: Operator, processor: RooflineDevice):
        super().__init__(op, processor)
        self.source = f"roofline in tier {processor.name}"


@PRICERS.register("attention_decode", placement=IN_MEMORY)
def in_memory_attention_pricer(op: Operator, ctx: PricingContext) -> RowPricer:
    """Decode attention run by the compute units of the tier that holds the KV (PIM, a CSD)."""
    return InMemoryPricer(op, ctx.processor(op))


@PRICERS.register("gemm", placement=IN_MEMORY)
def side_processor_gemm_pricer(op: Operator, ctx: PricingContext) -> RowPricer:
    """A GEMM row on a named processor of the table other than the device (an NPU's outlier channels computed in
    float on the SoC's CPU/GPU, simulator/techniques/npu_outliers.py): that processor's roofline."""
    return InMemoryPricer(op, ctx.processor(op))
