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


@dataclass(slots=True)
class DecodeRun:
    """``iterations`` decode iterations of an unchanged batch.

    When ``affine`` the durations are exactly ``first + j * step`` and no array
    is built (the common case: one roofline regime for the whole run); else
    ``durations`` holds them all.
    """

    iterations: int
    first: float  # duration of the first iteration, seconds
    step: float  # growth per iteration when affine
    affine: bool
    durations: np.ndarray | None = None

    @property
    def last(self) -> float:
        if self.affine:
            return self.first + self.step * (self.iterations - 1)
        return float(self.durations[-1])

    @property
    def total(self) -> float:
        k = self.iterations
        if self.affine:
            return k * self.first + self.step * k * (k - 1) / 2.0
        return float(self.durations.sum())

    @property
    def max(self) -> float:
        return max(self.first, self.last) if self.affine else float(self.durations.max())

    def all_durations(self) -> np.ndarray:
        if self.affine:
            return self.first + self.step * np.arange(self.iterations, dtype=float)
        return self.durations

    def iterations_ending_by(self, elapsed: float) -> int:
        """Iterations needed to reach the first boundary at or after ``elapsed`` seconds into the run.

        That is the smallest ``n >= 1`` whose cumulative duration is >= ``elapsed``
        (capped at the run's length): the iteration in flight completes.
        """
        k = self.iterations
        if not self.affine:
            ends = np.cumsum(self.durations)
            return min(int(np.searchsorted(ends, elapsed, side="left")) + 1, k)
        a, s = self.first, self.step
        # cumulative(n) = n*a + s*n*(n-1)/2 is increasing in n; solve cumulative(n) = elapsed.
        if s == 0.0:
            n = math.ceil(elapsed / a) if a > 0 else 1
        else:
            b = a - s / 2.0
            n = math.ceil((-b + math.sqrt(b * b + 2.0 * s * elapsed)) / s)
        n = min(max(n, 1), k)
        # Guard the float edge: step to the exact boundary.
        while n < k and n * a + s * n * (n - 1) / 2.0 < elapsed:
            n += 1
        while n > 1 and (n - 1) * a + s * (n - 1) * (n - 2) / 2.0 >= elapsed:
            n -= 1
        return n

    def prefix(self, done: int) -> DecodeRun:
        """The first ``done`` iterations of this run."""
        if self.affine:
            return DecodeRun(done, self.first, self.step, True)
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


class IterationCostModel:
    """Prices batches on one replica from its operator table and device.

    >>> # cost = IterationCostModel(table, device); cost.iteration(BatchShape(decode_seqs=8, decode_context=8192))
    """

    def __init__(self, table: OperatorTable, device: RooflineDevice):
        self.table = table
        self.device = device
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

    # ----------------------------------------------------------------- single
    def features(self, shape: BatchShape) -> np.ndarray:
        return shape.features(self._E, self._k)

    def price_features(self, x: np.ndarray) -> float:
        """Seconds for one iteration with feature vector ``x``."""
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
            x[F.EXPERTS_HIT] = F.expected_experts_hit(prefill_tokens + decode_seqs, self._E, self._k)
            hit = IterationCost(
                self.price_features(x), float(self._flops_total @ x), float(self._bytes_total @ x)
            )
            self._cache[key] = hit
        return hit

    # ------------------------------------------------------------- decode run
    def _decode_base(self, batch: int) -> np.ndarray:
        x = np.zeros(F.NUM_FEATURES)
        x[F.ONE] = 1.0
        x[F.DECODE_SEQS] = batch
        x[F.LOGIT_SEQS] = batch
        x[F.EXPERTS_HIT] = F.expected_experts_hit(batch, self._E, self._k)
        return x

    def _decode_coefficients(self, batch: int) -> tuple:
        """Per batch size, once: the context-independent time and the context-dependent rows as lines.

        A context-dependent operator's compute and memory times are lines in
        the summed context ``C``: ``a_f*C + b_f`` and ``a_m*C + b_m``.
        """
        hit = self._decode_cache.get(batch)
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

    def decode_run(self, batch: int, context0: int, iterations: int) -> DecodeRun:
        """``iterations`` decode steps of ``batch`` sequences whose contexts sum to
        ``context0`` in the first step and grow by ``batch`` per step."""
        k = int(iterations)
        static, single, lines, _ = self._decode_coefficients(batch)
        c_last = context0 + batch * (k - 1)
        if single:
            af, bf, am, bm = lines
            compute_first = af * context0 + bf >= am * context0 + bm
            compute_last = af * c_last + bf >= am * c_last + bm
            if compute_first == compute_last:
                a, b = (af, bf) if compute_first else (am, bm)
                return DecodeRun(k, static + a * context0 + b, a * batch, True)
            ctx = context0 + batch * np.arange(k, dtype=float)
            d = static + np.maximum(af * ctx + bf, am * ctx + bm)
            return DecodeRun(k, float(d[0]), 0.0, False, d)
        af, bf, am, bm = lines
        ctx = context0 + batch * np.arange(k, dtype=float)
        comp = np.outer(af, ctx) + bf[:, None]
        mem = np.outer(am, ctx) + bm[:, None]
        d = static + np.maximum(comp, mem).sum(axis=0)
        if np.array_equal(comp[:, 0] >= mem[:, 0], comp[:, -1] >= mem[:, -1]):
            step = float(d[1] - d[0]) if k > 1 else 0.0
            return DecodeRun(k, float(d[0]), step, True)
        return DecodeRun(k, float(d[0]), 0.0, False, d)

    def decode_work(self, batch: int, context0: int, iterations: int) -> tuple[float, float]:
        """(FLOPs, bytes) over all GPUs of ``iterations`` decode steps, in closed form."""
        k = iterations
        flops0, bytes0, flops_c, bytes_c = self._decode_coefficients(batch)[3]
        ctx_sum = context0 * k + batch * k * (k - 1) / 2.0
        return k * flops0 + flops_c * ctx_sum, k * bytes0 + bytes_c * ctx_sum

    # --------------------------------------------------------------- breakdown
    def breakdown(self, shape: BatchShape) -> list[OperatorBreakdown]:
        """Per-operator times of one iteration (same numbers :meth:`iteration` sums)."""
        x = self.features(shape)
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
