"""Pricing iterations: the cost-model entry point of the engine's hot loop.

The engine asks two questions, millions of times per capacity plan:

* :meth:`IterationCostModel.iteration` -- what does one batch of this shape
  cost? Memoised by the batch's feature vector, so identical shapes (the common
  case: the same prefill length, the same decode batch) are priced once.
* :meth:`IterationCostModel.decode_run` -- what do ``k`` consecutive decode
  iterations of an unchanged batch cost? Only the context grows (by one token
  per sequence per iteration), so the context-independent operators are priced
  once and the attention operators as one vectorised roofline over the ``k``
  contexts. Inside one roofline regime the durations are affine in the
  iteration index; ``affine`` says when that holds exactly, letting the metrics
  store a run of token gaps as an arithmetic progression.

Each operator row is priced by the pricer the registry of
:mod:`simulator.costmodel.pricers` gives its class (the roofline, or a
calibrated profile's curve); :mod:`simulator.costmodel.scopes` sums them. The
methods here ask those two, whatever the pricing: there is one path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from hwmodels.roofline import RooflineDevice
from simulator.costmodel import features as F
from simulator.costmodel.exact_mixed import ExactMixed
from simulator.costmodel.features import BatchShape
from simulator.costmodel.operators import OperatorTable
from simulator.costmodel.pricers import PRICERS, PricerRegistry, PricingContext, RooflinePricer
from simulator.costmodel.scopes import (
    Collectives,
    OperatorBreakdown,
    Overlapped,
    RooflineBlock,
    RowByRow,
    Scope,
    shared_banks,
)

__all__ = ["DecodeRun", "IterationCost", "IterationCostModel", "OperatorBreakdown", "OverheadTerms"]


@dataclass(frozen=True)
class IterationCost:
    """Time and work of one iteration on one replica (all its GPUs)."""

    time_s: float
    flops: float  # arithmetic summed over the replica's GPUs
    bytes: float  # memory traffic summed over the replica's GPUs


def _affine_total(k: int, first: float, step: float) -> float:
    return k * first + step * k * (k - 1) / 2.0


def _affine_ending_by(k: int, a: float, s: float, elapsed: float) -> int:
    """Smallest ``n`` in ``1..k`` with ``n a + s n (n - 1) / 2 >= elapsed`` (``k`` if none)."""
    # cumulative(n) is increasing in n; solve cumulative(n) = elapsed.
    if s == 0.0:
        n = math.ceil(elapsed / a) if a > 0 else 1
    else:
        b = a - s / 2.0
        n = math.ceil((-b + math.sqrt(max(b * b + 2.0 * s * elapsed, 0.0))) / s)
    n = min(max(n, 1), k)
    # Guard the float edge: step to the exact boundary.
    while n < k and n * a + s * n * (n - 1) / 2.0 < elapsed:
        n += 1
    while n > 1 and (n - 1) * a + s * (n - 1) * (n - 2) / 2.0 >= elapsed:
        n -= 1
    return n


@dataclass(slots=True)
class DecodeRun:
    """``iterations`` decode iterations of an unchanged batch.

    Three forms, cheapest first: ``affine`` -- the durations are exactly
    ``first + j * step`` (the common case: one roofline regime for the whole
    run); ``pieces`` -- a few affine pieces ``(iterations, first, step)`` (the
    attention kernel's split count changes within the run); else ``durations``
    holds them all.
    """

    iterations: int
    first: float  # duration of the first iteration, seconds
    step: float  # growth per iteration when affine
    affine: bool
    durations: np.ndarray | None = None
    pieces: tuple[tuple[int, float, float], ...] | None = None

    @property
    def last(self) -> float:
        if self.affine:
            return self.first + self.step * (self.iterations - 1)
        if self.pieces is not None:
            c, f, st = self.pieces[-1]
            return f + st * (c - 1)
        return float(self.durations[-1])

    @property
    def total(self) -> float:
        if self.affine:
            return _affine_total(self.iterations, self.first, self.step)
        if self.pieces is not None:
            return sum(_affine_total(c, f, st) for c, f, st in self.pieces)
        return float(self.durations.sum())

    @property
    def max(self) -> float:
        if self.affine:
            return max(self.first, self.last)
        if self.pieces is not None:
            return max(max(f, f + st * (c - 1)) for c, f, st in self.pieces)
        return float(self.durations.max())

    def all_durations(self) -> np.ndarray:
        if self.affine:
            return self.first + self.step * np.arange(self.iterations, dtype=float)
        if self.pieces is not None:
            return np.concatenate([f + st * np.arange(c, dtype=float) for c, f, st in self.pieces])
        return self.durations

    def tail_pieces(self) -> tuple[tuple[int, float, float], ...]:
        """The affine pieces of iterations 2..k (a piecewise or affine run only): what a sequence's gaps are
        once its first token of the run is out."""
        pieces = ((self.iterations, self.first, self.step),) if self.affine else self.pieces
        c, f, st = pieces[0]
        head = ((c - 1, f + st, st),) if c > 1 else ()
        return head + tuple(pieces[1:])

    def iterations_ending_by(self, elapsed: float) -> int:
        """Iterations needed to reach the first boundary at or after ``elapsed`` seconds into the run.

        That is the smallest ``n >= 1`` whose cumulative duration is >= ``elapsed``
        (capped at the run's length): the iteration in flight completes.
        """
        k = self.iterations
        if self.affine:
            return _affine_ending_by(k, self.first, self.step, elapsed)
        if self.pieces is not None:
            done, spent = 0, 0.0
            for c, f, st in self.pieces:
                piece = _affine_total(c, f, st)
                if spent + piece >= elapsed:
                    return min(done + _affine_ending_by(c, f, st, elapsed - spent), k)
                done, spent = done + c, spent + piece
            return k
        ends = np.cumsum(self.durations)
        return min(int(np.searchsorted(ends, elapsed, side="left")) + 1, k)

    def prefix(self, done: int) -> DecodeRun:
        """The first ``done`` iterations of this run."""
        if self.affine:
            return DecodeRun(done, self.first, self.step, True)
        if self.pieces is not None:
            out, left = [], done
            for c, f, st in self.pieces:
                if left <= 0:
                    break
                out.append((min(c, left), f, st))
                left -= c
            if len(out) == 1:
                return DecodeRun(done, out[0][1], out[0][2], True)
            return DecodeRun(done, self.first, 0.0, False, None, tuple(out))
        d = self.durations[:done]
        return DecodeRun(done, float(d[0]), 0.0, False, d)


@dataclass(frozen=True)
class OverheadTerms:
    """Time per iteration that no GPU kernel accounts for: the serving engine's terms.

    Set by the deployment's engine profile (``deployment.engine``,
    :mod:`hwmodels.calibration.engines`); all zero (the default) models an engine
    whose CPU work overlaps the GPU completely.

    * ``per_iteration_s``: per step -- scheduling, input preparation, sampler launch;
    * ``per_sequence_s``: per sequence that produces a token (sampling, detokenisation, output handling);
    * ``per_layer_s``: per layer per step (kernel launches not hidden behind GPU work, eager mode);
    * ``per_token_s``: per token fed to the model (prefill tokens plus decode sequences: input copies,
      position and slot-mapping tensors built on the host);
    * ``per_collective_s``: per collective of each layer (two all-reduces per layer under TP): the engine's
      all-reduce floor or synchronisation beyond the collective the kernel model prices;
    * ``gqa_reread`` (dimensionless): decode attention that reads each KV head once per query head of its group
      instead of once per group: this fraction of the extra KV bytes, at the device's memory bandwidth.
    """

    per_iteration_s: float = 0.0
    per_sequence_s: float = 0.0
    per_layer_s: float = 0.0
    name: str = "none"
    per_token_s: float = 0.0
    per_collective_s: float = 0.0
    gqa_reread: float = 0.0

    @property
    def active(self) -> bool:
        return bool(self.per_iteration_s or self.per_sequence_s or self.per_layer_s or self.per_token_s
                    or self.per_collective_s or self.gqa_reread)


@dataclass(frozen=True, slots=True)
class ContextLines:
    """The context-dependent rows of a decode step as lines in the summed context ``C`` (all layers).

    The step takes ``static + sum(max(compute_slope * C + compute_base, memory_slope * C + memory_base))``;
    with ``single`` (one such row, the common case) the four are floats, else arrays over the rows.
    ``affine_slope * C + affine_base`` is added on top: rows with no memory line (work on operands another
    row reads, such as dequantising a cache) always take their compute line, so beside one other row they
    keep the single-row closed form instead of the per-row arrays.
    """

    single: bool
    compute_slope: float | np.ndarray
    compute_base: float | np.ndarray
    memory_slope: float | np.ndarray
    memory_base: float | np.ndarray
    affine_slope: float = 0.0
    affine_base: float = 0.0

    @classmethod
    def of(cls, lines: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]) -> ContextLines:
        af, bf, am, bm = lines
        if len(af) == 1:
            return cls(True, float(af[0]), float(bf[0]), float(am[0]), float(bm[0]))
        compute_only = (am == 0.0) & (bm == 0.0) & (af >= 0.0) & (bf >= 0.0)
        if compute_only.any() and int((~compute_only).sum()) == 1:
            i = int(np.flatnonzero(~compute_only)[0])
            return cls(True, float(af[i]), float(bf[i]), float(am[i]), float(bm[i]),
                       float(af[compute_only].sum()), float(bf[compute_only].sum()))
        return cls(False, af, bf, am, bm)


@dataclass(frozen=True, slots=True)
class DecodeWork:
    """FLOPs and bytes over all GPUs of one decode step of a batch: ``flops + flops_per_context * C`` at summed
    context ``C`` (bytes likewise)."""

    flops: float
    bytes: float
    flops_per_context: float
    bytes_per_context: float


@dataclass(frozen=True, slots=True)
class DecodeCoefficients:
    """A decode step of one batch size (and split regime), priced once: ``static_s`` whatever the context plus
    ``lines`` in the summed context (None: no closed form, so a run prices each step), and its work."""

    static_s: float
    lines: ContextLines | None
    work: DecodeWork


class IterationCostModel:
    """Prices batches on one replica from its operator table and device.

    Every operator row gets a pricer when the model is built (:mod:`simulator.costmodel.pricers`,
    chosen by the row's class and placement): with ``device.profile`` set, the profile's curve for
    the row at its own shape where there is one (GEMMs at the iteration's token count and the
    row's (n, k)), else the roofline with the device's constant efficiencies. ``overheads`` adds
    the serving engine's CPU time. ``pricers`` is the registry rows are looked up in.

    >>> # cost = IterationCostModel(table, device); cost.iteration(BatchShape(decode_seqs=8, decode_context=8192))
    """

    def __init__(
        self,
        table: OperatorTable,
        device: RooflineDevice,
        overheads: OverheadTerms | None = None,
        *,
        pricers: PricerRegistry = PRICERS,
    ):
        self.table = table
        self.device = device
        self.overheads = overheads or OverheadTerms()
        self._overheads_active = self.overheads.active  # read once per priced iteration
        layers = float(table.num_layers)
        self._layers = layers
        context = PricingContext(device, table.attention, table.links, table.processors)
        layer_pricers = [pricers.for_row(op, context) for op in table.layer_ops]
        iteration_pricers = [pricers.for_row(op, context) for op in table.iteration_ops]
        # Datasheet pricing -- every row on the roofline, no fitted engine overheads -- sums the rows as matrix
        # products (fast); anything calibrated sums row by row. Each keeps the order of sums its results have
        # always had, so both stay bit-identical across this refactor (tests/test_fingerprints.py).
        datasheet = all(type(p) is RooflinePricer for p in (*layer_pricers, *iteration_pricers))
        overlapped = any(op.overlap for op in (*table.layer_ops, *table.iteration_ops))
        if overlapped:  # rows that run concurrently: each scope takes the longest lane of each group
            self._layer: Scope = Overlapped(table.layer_ops, layer_pricers, table.nano_batches,
                                                 table.nano_adaptive, banks=shared_banks(table))
            self._iter: Scope = Overlapped(table.iteration_ops, iteration_pricers)
        elif datasheet and not self.overheads.active:
            self._layer = RooflineBlock(table.layer_ops, layer_pricers, device)
            self._iter = RooflineBlock(table.iteration_ops, iteration_pricers, device)
        else:
            self._layer = RowByRow(table.layer_ops, layer_pricers)
            self._iter = RowByRow(table.iteration_ops, iteration_pricers)
        self._comms = Collectives(table, device, layers)
        # Collectives one step runs (two all-reduces per layer under TP): what an engine's per-collective term counts.
        self._collectives_per_step = layers * sum(c.count for c in table.layer_comms) + sum(
            c.count for c in table.iteration_comms)
        # Seconds per token of summed decode context that an engine re-reading KV per query head adds.
        geo = table.attention
        self._reread_slope = 0.0
        if self.overheads.gqa_reread and geo is not None and geo.heads > geo.kv_heads:
            extra_bytes = layers * (geo.heads - geo.kv_heads) * 2.0 * geo.head_dim * geo.kv_bytes
            self._reread_slope = self.overheads.gqa_reread * extra_bytes / device.memory_bandwidth
        ops, iops = list(table.layer_ops), list(table.iteration_ops)
        # Work totals across all GPUs of the replica (per-GPU rows x tp ranks x layers).
        scale = float(table.tp)
        self._flops_total = scale * (
            layers * sum((op.flops for op in ops), np.zeros(F.NUM_FEATURES))
            + sum((op.flops for op in iops), np.zeros(F.NUM_FEATURES))
        )
        self._bytes_total = scale * (
            layers * sum((op.bytes for op in ops), np.zeros(F.NUM_FEATURES))
            + sum((op.bytes for op in iops), np.zeros(F.NUM_FEATURES))
        )
        self._cache: dict[tuple, IterationCost] = {}
        # iteration_from_totals: the feature vector at zero decode context, per context-free key.
        self._mixed_base: dict[tuple, np.ndarray] = {}
        self._decode_cache: dict[int | tuple[int, int], DecodeCoefficients] = {}
        self._E = table.num_experts
        self._k = table.experts_per_token
        # A sliding-window model: the prefill features a chunk contributes (simulator/window.py); None: full causal.
        self.prefill_window = table.prefill_window
        # Tokens each decode sequence feeds the model per step: 1, or K + 1 when a speculation technique
        # verifies K drafted tokens (its table is scaled to match); only the MoE expert count reads it.
        self.decode_tokens_per_seq = 1
        # (batch, summed context) -> the decode-attention kernel's split count, where it depends on the context.
        split = [p for p in layer_pricers if p.split_regime(1.0, 1.0) != 0]
        self._split_regime = split[0].split_regime if split else None
        self._split_block = split[0].split_block_tokens if split else 0  # KV tokens per block of that kernel
        # Mixed iterations in plain floats where that is provably the same number (costmodel/exact_mixed.py);
        # None: always the numpy path.
        self._exact_mixed = ExactMixed.build(self)

    # ----------------------------------------------------------------- single
    def features(self, shape: BatchShape) -> np.ndarray:
        return shape.features(self._E, self._k, self.prefill_window)

    def _overhead(self, x: np.ndarray):
        """Serving-engine overhead of the iteration(s) with features ``x`` (one row, or shapes x features)."""
        if not self._overheads_active:
            return 0.0
        o = self.overheads
        t = o.per_iteration_s + o.per_sequence_s * x[..., F.LOGIT_SEQS] + o.per_layer_s * self._layers
        if o.per_token_s:
            t = t + o.per_token_s * (x[..., F.PREFILL_TOKENS] + x[..., F.DECODE_SEQS])
        if o.per_collective_s:
            t = t + o.per_collective_s * self._collectives_per_step
        if self._reread_slope:
            t = t + self._reread_slope * x[..., F.DECODE_CONTEXT]
        return t

    def overhead_of(self, xl: list[float]) -> float:
        """:meth:`_overhead` of one row given as a list: the same operations in the same order, on floats.

        A twin of :meth:`_overhead` on purpose: one formula behind a feature getter cost the plain-float path of
        mixed iterations ~4 % of a chunked-prefill replay. ``tests/test_exact_mixed.py`` prices with every engine
        term on both paths and requires equal results, so the twins cannot drift apart unnoticed."""
        if not self._overheads_active:
            return 0.0
        o = self.overheads
        t = o.per_iteration_s + o.per_sequence_s * xl[F.LOGIT_SEQS] + o.per_layer_s * self._layers
        if o.per_token_s:
            t = t + o.per_token_s * (xl[F.PREFILL_TOKENS] + xl[F.DECODE_SEQS])
        if o.per_collective_s:
            t = t + o.per_collective_s * self._collectives_per_step
        if self._reread_slope:
            t = t + self._reread_slope * xl[F.DECODE_CONTEXT]
        return t

    def price_features(self, x: np.ndarray) -> float:
        """Seconds for one iteration with feature vector ``x``."""
        xl = x.tolist()
        layer, it = self._layer.time(x, xl), self._iter.time(x, xl)
        return float(self._layers * layer + it + self._comms.time(x) + self._overhead(x))

    def _price_many(self, X: np.ndarray) -> np.ndarray | None:
        """:meth:`price_features` of every row of ``X`` (shapes x features) in one pass, or None where it cannot."""
        layer, it = self._layer.time_many(X), self._iter.time_many(X)
        if layer is None or it is None:
            return None
        comm = self._comms.time_many(X)
        if comm is None:
            return None
        return self._layers * layer + it + comm + self._overhead(X)

    def iteration(self, shape: BatchShape) -> IterationCost:
        """Cost of one iteration of ``shape`` (memoised)."""
        x = self.features(shape)
        key = tuple(x.tolist())
        hit = self._cache.get(key)
        if hit is None:
            hit = IterationCost(
                self.price_features(x), float(self._flops_total @ x), float(self._bytes_total @ x)
            )
            self._cache[key] = hit
        return hit

    def iteration_from_totals(
        self,
        prefill_tokens: int,
        logit_seqs: int,
        prefill_attn_work: float,
        prefill_kv_read: int,
        decode_seqs: int,
        decode_context: int,
    ) -> IterationCost:
        """As :meth:`iteration`, from aggregate features the scheduler already summed."""
        key = (prefill_tokens, logit_seqs, prefill_attn_work, prefill_kv_read, decode_seqs, decode_context)
        hit = self._cache.get(key)
        if hit is None:
            fixed = (prefill_tokens, logit_seqs, decode_seqs)
            fast = self._exact_mixed
            if fast is not None:
                got = fast.price(fixed, prefill_attn_work, prefill_kv_read, decode_context)
                if got is not None:
                    hit = self._cache[key] = IterationCost(*got)
                    return hit
            if not decode_seqs:  # prefill only: nothing to reuse across decode contexts
                x = self._totals_x(prefill_tokens, logit_seqs, prefill_attn_work, prefill_kv_read, 0)
                x[F.DECODE_CONTEXT] = decode_context
                hit = IterationCost(
                    self.price_features(x), float(self._flops_total @ x), float(self._bytes_total @ x)
                )
                self._cache[key] = hit
                return hit
            # Mixed (chunked-prefill) iterations meet a new decode context and chunk position nearly every step
            # while the chunk size and batch repeat: the features but those (scopes.MIXED_VARYING) are built once
            # per ``fixed`` key, and the scopes reuse the rows that do not vary with them under the same key.
            x = self._mixed_base_of(fixed).copy()
            x[F.PREFILL_ATTN_WORK] = prefill_attn_work
            x[F.PREFILL_KV_READ] = prefill_kv_read
            x[F.DECODE_CONTEXT] = decode_context
            xl = x.tolist()
            layer, it = self._layer.time_keyed(x, xl, fixed), self._iter.time_keyed(x, xl, fixed)
            time_s = float(self._layers * layer + it + self._comms.time(x) + self._overhead(x))
            hit = IterationCost(time_s, float(self._flops_total @ x), float(self._bytes_total @ x))
            self._cache[key] = hit
        return hit

    def _mixed_base_of(self, fixed: tuple) -> np.ndarray:
        """The feature vector of the context-free key ``fixed`` = (prefill tokens, logit sequences, decode
        sequences) at zero varying features, built once per key (callers copy it before changing it)."""
        base = self._mixed_base.get(fixed)
        if base is None:
            base = self._mixed_base[fixed] = self._totals_x(fixed[0], fixed[1], 0.0, 0, fixed[2])
        return base

    def _totals_x(
        self, prefill_tokens: int, logit_seqs: int, prefill_attn_work: float, prefill_kv_read: int, decode_seqs: int
    ) -> np.ndarray:
        """The feature vector of :meth:`iteration_from_totals` at zero decode context."""
        x = np.zeros(F.NUM_FEATURES)
        x[F.ONE] = 1.0
        x[F.PREFILL_TOKENS] = prefill_tokens
        x[F.DECODE_SEQS] = decode_seqs
        x[F.LOGIT_SEQS] = logit_seqs
        x[F.PREFILL_ATTN_WORK] = prefill_attn_work
        x[F.PREFILL_KV_READ] = prefill_kv_read
        x[F.EXPERTS_HIT] = F.expected_experts_hit(
            prefill_tokens + decode_seqs * self.decode_tokens_per_seq, self._E, self._k)
        return x

    def prime_lone_prefills(self, prompt_lengths: np.ndarray) -> int:
        """Price, in one vectorised pass, the iteration that prefills each prompt length alone.

        Why: a calibrated price is ~30 us of Python per new batch shape, and a
        trace replay meets a new prompt length at almost every arrival (2,400
        distinct lengths in the Azure conversation trace), which was ~9 % of
        such a run. Fills the same cache :meth:`iteration_from_totals` reads,
        under the key it builds for that iteration (one whole prompt, no KV
        cached, no decodes). Returns how many shapes it priced (0 when the
        scalar path must do it: datasheet pricing is cheap already).
        """
        lengths = [int(v) for v in np.unique(np.asarray(prompt_lengths)) if v > 0]
        win = self.prefill_window
        if win is None:
            keys = [(q, 1, F.prefill_attention_work(q, 0), F.prefill_kv_read(q, 0), 0, 0) for q in lengths]
        else:
            keys = [(q, 1, win.work(q, 0), win.kv_read(q, 0), 0, 0) for q in lengths]
        keys = [k for k in keys if k not in self._cache]
        if not keys:
            return 0
        X = np.zeros((len(keys), F.NUM_FEATURES))
        X[:, F.ONE] = 1.0
        X[:, F.PREFILL_TOKENS] = [k[0] for k in keys]
        X[:, F.LOGIT_SEQS] = 1.0
        X[:, F.PREFILL_ATTN_WORK] = [k[2] for k in keys]
        X[:, F.PREFILL_KV_READ] = [k[3] for k in keys]
        X[:, F.EXPERTS_HIT] = F.expected_experts_hit(X[:, F.PREFILL_TOKENS], self._E, self._k)
        times = self._price_many(X)
        if times is None:
            return 0
        flops, nbytes = X @ self._flops_total, X @ self._bytes_total
        for key, t, fl, by in zip(keys, times.tolist(), flops.tolist(), nbytes.tolist(), strict=True):
            self._cache[key] = IterationCost(t, fl, by)
        return len(keys)

    # ------------------------------------------------------------- decode run
    def _decode_x(self, batch: int, context: float) -> np.ndarray:
        x = self._decode_base(batch)
        x[F.DECODE_CONTEXT] = context
        return x

    def _decode_base(self, batch: int) -> np.ndarray:
        x = np.zeros(F.NUM_FEATURES)
        x[F.ONE] = 1.0
        x[F.DECODE_SEQS] = batch
        x[F.LOGIT_SEQS] = batch
        x[F.EXPERTS_HIT] = F.expected_experts_hit(batch * self.decode_tokens_per_seq, self._E, self._k)
        return x

    def _decode_coefficients(self, batch: int, regime: int = 0, context: float | None = None) -> DecodeCoefficients:
        """Per batch size (and split regime), once: the context-independent time and the context-dependent rows as lines.

        A context-dependent operator's compute and memory times are lines in
        the summed context ``C``: ``a_f*C + b_f`` and ``a_m*C + b_m``. They hold
        for one split ``regime`` of the attention kernel (``DecodePricer.split_regime``);
        ``context`` (summed) is any context in that regime.
        """
        key = batch if not regime else (batch, regime)
        hit = self._decode_cache.get(key)
        if hit is None:
            L = self._layers
            x = self._decode_base(batch)
            xl = x.tolist()
            layer = self._layer.decode(batch, x, xl, None if context is None else context / batch, L)
            it = self._iter.time(x, xl)
            static = float(L * layer.static_s + it + self._comms.time(x) + self._overhead(x))
            fl, by, ctx = self._flops_total, self._bytes_total, F.DECODE_CONTEXT
            work = DecodeWork(float(fl @ x), float(by @ x), float(fl[ctx]), float(by[ctx]))
            lines = None if layer.lines is None else ContextLines.of(layer.lines)
            if lines is not None and self._reread_slope:  # the engine's per-context term joins the affine part
                lines = replace(lines, affine_slope=lines.affine_slope + self._reread_slope)
            hit = DecodeCoefficients(static, lines, work)
            self._decode_cache[key] = hit
        return hit

    def decode_run(self, batch: int, context0: int, iterations: int, growth: float | None = None) -> DecodeRun:
        """``iterations`` decode steps of ``batch`` sequences whose contexts sum to
        ``context0`` in the first step and grow by ``growth`` per step (default ``batch``: one token
        per sequence; a speculation step grows them by the tokens it accepts)."""
        k = int(iterations)
        g = batch if growth is None else growth
        regime = 0
        split_regime = self._split_regime
        if split_regime is not None:
            regime = split_regime(batch, context0)
            if regime != split_regime(batch, context0 + g * (k - 1)):
                return self._decode_run_by_regime(batch, context0, k, g)
        return self._run_in_regime(batch, regime, context0, k, g)

    def _run_in_regime(self, batch: int, regime: int, context0: int, k: int, g: float) -> DecodeRun:
        """``k`` decode steps within one split regime of the attention kernel: affine where one roofline side
        holds throughout, else every duration."""
        coefficients = self._decode_coefficients(batch, regime, context0)
        static, lines = coefficients.static_s, coefficients.lines
        if lines is None:  # a context-dependent row with no closed form: price every step
            ctx = context0 + g * np.arange(k, dtype=float)
            d = np.array([self.price_features(self._decode_x(batch, c)) for c in ctx])
            second = np.diff(d, 2) if k > 2 else np.zeros(0)
            if np.all(np.abs(second) <= 1e-12 * max(float(d.max()), 1e-30)):
                return DecodeRun(k, float(d[0]), float(d[1] - d[0]) if k > 1 else 0.0, True)
            return DecodeRun(k, float(d[0]), 0.0, False, d)
        c_last = context0 + g * (k - 1)
        af, bf, am, bm = lines.compute_slope, lines.compute_base, lines.memory_slope, lines.memory_base
        if lines.single:
            compute_first = af * context0 + bf >= am * context0 + bm
            compute_last = af * c_last + bf >= am * c_last + bm
            ea, eb = lines.affine_slope, lines.affine_base
            if compute_first == compute_last:
                a, b = (af, bf) if compute_first else (am, bm)
                if ea or eb:
                    a, b = a + ea, b + eb
                return DecodeRun(k, static + a * context0 + b, a * g, True)
            ctx = context0 + g * np.arange(k, dtype=float)
            d = static + np.maximum(af * ctx + bf, am * ctx + bm)
            if ea or eb:
                d = d + (ea * ctx + eb)
            return DecodeRun(k, float(d[0]), 0.0, False, d)
        ctx = context0 + g * np.arange(k, dtype=float)
        comp = np.outer(af, ctx) + bf[:, None]
        mem = np.outer(am, ctx) + bm[:, None]
        d = static + np.maximum(comp, mem).sum(axis=0)
        if lines.affine_slope or lines.affine_base:
            d = d + (lines.affine_slope * ctx + lines.affine_base)
        if np.array_equal(comp[:, 0] >= mem[:, 0], comp[:, -1] >= mem[:, -1]):
            step = float(d[1] - d[0]) if k > 1 else 0.0
            return DecodeRun(k, float(d[0]), step, True)
        return DecodeRun(k, float(d[0]), 0.0, False, d)

    def _decode_run_by_regime(self, batch: int, context0: int, k: int, g: float) -> DecodeRun:
        """A run across which the attention kernel's split count changes: each step priced by its regime's lines.

        The split count depends on the per-sequence context's KV blocks, and the
        mean context grows by one token a step, so the run is cut where it enters
        a new block (a few pieces per run). A piece inside one roofline regime is
        affine and stays two numbers; otherwise the run keeps every duration.
        """
        block = self._split_block
        runs: list[DecodeRun] = []
        j = 0
        while j < k:
            c = context0 + g * j
            blocks = math.ceil(c / (batch * block))
            end = min(k, math.floor((blocks * block * batch - context0) / g) + 1)  # last step in these blocks
            end = max(end, j + 1)
            runs.append(self._run_in_regime(batch, self._split_regime(batch, c), c, end - j, g))
            j = end
        if all(r.affine for r in runs):
            return DecodeRun(k, runs[0].first, 0.0, False, None, tuple((r.iterations, r.first, r.step) for r in runs))
        d = np.concatenate([r.all_durations() for r in runs])
        return DecodeRun(k, float(d[0]), 0.0, False, d)

    def decode_work(self, batch: int, context0: int, iterations: int, growth: float | None = None) -> tuple[float, float]:
        """(FLOPs, bytes) over all GPUs of ``iterations`` decode steps, in closed form."""
        k = iterations
        g = batch if growth is None else growth
        w = self._decode_coefficients(batch).work
        ctx_sum = context0 * k + g * k * (k - 1) / 2.0
        return k * w.flops + w.flops_per_context * ctx_sum, k * w.bytes + w.bytes_per_context * ctx_sum

    # --------------------------------------------------------------- breakdown
    def breakdown(self, shape: BatchShape) -> list[OperatorBreakdown]:
        """Per-operator times of one iteration (the numbers :meth:`iteration` sums, to rounding), each with
        what priced it."""
        x = self.features(shape)
        xl = x.tolist()
        out = self._layer.breakdown(x, xl, "layer", self._layers) + self._iter.breakdown(x, xl, "iteration", 1.0)
        out += self._comms.breakdown(x)
        if self.overheads.active:
            out.append(OperatorBreakdown(
                f"engine_overhead ({self.overheads.name})", "overhead", "iteration", 0.0, 0.0, self._overhead(x),
                "overhead", f"engine overheads {self.overheads.name}",
            ))
        return out
