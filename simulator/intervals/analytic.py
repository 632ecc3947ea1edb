"""Prediction intervals of ``capsim estimate``: exact, with no re-runs.

Why no simulation: an estimate is one prefill iteration and a run of decode steps with no queueing, so each
reported time is a prefill time or a sum of decode times, and scaling every iteration of a phase by the same
multiplier scales the whole quantity. The interval of a one-phase quantity is then the phase multiplier's
quantiles times the point value, exactly. Quantities that add the two phases (``e2e_s`` and the throughputs
derived from it) take both phases at the same quantile: exact if the two errors move together, a little wider
than the truth if they are independent -- never narrower.
"""

from __future__ import annotations

from typing import Any

from simulator.intervals.rerun import quantile_pair
from simulator.intervals.residuals import residuals_for

PREFILL_KEYS = ("prefill_s", "ttft_s")
DECODE_KEYS = ("first_decode_step_s", "tpot_s", "decode_s", "decode_step_at_context_s")


def estimate_intervals(system, est, level: float = 0.9, *, where: str = "--intervals") -> dict[str, Any]:
    """The ``intervals`` block of an :class:`simulator.estimate.Estimate` of ``system``."""
    model = residuals_for(system, where=where)
    qs = quantile_pair(level)
    p_lo, p_hi = (float(x) for x in model.prefill.quantiles(qs))
    d_lo, d_hi = (float(x) for x in model.decode.quantiles(qs))
    metrics: dict[str, list[float]] = {}
    for key in PREFILL_KEYS:
        metrics[key] = [getattr(est, key) * p_lo, getattr(est, key) * p_hi]
    for key in DECODE_KEYS:
        value = getattr(est, key)
        if value is not None:
            metrics[key] = [value * d_lo, value * d_hi]
    e2e = [est.prefill_s * p_lo + est.decode_s * d_lo, est.prefill_s * p_hi + est.decode_s * d_hi]
    metrics["e2e_s"] = e2e
    metrics["output_tokens_per_s"] = [est.batch * est.output / e2e[1], est.batch * est.output / e2e[0]]
    metrics["prefill_tokens_per_s"] = [
        est.batch * est.prompt / metrics["prefill_s"][1],
        est.batch * est.prompt / metrics["prefill_s"][0],
    ]
    out: dict[str, Any] = {
        "level": level,
        "method": "analytic: each phase's multiplier quantiles applied to its times; e2e and throughput take "
        "both phases at the same quantile",
        "source": model.source,
        "multipliers": {"prefill": [p_lo, p_hi], "decode": [d_lo, d_hi]},
    }
    if model.not_covered:
        out["not_covered"] = model.not_covered
    out["metrics"] = metrics
    return out
