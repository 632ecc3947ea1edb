"""Energy per unit and tier, average power, rental and TCO prices (simulator/metrics/energy_cost.py, tco.py),
the ``cost:`` section's validation and the planner's ``objective`` (docs/energy-and-cost.md)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pandas as pd
import pytest

from simulator.config.loader import validate_as
from simulator.config.schema import Scenario
from simulator.engine import simulate
from simulator.metrics.energy import PowerUnit
from simulator.metrics.slo import SLOConfig
from simulator.metrics.summary import SUMMARY_KEYS, summarise
from simulator.metrics.tco import CostSettings
from simulator.planner import choose_cheapest
from simulator.planner.plan import Candidate
from simulator.planner.search import SearchResult
from tests.cli_helpers import assert_user_error
from tests.test_metrics_summary import hand_result

ROOT = Path(__file__).resolve().parents[1]
TCO = CostSettings("tco", 4.0, 8000.0, 0.2, 1.5, 100.0, 8)


# ------------------------------------------------------------------------------------------- by hand
def test_energy_and_tco_of_a_small_run_by_hand():
    """The hand run of test_metrics_summary (window [10, 20], 8 busy replica-seconds, 2 GPUs at 100/700 W)
    with a host tier of 5/20 W per GPU, a 30/80 W added device and the TCO settings above."""
    host = PowerUnit("tier.host", 2, 5.0, 20.0)
    draft = PowerUnit("device.draft", 1, 30.0, 80.0, capex_usd=2000.0)
    result = hand_result(
        units=(draft, host),
        capex_usd_per_gpu=10_000.0,
        cost=TCO,
        extra_idle_w_per_replica=30.0,
        extra_tdp_w_per_replica=80.0,
        extra_usd_per_replica_hour=0.5,
    )
    s = summarise(result, SLOConfig())
    gpu = 2 * 100 * 10 + (700 - 100) * 8 * 2  # 11,600 J
    dev = 30 * 10 + (80 - 30) * 8  # 700 J
    tier = 2 * (5 * 10 + (20 - 5) * 8)  # 340 J
    assert s["energy_j"] == pytest.approx(gpu + dev)  # the existing key: GPUs and added devices
    assert s["energy.gpu_j"] == pytest.approx(gpu)
    assert s["energy.device.draft_j"] == pytest.approx(dev)
    assert s["energy.tier.host_j"] == pytest.approx(tier)
    assert s["energy_total_j"] == pytest.approx(gpu + dev + tier)
    assert s["energy_per_request_j"] == pytest.approx((gpu + dev + tier) / 3)  # three finished measured requests
    assert s["energy_total_per_output_token_j"] == pytest.approx((gpu + dev + tier) / 11)
    assert s["avg_power_w"] == pytest.approx((gpu + dev + tier) / 10)
    assert s["avg_power_per_gpu_w"] == pytest.approx(gpu / 10 / 2)
    assert s["avg_power.tier.host_w"] == pytest.approx(tier / 10)
    assert s["facility_energy_j"] == pytest.approx(1.5 * (gpu + dev + tier))
    # rental: 2 GPUs x $3 + $0.5 for the added device
    assert s["rental_usd_per_hour"] == pytest.approx(6.5)
    assert s["rental_usd_per_gpu_hour"] == pytest.approx(3.25)
    assert s["rental_usd_per_node_hour"] == pytest.approx(26.0)
    # TCO: capex (2 x 10,000 + 2,000) / (4 x 8,000 h); energy 1.264 kW x 1.5 x $0.2; hosting on 1400 + 80 + 40 W
    capex = 22_000 / 32_000
    energy = (gpu + dev + tier) / 10 / 1000 * 1.5 * 0.2
    hosting = 1.52 * 100 * 12 / 8000
    assert s["tco_capex_usd_per_hour"] == pytest.approx(capex)
    assert s["tco_energy_usd_per_hour"] == pytest.approx(energy)
    assert s["tco_hosting_usd_per_hour"] == pytest.approx(hosting)
    assert s["tco_usd_per_hour"] == pytest.approx(capex + energy + hosting)
    assert s["tco_usd_per_node_hour"] == pytest.approx((capex + energy + hosting) / 2 * 8)
    assert s["tco_cost_usd"] == pytest.approx((capex + energy + hosting) * 10 / 3600)
    per_s = (capex + energy + hosting) / 3600
    assert s["tco_per_million_output_tokens_usd"] == pytest.approx(per_s * 1e6 / s["served_output_tps"])
    assert s["cost_per_million_output_tokens_usd"] == pytest.approx(6.5 / 3600 * 1e6 / s["served_output_tps"])
    assert s["cost_mode"] == "tco"


def test_a_gpu_only_run_keeps_its_keys_and_reports_no_breakdown():
    s = summarise(hand_result(), SLOConfig())
    assert list(s) == list(SUMMARY_KEYS)
    assert s["energy_total_j"] == s["energy_j"] and s["energy_unpowered_units"] is None
    assert math.isnan(s["tco_usd_per_hour"]) and s["cost_mode"] == "rental"


def test_a_unit_without_power_is_reported_not_counted_as_zero():
    result = hand_result(units=(PowerUnit("tier.nvme", 2, None, None),))
    s = summarise(result, SLOConfig())
    assert s["energy_unpowered_units"] == "tier.nvme"
    assert "energy.tier.nvme_j" not in s and s["energy_total_j"] == s["energy_j"]


# ------------------------------------------------------------------------------------------- simulated
SCENARIO = {
    "name": "tiers",
    "seed": 1,
    "model": "llama-3.1-8b",
    "deployment": {
        "device": {
            "base": "h100-sxm",
            "memory_tiers": [{"name": "host", "kind": "ddr", "bandwidth_gbs": 300, "idle_w": 20, "active_w": 60}],
        }
    },
    "workload": {
        "arrival": "poisson",
        "qps": 1,
        "prompt": {"dist": "fixed", "value": 256},
        "output": {"dist": "fixed", "value": 16},
    },
    "simulation": {"num_requests": 20},
}


def _run(**changes):
    scenario = validate_as(Scenario, {**SCENARIO, **changes}, "test")
    result = simulate(scenario).result
    return result, summarise(result, scenario.slo)


def test_a_tier_is_powered_only_when_a_technique_uses_it():
    resident, s0 = _run()
    assert "energy.tier.host_j" not in s0 and s0["energy_total_j"] == s0["energy_j"]
    offload, s1 = _run(techniques=[{"name": "weight-offload", "fraction": 0.5, "tier": "host"}])
    it = offload.iterations
    t0, t1 = s1["window_start_s"], s1["window_end_s"]
    busy = (it["end_s"].clip(upper=t1) - it["start_s"].clip(lower=t0)).clip(lower=0).sum()
    window = s1["window_s"]
    assert s1["energy.tier.host_j"] == pytest.approx(20 * window + 40 * busy)  # one GPU, one host tier
    assert s1["energy_total_j"] == pytest.approx(s1["energy_j"] + s1["energy.tier.host_j"])
    assert s1["avg_power_w"] > s0["avg_power_w"]


def test_the_cost_section_changes_no_existing_number():
    cost = {"mode": "tco", "amortisation_years": 5, "electricity_usd_per_kwh": 0.1, "capex_usd": {"h100-sxm": 1}}
    plain = {**SCENARIO, "deployment": {"device": "h100-sxm"}}
    a = summarise(simulate(validate_as(Scenario, plain, "a")).result)
    b = summarise(simulate(validate_as(Scenario, {**plain, "cost": cost}, "b")).result)
    old = [
        k for k in SUMMARY_KEYS if k not in ("wall_time_s", "sim_speed_rps", "cost_mode") and not k.startswith("tco_")
    ]
    assert {k: a[k] for k in old} == pytest.approx({k: b[k] for k in old}, nan_ok=True)
    assert math.isnan(a["tco_usd_per_hour"]) and b["tco_usd_per_hour"] > 0


def test_pools_are_priced_and_powered_pool_by_pool():
    pools = {
        "deployment": None,
        "serving": {"name": "disaggregated", "link": {"kind": "nvlink"}},
        "pools": [
            {"name": "prefill", "role": "prefill", "device": "h100-sxm", "num_replicas": 1},
            {"name": "decode", "role": "decode", "device": "a100-80gb-sxm", "num_replicas": 2},
        ],
        "cost": {
            "mode": "tco",
            "amortisation_years": 5,
            "electricity_usd_per_kwh": 0.2,
            "hours_per_year": 5000,
            "capex_usd": {"h100-sxm": 25_000, "a100-80gb-sxm": 10_000},
        },
    }
    scenario = validate_as(Scenario, {**SCENARIO, **pools}, "pools")
    s = summarise(simulate(scenario).result, scenario.slo)
    assert s["tco_capex_usd_per_hour"] == pytest.approx((25_000 + 2 * 10_000) / (5 * 5000))
    assert s["tco_energy_usd_per_hour"] == pytest.approx(s["avg_power_w"] / 1000 * 0.2)
    assert s["energy_total_j"] == s["energy_j"] == pytest.approx(s["pool.prefill.energy_j"] + s["pool.decode.energy_j"])
    assert s["rental_usd_per_hour"] == pytest.approx(2.99 + 2 * 2.16)


# ------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("cost", "fragments"),
    [
        ({"mode": "tco", "amortisation_years": 0, "electricity_usd_per_kwh": 0.1}, ("cost.amortisation_years",)),
        ({"mode": "tco", "amortisation_years": 4, "electricity_usd_per_kwh": -0.1}, ("cost.electricity_usd_per_kwh",)),
        ({"pue": 0.9}, ("cost.pue",)),
        ({"hosting_usd_per_kw_month": -5}, ("cost.hosting_usd_per_kw_month",)),
        ({"capex_usd": {"h100-sxm": -1}}, ("cost.capex_usd", "h100-sxm")),
        ({"mode": "tco", "amortisation_years": 4}, ("cost", "electricity_usd_per_kwh")),
        ({"mode": "lease"}, ("cost.mode",)),
    ],
)
def test_bad_cost_input_is_named_by_field(cli, tmp_path, cost, fragments):
    import yaml

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**SCENARIO, "deployment": {"device": "h100-sxm"}, "cost": cost}))
    assert_user_error(cli("validate", path), *fragments)


def test_tco_without_a_purchase_price_names_the_device(cli, tmp_path):
    import yaml

    path = tmp_path / "s.yaml"
    cost = {"mode": "tco", "amortisation_years": 4, "electricity_usd_per_kwh": 0.1}
    path.write_text(yaml.safe_dump({**SCENARIO, "deployment": {"device": "h100-sxm"}, "cost": cost}))
    assert_user_error(cli("run", path, "--json"), "cost.capex_usd.h100-sxm")
    assert_user_error(cli("validate", path), "cost.capex_usd.h100-sxm")  # caught without simulating too


# ------------------------------------------------------------------------------------------- planner
def _candidate(index: int, rental: float, tco: float, mtok: float, tco_mtok: float) -> Candidate:
    c = Candidate(index, Scenario(name=f"c{index}"), cost_per_hour_usd=rental)
    c.search = SearchResult(max_rate=10.0, upper=None, probes=((4.0, True),))
    c.at_target = {
        "tco_usd_per_hour": tco,
        "cost_per_million_output_tokens_usd": mtok,
        "tco_per_million_output_tokens_usd": tco_mtok,
    }
    return c


def test_the_objective_switches_the_ranking():
    cheap_to_rent = _candidate(0, rental=2.0, tco=3.0, mtok=1.0, tco_mtok=1.5)
    cheap_to_own = _candidate(1, rental=3.0, tco=1.0, mtok=1.5, tco_mtok=0.5)
    assert choose_cheapest([cheap_to_rent, cheap_to_own]) is cheap_to_rent
    assert choose_cheapest([cheap_to_rent, cheap_to_own], "rental") is cheap_to_rent
    assert choose_cheapest([cheap_to_rent, cheap_to_own], "tco") is cheap_to_own
    unknown = dataclasses.replace(cheap_to_own, at_target={})
    assert choose_cheapest([unknown, cheap_to_rent], "tco") is cheap_to_rent  # an unknown TCO ranks last


def test_objective_tco_needs_a_tco_cost_section(cli, tmp_path):
    path = tmp_path / "plan.yaml"
    without_cost = "\n".join(
        line
        for line in PLAN.splitlines()
        if not line.startswith(("cost:", "  mode", "  capex", "  amort", "  electricity"))
    )
    path.write_text(without_cost)
    assert_user_error(cli("plan", path, "--set", "objective=tco"), "objective tco needs", "cost")


PLAN = """\
name: tco-plan
seed: 2
model: llama-3.1-8b
workload:
  arrival: poisson
  prompt: {dist: fixed, value: 256}
  output: {dist: fixed, value: 16}
slo: {ttft_s: 2.0, attainment: 0.9}
simulation: {num_requests: 30}
cost:
  mode: rental
  capex_usd: {a100-80gb-sxm: 90000, h100-sxm: 20000}
  amortisation_years: 4
  electricity_usd_per_kwh: 0.1
search:
  grid:
    deployment.device: [a100-80gb-sxm, h100-sxm]
target_rps: 1
rate_search: {rel_tol: 0.5, max_sims: 2, below_target: false, min_probe_s: 20}
"""


def test_plan_ranks_by_rental_or_tco(tmp_path):
    """Renting, the A100 is cheaper ($2.16/h against $2.99/h); owning, at the purchase prices above (user
    inputs chosen for the test), the H100 is: the objective switches the answer."""
    from simulator.planner import load_plan, run_plan
    from simulator.sweep import LocalExecutor

    path = tmp_path / "plan.yaml"
    path.write_text(PLAN.replace("mode: rental", "mode: tco"))
    picks = {}
    for objective in ("rental", "tco"):
        plan, candidates = load_plan(path, [f"objective={objective}"])
        result = run_plan(plan, candidates, executor=LocalExecutor(1), plots=False)
        assert result.objective == objective
        picks[objective] = result.cheapest.scenario.deployment.device
        assert all(math.isfinite(c.tco_per_hour_usd) for c in result.candidates if c.meets_target)
    assert picks == {"rental": "a100-80gb-sxm", "tco": "h100-sxm"}


# ------------------------------------------------------------------------------------------- dashboard
def _summary(name: str, rental_mtok: float, tco_mtok: float, mode: str) -> dict:
    return {
        "name": name,
        "slo_met": True,
        "overloaded": False,
        "slo_attainment": 1.0,
        "cost_mode": mode,
        "cost_per_million_output_tokens_usd": rental_mtok,
        "tco_per_million_output_tokens_usd": tco_mtok,
        "energy_per_request_j": 250.0,
        "energy_total_per_output_token_j": 3.0,
        "avg_power_w": 700.0,
        "rental_usd_per_gpu_hour": 2.0,
        "tco_usd_per_gpu_hour": 1.0,
    }


def test_dashboard_verdict_ranks_by_the_scenarios_cost_mode():
    from app.tables import display_table, energy_cost_rows, verdict

    rent = _summary("cheap-to-rent", 1.0, 3.0, "rental")
    own = _summary("cheap-to-own", 2.0, 0.5, "rental")
    _, text = verdict([rent, own], [{}, {}])
    assert text.startswith("**cheap-to-rent**") and "250 J per request" in text
    rent_t, own_t = ({**s, "cost_mode": "tco"} for s in (rent, own))
    _, text = verdict([rent_t, own_t], [{}, {}])
    assert text.startswith("**cheap-to-own**") and "(TCO)" in text
    rows = energy_cost_rows([rent_t, own])
    assert list(rows["ranked_by"]) == ["tco", "rental"]
    assert rows["tco_usd_per_mtok"].tolist() == [3.0, 0.5] and rows["energy_per_request_j"].tolist() == [250.0] * 2
    table = display_table([own_t])
    assert table.loc["TCO ($ / M output tokens)"].iloc[0] == "$0.500"
    assert table.loc["average power (W): total / per GPU"].iloc[0].startswith("700")


def test_dashboard_plan_view_shows_tco_when_the_plan_ranked_by_it():
    from app.plan_view import PlanOutput, pareto_frame, ranks_by_tco

    best = {
        "name": "a",
        "gpus": 1,
        "cost_per_hour_usd": 2.0,
        "tco_usd_per_hour": 1.0,
        "tco_usd_per_million_output_tokens": 0.4,
        "energy_per_request_j": 300.0,
    }
    doc = {"target_rps": 1, "cheapest": best, "pareto_front": [best], "objective": "tco"}
    out = PlanOutput("test", doc, pd.DataFrame(), None)
    assert ranks_by_tco(out)
    frame = pareto_frame(out)
    assert frame.loc[0, "tco_usd_per_hour"] == 1.0 and frame.loc[0, "energy_per_request_j"] == 300.0
    assert not ranks_by_tco(PlanOutput("test", {**doc, "objective": "rental"}, pd.DataFrame(), None))
