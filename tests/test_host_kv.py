"""A host-memory KV tier per replica (prefix caching's ``host_tier``; AttentionStore, LMCache CPU offload): blocks the
HBM cache evicts are kept in host DRAM and loaded back over PCIe. A hand-checked load, the load-or-recompute
decision, invariants of both tiers, and the multi-turn effect under memory pressure."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capsim.errors import CapsimError
from simulator.config.loader import load_scenarios
from simulator.config.schema import Scenario
from simulator.engine import simulate
from simulator.metrics.summary import summarise
from simulator.prefix_cache import PrefixIndex
from simulator.remote_kv import ContextLoader, lone_prefill_price
from simulator.requests import RequestTable
from simulator.system import build_system
from tests.test_engine_invariants import check_invariants
from tests.test_prefix_caching import scenario
from tests.test_remote_kv import TINY_RUNS, check_loads, simulate_tiny_multi_turn

LLAMA2_KV = 32 * 2 * 32 * 128 * 2  # llama-2-7b: layers x (K, V) x heads x head_dim x fp16 bytes per token
EXAMPLE = "scenarios/examples/multi_turn_host_kv.yaml"


def conversations(host_gib=None, **deployment) -> Scenario:
    """Three 2-turn conversations, one request at a time, on one A100 whose KV holds 2,304 tokens (9 units of 256):
    turn 0 of each leaves 4 units cached (prompt and answer), so the third conversation's turn 0 evicts the first
    one's units, the first one's turn 1 evicts the second's, and so on -- with HBM alone every turn 1 misses."""
    technique = {"name": "prefix-caching", "cache_generated": True}
    if host_gib is not None:
        technique["host_tier"] = {"capacity_gib": host_gib}
    return scenario(
        deployment={
            "device": "a100-80gb-sxm",
            "memory_utilization": 0.171,
            "activation_reserve_gib": 0.0,
            **deployment,
        },
        workload={
            "arrival": "poisson",
            "qps": 0.5,
            "prompt": {"dist": "fixed", "value": 1100},
            "output": {"dist": "fixed", "value": 8},
            "sharing": {"pattern": "multi-turn", "turns": 2, "block_tokens": 256},
        },
        simulation={"num_requests": 6},
        techniques=[technique],
    )


def test_the_scenario_puts_hbm_under_pressure():
    sc = conversations()
    assert build_system(sc).memory.kv_capacity_tokens == 2304
    out = simulate(sc)
    assert out.result.requests["cached_tokens"].tolist() == [0] * 6  # every turn 1 lost its blocks
    assert "host_found_tokens" not in out.result.requests.columns
    assert not any(k.startswith("host_") for k in summarise(out.result))


def test_a_known_host_hit_is_loaded_over_pcie_and_charged_on_the_iteration():
    out = simulate(conversations(64))
    req = out.result.requests
    # Turn 1 (2,208 tokens: 1,100 + 8 + 1,100) finds turn 0's floor(1,107 / 256) = 4 units in host memory.
    assert req["prompt_tokens"].tolist() == [1100] * 3 + [2208] * 3
    assert req["host_found_tokens"].tolist() == [0, 0, 0, 1024, 1024, 1024]
    assert req["host_loaded_tokens"].tolist() == [0, 0, 0, 1024, 1024, 1024]
    assert req["cached_tokens"].tolist() == [0, 0, 0, 1024, 1024, 1024]
    assert req["host_loaded_bytes"].tolist() == [0.0] * 3 + [1024.0 * LLAMA2_KV] * 3
    load = 10e-6 + 1024 * LLAMA2_KV / 32e9  # A100 SXM: PCIe 32 GB/s per direction, 10 us (devices.yaml)
    price = lone_prefill_price(build_system(conversations(64)).cost_model())
    assert load < price(2208, 0) - price(1184, 1024)  # loading beats recomputing the 1,024 tokens
    it = out.result.iterations.query("prefill_tokens > 0")
    assert it["prefill_tokens"].tolist() == [1100] * 3 + [1184] * 3
    took = (it["end_s"] - it["start_s"]).to_numpy()
    np.testing.assert_allclose(took[3:], price(1184, 1024) + load, rtol=1e-9)
    s = summarise(out.result)
    assert s["host_loads"] == 3 and s["host_recomputes"] == 0 and s["host_loaded_tokens"] == 3072
    assert s["host_hit_rate_tokens"] == pytest.approx(3072 / (3 * 1100 + 3 * 2208))
    assert s["host_bytes_loaded"] == 3072.0 * LLAMA2_KV
    base = simulate(conversations()).result.requests
    ttft, ttft_hbm = req["first_token_s"] - req["arrival_s"], base["first_token_s"] - base["arrival_s"]
    assert ttft.iloc[3:].max() < ttft_hbm.iloc[3:].min()  # every turn 1 starts sooner
    check_invariants(out)


def test_a_host_tier_too_small_for_a_conversation_keeps_only_the_latest_evictions():
    # 0.6 GiB holds floor(0.6 GiB / (256 x 512 KiB)) = 4 units: one conversation's. Turn 0 of conversation 2
    # evicts conversation 0's units into it, and conversation 0's turn 1 loads them back; making room for that
    # turn's 2,208 tokens evicts conversations 1 and 2 (8 units), of which the host keeps the last 4 (2's), and
    # conversation 1's turn 1 then evicts those for its own predecessor's: turns 1 of conversations 1 and 2 miss.
    out = simulate(conversations(0.6))
    assert out.result.requests["host_loaded_tokens"].tolist() == [0, 0, 0, 1024, 0, 0]
    check_invariants(out)


def test_without_evictions_the_host_tier_changes_nothing():
    plain = simulate(scenario(techniques=[{"name": "prefix-caching", "cache_generated": True}]))
    host = simulate(
        scenario(techniques=[{"name": "prefix-caching", "cache_generated": True, "host_tier": {"capacity_gib": 8}}])
    )
    np.testing.assert_array_equal(plain.result.requests["first_token_s"], host.result.requests["first_token_s"])
    np.testing.assert_array_equal(plain.result.requests["cached_tokens"], host.result.requests["cached_tokens"])
    assert host.result.requests["host_found_tokens"].sum() == 0


def test_host_tier_input_errors():
    with pytest.raises(CapsimError, match="holds no") as err:
        simulate(conversations(0.01))
    assert err.value.where == "techniques.prefix-caching.host_tier.capacity_gib"
    with pytest.raises(CapsimError) as err:
        simulate(conversations(-1))
    assert "host_tier.capacity_gib" in err.value.where


# ------------------------------------------------------------ the block manager's two tiers
def two_tier_manager(total_blocks: int, host_units: int, n: int = 6, unit: int = 64):
    """Requests with distinct 4-unit prefixes (and rid 3 + k sharing rid k's), a host tier whose loads always win."""
    ids = [np.array([10 * (r % 3) + j for j in range(4)]) for r in range(n)]
    prompts = np.array([len(h) * unit for h in ids]) + 5
    table = RequestTable(np.zeros(n), prompts, np.full(n, 50))
    now = [0.0]
    index = PrefixIndex(table, ids, unit, lambda: now[0])
    index.host = ContextLoader(n, None, 1000.0, 1e12, 0.0, 1.0, 0.0, lambda q, c: 1e-3 * q)
    index.host_units = host_units
    return index.block_manager(total_blocks, 16, table), table, now, index


def test_evicted_units_go_to_host_memory_and_come_back_from_it():
    m, t, now, index = two_tier_manager(total_blocks=40, host_units=8)
    for rid in (0, 1):
        now[0] += 1.0
        assert m.attach(rid) == 0
        m.grow(rid, int(t.prompt[rid]))
        m.release(rid)
    now[0] += 1.0
    m.attach(2)
    m.grow(2, int(t.prompt[2]))  # 17 blocks beside 32 free-able ones: rid 0's units are evicted
    assert m.evicted_units >= 1 and len(m.host) == m.evicted_units
    m.release(2)
    now[0] += 1.0
    evicted = m.evicted_units
    order = list(m.host._ready)
    assert m.match_tokens(3) == 4 * 64  # a cache-aware router counts the host-held units as this replica's
    assert list(m.host._ready) == order  # ... and looking does not refresh them
    got = m.attach(3)  # same prefix as rid 0: its HBM part hit, the evicted rest loaded from host memory
    assert got == 4 * 64 and index.host.found_tokens[3] == index.host.loaded_tokens[3] > 0
    assert index.host.loaded_bytes[3] == index.host.loaded_tokens[3] * 1000.0
    assert index.host(()) == 0.0  # a chunk of another request does not wait for rid 3's load
    assert m.resident_blocks <= m.total_blocks and m.evicted_units >= evicted
    m.release(3)
    assert index.host._pending == {}  # released before its chunk ran: nothing left to wait for


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["admit", "decode", "release"]), st.integers(0, 5), st.integers(1, 40)), max_size=60
    ),
    total=st.integers(20, 60),
    host_units=st.integers(1, 12),
)
def test_two_tier_invariants_under_random_operations(ops, total, host_units):
    """KV in HBM (in use + free-able cached) never exceeds its capacity, the host tier never exceeds its own, a
    unit loaded from host memory is resident and referenced like a computed one, and all blocks come back."""
    m, t, now, index = two_tier_manager(total, host_units)
    running: set[int] = set()
    for step, (op, rid, k) in enumerate(ops):
        now[0] = float(step)
        if op == "admit" and rid not in running:
            if m.blocks_to_admit(rid, int(t.prompt[rid])) > m.free_blocks:
                continue
            m.attach(rid)
            m.grow(rid, int(t.prompt[rid]))
            running.add(rid)
        elif op == "decode" and rid in running:
            if m.blocks_to_grow(rid, int(t.kv_tokens[rid]) + k) > m.free_blocks:
                continue
            m.grow_all(np.array([rid]), k)
        elif op == "release" and rid in running:
            m.release(rid)
            running.discard(rid)
        referenced = {u for r in running for u in m._held.get(r, [])}
        private = sum(-(-int(t.kv_tokens[r]) // 16) - len(m._held.get(r, [])) * m.unit_blocks for r in running)
        assert m.used_blocks == private + len(referenced) * m.unit_blocks
        assert m.resident_blocks <= m.total_blocks and m.peak_resident_blocks <= m.total_blocks
        assert len(m.host) <= host_units
    for r in list(running):
        m.release(r)
    assert m.used_blocks == 0
    assert np.all(index.host.loaded_tokens <= index.host.found_tokens)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    **TINY_RUNS,
    router=st.sampled_from(["round-robin", "cache-aware"]),
    capacity=st.sampled_from([0.05, 1.0]),  # 2 or 42 units of 48 x 512 KiB
)
def test_engine_invariants_hold_with_a_host_tier(scheduler, seed, qps, n, replicas, router, capacity):
    technique = {"name": "prefix-caching", "cache_generated": True, "host_tier": {"capacity_gib": capacity}}
    out = simulate_tiny_multi_turn(scheduler, seed, qps, n, replicas, True, [technique], router)
    check_loads(out, "host")


def test_multi_turn_under_memory_pressure_the_host_tier_restores_hits_and_lowers_ttft():
    """The shipped example (400 conversations in flight on 2 H100s, cache-aware routing): whatever the numbers,
    the host tier must recover the hits HBM alone loses and start turns sooner."""
    hbm, host = (summarise(simulate(sc).result) for sc in load_scenarios(EXAMPLE))
    assert "host_loads" not in hbm and host["host_loads"] > 0
    assert host["prefix_hit_rate_tokens"] > hbm["prefix_hit_rate_tokens"] + 0.2
    assert host["ttft_mean_s"] < hbm["ttft_mean_s"] and host["ttft_p99_s"] < hbm["ttft_p99_s"]
