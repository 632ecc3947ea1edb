"""Several seeds per configuration: the runs, and one configuration's result as a mean with a min–max interval.

Why: at 500 requests a p99 rests on five requests, so one seed's tail percentile is one draw of a noisy
statistic. Simulating each configuration at seeds ``s, s+1, ..., s+k-1`` (``s`` its ``seed``) shows how much the
numbers move with the random draw of arrivals and lengths alone.

Why min–max and not a t-interval: the page runs a handful of seeds (default 1, at most :data:`MAX_SEEDS`). With
three to five values a Student-t interval leans on a normality assumption nobody can check from five tail
percentiles and is wide and unstable (t(0.975, 2 d.o.f.) = 4.3); min–max makes no assumption and says exactly what
was seen: every seed's value lies inside it. It is not a confidence interval for the true percentile.

Each seed is an ordinary scenario run, cached by its own hash (:func:`app.runner.job_for`); only the reduction
here is new. With one seed :func:`combine_runs` returns the run unchanged, so the page is what it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from app.analysis import RunData
from simulator.config.schema import Scenario

#: Most seeds per configuration the page offers (each is a full simulation).
MAX_SEEDS = 10

#: Summary keys shown as the mean across seeds with a min–max interval (``<key>_lo`` / ``<key>_hi``).
INTERVAL_KEYS: tuple[str, ...] = (
    *(f"{m}_p{p}_s" for m in ("ttft", "tpot", "e2e") for p in (50, 90, 99)),
    "tbt_p50_s",
    "tbt_p99_s",
    "throughput_rps",
    "goodput_rps",
    "output_tps",
    "slo_attainment",
)
#: Summary keys averaged across seeds without an interval shown (they feed the cost ranking and the time shares).
MEAN_KEYS: tuple[str, ...] = (
    "cost_per_million_output_tokens_usd",
    "tco_per_million_output_tokens_usd",
    "energy_per_output_token_j",
    "energy_per_request_j",
    "avg_power_w",
    "offered_rps",
    "served_rps",
    "queue_mean_s",
    "ttft_mean_s",
    "e2e_mean_s",
)
#: Fractions at which the CDF band is taken (each seed's curve is interpolated onto them).
BAND_FRACTIONS = np.linspace(0.0, 1.0, 201)


def seed_scenarios(scenario: Scenario, seeds: int) -> list[Scenario]:
    """``scenario`` at seeds ``s, s+1, ..., s+seeds-1`` (``s`` = its seed); ``[scenario]`` itself for one seed."""
    if seeds <= 1:
        return [scenario]
    return [scenario.model_copy(update={"seed": scenario.seed + i}) for i in range(seeds)]


def _floats(summaries: Sequence[dict[str, Any]], key: str) -> np.ndarray | None:
    try:
        values = np.array([float(s[key]) for s in summaries])
    except (KeyError, TypeError, ValueError):
        return None
    return values


def combined_summary(summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One configuration's summary over its seeds.

    Interval keys: mean, ``_lo`` = min and ``_hi`` = max across seeds. ``slo_met`` only when every seed meets the
    SLO; ``overloaded`` when any seed is. ``seeds`` / ``seeds_met`` / ``seeds_overloaded`` count them. Every other
    key is the first seed's (``s``).
    """
    out = dict(summaries[0])
    for key in INTERVAL_KEYS + MEAN_KEYS:
        values = _floats(summaries, key)
        if values is None:
            continue
        finite = values[np.isfinite(values)]
        out[key] = float(finite.mean()) if len(finite) == len(values) else float(np.nan)
        if key in INTERVAL_KEYS:
            out[f"{key}_lo"], out[f"{key}_hi"] = float(values.min()), float(values.max())
    out["seeds"] = len(summaries)
    out["seeds_met"] = sum(bool(s.get("slo_met")) for s in summaries)
    out["seeds_overloaded"] = sum(bool(s.get("overloaded")) for s in summaries)
    out["slo_met"] = out["seeds_met"] == len(summaries)
    out["overloaded"] = out["seeds_overloaded"] > 0
    return out


def banded_cdf(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """The seeds' latency CDFs as one mean curve with a band: at each fraction of :data:`BAND_FRACTIONS` each seed's
    latency (its empirical quantile, interpolated between its CDF points) gives ``latency_s`` (mean),
    ``latency_lo_s`` (min) and ``latency_hi_s`` (max). Fractions below a seed's first point are left out."""
    parts = []
    metrics = list(dict.fromkeys(m for f in frames for m in f["metric"].unique()))
    for metric in metrics:
        curves = [f[f["metric"] == metric] for f in frames]
        if any(c.empty for c in curves):
            continue
        start = max(float(c["fraction"].min()) for c in curves)
        grid = BAND_FRACTIONS[BAND_FRACTIONS >= start]
        latencies = np.array(
            [np.interp(grid, c["fraction"].to_numpy(float), c["latency_s"].to_numpy(float)) for c in curves]
        )
        parts.append(
            pd.DataFrame(
                {
                    "metric": metric,
                    "latency_s": latencies.mean(axis=0),
                    "fraction": grid,
                    "latency_lo_s": latencies.min(axis=0),
                    "latency_hi_s": latencies.max(axis=0),
                }
            )
        )
    columns = ["metric", "latency_s", "fraction", "latency_lo_s", "latency_hi_s"]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)


def combine_outcomes(outcomes: Sequence[RunData | Any], seeds: int) -> list[RunData | Any]:
    """``run_jobs`` outcomes of configurations x seeds (each configuration's seeds consecutive) -> one per
    configuration: the combined run, or the first failure among its seeds."""
    out = []
    for i in range(0, len(outcomes), max(seeds, 1)):
        group = list(outcomes[i : i + max(seeds, 1)])
        failure = next((o for o in group if not isinstance(o, RunData)), None)
        out.append(failure if failure is not None else combine_runs(group))
    return out


def combine_runs(runs: Sequence[RunData]) -> RunData:
    """One configuration's seeds as one :class:`RunData`: :func:`combined_summary`, :func:`banded_cdf`, the worst
    seed's latency at the attainment quantile (so a miss in any seed is named); the time series, breakdown and
    roofline are the first seed's. One run comes back unchanged."""
    if len(runs) == 1:
        return runs[0]
    first = runs[0]
    quantiles = {k: max(float(r.slo_quantiles.get(k, np.nan)) for r in runs) for k in first.slo_quantiles}
    summary = combined_summary([r.summary for r in runs])
    summary["seed_values"] = [int(r.result.info.seed) if r.result is not None else None for r in runs]
    return replace(first, summary=summary, cdf=banded_cdf([r.cdf for r in runs]), slo_quantiles=quantiles, result=None)
