"""Summing priced rows: the operators of one scope (a layer, or the once-per-iteration rest) and the collectives.

Why apart from the pricers: a pricer knows one row; the cost model asks about a
whole pass -- one shape, many shapes, or the closed form of a decode run -- and
the order of the sums decides the last bits of every simulated time (the
request and iteration tables are fingerprinted byte for byte). So the sums live
here, once, in two arrangements of the same rows:

* :class:`RowByRow` asks each row's pricer in table order (any mix of pricers);
* :class:`RooflineBlock` prices rows that all take the roofline as one matrix
  product per side -- datasheet pricing, and the engine's fastest.

The cost model picks one per table (:class:`~simulator.costmodel.iteration.IterationCostModel`);
both give the same prices to rounding (``tests/test_pricers.py``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from hwmodels.calibration.pricing import CollectivePricer
from hwmodels.roofline import RooflineDevice
from simulator.costmodel import features as F
from simulator.costmodel.operators import Collective, Operator, OperatorTable
from simulator.costmodel.pricers import RowPricer

#: The features that change from one mixed (chunked-prefill) iteration to the next of the same chunk size and
#: decode batch: the chunk's attention work and KV read (its position in the prompt) and the decode context.
MIXED_VARYING = (F.PREFILL_ATTN_WORK, F.PREFILL_KV_READ, F.DECODE_CONTEXT)

Lines = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # compute slope, base, memory slope, base per row


@dataclass(frozen=True)
class OperatorBreakdown:
    """Per-operator time of one iteration, for ``capsim estimate`` and the dashboard."""

    name: str
    op_class: str
    scope: str  # "layer" (times num_layers) or "iteration"
    flops: float  # per GPU, all layers
    bytes: float
    time_s: float  # all layers
    bound: str  # "compute", "memory" or "communication"
    source: str = "roofline"  # what priced it: "roofline", "profile gemm/bf16", "link model", ...


@dataclass(frozen=True, slots=True)
class ScopeDecode:
    """A scope's rows in a decode step of one batch: ``static_s`` seconds per pass whatever the context,
    and the context-dependent rows as lines (over all layers), or None when they are not lines."""

    static_s: float
    lines: Lines | None


def _coefficients(ops: Sequence[Operator]) -> tuple[np.ndarray, np.ndarray]:
    shape = (len(ops), F.NUM_FEATURES)
    return np.array([op.flops for op in ops]).reshape(shape), np.array([op.bytes for op in ops]).reshape(shape)


def context_dependent(ops: Sequence[Operator]) -> np.ndarray:
    """Which rows' work grows with the decode context (a decode run prices them as lines)."""
    ctx = F.DECODE_CONTEXT
    return np.array([op.flops[ctx] != 0 or op.bytes[ctx] != 0 for op in ops], dtype=bool)


class Scope(ABC):
    """Rows that run together, each with its pricer; ``flops`` and ``bytes`` are their coefficient matrices."""

    def __init__(self, ops: Sequence[Operator], pricers: Sequence[RowPricer]):
        self.ops = tuple(ops)
        self.pricers = tuple(pricers)
        self.flops, self.bytes = _coefficients(self.ops)
        self.context = context_dependent(self.ops)

    @abstractmethod
    def time(self, x: np.ndarray, xl: list[float]) -> float:
        """Seconds of one pass at features ``x`` (``xl``: the same as a list)."""

    def time_keyed(self, x: np.ndarray, xl: list[float], key: tuple) -> float:
        """:meth:`time`, where ``key`` identifies every feature of ``x`` but those of :data:`MIXED_VARYING`.

        Scopes that can reuse the context-free part of the pass across contexts (:class:`RowByRow`)
        override this; the default prices the whole pass.
        """
        return self.time(x, xl)

    @abstractmethod
    def time_many(self, X: np.ndarray) -> np.ndarray | None:
        """Seconds of one pass at each row of ``X``, or None where that is not vectorised."""

    @abstractmethod
    def decode(self, batch: int, x: np.ndarray, xl: list[float], context_per_seq: float | None,
               layers: float) -> ScopeDecode:
        """A decode step of ``batch`` sequences at features ``x`` (zero context), lines times ``layers``."""

    def breakdown(self, x: np.ndarray, xl: list[float], scope: str, mult: float) -> list[OperatorBreakdown]:
        """Each row with work at ``x``, priced by its own pricer, times ``mult`` passes."""
        out: list[OperatorBreakdown] = []
        for op, pricer, f, b in zip(self.ops, self.pricers, (self.flops @ x).tolist(), (self.bytes @ x).tolist(),
                                    strict=True):
            if f == 0.0 and b == 0.0:
                continue
            p = pricer.price(xl, f, b)
            f, b = pricer.work(xl, f, b)
            out.append(OperatorBreakdown(
                op.name, op.op_class, scope, mult * f, mult * b, mult * p.time_s,
                "compute" if p.compute_s >= p.memory_s else "memory", pricer.source,
            ))
        return out


class RowByRow(Scope):
    """Each row priced by its own pricer, summed in table order."""

    def __init__(self, ops: Sequence[Operator], pricers: Sequence[RowPricer]):
        super().__init__(ops, pricers)
        # Rows whose price can change between mixed iterations of one chunk size and batch: their work follows
        # the decode context or the chunk's attention features, or their pricer reads those (or does not say
        # what it reads). The rest are priced once per key by ``time_keyed``.
        moving = (self.flops[:, MIXED_VARYING] != 0).any(axis=1) | (self.bytes[:, MIXED_VARYING] != 0).any(axis=1)
        varying = [
            bool(m) or p.reads_context or p.reads_features is None or any(f in MIXED_VARYING for f in p.reads_features)
            for m, p in zip(moving.tolist(), self.pricers, strict=True)
        ]
        self._varying = varying
        self._first_varying = varying.index(True) if any(varying) else len(varying)
        self._fixed: dict[tuple, tuple[float, list[float | None]]] = {}

    def time(self, x: np.ndarray, xl: list[float]) -> float:
        total = 0.0
        for pricer, f, b in zip(self.pricers, (self.flops @ x).tolist(), (self.bytes @ x).tolist(), strict=True):
            total += pricer.price(xl, f, b).time_s
        return total

    def time_keyed(self, x: np.ndarray, xl: list[float], key: tuple) -> float:
        """:meth:`time` to the last bit, pricing only the context-varying rows when ``key`` was seen before.

        Why: a chunked-prefill scheduler runs mixed iterations whose summed decode context and chunk
        position change every step, so nearly every one is a new shape for the iteration cache, while its
        chunk size and batch size -- everything the GEMM and norm rows see -- repeat. Those rows'
        prices are kept per ``key``; the sum is redone in table order (the rows before the first varying
        one as their cached running sum, the same left-to-right additions), so the total is bit-identical.
        """
        hit = self._fixed.get(key)
        pricers, first = self.pricers, self._first_varying
        if hit is not None and first == len(pricers):  # no row varies with the context: the whole sum is kept
            return hit[0]
        fl, by = (self.flops @ x).tolist(), (self.bytes @ x).tolist()
        if hit is None:
            hit = self._fixed[key] = self.fixed_prices(xl, fl, by)
        total, rest = hit
        for i, t in enumerate(rest, first):
            total += pricers[i].price(xl, fl[i], by[i]).time_s if t is None else t
        return total

    def fixed_prices(self, xl: list[float], fl: list[float], by: list[float]) -> tuple[float, list[float | None]]:
        """What :meth:`time_keyed` keeps per key: the running sum of the rows before the first varying one, in
        table order, then each later row's price (None where it varies), for rows with work ``fl``, ``by`` at
        features ``xl``. One function for both callers (this scope's numpy path and the mixed fast path in
        ``costmodel/exact_mixed.py``), so the order of the additions cannot drift apart."""
        pricers, first = self.pricers, self._first_varying
        prefix = 0.0
        for i in range(first):
            prefix += pricers[i].price(xl, fl[i], by[i]).time_s
        rest: list[float | None] = [
            None if v else pricers[i].price(xl, fl[i], by[i]).time_s
            for i, v in enumerate(self._varying[first:], first)
        ]
        return prefix, rest

    def time_many(self, X: np.ndarray) -> np.ndarray | None:
        """Declines (None) unless every row has work in all shapes or in none: pricers' "nothing to do"
        branches are scalar."""
        total = np.zeros(len(X))
        for pricer, f, b in zip(self.pricers, self.flops @ X.T, self.bytes @ X.T, strict=True):
            idle = (f == 0.0) & (b == 0.0)
            if idle.all():
                continue
            if idle.any():
                return None
            t = pricer.price_many(X, f, b)
            if t is None:
                return None
            total = total + t
        return total

    def decode(self, batch: int, x: np.ndarray, xl: list[float], context_per_seq: float | None,
               layers: float) -> ScopeDecode:
        static = 0.0
        lines = []
        closed_form = True
        rows = zip(self.pricers, self.context.tolist(), (self.flops @ x).tolist(), (self.bytes @ x).tolist(),
                   strict=True)
        for pricer, in_context, f, b in rows:
            if not in_context:
                static += pricer.price(xl, f, b).time_s
                continue
            line = pricer.decode_line(batch, f, b, context_per_seq, layers)
            if line is None:
                closed_form = False
                continue
            static += line.static_s
            lines.append(line)
        if not closed_form or not lines:
            return ScopeDecode(static, None)
        cols = (
            [ln.compute_slope for ln in lines], [ln.compute_base for ln in lines],
            [ln.memory_slope for ln in lines], [ln.memory_base for ln in lines],
        )
        af, bf, am, bm = (np.array(col, dtype=float) for col in cols)
        return ScopeDecode(static, (af, bf, am, bm))


def shared_banks(table: OperatorTable) -> dict[str, float]:
    """Overlap groups whose lanes read one memory, with its effective bandwidth (B/s), from the table's processors.

    A processor that shares the device's DRAM (Duplex's logic-die PIM, co-processing) names its group in
    ``bank_group`` and the bandwidth the DRAM dies deliver in total in ``bank_bandwidth``; any other has neither.
    """
    banks: dict[str, float] = {}
    for proc in table.processors:
        group, rate = getattr(proc, "bank_group", ""), getattr(proc, "bank_bandwidth", 0.0)
        if group and rate > 0:
            banks[group] = rate
    return banks


class Overlapped(RowByRow):
    """Rows priced one by one, where rows sharing an ``overlap`` name run concurrently on different resources.

    Why: a KV fetch over PCIe and the GPU's own work of the same layer can proceed at once (double
    buffering), so the pair costs the longer of the two, not their sum. Each group is split into lanes by
    placement (the GPUs, a link); a lane's rows add up, and the group takes its longest lane. Rows without
    a group add up as in :class:`RowByRow`. This is the smallest form of a composition hook (rows that
    overlap instead of adding up): the maximum of lanes is not two lines in the context, so a decode run
    prices every step (``decode`` declines the closed form), and shapes are priced one at a time.
    """

    def __init__(self, ops: Sequence[Operator], pricers: Sequence[RowPricer], nano_batches: int = 1,
                 adaptive: bool = False, banks: Mapping[str, float] | None = None):
        super().__init__(ops, pricers)
        self.lane = [(op.overlap, op.lane or op.placement) if op.overlap else None for op in self.ops]
        # A pricer that picks its processor per iteration (Duplex's Op/B policy) names the row's lane from its work:
        # ``lane_of(flops, bytes)``; others keep the lane of their placement.
        self.lane_of = [getattr(p, "lane_of", None) for p in self.pricers]
        # Groups whose lanes all read one memory (the xPU and a logic-die PIM share the DRAM dies): the group also
        # takes at least its rows' bytes over that memory's effective bandwidth, B/s, by group name.
        self.banks = dict(banks or {})
        # Named lanes share one GPU's FLOP/s and memory bandwidth: a group then also takes at least the summed
        # compute and the summed memory time of its rows on the device (NanoFlow's resource bound). Rows in
        # placement lanes (a GPU beside a link) never exceed that, so the floor applies to named lanes only.
        self.floor = [bool(op.overlap and op.lane and op.placement == "device") for op in self.ops]
        self.shared = any(self.floor)
        self.nano = int(nano_batches)
        # Adaptive: a pass whose grouped rows would run faster one after another, whole, runs that way.
        self.adaptive = bool(adaptive)

    def time_keyed(self, x: np.ndarray, xl: list[float], key: tuple) -> float:
        return self.time(x, xl)  # lanes take maxima, not a left-to-right sum: no reuse

    def time(self, x: np.ndarray, xl: list[float]) -> float:
        total = 0.0
        groups: dict[str, dict[str, float]] = {}
        n = self.nano
        fl, by = (self.flops @ x).tolist(), (self.bytes @ x).tolist()
        if n > 1:  # grouped rows run as n nano-batches of 1/n of the tokens, each reading all the weights
            xn = x / n
            xn[F.ONE] = x[F.ONE]
            xn[F.EXPERTS_HIT] = x[F.EXPERTS_HIT]
            xnl, fln, byn = xn.tolist(), (self.flops @ xn).tolist(), (self.bytes @ xn).tolist()
        floors: dict[str, list[float]] = {}
        banked: dict[str, float] = {}
        whole = 0.0  # the grouped rows one after another, unsplit (for the adaptive choice)
        for i, (lane, pricer) in enumerate(zip(self.lane, self.pricers, strict=True)):
            if lane is None:
                total += pricer.price(xl, fl[i], by[i]).time_s
                continue
            if self.adaptive:
                whole += pricer.price(xl, fl[i], by[i]).time_s
            p = pricer.price(xl, fl[i], by[i]) if n == 1 else pricer.price(xnl, fln[i], byn[i])
            lanes = groups.setdefault(lane[0], {})
            where = lane[1] if self.lane_of[i] is None else self.lane_of[i](fl[i], by[i])
            lanes[where] = lanes.get(where, 0.0) + n * p.time_s
            if lane[0] in self.banks:
                banked[lane[0]] = banked.get(lane[0], 0.0) + (by[i] if n == 1 else n * byn[i])
            if self.shared and self.floor[i]:
                acc = floors.setdefault(lane[0], [0.0, 0.0])
                acc[0] += n * p.compute_s
                acc[1] += n * p.memory_s
        overlapped = 0.0
        for name, lanes in groups.items():
            longest = max(lanes.values())
            if name in floors:
                longest = max(longest, *floors[name])
            if name in banked:
                longest = max(longest, banked[name] / self.banks[name])
            overlapped += longest
        return total + (min(overlapped, whole) if self.adaptive else overlapped)

    def time_many(self, X: np.ndarray) -> None:
        return None

    def decode(self, batch: int, x: np.ndarray, xl: list[float], context_per_seq: float | None,
               layers: float) -> ScopeDecode:
        return ScopeDecode(0.0, None)


class RooflineBlock(Scope):
    """Rows that all take the roofline (constant efficiencies), priced as one matrix product per side.

    The same prices as each row's :class:`~simulator.costmodel.pricers.RooflinePricer` (to rounding):
    compute and memory time are coefficient matrices pre-divided by the effective rates, and a row
    with work adds its launch cost.
    """

    def __init__(self, ops: Sequence[Operator], pricers: Sequence[RowPricer], device: RooflineDevice):
        super().__init__(ops, pricers)
        self.tc = self.flops / device.effective_flops
        self.tm = self.bytes / device.effective_bandwidth
        self.launch = np.array([op.launches for op in self.ops], dtype=float) * device.launch_overhead_s
        s, r = np.flatnonzero(~self.context), np.flatnonzero(self.context)
        self._static_tc, self._static_tm, self._static_launch = self.tc[s], self.tm[s], self.launch[s]
        self._ctx_tc, self._ctx_tm = self.tc[r], self.tm[r]
        self._ctx_launch = self.launch[r].sum()  # context-dependent rows always have work in a decode step

    def time(self, x: np.ndarray, xl: list[float]) -> float:
        lc, lm = self.tc @ x, self.tm @ x
        return np.maximum(lc, lm).sum() + self.launch @ ((lc != 0) | (lm != 0))

    def time_many(self, X: np.ndarray) -> None:
        """Declines: a shape costs one small matrix product here already, so there is nothing to batch."""
        return None

    def decode(self, batch: int, x: np.ndarray, xl: list[float], context_per_seq: float | None,
               layers: float) -> ScopeDecode:
        lc, lm = self._static_tc @ x, self._static_tm @ x
        launch = self._static_launch @ ((lc != 0) | (lm != 0)) + self._ctx_launch
        static = np.maximum(lc, lm).sum() + launch
        ctx = F.DECODE_CONTEXT
        lines = (layers * self._ctx_tc[:, ctx], layers * (self._ctx_tc @ x),
                 layers * self._ctx_tm[:, ctx], layers * (self._ctx_tm @ x))
        return ScopeDecode(static, lines)


@dataclass(frozen=True)
class _Fitted:
    """A collective priced by the profile's fitted curve: ``count`` messages of ``scale * (bytes . x)``."""

    mult: float  # passes per iteration (layers, or 1)
    pricer: CollectivePricer
    bytes: np.ndarray
    scale: float
    count: float
    source: str


class Collectives:
    """The table's collectives: a fitted curve where the profile has one for the kind and group size, else
    the operator table's link model (whose time is linear in the features, so those fold into one vector)."""

    def __init__(self, table: OperatorTable, device: RooflineDevice, layers: float):
        profile = device.profile
        self.link = np.zeros(F.NUM_FEATURES)
        self.fitted: list[_Fitted] = []
        self.rows: list[tuple[str, Collective, float, _Fitted | None]] = []
        for scope, comms, mult in (("layer", table.layer_comms, layers), ("iteration", table.iteration_comms, 1.0)):
            for c in comms:
                curve = profile.collective(c.kind, c.group) if profile is not None and c.kind else None
                fitted = None
                if curve is None:
                    self.link = self.link + mult * c.time
                else:
                    fitted = _Fitted(mult, CollectivePricer(curve), c.bytes, c.message_scale, c.count,
                                     f"profile {c.kind} x{c.group}")
                    self.fitted.append(fitted)
                self.rows.append((scope, c, mult, fitted))
        # No collective at all (one GPU per replica): every pass costs exactly 0.0, with no product to take.
        self._none = not self.fitted and not self.link.any()

    def time(self, x: np.ndarray) -> float:
        if self._none:
            return 0.0
        t = float(self.link @ x)
        for c in self.fitted:
            t += c.mult * c.count * c.pricer.time(float(c.bytes @ x) * c.scale)
        return t

    def time_many(self, X: np.ndarray) -> np.ndarray | None:
        comm = X @ self.link
        for c in self.fitted:
            nbytes = (X @ c.bytes) * c.scale
            if not np.all(nbytes > 0.0):
                return None
            comm = comm + c.mult * c.count * c.pricer.time_many(nbytes)
        return comm

    def breakdown(self, x: np.ndarray) -> list[OperatorBreakdown]:
        out = []
        for scope, c, mult, fitted in self.rows:
            if fitted is None:
                t, source = mult * float(c.time @ x), "link model"
            else:
                t, source = fitted.mult * fitted.count * fitted.pricer.time(float(c.bytes @ x) * fitted.scale), fitted.source
            out.append(OperatorBreakdown(
                c.name, "communication", scope, 0.0, mult * float(c.bytes @ x), t, "communication", source,
            ))
        return out
