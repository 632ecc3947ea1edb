"""``capsim plan`` end to end: pruning, goodput, cheapest choice, Pareto front, headroom, outputs, resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from capsim.errors import CapsimError
from simulator.cli import app
from simulator.planner import choose_cheapest, load_plan, pareto_front, run_plan
from simulator.sweep import LocalExecutor

ROOT = Path(__file__).resolve().parents[1]

PLAN = """\
name: small-plan
seed: 2
model: llama-3.1-8b
workload:
  arrival: poisson
  prompt: {dist: uniform, low: 100, high: 1200}
  output: {dist: uniform, low: 10, high: 200}
slo: {ttft_s: 1.0, tpot_s: 0.05, attainment: 0.9}
simulation: {num_requests: 150}
search:
  grid:
    deployment.num_replicas: [1, 2]
  zip:
    deployment.device: [h100-sxm, a100, l4, l40s]
    deployment.tp: [1, 1, 1, 1]
target_rps: 8
rate_search: {rel_tol: 0.1, max_sims: 6}
"""


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    out = tmp_path_factory.mktemp("plan")
    path = out / "plan.yaml"
    path.write_text(PLAN)
    plan, candidates = load_plan(path)
    result = run_plan(plan, candidates, out_dir=out / "results", executor=LocalExecutor(2))
    return path, out / "results", result


def test_candidates_and_pruning(planned):
    _, _, result = planned
    assert len(result.candidates) == 8
    by_name = {c.name: c for c in result.candidates}
    l4 = [c for c in result.candidates if "device=l4," in c.name]
    assert all(c.status == "latency-floor" and c.sims == 0 and c.search is None for c in l4)  # 67 ms decode floor
    assert result.pruned == 2
    assert all(c.evaluations and c.sims >= 1 for c in result.candidates if not c.pruned)
    assert all(c.sims <= 6 for c in result.candidates)
    h100 = by_name["num_replicas=1 device=h100-sxm,tp=1"]
    assert h100.meets_target and h100.max_rate > 8


def test_goodput_headroom_and_target_probe(planned):
    _, _, result = planned
    target = result.plan.target_rps
    for c in result.candidates:
        if c.search is None:
            continue
        first_rate, first_good = c.search.probes[0]
        assert first_rate == target and first_good == c.meets_target
        assert (c.max_rate >= target) == c.meets_target
        assert result.headroom(c) == pytest.approx(c.max_rate / target)
        if c.search.upper is not None and c.search.converged:
            assert c.search.upper / max(c.search.max_rate, 1e-9) - 1 <= 0.1 or c.search.max_rate == 0


def test_cheapest_and_pareto(planned):
    _, _, result = planned
    ok = [c for c in result.candidates if c.meets_target]
    assert ok and result.cheapest is not None
    assert result.cheapest.cost_per_hour_usd == min(c.cost_per_hour_usd for c in ok)
    assert result.cheapest is choose_cheapest(result.candidates)
    metric = result.plan.pareto_metric
    front = pareto_front(result.candidates, metric)
    assert [c.name for c in front] == [c.name for c in result.pareto]

    def dominates(a, b) -> bool:
        ca, cb, la, lb = a.cost_per_hour_usd, b.cost_per_hour_usd, a.at_target[metric], b.at_target[metric]
        return ca <= cb and la <= lb and (ca < cb or la < lb)

    for f in front:
        assert not any(dominates(o, f) for o in ok)
    for o in ok:
        assert o in front or any(dominates(f, o) or (f.cost_per_hour_usd, f.at_target[metric])
                                 == (o.cost_per_hour_usd, o.at_target[metric]) for f in front)
    costs = [c.cost_per_hour_usd for c in front]
    assert costs == sorted(costs) and front[0].cost_per_hour_usd == result.cheapest.cost_per_hour_usd
    # cost per hour = replicas x GPUs x hourly price
    h100x2 = next(c for c in result.candidates if c.name == "num_replicas=2 device=h100-sxm,tp=1")
    assert h100x2.cost_per_hour_usd == pytest.approx(2 * 2.99)


def test_cost_per_token_at_the_target_orders_as_cost_per_hour(planned):
    """Every candidate meeting the target serves the same load, so the cheapest per hour is the cheapest per
    token: $/Mtok at the target is the price over the steady-state served token rate, not over a window that
    includes draining the queue (which charged slower hardware more per token)."""
    _, _, result = planned
    ok = [c for c in result.candidates if c.meets_target]
    assert len(ok) >= 3
    served = {c.name: c.at_target["served_output_tps"] for c in ok}
    assert all(not c.at_target["overloaded"] for c in ok)
    assert max(served.values()) == pytest.approx(min(served.values()), rel=1e-12)  # one common served rate
    for c in ok:
        mtok = c.at_target["cost_per_million_output_tokens_usd"]
        assert mtok == pytest.approx(c.cost_per_hour_usd / 3600 / served[c.name] * 1e6, rel=1e-12)
    by_hour = min(ok, key=lambda c: (c.cost_per_hour_usd, c.name))
    by_token = min(ok, key=lambda c: (c.at_target["cost_per_million_output_tokens_usd"], c.name))
    assert by_hour.cost_per_hour_usd == by_token.cost_per_hour_usd == result.cheapest.cost_per_hour_usd
    order_hour = sorted(ok, key=lambda c: c.cost_per_hour_usd)
    mtoks = [c.at_target["cost_per_million_output_tokens_usd"] for c in order_hour]
    assert mtoks == sorted(mtoks)


def test_an_overloaded_probe_never_counts_as_meeting_the_slo():
    """A loose SLO can be met by a configuration whose queue grows without bound during the probe; the planner
    must not call that rate sustainable."""
    from simulator.planner.worker import is_good
    from simulator.sweep.worker import OK

    met = {"slo_met": True, "overloaded": False}
    assert is_good({"status": OK, "summary": met})
    assert not is_good({"status": OK, "summary": {**met, "overloaded": True}})
    assert not is_good({"status": OK, "summary": {**met, "slo_met": False}})


def test_a_loose_slo_does_not_make_an_overloaded_candidate_the_answer(tmp_path):
    text = PLAN.replace("slo: {ttft_s: 1.0, tpot_s: 0.05, attainment: 0.9}",
                        "slo: {ttft_s: 1000, tpot_s: 10, attainment: 0.9}").replace(
        "deployment.num_replicas: [1, 2]", "deployment.num_replicas: [1]").replace("target_rps: 8", "target_rps: 16")
    path = tmp_path / "loose.yaml"
    path.write_text(text)
    plan, candidates = load_plan(path)
    result = run_plan(plan, candidates, executor=LocalExecutor(1), plots=False)
    overloaded = [c for c in result.candidates if c.at_target.get("overloaded")]
    assert overloaded, "some candidate should be overloaded at 16 req/s"
    assert all(c.at_target["slo_met"] for c in overloaded)  # the loose SLO alone would have crowned them
    assert not any(c.meets_target for c in overloaded)
    assert result.cheapest is None or not result.cheapest.at_target["overloaded"]


def test_outputs_written(planned):
    _, out, result = planned
    for name in ("candidates.parquet", "candidates.csv", "evaluations.parquet", "evaluations.csv", "plan.json",
                 "pareto.png", "goodput.png", "attainment_vs_rate.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    doc = json.loads((out / "plan.json").read_text())
    assert doc["cheapest"]["name"] == result.cheapest.name
    assert doc["pruned_analytically"] == 2 and doc["pruned_fraction"] == pytest.approx(0.25)
    table = pd.read_parquet(out / "candidates.parquet")
    assert len(table) == 8 and table["cheapest"].sum() == 1
    assert {"deployment.device", "deployment.num_replicas", "max_rate_rps", "headroom", "cost_per_hour_usd",
            "target.ttft_p90_s", "target.cost_per_million_output_tokens_usd"} <= set(table.columns)
    evals = pd.read_parquet(out / "evaluations.parquet")
    assert len(evals) == sum(len(c.evaluations) for c in result.candidates)


def test_plan_resumes_from_the_store_with_identical_answers(planned):
    path, out, result = planned
    plan, candidates = load_plan(path)
    again = run_plan(plan, candidates, out_dir=out, executor=LocalExecutor(1), plots=False)
    assert again.probes_computed == 0 and again.probes_reused == sum(len(c.evaluations) for c in result.candidates)
    assert [(c.name, c.status, c.max_rate, c.sims) for c in again.candidates] == \
        [(c.name, c.status, c.max_rate, c.sims) for c in result.candidates]


def test_cli_plan_json(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(PLAN.replace("[1, 2]", "[1]").replace("num_requests: 150", "num_requests: 80"))
    result = CliRunner().invoke(app, ["plan", str(path), "--out", str(tmp_path / "o"), "--workers", "1", "--json",
                                      "--no-plots"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["candidates"] == 4 and doc["target_rps"] == 8
    assert doc["cheapest"] is None or math.isfinite(doc["cheapest"]["cost_per_hour_usd"])
    assert not (tmp_path / "o" / "pareto.png").exists()


def test_example_files_are_valid():
    plan, candidates = load_plan(ROOT / "scenarios" / "plan_example.yaml")
    assert plan.candidate_count() == len(candidates) == 30
    from simulator.sweep import load_sweep

    assert len(load_sweep(ROOT / "scenarios" / "sweep_example.yaml")) == 12


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda t: t.replace("slo: {ttft_s: 1.0, tpot_s: 0.05, attainment: 0.9}", "slo: {tpot_s: 0.05}"),
         "needs ttft_s or e2e_s"),
        (lambda t: t.replace("deployment.num_replicas: [1, 2]", "workload.qps: [1, 2]"), "set target_rps instead"),
        (lambda t: t.replace("target_rps: 8", "target_rps: -1"), "target_rps"),
        (lambda t: t.replace("rel_tol: 0.1", "rel_tol: 0.1, lo: 1"), "rate_search.lo"),
        (lambda t: t.replace("arrival: poisson", "arrival: closed-loop\n  concurrency: 4"), "no request rate to search"),
        (lambda t: t + "pareto_metric: cost\n", "unknown latency metric"),
    ],
)
def test_bad_plan_files_are_clear_errors(tmp_path, edit, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(edit(PLAN))
    with pytest.raises(CapsimError) as err:
        load_plan(path)
    assert fragment in err.value.render(), err.value.render()
    result = CliRunner().invoke(app, ["plan", str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_probes_last_long_enough_for_an_overload_to_show(tmp_path):
    """A request-count probe is lengthened to min_probe_s of arrivals. With 150 requests a probe
    at a high rate is over in seconds, before an overloaded replica's queue breaks the SLO, so the
    short probe reports a higher sustainable rate than the long one; the long one's rate must
    still hold when simulated over several minutes."""
    from simulator.engine import simulate
    from simulator.metrics.summary import summarise
    from simulator.planner.plan import at_rate

    def max_rate(min_probe_s):
        text = PLAN.replace("deployment.num_replicas: [1, 2]", "deployment.num_replicas: [1]").replace(
            "deployment.device: [h100-sxm, a100, l4, l40s]\n    deployment.tp: [1, 1, 1, 1]",
            "deployment.device: [a100]\n    deployment.tp: [1]",
        ).replace("rate_search: {rel_tol: 0.1, max_sims: 6}",
                  f"rate_search: {{rel_tol: 0.05, max_sims: 10, min_probe_s: {min_probe_s}}}")
        path = tmp_path / f"plan-{min_probe_s}.yaml"
        path.write_text(text)
        plan, candidates = load_plan(path)
        result = run_plan(plan, candidates, executor=LocalExecutor(1), plots=False)
        (cand,) = result.candidates
        return cand.max_rate, candidates[0]

    short, _ = max_rate("null")
    long, scenario = max_rate(60)
    assert at_rate(scenario, 10.0, 60).simulation.num_requests == 600
    assert at_rate(scenario, 1.0, 60).simulation.num_requests == 150  # never shortened
    assert long < short

    def holds_for_five_minutes(rate):
        steady = at_rate(scenario, rate, 300)
        return summarise(simulate(steady).result, steady.slo)["slo_met"]

    assert holds_for_five_minutes(long)
    assert not holds_for_five_minutes(short)  # what the short probes reported does not hold
