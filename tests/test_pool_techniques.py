"""Serving techniques inside pools: each pool's replicas are built and run through the same technique hooks as
a single pool, and a KV hand-off moves the KV in the format and the token count the techniques leave.

Conservation of bytes: link bytes = Σ kept tokens × bytes per token in the sender's (technique-scaled) format;
techniques that make no sense for a pool's role, or that pools do not model, are refused naming both.
"""

from __future__ import annotations

import numpy as np
import pytest

from capsim.errors import CapsimError
from simulator.config.schema import Scenario
from simulator.engine import simulate
from simulator.pools.build import build_pools
from tests.test_pools import KV_PER_TOKEN_LLAMA2_7B, check_pool_invariants, pd_scenario


def with_techniques(sc: Scenario, techniques=None, pools=None, **changes) -> Scenario:
    data = sc.model_dump(exclude_unset=True)
    if techniques is not None:
        data["techniques"] = techniques
    for i, own in (pools or {}).items():
        data["pools"][i]["techniques"] = own
    data.update(changes)
    return Scenario.model_validate(data)


def kv_quant_bytes_per_element(bits: float, group: int = 64, meta: float = 4.0) -> float:
    return bits / 8 + meta / group  # packed elements plus a scale and zero point per group


@pytest.mark.parametrize("bits", [8, 4])
def test_handoff_moves_the_quantised_kv(bits):
    """kv-quantization at b bits: every hand-off moves prompt × KV elements × (b/8 + metadata) bytes."""
    sc = with_techniques(pd_scenario(n=60), [{"name": "kv-quantization", "bits": bits}])
    out = simulate(sc)
    check_pool_invariants(out)
    req = out.result.requests
    multi = req["output_tokens"] > 1
    scale = kv_quant_bytes_per_element(bits) / 2.0  # against bf16
    want = req["prompt_tokens"][multi].to_numpy() * KV_PER_TOKEN_LLAMA2_7B * scale
    assert np.allclose(req["kv_transfer_bytes"][multi].to_numpy(), want, rtol=1e-12)
    plain = simulate(pd_scenario(n=60)).result.requests
    assert req["kv_transfer_bytes"].sum() == pytest.approx(plain["kv_transfer_bytes"].sum() * scale)
    # the quantised cache holds more tokens in every pool
    sized = build_pools(sc)
    base = build_pools(pd_scenario(n=60))
    for a, b in zip(sized.pools, base.pools, strict=True):
        assert a.system.memory.kv_capacity_tokens > 1.5 * b.system.memory.kv_capacity_tokens


def test_handoff_of_an_evicted_cache_moves_only_the_kept_tokens():
    """SnapKV compresses each prompt to its budget when the prefill ends: the hand-off moves the budget."""
    budget = 128
    sc = with_techniques(
        pd_scenario(n=60, prompt=(1, 600)), [{"name": "kv-eviction", "policy": "snapkv", "budget_tokens": budget}]
    )
    out = simulate(sc)
    check_pool_invariants(out)
    req = out.result.requests
    multi = req["output_tokens"] > 1
    kept = np.minimum(req["prompt_tokens"][multi].to_numpy(), budget)
    assert np.array_equal(req["kv_transfer_bytes"][multi].to_numpy(), kept * float(KV_PER_TOKEN_LLAMA2_7B))
    assert (req["prompt_tokens"][multi] > budget).any()  # some were cut


def test_sliding_window_model_runs_in_pools_and_hands_off_its_window():
    """Mistral-7B attends to a 4,096-token window: a longer prompt hands off the window, not the prompt."""
    sc = pd_scenario(n=12, qps=1.0, prompt=(3000, 6000), output=(2, 20))
    data = sc.model_dump(exclude_unset=True)
    data["model"] = "mistral-7b"
    data["scheduler"]["max_num_batched_tokens"] = 8192
    out = simulate(Scenario.model_validate(data))
    check_pool_invariants(out)
    req = out.result.requests
    system = build_pools(Scenario.model_validate(data)).pools[0].system
    window = system.model.sliding_window
    per_token = system.model.kv_bytes_per_token(2.0)
    want = np.minimum(req["prompt_tokens"].to_numpy(), window) * per_token
    assert np.array_equal(req["kv_transfer_bytes"].to_numpy(), want)
    assert (req["prompt_tokens"] > window).any()


def test_speculative_decoding_runs_in_the_decode_pool_only():
    """The scenario-level list applies a speculative decoder to the decode pool (it skips the prefill pool);
    decoding gets faster, the prefill pool is untouched, and every request is still served exactly once."""
    spec = [{"name": "speculative-decoding", "draft_model": "llama-68m", "k": 4, "acceptance": 0.8}]
    plain_sc = pd_scenario(n=80, qps=4.0, output=(50, 300))
    sc = with_techniques(plain_sc, spec)
    pools = build_pools(sc)
    by_role = {p.role: p.system for p in pools.pools}
    assert by_role["prefill"].step is None and by_role["decode"].step is not None
    out, plain = simulate(sc), simulate(plain_sc)
    check_pool_invariants(out)
    gaps = out.result.requests["tpot_s"].median() if "tpot_s" in out.result.requests else None
    e2e = (out.result.requests["finish_s"] - out.result.requests["first_token_s"]).mean()
    e2e_plain = (plain.result.requests["finish_s"] - plain.result.requests["first_token_s"]).mean()
    assert e2e < 0.8 * e2e_plain, (gaps, e2e, e2e_plain)


def test_pool_techniques_replace_the_scenarios():
    """The decode pool's own list replaces the scenario's; the prefill pool keeps the scenario's 4-bit cache, and
    the hand-off moves what the sender stores (the receiver's 8-bit cache re-quantises on arrival, uncharged)."""
    sc = with_techniques(
        pd_scenario(n=30), [{"name": "kv-quantization", "bits": 4}], pools={1: [{"name": "kv-quantization", "bits": 8}]}
    )
    pools = build_pools(sc)
    assert [p.system.techniques.techniques[0].params.bits for p in pools.pools] == [4, 8]
    req = simulate(sc).result.requests
    multi = req["output_tokens"] > 1
    want = req["prompt_tokens"][multi].to_numpy() * KV_PER_TOKEN_LLAMA2_7B * kv_quant_bytes_per_element(4) / 2
    assert np.allclose(req["kv_transfer_bytes"][multi].to_numpy(), want, rtol=1e-12)
    # an empty list turns the scenario's techniques off in that pool; one no pool runs is an error
    off = build_pools(with_techniques(sc, pools={0: [], 1: []}, simulation={"num_requests": 30}).model_copy(
        update={"techniques": []}))
    assert all(not p.system.techniques for p in off.pools)


@pytest.mark.parametrize(
    ("techniques", "pools", "serving", "where", "says"),
    [
        (None, {0: [{"name": "speculative-decoding", "draft_model": "llama-68m"}]}, None,
         "pools.0.techniques[0]", "cannot serve pool 'prefill'"),
        ([{"name": "speculative-decoding", "draft_model": "llama-68m"}], {1: []}, None,
         "techniques[0]", "serves no pool"),
        ([{"name": "kv-quantization", "bits": 4}, {"name": "prefix-caching"}], None, None,
         "techniques[1]", "prefix-caching"),
        (None, {1: [{"name": "kv-quantization", "bits": 40}]}, None, "pools.1.techniques[0].bits", ""),
        ([{"name": "no-such-thing"}], None, None, "techniques[0].name", ""),
        (None, {1: [{"name": "kv-eviction", "policy": "snapkv", "budget_tokens": 64}]}, None,
         "pools.1.techniques", "keep different KV tokens"),
        ([{"name": "kv-quantization"}], None, {"name": "semi-pd"}, "techniques[0]", "semi-pd"),
        (None, {1: [{"name": "composition-of-experts", "experts": ["a", "b"], "hbm_slots": 1, "tier": "host"}]},
         None, "pools.1.techniques[0]", "does not bind yet"),
    ],
)
def test_bad_pool_techniques_name_the_pool_and_technique(techniques, pools, serving, where, says):
    sc = pd_scenario()
    data = sc.model_dump(exclude_unset=True)
    if serving is not None:
        data["serving"] = serving
        data["pools"][1]["num_replicas"] = data["pools"][0]["num_replicas"]
    if techniques is not None:
        data["techniques"] = techniques
    for i, own in (pools or {}).items():
        data["pools"][i]["techniques"] = own
    with pytest.raises(CapsimError) as err:
        build_pools(Scenario.model_validate(data))
    assert err.value.where == where, str(err.value)
    assert says in str(err.value)


def test_no_techniques_leave_a_pools_run_unchanged():
    """An empty list on every pool is the same run as none at all (the hooks are identities)."""
    sc = pd_scenario(n=40)
    a = simulate(sc).result.requests
    b = simulate(with_techniques(sc, pools={0: [], 1: []})).result.requests
    assert a.equals(b)


def test_example_disaggregation_kv_quant_validates(cli):
    out = cli("validate", "scenarios/examples/disaggregation_kv_quant.yaml")
    assert out.exit_code == 0, out.output
