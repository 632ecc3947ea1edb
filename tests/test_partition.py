"""Intra-GPU partitioning (semi-PD / Nexus): two workers on the same GPUs with an SM split, one weight copy and
one KV cache. Hand checks of the pricing and the memory, and the engine invariants with shared KV blocks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator.config.schema import Scenario
from simulator.engine import simulate
from simulator.metrics.summary import summarise
from simulator.pools.build import build_pools
from simulator.pools.partition import PartitionParams, attainable_shares
from simulator.system import build_system


def semi_pd(*, share=0.5, saturation=0.5, qps=6.0, n=150, seed=0, scheduler="vllm", replicas=1, tight=False):
    sched = {"vllm": {"name": "vllm", "max_num_seqs": 32, "max_num_batched_tokens": 4096},
             "sarathi": {"name": "sarathi", "max_num_seqs": 32, "chunk_size": 512}}[scheduler]
    mem = {"memory_utilization": 0.2, "activation_reserve_gib": 0.5} if tight else {}
    pool = {"device": "a100-80gb-sxm", "num_replicas": replicas, **mem}
    return Scenario.model_validate({
        "seed": seed, "model": "llama-2-7b", "scheduler": sched,
        "serving": {"name": "semi-pd", "prefill_share": share, "bandwidth_saturation": saturation},
        "pools": [{"name": "prefill", "role": "prefill", **pool}, {"name": "decode", "role": "decode", **pool}],
        "workload": {"qps": qps, "prompt": {"dist": "uniform", "low": 50, "high": 2000},
                     "output": {"dist": "uniform", "low": 1, "high": 300}},
        "simulation": {"num_requests": n},
    })


def test_shares_are_concave_in_sms_and_shared_under_contention():
    p = PartitionParams(prefill_share=0.3, bandwidth_saturation=0.5)
    cp, bp, cd, bd = attainable_shares(p, both_busy=False)
    assert (cp, cd) == (0.3, 0.7)
    assert bp == pytest.approx(0.6) and bd == 1.0  # 70 % of the SMs already saturate HBM
    _, bp2, _, bd2 = attainable_shares(p)
    assert bp2 + bd2 == pytest.approx(1.0) and bp2 / bd2 == pytest.approx(0.6)


def test_each_worker_is_priced_at_its_share():
    pools = build_pools(semi_pd(share=0.25))
    whole = build_system(Scenario.model_validate({"model": "llama-2-7b", "deployment": {"device": "a100-80gb-sxm"}}))
    by_role = {p.role: p.system for p in pools.pools}
    big_prefill = dict(ptok=8192, logits=1, work=8192 * 8192 / 2, kv_read=0, n_dec=0, ctx=0)
    t_whole = whole.cost_model().iteration_from_totals(*big_prefill.values()).time_s
    t_part = by_role["prefill"].cost_model().iteration_from_totals(*big_prefill.values()).time_s
    assert t_part / t_whole == pytest.approx(4.0, rel=0.05)  # compute-bound: a quarter of the SMs, ~4x the time


def test_one_weight_copy_and_one_kv_cache_for_both_workers():
    pools = build_pools(semi_pd())
    p, d = (pl.system.memory for pl in pools.pools)
    expected = int((d.usable_bytes - d.weights_bytes - d.reserve_bytes - p.reserve_bytes)
                   // (d.kv_bytes_per_token * d.block_size))
    assert pools.shared_kv_blocks == expected
    assert pools.num_gpus == 1 and pools.cost_per_hour_usd == pytest.approx(pools.pools[0].system.device.price_usd_per_hour)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 1000), qps=st.floats(2.0, 30.0), scheduler=st.sampled_from(["vllm", "sarathi"]),
       tight=st.booleans(), share=st.floats(0.2, 0.8))
def test_invariants_with_a_shared_kv_cache(seed, qps, scheduler, tight, share):
    out = simulate(semi_pd(seed=seed, qps=qps, scheduler=scheduler, tight=tight, share=share, replicas=2, n=80))
    req, t = out.result.requests, out.table
    assert req["finish_s"].notna().all() and np.array_equal(t.generated, t.output)
    assert (req["kv_transfers"] == 0).all()  # nothing moves: the KV is where the decode worker reads it
    multi = req["output_tokens"] > 1
    # the decode worker on the same GPUs takes the request: engine k of prefill pairs with engine k of decode
    assert ((req.loc[multi, "replica"] - req.loc[multi, "prefill_replica"]) == 2).all()
    it = out.result.iterations
    assert (it["kv_blocks_used"] <= it["kv_blocks_total"]).all()
    assert out.kv_blocks_used_at_end == [0] * len(out.kv_blocks_used_at_end) and t.kv_tokens.sum() == 0
    for _, rows in it.groupby("replica"):
        starts, ends = rows["start_s"].to_numpy(), rows["end_s"].to_numpy()
        assert np.all(starts[1:] >= ends[:-1] - 1e-9)
    assert out.result.token_gaps.num_samples == int((req["output_tokens"] - 1).sum())


def test_decode_is_slower_while_the_prefill_worker_runs():
    """Contention emerges from the schedule: decode steps overlapping a prefill iteration share the HBM."""
    out = simulate(semi_pd(share=0.5, saturation=0.5, qps=4.0, n=120))
    it = out.result.iterations
    pre = it[it["prefill_seqs"] > 0][["start_s", "end_s"]].to_numpy()
    dec = it[(it["decode_seqs"] > 0) & (it["prefill_seqs"] == 0)]
    per_step = (dec["duration_first_s"]).to_numpy()
    overlapped = np.array([((pre[:, 0] < e) & (pre[:, 1] > s)).any() for s, e in dec[["start_s", "end_s"]].to_numpy()])
    assert overlapped.any() and (~overlapped).any()
    # same batch sizes compared: decode steps of one sequence
    one = dec["decode_seqs"].to_numpy() == 1
    if (one & overlapped).any() and (one & ~overlapped).any():
        assert per_step[one & overlapped].max() > per_step[one & ~overlapped].min()
    s = summarise(out.result)
    assert s["num_gpus"] == 1 and s["pool.prefill.num_gpus"] == pytest.approx(0.5)


def test_mismatched_workers_are_refused():
    from capsim.errors import CapsimError

    data = semi_pd().model_dump(exclude_unset=True)
    data["pools"][1]["tp"] = 2
    with pytest.raises(CapsimError) as err:
        build_pools(Scenario.model_validate(data))
    assert "share GPUs" in str(err.value) and "tp" in str(err.value)


def resplit_scenario(share, resplit=True, switch=0.005):
    data = semi_pd(share=share, qps=8.0, n=400).model_dump(exclude_unset=True)
    data["model"] = "llama-3.1-8b"
    for pool in data["pools"]:
        pool["device"] = "h100-sxm"
        pool["num_replicas"] = 2
    data["workload"] = {"qps": 8.0, "prompt": {"dist": "lognormal", "mean": 2048, "std": 1024, "max": 8000},
                        "output": {"dist": "lognormal", "mean": 256, "std": 128, "max": 2000}}
    data["slo"] = {"ttft_s": 0.5, "tpot_s": 0.025}
    data["router"] = {"name": "least-outstanding"}
    data["scheduler"] = {"name": "vllm"}
    if resplit:
        data["serving"]["resplit"] = {"switch_cost_s": switch}
    return Scenario.model_validate(data)


def test_slo_aware_resplit_rescues_a_prefill_starved_split():
    """Starting with 30 % of the SMs for prefill, TTFT misses; the controller moves SMs to prefill (emerges from
    the measured attainment, nothing fitted)."""
    static = simulate(resplit_scenario(0.3, resplit=False))
    dynamic = simulate(resplit_scenario(0.3))
    s0, s1 = summarise(static.result, resplit_scenario(0.3).slo), summarise(dynamic.result, resplit_scenario(0.3).slo)
    assert s1["sm_resplits"] >= 1 and s1["sm_prefill_share_final"] > 0.3
    assert s1["slo_attainment"] > s0["slo_attainment"]
    assert dynamic.kv_blocks_used_at_end == [0] * len(dynamic.kv_blocks_used_at_end)
    assert dynamic.result.requests["finish_s"].notna().all()


def test_a_resplit_pauses_both_workers_for_the_switch_cost():
    out = simulate(resplit_scenario(0.3, switch=0.05))
    it = out.result.iterations
    assert out.result.info.resplits
    for when, _share in out.result.info.resplits:
        started = it[(it["start_s"] > when + 1e-12) & (it["start_s"] < when + 0.05 - 1e-9)]
        assert started.empty  # nothing starts on the re-partitioned GPUs during the pause


def test_resplit_needs_latency_targets():
    from capsim.errors import CapsimError

    data = resplit_scenario(0.5).model_dump(exclude_unset=True)
    data["slo"] = {"ttft_s": 0.5}
    with pytest.raises(CapsimError) as err:
        simulate(Scenario.model_validate(data))
    assert "serving.resplit" in str(err.value)
