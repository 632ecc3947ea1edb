"""Sweeps: many scenarios, one tidy table, resumable, on local processes or a Ray cluster.

``capsim sweep FILE`` reads a scenario file whose ``runs:``, ``grid:`` (cartesian
product) and ``zip:`` (lists varied together) sections name any dotted
scenario path, simulates every configuration the results store does not hold
yet, and writes one row per configuration -- every input field and every
summary metric -- to ``results.parquet`` and ``results.csv``.

>>> from simulator.sweep import expand_sweep
>>> [s.name for s in expand_sweep({"grid": {"workload.qps": [1, 2]}, "zip": {"deployment.tp": [1, 2],
...     "deployment.num_replicas": [2, 1]}}, "example")]
['qps=1 tp=1,num_replicas=2', 'qps=2 tp=1,num_replicas=2', 'qps=1 tp=2,num_replicas=1', 'qps=2 tp=2,num_replicas=1']
"""

from simulator.sweep.executors import EXECUTORS, Executor, LocalExecutor, RayExecutor, make_executor
from simulator.sweep.grid import expand_sweep, load_sweep, zip_points
from simulator.sweep.runner import SweepResult, evaluate_all, run_sweep
from simulator.sweep.schema import SweepFile
from simulator.sweep.store import ResultStore, scenario_key, scenario_payload
from simulator.sweep.table import TIMING_COLUMNS, comparable, flatten, tidy_table, write_table
from simulator.sweep.worker import simulate_point

__all__ = [
    "EXECUTORS",
    "Executor",
    "LocalExecutor",
    "RayExecutor",
    "ResultStore",
    "SweepFile",
    "SweepResult",
    "TIMING_COLUMNS",
    "comparable",
    "evaluate_all",
    "expand_sweep",
    "flatten",
    "load_sweep",
    "make_executor",
    "run_sweep",
    "scenario_key",
    "scenario_payload",
    "simulate_point",
    "tidy_table",
    "write_table",
    "zip_points",
]
