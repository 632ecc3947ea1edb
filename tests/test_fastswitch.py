"""FastSwitch's fairness-driven context switching (simulator/schedulers/fastswitch.py): conservation under
switches, no change where no switch is needed, bad input named by field, and the fairness effect that must
emerge against vLLM with swap (shorter waits for new requests, paid by the long ones)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capsim.errors import CapsimError
from simulator.config.schema import Scenario
from simulator.engine import simulate
from simulator.metrics.quantiles import token_gap_quantiles
from simulator.system import build_system
from tests.test_engine_invariants import check_invariants, tiny_scenario
from tests.test_swap_preemption import check_swap_invariants


def fastswitch(base: Scenario, **params) -> Scenario:
    doc = base.model_dump()
    doc["scheduler"] = {"name": "fastswitch", "max_num_seqs": doc["scheduler"]["max_num_seqs"], **params}
    return Scenario.model_validate(doc)


def zipf_load(scheduler: dict, qps: float, n: int = 400, seed: int = 0) -> Scenario:
    """One A100 with ~10,000 KV tokens, heavy-tailed outputs: long requests hold the cache under load."""
    return Scenario.model_validate({
        "seed": seed, "model": "llama-2-7b",
        "scheduler": {"max_num_seqs": 64, "swap_space_gib": 16, **scheduler},
        "deployment": {"device": "a100-80gb-sxm", "memory_utilization": 0.3, "activation_reserve_gib": 0.0},
        "workload": {"arrival": "poisson", "qps": qps, "prompt": {"dist": "uniform", "low": 100, "high": 1500},
                     "output": {"dist": "zipf", "a": 1.2, "min": 10, "max": 2000}},
        "simulation": {"num_requests": n},
    })


VLLM_SWAP = {"name": "vllm", "preemption_mode": "swap", "swap_copy": "sequence", "swap_overlap": True}


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    qps=st.floats(2.0, 40.0),
    n=st.integers(5, 60),
    replicas=st.integers(1, 2),
    slice_s=st.sampled_from((0.01, 0.1, 1.0)),
    overlap=st.booleans(),
    space_gib=st.sampled_from((0.02, 4.0)),
    mode=st.sampled_from(("swap", "recompute")),
)
def test_switches_lose_and_duplicate_nothing(seed, qps, n, replicas, slice_s, overlap, space_gib, mode):
    base = tiny_scenario("vllm", seed=seed, qps=qps, n=n, replicas=replicas, router="round-robin",
                         kv_tokens_budget=True)
    sc = fastswitch(base, time_slice_s=slice_s, swap_overlap=overlap, swap_space_gib=space_gib,
                    preemption_mode=mode, switch_margin_tokens=1)
    out = simulate(sc)
    check_invariants(out)  # every request once, exact tokens, causality, KV within capacity and freed
    if mode == "swap":
        check_swap_invariants(out)  # every switched-out sequence's KV came back from the host


def test_no_switch_needed_is_vllm_with_swap():
    """Below saturation every waiting request is admitted at once: FastSwitch never switches and the run is
    vLLM's with the same swap settings, request for request."""
    a = simulate(zipf_load(VLLM_SWAP, qps=1.5, n=200)).result.requests
    b = simulate(zipf_load({"name": "fastswitch"}, qps=1.5, n=200)).result.requests
    assert b["preemptions"].sum() == 0
    assert a.equals(b)


def test_fairness_cuts_waiting_and_costs_the_long_requests():
    """Under load, re-ranking by attained service every 0.5 s cuts TTFT p99 and the longest wait for a first
    token several-fold against vLLM with the same swap machinery; the long requests pay (E2E p99, longest gap)."""
    plain = simulate(zipf_load(VLLM_SWAP, qps=3.0)).result
    fair = simulate(zipf_load({"name": "fastswitch"}, qps=3.0)).result
    check_invariants_light(fair)
    ttft = lambda r: (r.requests["first_token_s"] - r.requests["arrival_s"]).to_numpy()  # noqa: E731
    assert np.percentile(ttft(fair), 99) < 0.2 * np.percentile(ttft(plain), 99)
    assert ttft(fair).max() < 0.2 * ttft(plain).max()
    e2e = lambda r: (r.requests["finish_s"] - r.requests["arrival_s"]).to_numpy()  # noqa: E731
    assert np.percentile(e2e(fair), 99) > np.percentile(e2e(plain), 99)
    gap = lambda r: float(token_gap_quantiles(r.token_gaps, [1.0])[0])  # noqa: E731
    assert gap(fair) > gap(plain)
    assert fair.requests["preemptions"].sum() > plain.requests["preemptions"].sum()


def check_invariants_light(result) -> None:
    req = result.requests
    assert req["finish_s"].notna().all()
    assert (req["finish_s"] >= req["first_token_s"]).all()


@pytest.mark.parametrize(
    ("params", "where"),
    [
        ({"time_slice_s": 0}, "scheduler.time_slice_s"),
        ({"switch_margin_tokens": 0}, "scheduler.switch_margin_tokens"),
        ({"max_switches": 1.5}, "scheduler.max_switches"),
        ({"swap_copy": "page"}, "scheduler.swap_copy"),
    ],
)
def test_bad_fastswitch_input_names_the_field(params, where):
    sc = zipf_load({"name": "fastswitch", **params}, qps=1.0, n=5)
    with pytest.raises(CapsimError) as err:
        build_system(sc)
    assert err.value.where == where


def test_fastswitch_runs_in_a_decode_pool():
    from tests.test_pools import TIGHT_DECODE, check_pool_invariants, pd_scenario

    doc = pd_scenario(qps=30.0, n=120, decode=TIGHT_DECODE).model_dump(exclude_unset=True)
    doc["pools"][1]["scheduler"] = {"name": "fastswitch", "max_num_seqs": 8, "time_slice_s": 0.05,
                                    "switch_margin_tokens": 1}
    out = simulate(Scenario.model_validate(doc))
    check_pool_invariants(out)
    assert out.result.requests["preemptions"].sum() > 0
