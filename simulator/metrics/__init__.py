"""Metrics: from a run's records to SLO attainment, summary statistics, energy, cost, files, plots and tables.

Data flows one way: the engine builds a :class:`SimulationResult`; :func:`summarise` turns it into a flat dict;
:func:`write_outputs` writes CSVs, ``summary.json`` and plots; :mod:`simulator.metrics.table` prints it.
Plots (matplotlib) are imported only when written.
"""

from simulator.metrics.energy import cost_usd, energy_joules
from simulator.metrics.quantiles import token_gap_mean, token_gap_quantiles, weighted_quantiles
from simulator.metrics.result import (
    ITERATION_COLUMNS,
    REQUEST_COLUMNS,
    RunInfo,
    SimulationResult,
    TokenGaps,
    TokenGapsBuilder,
    empty_iterations_frame,
    empty_requests_frame,
    request_latencies,
)
from simulator.metrics.slo import SLOConfig
from simulator.metrics.summary import SUMMARY_KEYS, summarise
from simulator.metrics.table import comparison_table, summary_table
from simulator.metrics.writers import write_outputs

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
