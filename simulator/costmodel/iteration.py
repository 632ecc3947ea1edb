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
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from hwmodels.roofline import RooflineDevice
from simulator.costmodel import features as F
from simulator.costmodel.features import BatchShape
from simulator.costmodel.operators import OperatorTable


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
class OperatorBreakdown:
    """Per-operator time of one iteration, for ``capsim estimate`` and the dashboard."""

    name: str
    op_class: str
    scope: str  # "layer" (times num_layers) or "iteration"
    flops: float  # per GPU, all layers
    bytes: float
    time_s: float  # all layers
    bound: str  # "compute", "memory" or "communication"


@dataclass(frozen=True)
class OperatorShapes:
    """The shapes behind the operator table's rows, for calibrated per-shape pricing.

    ``gemms`` maps an operator name to the GEMMs it launches, ``(n, k, count)``
    each (per expert for MoE rows): the token count ``m`` comes from the batch,
    so a calibrated curve prices every GEMM at its own (m, n, k). Heads are per
    GPU. Built by :func:`simulator.system.operator_shapes`; without it the cost
    model derives square GEMMs of the right size from the table's coefficients.
    """

    gemms: Mapping[str, tuple[tuple[float, float, float], ...]]
    heads: float
    kv_heads: float
    head_dim: float
    act_dtype: str = "bf16"
    kv_bytes: float = 2.0  # per KV-cache element (the cache write a calibrated attention curve may include)


@dataclass(frozen=True)
class OverheadTerms:
    """Time per iteration that no GPU kernel accounts for (serving-engine CPU work).

    Fitted per serving engine by :mod:`hwmodels.calibration.overheads`; all zero
    (the default) models an engine whose CPU work overlaps the GPU completely.

    * ``per_iteration_s``: scheduling, input preparation, sampler launch -- once per iteration;
    * ``per_sequence_s``: per sequence that produces a token (sampling, detokenisation, output handling);
    * ``per_layer_s``: per layer per iteration (kernel launches not hidden behind GPU work, eager mode).
    """

    per_iteration_s: float = 0.0
    per_sequence_s: float = 0.0
    per_layer_s: float = 0.0
    name: str = "none"

    @property
    def active(self) -> bool:
        return bool(self.per_iteration_s or self.per_sequence_s or self.per_layer_s)


class IterationCostModel:
    """Prices batches on one replica from its operator table and device.

    With ``device.profile`` set (a calibrated device profile), every operator
    that has a fitted curve is priced by it at its own shape (GEMMs at the
    iteration's token count and the layer's (n, k)); the rest, and everything
    when there is no profile, by the roofline with the device's constant
    efficiencies. ``overheads`` adds the serving engine's CPU time.

    >>> # cost = IterationCostModel(table, device); cost.iteration(BatchShape(decode_seqs=8, decode_context=8192))
    """

    def __init__(
        self,
        table: OperatorTable,
        device: RooflineDevice,
        shapes: OperatorShapes | None = None,
        overheads: OverheadTerms | None = None,
    ):
        self.table = table
        self.device = device
        self.shapes = shapes
        self.overheads = overheads or OverheadTerms()
        layers = float(table.num_layers)
        self._layers = layers
        ops = list(table.layer_ops)
        self._lf = np.array([op.flops for op in ops]) / device.effective_flops
        self._lm = np.array([op.bytes for op in ops]) / device.effective_bandwidth
        # Launch overhead per operator, charged only when the operator has work in the
        # batch (a decode-only step launches no prefill-attention kernel), as breakdown() does.
        self._l_launch = np.array([op.launches for op in ops], dtype=float) * device.launch_overhead_s
        iops = list(table.iteration_ops)
        self._if = np.array([op.flops for op in iops]) / device.effective_flops
        self._im = np.array([op.bytes for op in iops]) / device.effective_bandwidth
        self._i_launch = np.array([op.launches for op in iops], dtype=float) * device.launch_overhead_s
        self._comm = layers * sum((c.time for c in table.layer_comms), np.zeros(F.NUM_FEATURES)) + sum(
            (c.time for c in table.iteration_comms), np.zeros(F.NUM_FEATURES)
        )
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
        # Split layer operators by whether they depend on decode context.
        ctx = F.DECODE_CONTEXT
        dep = (self._lf[:, ctx] != 0) | (self._lm[:, ctx] != 0)
        self._ctx_rows = np.flatnonzero(dep)
        self._static_rows = np.flatnonzero(~dep)
        self._cache: dict[tuple, IterationCost] = {}
        self._decode_cache: dict[int, tuple] = {}
        self._E = table.num_experts
        self._k = table.experts_per_token
        # Tokens each decode sequence feeds the model per step: 1, or K + 1 when a speculation technique
        # verifies K drafted tokens (its table is scaled to match); only the MoE expert count reads it.
        self.decode_tokens_per_seq = 1
        self._cal = _Calibrated.build(self) if device.profile is not None or self.overheads.active else None
        # (batch, summed context) -> the decode-attention kernel's split count, where it depends on the context.
        self._split_regime = self._cal.capped.split_regime if self._cal is not None and self._cal.capped else None

    # ----------------------------------------------------------------- single
    def features(self, shape: BatchShape) -> np.ndarray:
        return shape.features(self._E, self._k)

    def price_features(self, x: np.ndarray) -> float:
        """Seconds for one iteration with feature vector ``x``."""
        if self._cal is not None:
            return self._cal.price(x)
        lc, lm = self._lf @ x, self._lm @ x
        ic, im = self._if @ x, self._im @ x
        layer = np.maximum(lc, lm).sum() + self._l_launch @ ((lc != 0) | (lm != 0))
        it = np.maximum(ic, im).sum() + self._i_launch @ ((ic != 0) | (im != 0))
        return float(self._layers * layer + it + self._comm @ x)

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
            x = np.zeros(F.NUM_FEATURES)
            x[F.ONE] = 1.0
            x[F.PREFILL_TOKENS] = prefill_tokens
            x[F.DECODE_SEQS] = decode_seqs
            x[F.LOGIT_SEQS] = logit_seqs
            x[F.PREFILL_ATTN_WORK] = prefill_attn_work
            x[F.PREFILL_KV_READ] = prefill_kv_read
            x[F.DECODE_CONTEXT] = decode_context
            x[F.EXPERTS_HIT] = F.expected_experts_hit(
                prefill_tokens + decode_seqs * self.decode_tokens_per_seq, self._E, self._k)
            hit = IterationCost(
                self.price_features(x), float(self._flops_total @ x), float(self._bytes_total @ x)
            )
            self._cache[key] = hit
        return hit

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
        if self._cal is None:
            return 0
        lengths = [int(v) for v in np.unique(np.asarray(prompt_lengths)) if v > 0]
        keys = [(q, 1, q * (0 + q / 2.0), q, 0, 0) for q in lengths]
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
        times = self._cal.price_many(X)
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

    def _decode_coefficients(self, batch: int, regime: int = 0, context: float | None = None) -> tuple:
        """Per batch size (and split regime), once: the context-independent time and the context-dependent rows as lines.

        A context-dependent operator's compute and memory times are lines in
        the summed context ``C``: ``a_f*C + b_f`` and ``a_m*C + b_m``. They hold
        for one split ``regime`` of the attention kernel (``DecodePricer.split_regime``);
        ``context`` (summed) is any context in that regime.
        """
        key = batch if not regime else (batch, regime)
        hit = self._decode_cache.get(key)
        if hit is None and self._cal is not None:
            hit = self._cal.decode_coefficients(batch, None if context is None else context / batch)
            self._decode_cache[key] = hit
        if hit is None:
            x = self._decode_base(batch)
            s, rows = self._static_rows, self._ctx_rows
            lc, lm = self._lf[s] @ x, self._lm[s] @ x
            ic, im = self._if @ x, self._im @ x
            # Context-dependent rows always have work in a decode step, so they always launch.
            launch = self._l_launch[s] @ ((lc != 0) | (lm != 0)) + self._l_launch[rows].sum()
            layer = np.maximum(lc, lm).sum() + launch
            it = np.maximum(ic, im).sum() + self._i_launch @ ((ic != 0) | (im != 0))
            static = float(self._layers * layer + it + self._comm @ x)
            L = self._layers
            af = L * self._lf[rows, F.DECODE_CONTEXT]
            bf = L * (self._lf[rows] @ x)
            am = L * self._lm[rows, F.DECODE_CONTEXT]
            bm = L * (self._lm[rows] @ x)
            fl, by = self._flops_total, self._bytes_total
            work = (float(fl @ x), float(by @ x), float(fl[F.DECODE_CONTEXT]), float(by[F.DECODE_CONTEXT]))
            single = len(rows) == 1
            lines = (float(af[0]), float(bf[0]), float(am[0]), float(bm[0])) if single else (af, bf, am, bm)
            hit = (static, single, lines, work)
            self._decode_cache[batch] = hit
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
        static, single, lines, _ = self._decode_coefficients(batch, regime, context0)
        if lines is None:  # a calibrated context-dependent row with no closed form: price every step
            ctx = context0 + g * np.arange(k, dtype=float)
            d = np.array([self._cal.price(self._decode_x(batch, c)) for c in ctx])
            second = np.diff(d, 2) if k > 2 else np.zeros(0)
            if np.all(np.abs(second) <= 1e-12 * max(float(d.max()), 1e-30)):
                return DecodeRun(k, float(d[0]), float(d[1] - d[0]) if k > 1 else 0.0, True)
            return DecodeRun(k, float(d[0]), 0.0, False, d)
        c_last = context0 + g * (k - 1)
        if single:
            af, bf, am, bm = lines
            compute_first = af * context0 + bf >= am * context0 + bm
            compute_last = af * c_last + bf >= am * c_last + bm
            if compute_first == compute_last:
                a, b = (af, bf) if compute_first else (am, bm)
                return DecodeRun(k, static + a * context0 + b, a * g, True)
            ctx = context0 + g * np.arange(k, dtype=float)
            d = static + np.maximum(af * ctx + bf, am * ctx + bm)
            return DecodeRun(k, float(d[0]), 0.0, False, d)
        af, bf, am, bm = lines
        ctx = context0 + g * np.arange(k, dtype=float)
        comp = np.outer(af, ctx) + bf[:, None]
        mem = np.outer(am, ctx) + bm[:, None]
        d = static + np.maximum(comp, mem).sum(axis=0)
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
        block = self._cal.capped_block
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
        flops0, bytes0, flops_c, bytes_c = self._decode_coefficients(batch)[3]
        ctx_sum = context0 * k + g * k * (k - 1) / 2.0
        return k * flops0 + flops_c * ctx_sum, k * bytes0 + bytes_c * ctx_sum

    # --------------------------------------------------------------- breakdown
    def breakdown(self, shape: BatchShape) -> list[OperatorBreakdown]:
        """Per-operator times of one iteration (same numbers :meth:`iteration` sums)."""
        x = self.features(shape)
        if self._cal is not None:
            return self._cal.breakdown(x)
        dev = self.device
        out: list[OperatorBreakdown] = []
        for scope, ops, mult in (
            ("layer", self.table.layer_ops, self._layers),
            ("iteration", self.table.iteration_ops, 1.0),
        ):
            for op in ops:
                fl, by = float(op.flops @ x), float(op.bytes @ x)
                if fl == 0 and by == 0:
                    continue
                tc, tm = fl / dev.effective_flops, by / dev.effective_bandwidth
                t = mult * (max(tc, tm) + op.launches * dev.launch_overhead_s)
                out.append(
                    OperatorBreakdown(
                        op.name, op.op_class, scope, mult * fl, mult * by, t,
                        "compute" if tc >= tm else "memory",
                    )
                )
        for scope, comms, mult in (
            ("layer", self.table.layer_comms, self._layers),
            ("iteration", self.table.iteration_comms, 1.0),
        ):
            for c in comms:
                out.append(
                    OperatorBreakdown(
                        c.name, "communication", scope, 0.0, mult * float(c.bytes @ x),
                        mult * float(c.time @ x), "communication",
                    )
                )
        return out


# --------------------------------------------------------------- calibrated pricing


_Row = Callable[[list, float, float], object]  # (features as a list, FLOPs, bytes) -> pricing.Priced


class _Calibrated:
    """Calibrated pricing of one cost model's operator rows, collectives and overheads.

    Built once per :class:`IterationCostModel`: each row gets a pricer from the
    device profile (GEMM, prefill / decode attention, bandwidth-bound op) or, when
    the profile has no curve for it, keeps the roofline with constant
    efficiencies. Collectives with a fitted alpha-beta curve for the group size
    use it; the rest keep the link model of the operator table.
    """

    def __init__(self, model: IterationCostModel):
        from hwmodels.calibration.pricing import Priced

        self._priced = Priced
        self.model = model
        dev = model.device
        table = model.table
        self.L = model._layers
        self.inv_c = 1.0 / dev.effective_flops
        self.inv_m = 1.0 / dev.effective_bandwidth
        self.Fl = np.array([op.flops for op in table.layer_ops])
        self.Bl = np.array([op.bytes for op in table.layer_ops])
        self.Fi = np.array([op.flops for op in table.iteration_ops])
        self.Bi = np.array([op.bytes for op in table.iteration_ops])
        launch = dev.launch_overhead_s
        self.l_rows = [(op, self._pricer(op), op.launches * launch) for op in table.layer_ops]
        self.i_rows = [(op, self._pricer(op), op.launches * launch) for op in table.iteration_ops]
        self.ctx_rows = set(model._ctx_rows.tolist())
        # The decode-attention pricer whose split count depends on the context (FlashAttention-2), if any.
        capped = [getattr(p, "decode", None) for _, p, _ in self.l_rows]
        capped = [d for d in capped if d is not None and d.split_regime(1.0, 1.0) != 0]
        self.capped = capped[0] if capped else None
        if self.capped is not None:
            from hwmodels.calibration.attention_curves import kv_block_tokens

            self.capped_block = kv_block_tokens(self.capped.dh)  # tokens per KV block of its split heuristic
        self.comm_vec = np.zeros(F.NUM_FEATURES)
        self.comm_cal: list[tuple[float, object, np.ndarray, float, float, str]] = []
        for comms, mult in ((table.layer_comms, self.L), (table.iteration_comms, 1.0)):
            for c in comms:
                cal = self._collective(c)
                if cal is None:
                    self.comm_vec = self.comm_vec + mult * c.time
                else:
                    pricer, scale, count = cal
                    self.comm_cal.append((mult, pricer, c.bytes, scale, count, c.name))
        self.over = model.overheads

    @classmethod
    def build(cls, model: IterationCostModel) -> _Calibrated:
        return cls(model)

    # ---------------------------------------------------------------- pricers
    def _peaks(self, dtype: str) -> tuple[float, float]:
        """(FLOP/s, bytes/s) the profile's curves were fitted against (efficiencies are fractions of them)."""
        dev = self.model.device
        peaks = (dev.profile.doc.get("peaks") or {}) if dev.profile is not None else {}
        flops = peaks.get("flops_per_s") or {}
        peak = flops.get(dtype) or flops.get({"bf16": "fp16", "fp16": "bf16"}.get(dtype, ""))
        bw = peaks.get("memory_bandwidth_Bps")
        return float(peak or dev.peak_flops), float(bw or dev.memory_bandwidth)

    def _gemm_shapes(self, op) -> tuple[tuple[float, float, float], ...]:
        shapes = self.model.shapes
        if shapes is not None and op.name in shapes.gemms:
            return shapes.gemms[op.name]
        # No shapes given: square GEMMs with the row's weight elements per token, one per launch.
        per_token = max(op.flops[F.PREFILL_TOKENS], op.flops[F.DECODE_SEQS], op.flops[F.LOGIT_SEQS]) / 2.0
        if op.bytes[F.EXPERTS_HIT] != 0:
            return ((math.sqrt(per_token / max(self.model._k, 1)),) * 2 + (1.0,),)
        n = math.sqrt(per_token / max(op.launches, 1.0))
        return ((n, n, max(op.launches, 1.0)),)

    def _pricer(self, op) -> _Row | None:
        from hwmodels.calibration import pricing

        dev = self.model.device
        profile = dev.profile
        if profile is None:
            return None
        shapes = self.model.shapes
        act = shapes.act_dtype if shapes is not None else "bf16"
        if op.op_class == "gemm":
            curve = profile.curve("gemm", dev.compute_format)
            if curve is None:
                return None
            peak, bw = self._peaks(curve.dtype)
            g = pricing.GemmPricer(curve, self._gemm_shapes(op), peak, bw)
            if op.bytes[F.EXPERTS_HIT] != 0:
                fn = lambda x, f, b: g.price(f, b, max(x[F.EXPERTS_HIT], 1e-9))  # noqa: E731
                fn.many = lambda X, f, b: g.price_many(f, b, np.maximum(X[:, F.EXPERTS_HIT], 1e-9))
                return fn
            fn = lambda x, f, b: g.price(f, b)  # noqa: E731
            fn.many = lambda X, f, b: g.price_many(f, b)
            return fn
        if shapes is None and op.op_class.startswith("attention"):
            return None
        if op.op_class == "attention_prefill":
            curve = profile.curve("attention_prefill", act)
            if curve is None:
                return None
            peak, bw = self._peaks(curve.dtype)
            a = pricing.PrefillPricer(curve, shapes.heads, shapes.kv_heads, shapes.head_dim, peak, bw, shapes.kv_bytes)
            fn = lambda x, f, b: a.price(x[F.PREFILL_TOKENS], x[F.PREFILL_ATTN_WORK], f, b, x[F.PREFILL_KV_READ])  # noqa: E731
            fn.many = lambda X, f, b: a.price_many(
                X[:, F.PREFILL_TOKENS], X[:, F.PREFILL_ATTN_WORK], f, b, X[:, F.PREFILL_KV_READ])
            return fn
        if op.op_class == "attention_decode":
            curve = profile.curve("attention_decode", act)
            if curve is None:
                return None
            peak, bw = self._peaks(curve.dtype)
            d = pricing.DecodePricer(curve, shapes.heads, shapes.kv_heads, peak, bw, shapes.head_dim,
                                     op.flops[F.DECODE_CONTEXT], op.bytes[F.DECODE_CONTEXT])
            fn = lambda x, f, b: d.price(x[F.DECODE_SEQS], x[F.DECODE_CONTEXT], f, b)  # noqa: E731
            fn.decode = d  # decode runs price this row as two lines in the context
            return fn
        if op.op_class == "elementwise":
            curve = profile.curve(f"elementwise:{op.name}", act)
            if curve is None:
                return None
            peak, bw = self._peaks(curve.dtype)
            mp = pricing.MemoryPricer(curve, peak, bw)
            launches = max(op.launches, 1.0)
            fn = lambda x, f, b: mp.price(f, b, launches)  # noqa: E731
            fn.many = lambda X, f, b: mp.price_many(f, b, launches)
            return fn
        return None

    def _collective(self, c):
        """(pricer, bytes-to-message scale, count) for a collective row with a fitted curve, else None."""
        from hwmodels.calibration.pricing import CollectivePricer

        profile = self.model.device.profile
        if profile is None:
            return None
        table = self.model.table
        if c.name == "tp_allreduce" and table.tp > 1:
            curve = profile.collective("all_reduce", table.tp)
            # c.bytes counts what each rank sends in a ring, 2 (t-1)/t of the message.
            return (CollectivePricer(curve), table.tp / (2.0 * (table.tp - 1)), 1.0) if curve else None
        if c.name == "pp_send" and table.pp > 1:
            curve = profile.collective("send_recv", 2)
            return (CollectivePricer(curve), 1.0 / (table.pp - 1), float(table.pp - 1)) if curve else None
        return None

    # ---------------------------------------------------------------- pricing
    def _row(self, pricer, f: float, b: float, launch: float, xl: list):
        if pricer is None:
            if f == 0.0 and b == 0.0:
                return None
            tc, tm = f * self.inv_c, b * self.inv_m
            return self._priced((tc if tc >= tm else tm) + launch, tc, tm)
        return pricer(xl, f, b)

    def _rows_time(self, rows, F: np.ndarray, B: np.ndarray, x: np.ndarray, xl: list) -> float:
        """Seconds of one pass over ``rows`` (FLOP and byte coefficient matrices ``F``, ``B``) at features ``x``."""
        total = 0.0
        for (_, pricer, launch), f, b in zip(rows, (F @ x).tolist(), (B @ x).tolist(), strict=True):
            p = self._row(pricer, f, b, launch, xl)
            if p is not None:
                total += p.time_s
        return total

    def _layer_iteration(self, x: np.ndarray) -> tuple[float, float]:
        xl = x.tolist()
        return self._rows_time(self.l_rows, self.Fl, self.Bl, x, xl), self._rows_time(self.i_rows, self.Fi, self.Bi, x, xl)

    def comm(self, x: np.ndarray) -> float:
        t = float(self.comm_vec @ x)
        for mult, pricer, bvec, scale, count, _ in self.comm_cal:
            t += mult * count * pricer.time(float(bvec @ x) * scale)
        return t

    def overhead(self, x: np.ndarray):
        """Serving-engine overhead of the iteration(s) with features ``x`` (one row, or shapes x features)."""
        o = self.over
        if not o.active:
            return 0.0
        return o.per_iteration_s + o.per_sequence_s * x[..., F.LOGIT_SEQS] + o.per_layer_s * self.L

    def price(self, x: np.ndarray) -> float:
        layer, it = self._layer_iteration(x)
        return float(self.L * layer + it + self.comm(x) + self.overhead(x))

    def price_many(self, X: np.ndarray) -> np.ndarray | None:
        """:meth:`price` of every row of ``X`` (shapes x features) in one pass, or None where it cannot.

        Same formulas, on arrays. It declines (None) unless every operator row has
        work in all shapes or in none: the scalar pricers' "nothing to do" branches
        are not vectorised.
        """
        layer = self._rows_time_many(self.l_rows, self.Fl, self.Bl, X)
        it = self._rows_time_many(self.i_rows, self.Fi, self.Bi, X)
        if layer is None or it is None:
            return None
        comm = X @ self.comm_vec
        for mult, pricer, bvec, scale, count, _ in self.comm_cal:
            nbytes = (X @ bvec) * scale
            if not np.all(nbytes > 0.0):
                return None
            comm = comm + mult * count * pricer.time_many(nbytes)
        return self.L * layer + it + comm + self.overhead(X)

    def _rows_time_many(self, rows, F_: np.ndarray, B: np.ndarray, X: np.ndarray) -> np.ndarray | None:
        total = np.zeros(len(X))
        for (_, pricer, launch), f, b in zip(rows, F_ @ X.T, B @ X.T, strict=True):
            idle = (f == 0.0) & (b == 0.0)
            if idle.all():
                continue
            if pricer is None:
                if idle.any():
                    return None
                tc, tm = f * self.inv_c, b * self.inv_m
                total = total + (np.maximum(tc, tm) + launch)
                continue
            many = getattr(pricer, "many", None)
            if many is None or idle.any():
                return None
            total = total + many(X, f, b).time_s
        return total

    def decode_coefficients(self, batch: int, context_per_seq: float | None = None) -> tuple:
        """As :meth:`IterationCostModel._decode_coefficients`, with calibrated rows
        (``context_per_seq`` picks the attention kernel's split regime)."""
        model = self.model
        x = model._decode_base(batch)
        xl = x.tolist()
        fl, bl = (self.Fl @ x).tolist(), (self.Bl @ x).tolist()
        L, ctx = self.L, F.DECODE_CONTEXT
        static_layer = 0.0
        lines = []
        closed_form = True
        for i, ((_, pricer, launch), f, b) in enumerate(zip(self.l_rows, fl, bl, strict=True)):
            if i not in self.ctx_rows:
                p = self._row(pricer, f, b, launch, xl)
                if p is not None:
                    static_layer += p.time_s
                continue
            if pricer is None:
                static_layer += launch  # context-dependent rows always have work in a decode step
                lines.append((L * self.Fl[i, ctx] * self.inv_c, L * f * self.inv_c,
                              L * self.Bl[i, ctx] * self.inv_m, L * b * self.inv_m))
            elif hasattr(pricer, "decode") and pricer.decode.v2:
                # fixed + max(flat, base + slope * C): two lines in C.
                fixed, flat, base, slope = pricer.decode.lines(float(batch), b, context_per_seq)
                lines.append((0.0, L * (fixed + flat), L * slope, L * (fixed + base)))
            elif hasattr(pricer, "decode") and (f == 0.0 or pricer.decode.terms(float(batch))[3] == 0.0):
                # Compute and serial sides are lines through the origin in C (no context-free FLOPs):
                # their maximum is the steeper one.
                fixed, per_flop, per_byte, serial = pricer.decode.terms(float(batch))
                slope = max(self.Fl[i, ctx] * per_flop, serial)
                lines.append((L * slope, L * (f * per_flop + fixed),
                              L * self.Bl[i, ctx] * per_byte, L * (b * per_byte + fixed)))
            else:
                closed_form = False
        fi, bi = (self.Fi @ x).tolist(), (self.Bi @ x).tolist()
        it = 0.0
        for (_, pricer, launch), f, b in zip(self.i_rows, fi, bi, strict=True):
            p = self._row(pricer, f, b, launch, xl)
            if p is not None:
                it += p.time_s
        static = float(L * static_layer + it + self.comm(x) + self.overhead(x))
        fl_t, by_t = model._flops_total, model._bytes_total
        work = (float(fl_t @ x), float(by_t @ x), float(fl_t[ctx]), float(by_t[ctx]))
        if not closed_form or not lines:
            return (static, False, None, work)
        if len(lines) == 1:
            return (static, True, tuple(float(v) for v in lines[0]), work)
        af, bf, am, bm = (np.array(col, dtype=float) for col in zip(*lines, strict=True))
        return (static, False, (af, bf, am, bm), work)

    def breakdown(self, x: np.ndarray) -> list[OperatorBreakdown]:
        xl = x.tolist()
        out: list[OperatorBreakdown] = []
        for scope, rows, Fm, Bm, mult in (
            ("layer", self.l_rows, self.Fl, self.Bl, self.L),
            ("iteration", self.i_rows, self.Fi, self.Bi, 1.0),
        ):
            for (op, pricer, launch), f, b in zip(rows, (Fm @ x).tolist(), (Bm @ x).tolist(), strict=True):
                p = self._row(pricer, f, b, launch, xl)
                if p is None or (f == 0.0 and b == 0.0):
                    continue
                out.append(OperatorBreakdown(
                    op.name, op.op_class, scope, mult * f, mult * b, mult * p.time_s,
                    "compute" if p.compute_s >= p.memory_s else "memory",
                ))
        table = self.model.table
        cal = {name: (mult, pricer, bvec, scale, count) for mult, pricer, bvec, scale, count, name in self.comm_cal}
        for scope, comms, mult in (("layer", table.layer_comms, self.L), ("iteration", table.iteration_comms, 1.0)):
            for c in comms:
                if c.name in cal:
                    m, pricer, bvec, scale, count = cal[c.name]
                    t = m * count * pricer.time(float(bvec @ x) * scale)
                else:
                    t = mult * float(c.time @ x)
                out.append(OperatorBreakdown(
                    c.name, "communication", scope, 0.0, mult * float(c.bytes @ x), t, "communication",
                ))
        if self.over.active:
            out.append(OperatorBreakdown(
                f"engine_overhead ({self.over.name})", "overhead", "iteration", 0.0, 0.0, self.overhead(x), "overhead",
            ))
        return out
