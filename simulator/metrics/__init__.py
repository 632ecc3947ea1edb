"""Metrics: from a run's records to SLO attainment, summary statistics, energy, cost, files, plots and tables.

Data flows one way: the engine builds a :class:`SimulationResult`; :func:`summarise` turns it into a flat dict;
:func:`write_outputs` writes CSVs, ``summary.json`` and plots; :mod:`simulator.metrics.table` prints it.
Plots (matplotlib) are imported only when written.
"""

from capsim.lazy import lazy_exports

# Submodules are imported on first use (PEP 562): ``simulator.metrics.slo`` is read by the scenario schema, and a
# one-shot command such as ``capsim estimate`` should not pay for pandas, rich tables and the writers it never uses.
_EXPORTS = {
    "cost_usd": "simulator.metrics.energy",
    "energy_joules": "simulator.metrics.energy",
    "token_gap_mean": "simulator.metrics.quantiles",
    "token_gap_quantiles": "simulator.metrics.quantiles",
    "weighted_quantiles": "simulator.metrics.quantiles",
    "ITERATION_COLUMNS": "simulator.metrics.result",
    "REQUEST_COLUMNS": "simulator.metrics.result",
    "RunInfo": "simulator.metrics.result",
    "SimulationResult": "simulator.metrics.result",
    "TokenGaps": "simulator.metrics.result",
    "TokenGapsBuilder": "simulator.metrics.result",
    "empty_iterations_frame": "simulator.metrics.result",
    "empty_requests_frame": "simulator.metrics.result",
    "request_latencies": "simulator.metrics.result",
    "SLOConfig": "simulator.metrics.slo",
    "SUMMARY_KEYS": "simulator.metrics.summary",
    "summarise": "simulator.metrics.summary",
    "comparison_table": "simulator.metrics.table",
    "summary_table": "simulator.metrics.table",
    "write_outputs": "simulator.metrics.writers",
}

__getattr__ = lazy_exports(__name__, _EXPORTS)


__all__ = [
    "ITERATION_COLUMNS",
    "REQUEST_COLUMNS",
    "SUMMARY_KEYS",
    "RunInfo",
    "SLOConfig",
    "SimulationResult",
    "TokenGaps",
    "TokenGapsBuilder",
    "comparison_table",
    "cost_usd",
    "empty_iterations_frame",
    "empty_requests_frame",
    "energy_joules",
    "request_latencies",
    "summarise",
    "summary_table",
    "token_gap_mean",
    "token_gap_quantiles",
    "weighted_quantiles",
    "write_outputs",
]
