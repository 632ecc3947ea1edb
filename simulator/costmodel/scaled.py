"""An iteration cost model whose times are scaled by one multiplier per phase (prediction-interval re-runs).

Why a wrapper in the cost model rather than a branch in the engine: every iteration time the simulator uses
comes from the cost model, so scaling here reaches prefills, mixed iterations and the closed-form decode runs
alike, and a run without intervals never builds one (``System.cost_model`` returns the plain model; the hot
loop is untouched). An iteration with any prefill tokens takes the prefill multiplier, every other iteration
(decode steps, decode runs) the decode one. FLOPs and bytes are not scaled: the work is the same, only how long
it takes is uncertain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from simulator.costmodel.features import BatchShape
from simulator.costmodel.iteration import DecodeRun, IterationCost, IterationCostModel


@dataclass(frozen=True)
class PhaseScale:
    """Multipliers of measured / predicted iteration time: one for prefill iterations, one for decode."""

    prefill: float = 1.0
    decode: float = 1.0


def scale_run(run: DecodeRun, m: float) -> DecodeRun:
    """``run`` with every duration multiplied by ``m`` (affine and piecewise forms stay closed-form)."""
    return DecodeRun(
        run.iterations,
        run.first * m,
        run.step * m,
        run.affine,
        None if run.durations is None else run.durations * m,
        None if run.pieces is None else tuple((c, f * m, s * m) for c, f, s in run.pieces),
    )


class ScaledCostModel:
    """Delegates to an :class:`IterationCostModel` and scales the times it returns by a :class:`PhaseScale`."""

    def __init__(self, base: IterationCostModel, scale: PhaseScale) -> None:
        self.base = base
        self.scale = scale

    def __getattr__(self, name: str) -> Any:  # everything not re-timed (features, breakdown, work, priming)
        return getattr(self.base, name)

    def _scaled(self, cost: IterationCost, m: float) -> IterationCost:
        return IterationCost(cost.time_s * m, cost.flops, cost.bytes)

    def iteration(self, shape: BatchShape) -> IterationCost:
        m = self.scale.prefill if shape.prefill_chunks else self.scale.decode
        return self._scaled(self.base.iteration(shape), m)

    def iteration_from_totals(
        self,
        prefill_tokens: int,
        logit_seqs: int,
        prefill_attn_work: float,
        prefill_kv_read: float,
        decode_seqs: int,
        decode_context: float,
    ) -> IterationCost:
        cost = self.base.iteration_from_totals(
            prefill_tokens, logit_seqs, prefill_attn_work, prefill_kv_read, decode_seqs, decode_context
        )
        return self._scaled(cost, self.scale.prefill if prefill_tokens else self.scale.decode)

    def price_features(self, x) -> float:
        from simulator.costmodel.features import PREFILL_TOKENS

        m = self.scale.prefill if x[PREFILL_TOKENS] else self.scale.decode
        return self.base.price_features(x) * m

    def decode_run(self, batch: int, context0: int, iterations: int, growth: float | None = None) -> DecodeRun:
        return scale_run(self.base.decode_run(batch, context0, iterations, growth), self.scale.decode)
