"""Sweeps: zip/grid expansion, the tidy table, the resumable results store, executors and determinism."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

import simulator.sweep.runner as runner_module
from capsim import __version__
from capsim.errors import CapsimError
from simulator.cli import app
from simulator.config.schema import Scenario
from simulator.metrics.summary import SUMMARY_KEYS
from simulator.planner import load_plan, run_plan
from simulator.sweep import (
    LocalExecutor,
    ResultStore,
    comparable,
    expand_sweep,
    flatten,
    load_sweep,
    make_executor,
    run_sweep,
    scenario_key,
)
from simulator.sweep.executors import import_ray
from simulator.sweep.worker import simulate_point

ROOT = Path(__file__).resolve().parents[1]

SWEEP = """\
name: tiny
seed: 4
model: llama-3.1-8b
workload: {{arrival: poisson, prompt: {{dist: uniform, low: 64, high: 512}}, output: {{dist: uniform, low: 4, high: 40}}}}
slo: {{ttft_s: 0.5, tpot_s: 0.05}}
simulation: {{num_requests: 40}}
grid:
  workload.qps: [2, 6]
zip:
  deployment.device: [h100-sxm, a100]
  deployment.num_replicas: [1, {replicas}]
"""


def write_sweep(tmp_path: Path, replicas: int = 2) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(SWEEP.format(replicas=replicas))
    return path


# ------------------------------------------------------------------------------------------ expansion
def test_zip_varies_lists_together_and_crosses_the_grid(tmp_path):
    scenarios = load_sweep(write_sweep(tmp_path))
    combos = [(s.workload.qps, s.deployment.device, s.deployment.num_replicas) for s in scenarios]
    assert combos == [(2, "h100-sxm", 1), (6, "h100-sxm", 1), (2, "a100", 2), (6, "a100", 2)]
    assert scenarios[0].name == "qps=2 device=h100-sxm,num_replicas=1"
    only_zip = expand_sweep({"zip": {"deployment.tp": [1, 2], "seed": [5, 6]}}, "x")
    assert [(s.deployment.tp, s.seed, s.name) for s in only_zip] == [(1, 5, "tp=1,seed=5"), (2, 6, "tp=2,seed=6")]


def test_zip_with_runs_and_overrides():
    data = {"runs": [{"name": "a", "scheduler": {"name": "sarathi"}}, {"name": "b"}],
            "zip": {"workload.qps": [1, 3]}}
    names = [s.name for s in expand_sweep(data, "x")]
    assert names == ["a qps=1", "b qps=1", "a qps=3", "b qps=3"]


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"zip": {"workload.qps": [1, 2], "seed": [1]}}, "same length"),
        ({"zip": {"workload.qps": []}}, "non-empty list"),
        ({"grid": {"workload.qps": [1]}, "zip": {"workload": [{"qps": 2}]}}, "overlaps"),
        ({"zip": {"deployment.tpp": [1]}}, "tpp"),
    ],
)
def test_bad_sweep_files_are_clear_errors(data, fragment):
    with pytest.raises(CapsimError) as err:
        expand_sweep(data, "f.yaml")
    assert fragment in err.value.render() and "f.yaml" in err.value.render()


def test_cli_bad_sweep_exits_2(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("zip: {workload.qps: [1, 2], seed: [3]}\n")
    result = CliRunner().invoke(app, ["sweep", str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "same length" in " ".join(result.stderr.split()) and "Traceback" not in result.output


def test_ray_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` fail
    with pytest.raises(CapsimError) as err:
        import_ray()
    assert "capsim[ray]" in err.value.render()
    with pytest.raises(CapsimError):
        make_executor(ray_address="auto")


# ------------------------------------------------------------------------------------------ keys, table
def test_key_ignores_labels_and_tracks_fields_and_version():
    a = Scenario(name="one", description="x")
    assert scenario_key(a) == scenario_key(Scenario(name="two"))
    assert scenario_key(a) != scenario_key(Scenario(seed=1))
    assert scenario_key(a) != scenario_key(a, version=__version__ + ".post1")


def test_flatten_makes_dotted_scalar_columns():
    flat = flatten({"a": {"b": 1, "c": {"d": None}}, "e": [1, 2], "f": {}})
    assert flat == {"a.b": 1, "a.c.d": None, "e": "[1, 2]", "f": None}


def test_table_has_every_input_and_metric_and_round_trips(tmp_path):
    scenarios = load_sweep(write_sweep(tmp_path))
    result = run_sweep(scenarios, out_dir=tmp_path / "out", executor=LocalExecutor(1))
    table = result.table
    assert len(table) == 4 and (table["status"] == "ok").all()
    for column in ("deployment.device", "deployment.num_replicas", "workload.qps", "workload.prompt.low",
                   "scheduler.name", "slo.ttft_s", "simulation.num_requests", "seed", "model", "run_key"):
        assert column in table.columns
    assert set(SUMMARY_KEYS) <= set(table.columns)
    assert table["num_gpus"].tolist() == [1, 1, 2, 2]
    back = pd.read_parquet(tmp_path / "out" / "results.parquet")
    pd.testing.assert_frame_equal(back, table, check_dtype=False)
    assert len(pd.read_csv(tmp_path / "out" / "results.csv")) == 4


def test_errors_become_rows_not_crashes(tmp_path):
    sc = Scenario.model_validate({"model": "llama-3.1-70b", "deployment": {"device": "l4"},
                                  "workload": {"qps": 1}, "simulation": {"num_requests": 5}})
    result = run_sweep([sc], out_dir=tmp_path, executor=LocalExecutor(1))
    row = result.table.iloc[0]
    assert row["status"] == "error" and "does not fit" in row["error"]
    assert pd.isna(row["throughput_rps"])


# ------------------------------------------------------------------------------------------ resume
class CountingSimulate:
    def __init__(self):
        self.names: list[str] = []

    def __call__(self, dump):
        self.names.append(dump["name"])
        return simulate_point(dump)


def test_store_resumes_a_sweep_and_recomputes_only_changed_rows(tmp_path, monkeypatch):
    counter = CountingSimulate()
    monkeypatch.setattr(runner_module, "simulate_point", counter)
    path, out = write_sweep(tmp_path), tmp_path / "out"
    cli = CliRunner()

    def sweep() -> pd.DataFrame:
        result = cli.invoke(app, ["sweep", str(path), "--out", str(out), "--workers", "1"])
        assert result.exit_code == 0, result.output
        return pd.read_parquet(out / "results.parquet")

    first = sweep()
    assert len(counter.names) == 4 and len(ResultStore(out / "store")) == 4
    second = sweep()
    assert len(counter.names) == 4  # nothing recomputed
    pd.testing.assert_frame_equal(first, second)
    write_sweep(tmp_path, replicas=3)  # one zip entry changes: the two a100 rows
    third = sweep()
    assert counter.names[4:] == ["qps=2 device=a100,num_replicas=3", "qps=6 device=a100,num_replicas=3"]
    pd.testing.assert_frame_equal(first.iloc[:2], third.iloc[:2])
    assert third["deployment.num_replicas"].tolist() == [1, 1, 3, 3]


def test_corrupt_store_entry_is_recomputed(tmp_path):
    scenarios = load_sweep(write_sweep(tmp_path))[:1]
    run_sweep(scenarios, out_dir=tmp_path, executor=LocalExecutor(1))
    entry = next((tmp_path / "store").glob("*.json"))
    entry.write_text("{not json")
    again = run_sweep(scenarios, out_dir=tmp_path, executor=LocalExecutor(1))
    assert again.computed == 1 and again.table.iloc[0]["status"] == "ok"


# ------------------------------------------------------------------------------------------ executors
def test_local_pool_is_deterministic_and_matches_in_process(tmp_path):
    scenarios = load_sweep(write_sweep(tmp_path))
    pooled = run_sweep(scenarios, executor=LocalExecutor(2)).table
    serial = run_sweep(scenarios, executor=LocalExecutor(1)).table
    pd.testing.assert_frame_equal(comparable(pooled), comparable(serial))
    assert pooled["name"].tolist() == [s.name for s in scenarios]  # table in scenario order, not completion order


def test_local_pool_and_ray_give_identical_tables(tmp_path):
    ray = pytest.importorskip("ray", reason="the optional ray extra is not installed")
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"Ray cannot start on this machine: {type(exc).__name__}: {exc}")
    try:
        from simulator.sweep import RayExecutor

        scenarios = load_sweep(write_sweep(tmp_path))
        local = run_sweep(scenarios, out_dir=tmp_path / "local", executor=LocalExecutor(2)).table
        on_ray = run_sweep(scenarios, out_dir=tmp_path / "ray", executor=RayExecutor()).table
        again = run_sweep(scenarios, executor=RayExecutor()).table  # same seeds, fresh computation
        plan_path = tmp_path / "plan.yaml"
        plan_path.write_text(PLAN)
        plan, candidates = load_plan(plan_path)
        plan_local = run_plan(plan, candidates, executor=LocalExecutor(2))
        plan_ray = run_plan(plan, candidates, executor=RayExecutor())
    finally:
        ray.shutdown()
    pd.testing.assert_frame_equal(comparable(local), comparable(on_ray))
    pd.testing.assert_frame_equal(comparable(on_ray), comparable(again))
    assert (local["status"] == "ok").all() and local["throughput_rps"].notna().all()
    assert plan_summary(plan_local) == plan_summary(plan_ray)
    assert plan_local.sims > 0


PLAN = """\
model: llama-3.1-8b
workload: {arrival: poisson, prompt: {dist: fixed, value: 300}, output: {dist: uniform, low: 5, high: 60}}
slo: {ttft_s: 0.5, tpot_s: 0.03}
simulation: {num_requests: 60}
search: {grid: {deployment.device: [a100, l40s]}}
target_rps: 6
rate_search: {max_sims: 4}
"""


def plan_summary(result) -> list:
    """What must not depend on the executor: every probe and verdict of every candidate."""
    return [(c.name, c.status, c.search.probes if c.search else None,
             [(e["rate_rps"], e["status"], e["slo_attainment"]) for e in c.evaluations]) for c in result.candidates]


def test_plan_is_deterministic_on_the_local_pool():
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "plan.yaml"
        path.write_text(PLAN)
        plan, candidates = load_plan(path)
    serial = run_plan(plan, candidates, executor=LocalExecutor(1))
    pooled = run_plan(plan, candidates, executor=LocalExecutor(2))
    assert plan_summary(serial) == plan_summary(pooled)
    assert serial.sims > 0
