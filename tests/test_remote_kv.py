"""Context loading from a remote KV store (issue 16 item 1, CacheGen / LMCache): load time, the per-request
load-or-recompute decision, the charge on the replica's timeline, invariants."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator.config.schema import Scenario
from simulator.engine import simulate
from simulator.metrics.summary import summarise
from simulator.remote_kv import ContextLoader, RemoteStore, lone_prefill_price
from simulator.system import build_system
from tests.test_engine_invariants import check_invariants, tiny_scenario
from tests.test_prefix_caching import scenario

LLAMA2_KV = 32 * 2 * 32 * 128 * 2  # llama-2-7b: layers x (K, V) x heads x head_dim x fp16 bytes per token


def remote(link, **extra) -> list[dict]:
    return [{"name": "prefix-caching", "remote_store": {"link": link, **extra}}]


def two_replicas(link, **extra) -> Scenario:
    """Four 2800-token prompts sharing 2048 tokens (4 x 512), one at a time, round-robin over two replicas:
    request 1 misses on replica 1 but finds request 0's blocks in the store."""
    return scenario(
        deployment={"device": "a100-80gb-sxm", "num_replicas": 2},
        router={"name": "round-robin"},
        techniques=remote(link, **extra),
    )


def test_load_time_by_hand():
    loader = ContextLoader(1, RemoteStore(), 131072.0, 25e9 / 8, 50e-6, 4.0, 800e9 / 8, lambda q, c: 0.0)
    took, wire = loader.load_time(512)
    assert wire == 512 * 131072 / 4
    assert took == pytest.approx(50e-6 + 512 * 32768 / 3.125e9 + 512 * 131072 / 100e9)


def test_decision_compares_load_with_the_marginal_prefill_price():
    # A toy price of 10 us per new token: recomputing 512 tokens costs 5.12 ms whatever the hit.
    price = lambda q, c: 1e-5 * q  # noqa: E731
    fast = ContextLoader(2, RemoteStore(), 131072.0, 50e9, 5e-6, 1.0, 0.0, price)
    slow = ContextLoader(2, RemoteStore(), 131072.0, 3.125e9, 50e-6, 1.0, 0.0, price)
    assert fast.recompute_time(2800, 1024, 512) == pytest.approx(5.12e-3)
    assert fast.decide(0, 2800, 1024, 512, True)  # 1.35 ms < 5.12 ms
    assert not slow.decide(0, 2800, 1024, 512, True)  # 21.5 ms > 5.12 ms
    assert fast.loaded_tokens[0] == 512 and slow.loaded_tokens[0] == 0
    assert fast.found_tokens[0] == slow.found_tokens[0] == 512
    assert fast.load_s[0] == pytest.approx(5e-6 + 512 * 131072 / 50e9)


def test_store_capacity_drops_least_recently_used_and_is_hittable_only_after_written():
    store = RemoteStore(capacity_units=2)
    store.put(1, 0.0)
    assert not store.holds(1, 0.0)  # written in this instant: not yet readable
    store.put(2, 0.0)
    assert store.holds(1, 1.0)  # 1 becomes most recent
    store.put(3, 1.0)
    assert not store.holds(2, 2.0) and store.holds(1, 2.0) and store.holds(3, 2.0)


def test_a_known_remote_hit_is_loaded_and_charged_on_the_fast_link():
    out = simulate(two_replicas("infiniband-ndr"))
    req = out.result.requests
    assert req["cached_tokens"].tolist() == [0, 2048, 2048, 2048]  # request 1 loaded, 2 and 3 hit locally
    assert req["remote_found_tokens"].tolist() == [0, 2048, 0, 0]
    assert req["remote_loaded_tokens"].tolist() == [0, 2048, 0, 0]
    load = 5e-6 + 2048 * LLAMA2_KV / (400e9 / 8)  # NDR: 400 Gb/s per GPU, 5 us; raw fp16 KV
    assert req["remote_loaded_bytes"].tolist() == [0.0, 2048.0 * LLAMA2_KV, 0.0, 0.0]
    system = build_system(two_replicas("infiniband-ndr"))
    price = lone_prefill_price(system.cost_model())
    assert load < price(2800, 0) - price(752, 2048)  # the decision: loading beats recomputing 2048 tokens
    it = out.result.iterations.query("prefill_tokens > 0")
    assert it["prefill_tokens"].tolist() == [2800, 752, 752, 752]
    took = (it["end_s"] - it["start_s"]).to_numpy()
    assert took[1] == pytest.approx(price(752, 2048) + load)  # the iteration waits for the load
    assert took[2] == pytest.approx(price(752, 2048))  # a local hit loads nothing
    s = summarise(out.result)
    assert s["remote_loads"] == 1 and s["remote_recomputes"] == 0
    assert s["remote_hit_rate_tokens"] == pytest.approx(2048 / (4 * 2800))
    assert s["remote_bytes_loaded"] == 2048.0 * LLAMA2_KV
    check_invariants(out)


def test_the_slow_link_recomputes_and_compression_turns_it_back_into_a_load():
    slow = simulate(two_replicas("ethernet-25g"))  # 1 GiB over 25 Gb/s: 344 ms, more than the prefill
    req = slow.result.requests
    assert req["remote_found_tokens"].tolist() == [0, 2048, 0, 0]
    assert req["remote_loaded_tokens"].tolist() == [0, 0, 0, 0]
    # Request 1 recomputed the shared blocks on replica 1; request 3 then hits them there locally.
    assert req["cached_tokens"].tolist() == [0, 0, 2048, 2048]
    s = summarise(slow.result)
    assert s["remote_loads"] == 0 and s["remote_recomputes"] == 1
    plain = simulate(
        scenario(deployment={"device": "a100-80gb-sxm", "num_replicas": 2}, router={"name": "round-robin"})
    )
    np.testing.assert_allclose(req["first_token_s"], plain.result.requests["first_token_s"])  # as with no store
    packed = simulate(two_replicas("ethernet-25g", compression_ratio=16, decode_gbps=800))
    assert packed.result.requests["remote_loaded_tokens"].tolist() == [0, 2048, 0, 0]


# Small runs for the invariant property tests (with simulate_tiny_multi_turn).
TINY_RUNS = {
    "scheduler": st.sampled_from(["vllm", "sarathi", "orca", "static"]),
    "seed": st.integers(0, 10_000),
    "qps": st.floats(0.5, 40.0),
    "n": st.integers(1, 40),
    "replicas": st.integers(1, 3),
}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    **TINY_RUNS,
    tight=st.booleans(),
    link=st.sampled_from(["infiniband-ndr", "ethernet-25g"]),
    capacity=st.sampled_from([None, 0.01]),
)
def test_engine_invariants_hold_with_a_remote_store(scheduler, seed, qps, n, replicas, tight, link, capacity):
    techniques = remote(link, compression_ratio=4, capacity_gib=capacity)
    out = simulate_tiny_multi_turn(scheduler, seed, qps, n, replicas, tight, techniques)
    loaded = check_loads(out, "remote")
    req = out.result.requests
    assert np.all(req["remote_loaded_bytes"].to_numpy() >= loaded * out.system.model.kv_bytes_per_token(2) / 4)


def simulate_tiny_multi_turn(scheduler, seed, qps, n, replicas, tight, techniques, router="round-robin"):
    """A small multi-turn run (48-token units, oversized requests dropped) for the invariant property tests."""
    base = tiny_scenario(
        scheduler,
        seed=seed,
        qps=qps,
        n=n,
        replicas=replicas,
        router="round-robin",
        kv_tokens_budget=tight,
        block_size=16,
    )
    data = base.model_dump()
    data["router"] = {"name": router}
    data["workload"]["sharing"] = {"pattern": "multi-turn", "block_tokens": 48}
    data["simulation"]["oversized"] = "drop"
    out = simulate(Scenario.model_validate({**data, "techniques": techniques}))
    check_invariants(out)
    return out


def check_loads(out, tier: str) -> np.ndarray:
    """A tier's loads are all or nothing of what it found, whole units, within the request's hit; the tokens."""
    req = out.result.requests
    loaded, found, cached = (
        req[k].to_numpy() for k in (f"{tier}_loaded_tokens", f"{tier}_found_tokens", "cached_tokens")
    )
    assert np.all((loaded == 0) | (loaded == found)) and np.all(loaded % 48 == 0)
    assert np.all(cached < out.table.prompt)
    assert np.all(cached[cached >= 0] >= loaded[cached >= 0])
    return loaded


def test_remote_store_input_errors():
    from capsim.errors import CapsimError  # noqa: PLC0415

    with pytest.raises(CapsimError, match="unknown network link") as err:
        simulate(two_replicas("infiniband-xyz"))
    assert err.value.where == "techniques.prefix-caching.remote_store.link.kind"
    with pytest.raises(CapsimError, match="greater than or equal to 1") as err:
        simulate(two_replicas("infiniband-ndr", compression_ratio=0.5))
    assert err.value.where == "techniques[0].remote_store.compression_ratio"
