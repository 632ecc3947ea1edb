"""The analytic pre-pass never rules out a configuration the simulation finds feasible.

Each rule of :mod:`simulator.planner.bounds` is a proof that ``slo_met`` is False; these tests hold
the simulation to the proofs' premises (work and latency lower bounds) and check the verdicts against
simulations on a space with does-not-fit, latency-floor, too-slow and feasible points.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capsim.errors import DoesNotFitError
from simulator.config.schema import Scenario
from simulator.costmodel import features as F
from simulator.engine import simulate
from simulator.metrics.result import request_latencies
from simulator.metrics.summary import summarise
from simulator.planner.bounds import TOO_SLOW, CostBounds, check, needed_count
from simulator.planner.plan import prepass
from simulator.system import build_system


def scenario(device="h100-sxm", qps=4.0, replicas=1, scheduler=None, model="llama-3.1-8b", slo=None,
             prompt=(100, 1500), output=(10, 300), n=200, seed=0, tp=1, calibration="datasheet",
             engine=None) -> Scenario:
    # Datasheet pricing by default: several tests check how tight the bound is against the
    # constant-efficiency roofline; calibrated profiles are covered where only soundness is claimed.
    return Scenario.model_validate({
        "seed": seed,
        "model": model,
        "deployment": {"device": device, "num_replicas": replicas, "tp": tp, "calibration": calibration,
                       **({"engine": engine} if engine else {})},
        "scheduler": scheduler or {"name": "vllm"},
        "workload": {"arrival": "poisson", "qps": qps,
                     "prompt": {"dist": "uniform", "low": prompt[0], "high": prompt[1]},
                     "output": {"dist": "uniform", "low": output[0], "high": output[1]}},
        "slo": slo or {"ttft_s": 1.0, "tpot_s": 0.1, "attainment": 0.9},
        "simulation": {"num_requests": n},
    })


def test_needed_count_matches_the_summary_comparison():
    for n in (1, 7, 10, 299, 300, 1000):
        for goal in (0.5, 0.9, 0.95, 0.99, 1.0):
            k = needed_count(goal, n)
            assert k / n >= goal and (k == 0 or (k - 1) / n < goal)


def test_work_bound_never_exceeds_the_engine_price():
    """Rule (b)'s per-iteration form: the bound drops only launch overheads from the engine's own price."""
    rng = np.random.default_rng(1)
    cases = [(d, m, tp, cal) for d, m, tp in (("h100-sxm", "llama-3.1-8b", 1), ("a100", "mixtral-8x7b", 4),
                                              ("l40s", "llama-2-7b", 2)) for cal in ("datasheet", "profile")]
    for device, model, tp, calibration in cases:
        system = build_system(scenario(device=device, model=model, tp=tp, calibration=calibration))
        bounds, cost = CostBounds(system), system.cost_model()
        launches = (sum(op.launches for op in system.table.layer_ops) * system.table.num_layers
                    + sum(op.launches for op in system.table.iteration_ops)) * system.roofline.launch_overhead_s
        for _ in range(50):
            q, dec = int(rng.integers(0, 4000)), int(rng.integers(0, 200))
            x = np.zeros(F.NUM_FEATURES)
            x[[F.ONE, F.PREFILL_TOKENS, F.DECODE_SEQS, F.LOGIT_SEQS]] = 1, q, dec, dec + (q > 0)
            x[F.PREFILL_ATTN_WORK], x[F.PREFILL_KV_READ] = q * q / 2, q
            x[F.DECODE_CONTEXT] = dec * int(rng.integers(1, 4000))
            x[F.EXPERTS_HIT] = F.expected_experts_hit(q + dec, system.table.num_experts, system.table.experts_per_token)
            price = cost.price_features(x)
            assert bounds.total_time(x) <= price + 1e-15
            # The engine profile's terms (the default vllm here) are left out of the bound: valid because they never
            # lower an iteration's price (see test_engine_terms_never_lower_an_iteration_s_price).
            engine = float(cost._overhead(x))
            assert engine >= 0
            if not bounds.calibrated:  # against the constant-efficiency roofline the bound is tight
                assert price - bounds.total_time(x) <= launches + engine + 1e-12


@pytest.mark.parametrize("tp", [1, 2, 4, 8])
def test_engine_terms_never_lower_an_iteration_s_price(tp):
    """The work bound leaves every engine profile's terms out, which is a lower bound only if their sum is never
    negative. Graph-captured profiles carry a negative per-collective term (their all-reduce beats the NCCL floor
    the kernels are priced with); their per-layer term must outweigh it at every TP degree, for every profile."""
    from hwmodels.calibration.engines import engine_names

    for name in engine_names():
        cost = build_system(scenario(device="h100-sxm", model="llama-3.1-8b", tp=tp, engine=name)).cost_model()
        x = np.zeros(F.NUM_FEATURES)
        x[F.ONE] = 1.0  # the least an iteration can be: no sequence, no token
        assert float(cost._overhead(x)) >= 0, name


SCHEDULERS = [{"name": "vllm"}, {"name": "sarathi", "chunk_size": 256}, {"name": "orca", "kv_reservation": "request"},
              {"name": "static", "batch_size": 4}]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    device=st.sampled_from(["h100-sxm", "a100", "l40s", "a10g"]),
    qps=st.floats(0.5, 60.0),
    replicas=st.integers(1, 3),
    sched=st.sampled_from(SCHEDULERS),
    seed=st.integers(0, 1000),
    ttft=st.floats(0.05, 3.0),
    tpot=st.floats(0.005, 0.2),
    calibration=st.sampled_from(["datasheet", "profile"]),
)
def test_simulations_respect_the_premises_of_every_rule(device, qps, replicas, sched, seed, ttft, tpot, calibration):
    """Per request TTFT >= prefill floor and TPOT >= decode floor; throughput <= the work bound; and a
    'ruled out' verdict is never contradicted by slo_met."""
    sc = scenario(device=device, qps=qps, replicas=replicas, scheduler=sched, seed=seed, n=80,
                  slo={"ttft_s": ttft, "tpot_s": tpot, "attainment": 0.8}, prompt=(50, 900), output=(2, 120),
                  calibration=calibration)
    system = build_system(sc)
    verdict = check(sc, system)
    out = simulate(sc, system=system)
    summary = summarise(out.result, sc.slo)
    assert summary["throughput_rps"] <= verdict.throughput_bound_rps * (1 + 1e-9)
    req = out.result.requests
    lat = request_latencies(req)
    pre, dec = CostBounds(system).floors(req["prompt_tokens"].to_numpy())
    assert (lat["ttft_s"].to_numpy() >= pre * (1 - 1e-9)).all()
    multi = req["output_tokens"].to_numpy() > 1
    assert (lat["tpot_s"].to_numpy()[multi] >= dec[multi] * (1 - 1e-9)).all()
    if not verdict.possible:
        assert not summary["slo_met"], verdict


def space() -> list[Scenario]:
    """Does-not-fit, latency-floor, too-slow and feasible points (target 8 req/s)."""
    slo = {"ttft_s": 1.0, "tpot_s": 0.05, "attainment": 0.9}
    out = []
    for device in ("h100-sxm", "a100", "l40s", "a10g", "l4"):
        for replicas in (1, 2, 4):
            for model in ("llama-3.1-8b", "llama-2-13b", "llama-3.1-70b"):
                sc = scenario(device=device, replicas=replicas, model=model, qps=8.0, slo=slo, n=250,
                              prompt=(100, 1200), output=(20, 250), seed=2)
                out.append(sc.model_copy(update={"name": f"{model} {replicas}x{device}"}))
    return out


def test_prepass_never_prunes_a_feasible_configuration():
    candidates = prepass(space())
    statuses = {c.status for c in candidates}
    assert {"does-not-fit", "latency-floor", TOO_SLOW, "simulated"} <= statuses, statuses
    feasible = 0
    for cand in candidates:
        if cand.status == "does-not-fit":
            with pytest.raises(DoesNotFitError):
                build_system(cand.scenario)
            continue
        summary = summarise(simulate(cand.scenario).result, cand.scenario.slo)
        feasible += summary["slo_met"]
        if cand.pruned:
            assert not summary["slo_met"], (cand.name, cand.status, cand.detail)
    assert feasible >= 3  # the space is not trivially infeasible


def test_rate_sweep_rule_three_is_a_proof_at_every_rate():
    """Scan rates through the capacity of two configurations: every 'too-slow' verdict is a simulated miss,
    and the rule rules out some rate of each (it has teeth)."""
    for device, calibration in (("a100", "datasheet"), ("l40s", "datasheet"), ("a100", "profile")):
        ruled_out = 0
        for qps in (4, 8, 12, 16, 24, 32, 48):
            sc = scenario(device=device, qps=qps, n=200, slo={"ttft_s": 2.0, "e2e_s": 20.0, "attainment": 0.9},
                          calibration=calibration)
            system = build_system(sc)
            verdict = check(sc, system)
            if not verdict.possible:
                ruled_out += 1
                assert verdict.reason == TOO_SLOW
                assert not summarise(simulate(sc, system=system).result, sc.slo)["slo_met"]
        if calibration == "datasheet":  # with a profile the bound falls back to peaks and may prune nothing
            assert ruled_out >= 1, device


def test_calibrated_devices_fall_back_to_hardware_peaks():
    """With a calibration profile the bound may not trust the constant efficiencies: it uses the peaks."""
    import dataclasses
    from types import SimpleNamespace

    system = build_system(scenario(device="a100", tp=2))
    r = system.roofline
    profiled = SimpleNamespace(peak_flops=r.peak_flops, memory_bandwidth=r.memory_bandwidth, profile=object(),
                               effective_flops=r.effective_flops, effective_bandwidth=r.effective_bandwidth)
    plain, calibrated = CostBounds(system), CostBounds(dataclasses.replace(system, roofline=profiled))
    assert calibrated.calibrated and not plain.calibrated
    assert (calibrated.compute <= plain.compute).all() and (calibrated.memory <= plain.memory).all()
    assert (calibrated.compute < plain.compute).any() and not calibrated.comm.any()
    prompts = np.array([10, 500, 3000])
    for a, b in zip(calibrated.floors(prompts), plain.floors(prompts), strict=True):
        assert (a < b).all() and (a > 0).all()


def test_requests_arriving_after_max_time_are_not_counted_by_the_rules():
    """The rules prove slo_met is False over the requests the summary measures: not those cut by max_time_s."""
    sc = scenario(qps=8.0, n=400)
    sc = Scenario.model_validate({**sc.model_dump(), "simulation": {"num_requests": 400, "max_time_s": 10.0}})
    verdict = check(sc, build_system(sc))
    summary = summarise(simulate(sc).result, sc.slo)
    assert summary["not_arrived"] > 0
    assert verdict.measured == summary["num_requests"]
    assert verdict.needed == needed_count(sc.slo.attainment, summary["num_requests"])
