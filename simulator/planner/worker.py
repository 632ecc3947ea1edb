"""What a worker does with one (configuration, rate) of a capacity plan: rule it out, or simulate it.

The analytic rules of :mod:`simulator.planner.bounds` run first (milliseconds);
only a rate they cannot rule out is simulated. The result has the same shape
as a sweep's (:mod:`simulator.sweep.worker`), plus:

* status ``bound``: ruled out analytically, ``verdict`` says why (no ``summary``);
* ``verdict`` on simulated results too, so reports can show the bounds.
"""

from __future__ import annotations

from typing import Any

from simulator.sweep.worker import OK, error_result

BOUND = "bound"


def evaluate_rate(scenario_dump: dict[str, Any]) -> dict[str, Any]:
    """Rule out or simulate one scenario (its ``workload.qps`` is the rate being probed)."""
    from simulator.config.loader import validate_as
    from simulator.config.schema import Scenario
    from simulator.engine import simulate
    from simulator.metrics.summary import summarise
    from simulator.metrics.writers import to_json_value
    from simulator.planner.bounds import check, unbounded_pools
    from simulator.system import build_system

    try:
        scenario = validate_as(Scenario, scenario_dump, scenario_dump.get("name", "scenario"))
        if scenario.pools is not None:  # several pools: no analytic bounds, simulate
            system, verdict = None, unbounded_pools()
        else:
            system = build_system(scenario)
            verdict = check(scenario, system)
        if not verdict.possible:
            return {"status": BOUND, "reason": verdict.reason, "verdict": to_json_value(verdict.as_dict())}
        output = simulate(scenario, system=system)
        summary = summarise(output.result, scenario.slo)
    except Exception as exc:  # noqa: BLE001 - reported per configuration
        return error_result(exc)
    return {
        "status": OK,
        "summary": to_json_value(summary),
        "rejected": int(output.rejected),
        "workload": output.workload,
        "verdict": to_json_value(verdict.as_dict()),
    }


def is_good(result: dict[str, Any]) -> bool:
    """Whether an evaluated rate is sustainable: simulated, ``slo_met``, and not ``overloaded``.

    Why overload counts separately: with a loose SLO a configuration whose queue grows without bound during the
    probe can still meet every target (its probe ends before the waits grow large enough); served far below the
    offered rate, it does not sustain that rate, whatever the latencies say.
    """
    summary = result.get("summary") or {}
    return result.get("status") == OK and bool(summary.get("slo_met")) and not summary.get("overloaded", False)
