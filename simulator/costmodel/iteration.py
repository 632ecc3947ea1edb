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


@dataclass(frozen=True)
class DecodeRun:
    """``k`` decode iterations of an unchanged batch."""

    durations: np.ndarray  # seconds, one per iteration
    affine: bool  # durations[j] == durations[0] + j * step exactly (within float error)
    flops: float  # total over the run, all GPUs
    bytes: float


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
        self._l_launch = float(sum(op.launches for op in ops)) * device.launch_overhead_s
        iops = list(table.iteration_ops)
        self._if = np.array([op.flops for op in iops]) / device.effective_flops
        self._im = np.array([op.bytes for op in iops]) / device.effective_bandwidth
        self._i_launch = float(sum(op.launches for op in iops)) * device.launch_overhead_s
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
        self._decode_static_cache: dict[int, float] = {}
        self._E = table.num_experts
        self._k = table.experts_per_token

    # ----------------------------------------------------------------- single
    def features(self, shape: BatchShape) -> np.ndarray:
        return shape.features(self._E, self._k)

    def price_features(self, x: np.ndarray) -> float:
        """Seconds for one iteration with feature vector ``x``."""
        layer = np.maximum(self._lf @ x, self._lm @ x).sum() + self._l_launch
        it = np.maximum(self._if @ x, self._im @ x).sum() + self._i_launch
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

    def _decode_static_time(self, batch: int) -> float:
        """Seconds of a decode iteration of ``batch`` sequences, without context-dependent operators."""
        hit = self._decode_static_cache.get(batch)
        if hit is None:
            x = self._decode_base(batch)
            s = self._static_rows
            layer = np.maximum(self._lf[s] @ x, self._lm[s] @ x).sum() + self._l_launch
            it = np.maximum(self._if @ x, self._im @ x).sum() + self._i_launch
            hit = float(self._layers * layer + it + self._comm @ x)
            self._decode_static_cache[batch] = hit
        return hit

    def decode_run(self, batch: int, context0: int, iterations: int) -> DecodeRun:
        """``iterations`` decode steps of ``batch`` sequences whose contexts sum to
        ``context0`` in the first step and grow by ``batch`` per step."""
        k = int(iterations)
        static = self._decode_static_time(batch)
        rows = self._ctx_rows
        ctx = context0 + batch * np.arange(k, dtype=float)
        x0 = self._decode_base(batch)
        # Context-dependent rows: value = a * ctx + b (b from the non-context features).
        af, bf = self._lf[rows, F.DECODE_CONTEXT], self._lf[rows] @ x0
        am, bm = self._lm[rows, F.DECODE_CONTEXT], self._lm[rows] @ x0
        comp = np.outer(af, ctx) + bf[:, None]
        mem = np.outer(am, ctx) + bm[:, None]
        durations = static + self._layers * np.maximum(comp, mem).sum(axis=0)
        regime_first = comp[:, 0] >= mem[:, 0]
        regime_last = comp[:, -1] >= mem[:, -1]
        affine = bool(np.array_equal(regime_first, regime_last))
        flops, nbytes = self.decode_work(batch, context0, k)
        return DecodeRun(durations, affine, flops, nbytes)

    def decode_work(self, batch: int, context0: int, iterations: int) -> tuple[float, float]:
        """(FLOPs, bytes) over all GPUs of ``iterations`` decode steps, in closed form."""
        k = iterations
        x0 = self._decode_base(batch)
        ctx_sum = context0 * k + batch * k * (k - 1) / 2.0
        fl, by = self._flops_total, self._bytes_total
        return (
            k * float(fl @ x0) + fl[F.DECODE_CONTEXT] * ctx_sum,
            k * float(by @ x0) + by[F.DECODE_CONTEXT] * ctx_sum,
        )

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
