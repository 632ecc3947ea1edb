"""What a worker process does with one configuration: simulate it and summarise.

A worker receives the scenario as its JSON dump (small, picklable, the same
bytes on every executor) and returns a JSON-safe dictionary, so a result is
identical whether it was computed in this process, a local process pool or a
Ray cluster, and whether it was just computed or read back from the store.

Result statuses:

* ``ok``: simulated; ``summary`` holds every key of :data:`~simulator.metrics.summary.SUMMARY_KEYS`.
* ``error``: the configuration is invalid or does not fit (a :class:`~capsim.errors.CapsimError`);
  ``error`` holds its one-paragraph message. Deterministic, so it is stored like a result.
* ``internal-error``: a bug; reported, never stored, so a fixed release recomputes it.
"""

from __future__ import annotations

from typing import Any

from capsim.errors import CapsimError

OK = "ok"
ERROR = "error"
INTERNAL_ERROR = "internal-error"


def error_result(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, CapsimError):
        return {"status": ERROR, "error": exc.render(), "error_type": type(exc).__name__}
    return {"status": INTERNAL_ERROR, "error": f"{type(exc).__name__}: {exc}", "error_type": type(exc).__name__}


def simulate_point(scenario_dump: dict[str, Any]) -> dict[str, Any]:
    """Simulate one scenario (given as its JSON dump) and return its summary as a JSON-safe dict."""
    from simulator.config.loader import validate_as
    from simulator.config.schema import Scenario
    from simulator.engine import simulate
    from simulator.metrics.summary import summarise
    from simulator.metrics.writers import to_json_value

    try:
        scenario = validate_as(Scenario, scenario_dump, scenario_dump.get("name", "scenario"))
        output = simulate(scenario)
        summary = summarise(output.result, scenario.slo)
        if scenario.simulation.intervals is not None:
            from simulator.intervals.rerun import simulate_intervals

            summary["intervals"] = simulate_intervals(scenario, summary)
    except Exception as exc:  # noqa: BLE001 - reported per configuration, see error_result
        return error_result(exc)
    return {
        "status": OK,
        "summary": to_json_value(summary),
        "rejected": int(output.rejected),
        "workload": output.workload,
    }
