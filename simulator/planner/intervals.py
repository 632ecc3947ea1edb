"""Headroom with a prediction interval: each candidate's maximum rate searched again at both ends of the interval.

Why two more searches and not ``samples`` re-runs at every probe: the planner's answer is a rate, and the rate
a configuration sustains moves monotonically with how long its iterations take. So the interval of the maximum
rate is bracketed by two searches, one with every iteration at the slow end of the interval (the upper quantile
of both phases' multipliers, :mod:`simulator.intervals.residuals`) and one at the fast end. Taking both phases
at the same quantile makes the interval exact if the two phases' errors move together and a little wide if
they do not -- never narrow. A candidate whose interval of maximum rates contains the target rate is flagged:
whether it meets the SLO there depends on an error the calibration cannot rule out.

These searches simulate in this process, one probe after another (they are not stored in the plan's results
store): they cost about two goodput searches per simulated candidate.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from capsim.errors import CapsimError
from simulator.costmodel.scaled import PhaseScale
from simulator.intervals.rerun import check_supported, quantile_pair
from simulator.intervals.residuals import residuals_for


def _good_at(scenario, scale: PhaseScale, min_probe_s: float | None):
    """``good(rate)``: does ``scenario`` at ``rate`` meet the SLO with iteration times scaled by ``scale``?"""
    from simulator.engine import simulate
    from simulator.metrics.summary import summarise
    from simulator.planner.plan import at_rate
    from simulator.planner.worker import is_good
    from simulator.sweep.worker import OK
    from simulator.system import build_system

    def good(rate: float) -> bool:
        sc = at_rate(scenario, rate, min_probe_s)
        output = simulate(sc, system=replace(build_system(sc), time_scale=scale))
        return is_good({"status": OK, "summary": summarise(output.result, sc.slo)})

    return good


def candidate_interval(plan, candidate, level: float) -> dict[str, Any]:
    """The ``interval`` entry of one simulated candidate: max rate and headroom at both ends, and the flag."""
    from simulator.planner.search import find_max_rate
    from simulator.system import build_system

    system = build_system(candidate.scenario)
    check_supported(candidate.scenario, system)
    model = residuals_for(system, where="simulation.intervals")
    qs = quantile_pair(level)
    p_lo, p_hi = (float(x) for x in model.prefill.quantiles(qs))
    d_lo, d_hi = (float(x) for x in model.decode.quantiles(qs))
    low, high = plan.bracket()
    rs = plan.rate_search
    start = candidate.max_rate if candidate.max_rate > 0 else plan.target_rps
    rates = []
    for scale in (PhaseScale(p_hi, d_hi), PhaseScale(p_lo, d_lo)):  # slow end, then fast end
        found = find_max_rate(
            _good_at(candidate.scenario, scale, rs.min_probe_s),
            start=start,
            low=low,
            high=high,
            rel_tol=rs.rel_tol,
            max_evals=rs.max_sims,
            growth=rs.growth,
        )
        rates.append(found.max_rate)
    point = candidate.max_rate
    lo, hi = min(rates[0], rates[1], point), max(rates[0], rates[1], point)
    target = plan.target_rps
    out: dict[str, Any] = {
        "level": level,
        "source": model.source,
        "max_rate_rps": [lo, hi],
        "headroom": [lo / target, hi / target],
        "crosses_target": bool(lo < target <= hi),
    }
    if model.not_covered:
        out["not_covered"] = model.not_covered
    return out


def add_intervals(result, level: float) -> None:
    """Set ``interval`` on every simulated candidate of a :class:`~simulator.planner.plan.PlanResult`; a candidate
    the intervals cannot be sized for gets ``{"error": ...}`` instead (the plan still reports it)."""
    for c in result.candidates:
        if c.pruned or c.search is None or c.status != "simulated":
            continue
        try:
            c.interval = candidate_interval(result.plan, c, level)
        except CapsimError as exc:
            c.interval = {"error": exc.render()}


def headroom_text(c, digits: int = 2) -> str:
    """``'[1.06x, 1.27x]'`` (and the flag) for a candidate with an interval, else ``''``."""
    iv = getattr(c, "interval", None) or {}
    if "headroom" not in iv:
        return " [no interval]" if "error" in iv else ""
    lo, hi = iv["headroom"]
    return f" [{lo:.{digits}f}, {hi:.{digits}f}]" + (" crosses target" if iv["crosses_target"] else "")
