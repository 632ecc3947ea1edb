"""Multi-pool deployments: prefill/decode disaggregation and the KV hand-off between pools.

Conservation (every request's KV leaves one pool and arrives in the next exactly once), causality per stage,
link bytes equal to the KV moved, every engine invariant in every pool, and the effects that must emerge from
the simulation (the link's share of the latency; disaggregation's goodput gain under a tight TPOT).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capsim.errors import CapsimError
from simulator.config.schema import Scenario
from simulator.engine import simulate
from simulator.metrics.summary import summarise

KV_PER_TOKEN_LLAMA2_7B = 2 * 32 * 32 * 128 * 2  # 2 (K,V) x layers x kv heads x head dim x bf16 bytes


def pd_scenario(
    *,
    seed=0,
    qps=6.0,
    n=200,
    prefill=None,
    decode=None,
    link="nvlink",
    serving="disaggregated",
    extra_pools=(),
    scheduler="vllm",
    prompt=(1, 600),
    output=(1, 300),
    **serving_params,
):
    prefill = {"name": "prefill", "role": "prefill", "device": "a100-80gb-sxm", "num_replicas": 2, **(prefill or {})}
    decode = {"name": "decode", "role": "decode", "device": "a100-80gb-sxm", "num_replicas": 2, **(decode or {})}
    scheds = {
        "vllm": {"name": "vllm", "max_num_seqs": 8, "max_num_batched_tokens": 4096},
        "sarathi": {"name": "sarathi", "max_num_seqs": 8, "chunk_size": 256},
        "orca": {"name": "orca", "max_batch_size": 8, "kv_reservation": "request"},
    }
    return Scenario.model_validate(
        {
            "seed": seed,
            "model": "llama-2-7b",
            "scheduler": scheds[scheduler],
            "router": {"name": "least-outstanding"},
            "serving": {"name": serving, "link": {"kind": link}, **serving_params},
            "pools": [prefill, decode, *extra_pools],
            "workload": {
                "arrival": "poisson",
                "qps": qps,
                "prompt": {"dist": "uniform", "low": prompt[0], "high": prompt[1]},
                "output": {"dist": "uniform", "low": output[0], "high": output[1]},
            },
            "simulation": {"num_requests": n},
        }
    )


TIGHT_DECODE = {"memory_utilization": 0.165, "activation_reserve_gib": 0.0}  # ~1,300 tokens of KV: preemption


def pool_range(info, name):
    pool = next(p for p in info.pools if p.name == name)
    return pool.first_replica, pool.first_replica + pool.num_replicas


def check_pool_invariants(out) -> None:
    req = out.result.requests
    t = out.table
    info = out.result.info
    # every request finishes exactly once with exactly its tokens
    assert req["finish_s"].notna().all()
    assert np.array_equal(t.generated, t.output)
    assert t.finished_count == len(req)
    # conservation across the hand-off: one transfer per multi-token request, none for one-token requests
    # (a request that entered a mixed pool runs both phases there, with no hand-off)
    replica = req["replica"].to_numpy()
    colocated = np.zeros(len(req), dtype=bool)
    for pool in info.pools:
        if pool.role == "mixed":
            colocated |= (replica >= pool.first_replica) & (replica < pool.first_replica + pool.num_replicas)
    colocated &= req["prefill_replica"].to_numpy() < 0
    multi = (req["output_tokens"].to_numpy() > 1) & ~colocated
    assert np.array_equal(req["kv_transfers"].to_numpy(), multi.astype(np.int64))
    p0, p1 = pool_range(info, "prefill")
    src = req["prefill_replica"].to_numpy()[multi]
    assert ((src >= p0) & (src < p1)).all()
    received = np.zeros(len(req), dtype=bool)
    for pool in info.pools:
        if pool.role in ("decode", "mixed"):
            received |= (replica >= pool.first_replica) & (replica < pool.first_replica + pool.num_replicas)
    assert received[multi].all()
    # causality per stage
    assert (req["schedule_s"] >= req["arrival_s"] - 1e-12).all()
    assert (req["first_token_s"] >= req["schedule_s"]).all()
    m = req[multi]
    assert np.allclose(m["kv_ready_s"], m["first_token_s"])
    assert (m["kv_transfer_start_s"] >= m["kv_ready_s"]).all()
    assert (m["kv_transfer_end_s"] > m["kv_transfer_start_s"]).all()
    assert (m["finish_s"] > m["kv_transfer_end_s"]).all()  # the decode pool produced the second token
    # each replica's iterations follow one another; KV never above capacity, all freed at the end
    it = out.result.iterations
    for _, rows in it.groupby("replica"):
        starts, ends = rows["start_s"].to_numpy(), rows["end_s"].to_numpy()
        assert np.all(starts[1:] >= ends[:-1] - 1e-9)
    assert (it["kv_blocks_used"] <= it["kv_blocks_total"]).all()
    assert out.kv_blocks_used_at_end == [0] * len(out.kv_blocks_used_at_end)
    assert t.kv_tokens.sum() == 0
    # one token gap per token after the first
    assert out.result.token_gaps.num_samples == int((req["output_tokens"] - 1).sum())


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    qps=st.floats(1.0, 40.0),
    scheduler=st.sampled_from(["vllm", "sarathi", "orca"]),
    tight=st.booleans(),
    layerwise=st.booleans(),
)
def test_invariants_hold_in_every_pool(seed, qps, scheduler, tight, layerwise):
    sc = pd_scenario(
        seed=seed, qps=qps, n=60, scheduler=scheduler, decode=TIGHT_DECODE if tight else None, layerwise=layerwise
    )
    check_pool_invariants(simulate(sc))


def test_link_bytes_are_the_kv_moved():
    out = simulate(pd_scenario(n=100))
    req = out.result.requests
    multi = req["output_tokens"] > 1
    expected = (req["prompt_tokens"][multi] * KV_PER_TOKEN_LLAMA2_7B).to_numpy(dtype=float)
    assert np.array_equal(req["kv_transfer_bytes"][multi].to_numpy(), expected)
    s = summarise(out.result)
    assert s["kv_handoff_gib"] == pytest.approx(expected.sum() / 2**30)


def test_transfer_time_is_latency_plus_bytes_over_lanes():
    """A100 NVLink: 300 GB/s per direction per GPU; tp=2 on both sides gives two lanes."""
    sc = pd_scenario(n=20, qps=0.5, prefill={"tp": 2}, decode={"tp": 2})
    req = simulate(sc).result.requests
    m = req[req["kv_transfers"] > 0]
    held = (m["kv_transfer_end_s"] - m["kv_transfer_start_s"]).to_numpy()
    want = 10e-6 + m["kv_transfer_bytes"].to_numpy() / (2 * 300e9)
    assert np.allclose(held, want, rtol=1e-9)


def test_preemption_under_decode_memory_pressure_keeps_conservation():
    out = simulate(pd_scenario(qps=30.0, n=120, decode=TIGHT_DECODE))
    check_pool_invariants(out)
    assert out.result.requests["preemptions"].sum() > 0  # the decode pool recomputed some sequences locally


def test_congested_decode_pool_pushes_back_on_prefill():
    """With one decode replica of tiny KV, requests wait on the prefill replicas for decode memory."""
    out = simulate(pd_scenario(qps=30.0, n=120, decode={**TIGHT_DECODE, "num_replicas": 1}))
    s = summarise(out.result)
    assert s["kv_handoff_wait_mean_s"] > 0.05
    check_pool_invariants(out)


def test_link_share_of_latency_nvlink_vs_slow_ethernet():
    """The hand-off is a small fraction of E2E over NVLink and a large one over 25 GbE (emerges, not fitted)."""
    long_prompts = {"prompt": (3000, 4000), "output": (20, 40), "qps": 1.0, "n": 60}
    fast = summarise(simulate(pd_scenario(link="nvlink", **long_prompts)).result)
    slow = summarise(simulate(pd_scenario(link="ethernet-25g", **long_prompts)).result)
    assert fast["kv_handoff_share_of_e2e"] < 0.01
    assert slow["kv_handoff_share_of_e2e"] > 0.2
    assert slow["tpot_mean_s"] > fast["tpot_mean_s"]  # the transfer delays the second token


def test_layerwise_transfer_hides_behind_the_prefill():
    kw = {"prompt": (3000, 4000), "output": (20, 40), "qps": 0.5, "n": 30, "link": "ethernet-25g"}
    whole = summarise(simulate(pd_scenario(**kw)).result)
    layered = summarise(simulate(pd_scenario(layerwise=True, **kw)).result)
    assert layered["kv_transfer_mean_s"] < whole["kv_transfer_mean_s"]
    assert layered["e2e_mean_s"] < whole["e2e_mean_s"]


def test_per_pool_results_add_up():
    out = simulate(pd_scenario(prefill={"device": "h100-sxm", "num_replicas": 1}, decode={"num_replicas": 3}))
    s = summarise(out.result)
    assert s["num_gpus"] == 4
    assert s["pool.prefill.num_gpus"] == 1 and s["pool.decode.num_gpus"] == 3
    assert s["energy_j"] == pytest.approx(s["pool.prefill.energy_j"] + s["pool.decode.energy_j"])
    assert s["cost_usd"] == pytest.approx(s["pool.prefill.cost_usd"] + s["pool.decode.cost_usd"])
    # each pool is priced at its own device's rate
    from hwmodels.device import get_device

    h100, a100 = get_device("h100-sxm"), get_device("a100-80gb-sxm")
    assert s["pool.prefill.cost_usd"] / s["pool.decode.cost_usd"] == pytest.approx(
        h100.price_usd_per_hour / (3 * a100.price_usd_per_hour)
    )
    assert out.result.info.price_usd_per_hour == pytest.approx(h100.price_usd_per_hour + 3 * a100.price_usd_per_hour)


def test_same_seed_same_result():
    a = simulate(pd_scenario(seed=3, n=80)).result.requests
    b = simulate(pd_scenario(seed=3, n=80)).result.requests
    assert a.equals(b)


def test_closed_loop_through_pools():
    data = pd_scenario(n=50).model_dump(exclude_unset=True)
    data["workload"].pop("qps")
    data["workload"].update(arrival="closed", concurrency=4)
    out = simulate(Scenario.model_validate(data))
    check_pool_invariants(out)


def test_splitwise_mixed_pool_absorbs_a_queue():
    mixed = {"name": "mixed", "role": "mixed", "device": "a100-80gb-sxm", "num_replicas": 1}
    sc = pd_scenario(
        serving="splitwise",
        qps=40.0,
        n=150,
        prefill={"num_replicas": 1},
        decode={"num_replicas": 1},
        extra_pools=(mixed,),
        overflow_queue=2,
    )
    out = simulate(sc)
    req = out.result.requests
    m0, m1 = pool_range(out.result.info, "mixed")
    in_mixed = (req["replica"] >= m0) & (req["replica"] < m1)
    assert in_mixed.sum() > 0
    colocated = in_mixed & (req["kv_transfers"] == 0) & (req["output_tokens"] > 1)
    assert colocated.sum() > 0  # whole requests ran in the mixed pool
    check_pool_invariants(out)


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda d: d.update(deployment={"tp": 2}), "either `deployment:`"),
        (lambda d: d.pop("serving"), "needs `serving:`"),
        (lambda d: d["pools"][1].update(role="decoder"), "pools.1.role"),
        (lambda d: d["pools"].pop(1), "role 'decode'"),
        (lambda d: d["pools"][1].update(name="prefill"), "unique"),
        (lambda d: d["pools"][1].update(scheduler={"name": "static"}), "pools.1.scheduler"),
        (lambda d: d["serving"].update(link={"kind": "carrier-pigeon"}), "serving.link.kind"),
        (lambda d: d["serving"].update(hops=3), "serving.hops"),
        (lambda d: d["pools"][0].update(tp=3), "pools.0.tp"),
        (lambda d: d["pools"][0].update(techniques=[{"name": "speculative-decoding"}]), "pools.0.techniques[0]"),
    ],
)
def test_bad_pool_configurations_name_the_field(change, where):
    from simulator.pools.build import build_pools

    data = pd_scenario().model_dump(exclude_unset=True)
    change(data)
    with pytest.raises((CapsimError, ValueError)) as err:
        build_pools(Scenario.model_validate(data))
    assert where in str(err.value)


def test_single_pool_scenarios_have_no_pool_keys():
    sc = Scenario.model_validate({"workload": {"qps": 2}, "simulation": {"num_requests": 20}})
    s = summarise(simulate(sc).result)
    assert not any(k.startswith("pool.") or k.startswith("kv_hand") for k in s)


def test_example_scenarios_validate():
    from simulator.config.loader import load_scenarios
    from simulator.planner.plan import load_plan

    for path in ("scenarios/examples/disaggregation.yaml", "scenarios/examples/splitwise.yaml"):
        scenarios = load_scenarios(path)
        assert any(sc.pools is not None for sc in scenarios)
    plan, candidates = load_plan("scenarios/examples/plan_disaggregation.yaml")
    assert sum(sc.pools is not None for sc in candidates) == 4


def test_planner_prices_and_simulates_pool_candidates():
    """A plan can choose between one pool and several; pool candidates are built and simulated, not pruned."""
    from simulator.planner.plan import load_plan, prepass
    from simulator.planner.worker import evaluate_rate
    from simulator.sweep.store import scenario_payload

    plan, candidates = load_plan("scenarios/examples/plan_disaggregation.yaml", ["simulation.num_requests=40"])
    cands = prepass(candidates)
    pooled = [c for c in cands if c.scenario.pools is not None]
    assert [c.gpus for c in pooled] == [3, 3, 3, 4]
    assert pooled[2].cost_per_hour_usd < pooled[0].cost_per_hour_usd  # A100 decode pool is cheaper
    assert all(c.verdict["reason"] == "pools" for c in pooled)
    result = evaluate_rate(scenario_payload(pooled[0].scenario))
    assert result["status"] == "ok", result
    assert result["summary"]["kv_handoffs"] > 0


def test_swap_preemption_works_in_a_decode_pool():
    sc = pd_scenario(qps=30.0, n=120, decode=TIGHT_DECODE)
    data = sc.model_dump(exclude_unset=True)
    data["pools"][1]["scheduler"] = {"name": "vllm", "max_num_seqs": 8, "max_num_batched_tokens": 4096,
                                     "preemption_mode": "swap"}
    out = simulate(Scenario.model_validate(data))
    check_pool_invariants(out)
    s = summarise(out.result)
    assert s["swap_outs"] > 0 and s["swap_ins"] == s["swap_outs"]


def test_list_and_explain_serving_systems_and_links(cli):
    out = cli("list", "systems")
    assert out.exit_code == 0 and "disaggregated" in out.stdout and "semi-pd" in out.stdout
    out = cli("list", "links")
    assert out.exit_code == 0 and "infiniband-ndr" in out.stdout and "ethernet-25g" in out.stdout
    out = cli("explain", "splitwise")
    assert out.exit_code == 0 and "overflow_queue" in out.stdout and "Patel" in out.stdout


def test_validate_prints_each_pool(cli):
    out = cli("validate", "scenarios/examples/disaggregation.yaml")
    assert out.exit_code == 0, out.stdout
    assert "pool prefill (prefill)" in out.stdout and "pool decode (decode)" in out.stdout
