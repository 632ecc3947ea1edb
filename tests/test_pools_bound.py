"""The optimal-throughput bound of multi-pool runs (simulator/pools/bound.py): the least of each stage's bound
(prefill pool, decode pool, KV link), each from its phase's work only; equal to the single-pool bound for one
colocated pool; the simulated throughput never above it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from simulator.config.schema import Scenario
from simulator.costmodel import features as F
from simulator.engine import simulate
from simulator.metrics.summary import summarise
from simulator.throughput_bound import workload_features
from tests.test_migration import llumnix
from tests.test_pools import pd_scenario


def test_phase_features_split_the_colocated_work():
    rng = np.random.default_rng(0)
    P, out = rng.integers(1, 3000, 200), rng.integers(1, 500, 200)
    both = workload_features(P, out, 64, 100_000)
    pre = workload_features(P, out, 64, 100_000, phase="prefill", max_batch_tokens=4096)
    dec = workload_features(P, out, 64, 100_000, phase="decode")
    work = [i for i in range(F.NUM_FEATURES) if i not in (F.ONE, F.EXPERTS_HIT)]
    assert np.allclose((pre + dec)[work], both[work])
    assert pre[F.ONE] == pytest.approx(P.sum() / max(4096, P.max()))
    assert dec[F.DECODE_SEQS] == both[F.DECODE_SEQS] and pre[F.DECODE_SEQS] == 0


def test_disaggregated_bound_is_the_least_stage_and_the_link_is_its_nic_time():
    sc = pd_scenario(n=150, qps=20.0, link="ethernet-25g", prompt=(500, 3000), output=(1, 100),
                     prefill={"num_replicas": 1}, decode={"num_replicas": 2})
    out = simulate(sc)
    s = summarise(out.result)
    stages = [s["pool.prefill.bound_output_tps"], s["pool.decode.bound_output_tps"], s["kv_link_bound_output_tps"]]
    assert s["bound_output_tps"] == pytest.approx(min(stages))
    req = out.result.requests
    # one 25 GbE NIC per server: each transfer holds it latency + bytes / 3.125 GB/s; one sender, so one at a time
    from hwmodels.network import resolve_link
    from simulator.pools.build import build_pools

    pools = build_pools(sc)
    link = resolve_link(pools.params.link, pools.pools[0].system.device, pools.pools[1].system.device, 1, 1,
                        where="serving.link")
    moved = req[req["kv_transfers"] > 0]
    link_s = sum(link.transfer_s(b) for b in moved["kv_transfer_bytes"])
    assert s["kv_link_bound_output_tps"] == pytest.approx(req["output_tokens"].sum() / link_s, rel=1e-9)
    assert s["bound_resource"] == "network"  # a slow NIC binds long prompts with short answers
    assert s["output_tps"] <= s["bound_output_tps"]


@pytest.mark.parametrize("qps", [4.0, 60.0])
def test_simulated_throughput_never_exceeds_the_bound(qps):
    s = summarise(simulate(pd_scenario(n=200, qps=qps)).result)
    assert math.isfinite(s["bound_output_tps"])
    assert s["output_tps"] <= s["bound_output_tps"]


def test_one_colocated_pool_has_the_single_pool_bound():
    pool = llumnix(migration=False, n=200)
    data = pool.model_dump(exclude_unset=True)
    single = Scenario.model_validate({
        **{k: v for k, v in data.items() if k not in ("pools", "serving")},
        "deployment": {k: v for k, v in data["pools"][0].items() if k not in ("name", "role")},
    })
    a, b = summarise(simulate(pool).result), summarise(simulate(single).result)
    for key in ("bound_output_tps", "bound_compute_output_tps", "bound_memory_output_tps"):
        assert a[key] == pytest.approx(b[key], rel=1e-12)


def test_a_quantised_cache_raises_the_link_bound():
    plain = pd_scenario(n=80, link="ethernet-25g")
    data = plain.model_dump(exclude_unset=True)
    data["techniques"] = [{"name": "kv-quantization", "bits": 8}]
    a = summarise(simulate(plain).result)["kv_link_bound_output_tps"]
    b = summarise(simulate(Scenario.model_validate(data)).result)["kv_link_bound_output_tps"]
    assert b / a == pytest.approx(2.0 / (1.0 + 4.0 / 64.0), rel=0.02)  # bytes 0.53x; the latency is small


def test_splitwise_with_a_mixed_pool_is_not_bounded():
    mixed = {"name": "mixed", "role": "mixed", "device": "a100-80gb-sxm", "num_replicas": 1}
    s = summarise(simulate(pd_scenario(n=40, serving="splitwise", extra_pools=(mixed,))).result)
    assert math.isnan(s["bound_output_tps"])
