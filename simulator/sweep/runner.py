"""Running a list of scenarios through the store and an executor into one tidy table.

The flow: key every scenario (:func:`~simulator.sweep.store.scenario_key`),
take what the store already holds, send the rest to the executor, store each
result as it arrives, and build the table in the scenarios' order. Running
the same sweep twice therefore simulates nothing the second time, and
changing one field recomputes only the rows whose scenario changed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from capsim import __version__
from simulator.config.schema import Scenario
from simulator.sweep.executors import Executor, LocalExecutor
from simulator.sweep.store import ResultStore, scenario_key, scenario_payload
from simulator.sweep.table import result_row, tidy_table, write_table
from simulator.sweep.worker import INTERNAL_ERROR, simulate_point

#: Called after each configuration is done: (done so far, total, name, whether it came from the store).
ProgressFn = Callable[[int, int, str, bool], None]


@dataclass
class SweepResult:
    """The table plus how it was obtained."""

    table: pd.DataFrame
    computed: int  # configurations simulated now
    reused: int  # configurations read from the store
    failed: list[str] = field(default_factory=list)  # names of configurations that hit an internal error
    files: list[Path] = field(default_factory=list)


def evaluate_all(
    payloads: Sequence[dict[str, Any]],
    keys: Sequence[str],
    store: ResultStore | None,
    executor: Executor,
    fn: Callable[[dict[str, Any]], dict[str, Any]],
    *,
    accept: Callable[[dict[str, Any]], bool] = lambda r: True,
    on_done: Callable[[int, dict[str, Any], bool], None] | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """``fn`` of every payload, from ``store`` where it holds an accepted result; returns (results, computed).

    Duplicate keys are computed once. Internal errors are returned but not
    stored. ``on_done(index, result, from_store)`` is called once per payload.
    """
    results: list[dict[str, Any] | None] = [None] * len(payloads)
    todo: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        hit = store.get(key) if store is not None else None
        if hit is not None and accept(hit):
            results[i] = hit
            if on_done:
                on_done(i, hit, True)
        else:
            todo.setdefault(key, []).append(i)
    order = list(todo)
    work = [payloads[todo[k][0]] for k in order]
    for j, result in executor.imap_unordered(fn, work):
        key = order[j]
        if store is not None and result.get("status") != INTERNAL_ERROR:
            store.put(key, payloads[todo[key][0]], result)
        for i in todo[key]:
            results[i] = result
            if on_done:
                on_done(i, result, False)
    return results, len(order)  # type: ignore[return-value]


def run_sweep(
    scenarios: Sequence[Scenario],
    *,
    out_dir: str | Path | None = None,
    executor: Executor | None = None,
    progress: ProgressFn | None = None,
) -> SweepResult:
    """Simulate every scenario (reusing ``out_dir/store``) and write ``results.parquet``/``results.csv``."""
    executor = executor or LocalExecutor()
    store = ResultStore(Path(out_dir) / "store") if out_dir is not None else None
    payloads = [scenario_payload(s) for s in scenarios]
    keys = [scenario_key(p) for p in payloads]
    done = [0]

    def on_done(i: int, result: dict[str, Any], cached: bool) -> None:
        done[0] += 1
        if progress:
            progress(done[0], len(scenarios), scenarios[i].name, cached)

    accept = lambda r: r.get("status") != "bound"  # noqa: E731  (a planner verdict is not a simulation)
    results, computed = evaluate_all(payloads, keys, store, executor, simulate_point, accept=accept, on_done=on_done)
    rows = [result_row(p, k, __version__, r) for p, k, r in zip(payloads, keys, results, strict=True)]
    table = tidy_table(rows)
    failed = [s.name for s, r in zip(scenarios, results, strict=True) if r.get("status") == INTERNAL_ERROR]
    files = write_table(table, out_dir) if out_dir is not None else []
    return SweepResult(table, computed, len(scenarios) - computed, failed, files)
