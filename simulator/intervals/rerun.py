"""Prediction intervals of a simulation: re-run it with iteration-time multipliers drawn from stored residuals.

Why re-run rather than scale the results: queueing is not linear in the iteration time (a 10 % slower decode
step can double a near-saturated queue), so the only honest way to carry a per-iteration error into TTFT,
throughput and SLO attainment is to simulate with it. Each re-run draws one multiplier for prefill iterations
and one for decode iterations (:mod:`simulator.intervals.residuals`), shared by every replica (they run the same
kernels on the same hardware, so the calibration error is common to them), from a random stream of its own:
the point run and the workload are untouched, and the whole result is deterministic for a seed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from capsim.errors import CapsimError
from simulator.costmodel.scaled import PhaseScale
from simulator.intervals.residuals import ResidualModel, residuals_for

#: Summary keys that get an interval: every latency statistic and every throughput-like rate.
LATENCY_PREFIXES = ("ttft_", "tbt_", "tpot_", "e2e_", "queue_")
RATE_KEYS = (
    "throughput_rps",
    "served_rps",
    "goodput_rps",
    "input_tps",
    "output_tps",
    "served_output_tps",
    "slo_attainment",
)
_STREAM = 18  # spawn key of the re-runs' random stream (issue 18)


def interval_keys(summary: Mapping[str, Any]) -> list[str]:
    """The keys of ``summary`` that carry an interval (numeric latency and throughput metrics)."""
    out = []
    for key, value in summary.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if (key.startswith(LATENCY_PREFIXES) and key.endswith("_s") and key != "queue_growth_s") or key in RATE_KEYS:
            out.append(key)
    return out


def quantile_pair(level: float) -> tuple[float, float]:
    return (1.0 - level) / 2.0, (1.0 + level) / 2.0


def check_supported(scenario, system) -> None:
    """Refuse what the re-runs cannot scale honestly (a scenario with pools, a technique's own step model)."""
    if scenario.pools is not None:
        raise CapsimError(
            "prediction intervals are not available for scenarios with pools yet (each pool prices its "
            "iterations with its own system)",
            where="simulation.intervals",
            fix="remove simulation.intervals, or run one pool's deployment on its own",
        )
    if system.step is not None:
        raise CapsimError(
            "prediction intervals are not available with a technique that prices decode steps with its own cost "
            "models (speculative decoding): the re-runs could not scale them",
            where="simulation.intervals",
            fix="remove simulation.intervals, or switch the technique off",
        )


def multipliers(model: ResidualModel, samples: int, seed: int) -> list[PhaseScale]:
    """``samples`` draws of (prefill, decode) multipliers from the re-runs' own stream."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_STREAM,)))
    pre = model.prefill.sample(rng, samples)
    dec = model.decode.sample(rng, samples)
    return [PhaseScale(float(p), float(d)) for p, d in zip(pre, dec, strict=True)]


def metric_intervals(point: Mapping[str, Any], reruns: list[Mapping[str, Any]], level: float) -> dict[str, list[float]]:
    """Each metric's [lo, hi]: the level's quantiles over the re-runs, widened to contain the point value."""
    qs = quantile_pair(level)
    out: dict[str, list[float]] = {}
    for key in interval_keys(point):
        values = [r.get(key) for r in reruns]
        if any(v is None for v in values):
            continue
        lo, hi = (float(x) for x in np.quantile(np.asarray(values, dtype=float), qs))
        p = float(point[key])
        out[key] = [min(lo, p), max(hi, p)]
    return out


def block(model: ResidualModel, level: float, samples: int, metrics: dict[str, list[float]]) -> dict[str, Any]:
    """The ``intervals`` block of a summary (documented in docs/engine-profiles.md)."""
    qs = quantile_pair(level)
    out: dict[str, Any] = {
        "level": level,
        "samples": samples,
        "source": model.source,
        "multipliers": {
            "prefill": [float(x) for x in model.prefill.quantiles(qs)],
            "decode": [float(x) for x in model.decode.quantiles(qs)],
        },
    }
    if model.not_covered:
        out["not_covered"] = model.not_covered
    out["metrics"] = metrics
    return out


def simulate_intervals(
    scenario, point: Mapping[str, Any], summarise_run: Callable[[Any], Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    """The ``intervals`` block for ``scenario`` whose point summary is ``point``.

    ``summarise_run(output)`` turns a re-run's :class:`~simulator.engine.RunOutput` into summary keys (default:
    :func:`simulator.metrics.summary.summarise` with the scenario's SLO).
    """
    from simulator.engine import simulate
    from simulator.metrics.summary import summarise
    from simulator.system import build_system

    cfg = scenario.simulation.intervals
    if cfg is None:
        raise CapsimError(
            "simulation.intervals is not set",
            where="simulation.intervals",
            fix="set simulation.intervals: {level: 0.9, samples: 20}",
        )
    system = build_system(scenario)
    check_supported(scenario, system)
    model = residuals_for(system)
    summarise_run = summarise_run or (lambda out: summarise(out.result, scenario.slo))
    reruns = []
    for scale in multipliers(model, cfg.samples, scenario.seed):
        output = simulate(scenario, system=replace(system, time_scale=scale))
        reruns.append(summarise_run(output))
    return block(model, cfg.level, cfg.samples, metric_intervals(point, reruns, cfg.level))


def with_intervals(scenario):
    """``scenario`` with ``simulation.intervals`` at its defaults where it does not set them (``--intervals``)."""
    from simulator.config.schema import IntervalsConfig

    if scenario.simulation.intervals is not None:
        return scenario
    sim = scenario.simulation.model_copy(update={"intervals": IntervalsConfig()})
    return scenario.model_copy(update={"simulation": sim})


def flat_intervals(summary: Mapping[str, Any]) -> dict[str, Any]:
    """``summary`` for a table (comparison.csv): the ``intervals`` block as ``<metric>_lo`` / ``_hi`` columns."""
    block_ = summary.get("intervals")
    if not block_:
        return dict(summary)
    out = {k: v for k, v in summary.items() if k != "intervals"}
    for key, (lo, hi) in block_["metrics"].items():
        out[f"{key}_lo"], out[f"{key}_hi"] = lo, hi
    return out
