"""Preemption by swap (simulator/schedulers/preemption.py): invariants, capacity, fallback and which mode wins."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capsim.errors import CapsimError
from hwmodels.links import Link
from simulator.config.schema import Scenario
from simulator.engine import simulate
from simulator.metrics.summary import summarise
from simulator.schedulers.preemption import SwapSpace
from simulator.system import build_system
from tests.test_engine_invariants import check_invariants, tiny_scenario

PREEMPTING = ("vllm", "sarathi")  # the schedulers that preempt (orca and static reserve KV up front)


def with_scheduler(scenario: Scenario, **params) -> Scenario:
    doc = scenario.model_dump()
    doc["scheduler"].update(params)
    return Scenario.model_validate(doc)


def check_swap_invariants(out) -> None:
    """Host KV never exceeds the swap space, every swapped sequence came back, and all host blocks are free."""
    for space in out.swap_spaces:
        assert space is not None
        assert space.stats.peak_host_blocks <= space.host_blocks
        assert space.used_blocks == 0 and not space.held
        assert space.stats.swap_ins == space.stats.swap_outs


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    scheduler=st.sampled_from(PREEMPTING),
    seed=st.integers(0, 10_000),
    qps=st.floats(2.0, 40.0),
    n=st.integers(5, 60),
    replicas=st.integers(1, 2),
    overlap=st.booleans(),
    copy=st.sampled_from(("block", "sequence")),
    space_gib=st.sampled_from((0.02, 0.1, 4.0)),
    preload=st.booleans(),
)
def test_invariants_hold_with_swap_on(scheduler, seed, qps, n, replicas, overlap, copy, space_gib, preload):
    base = tiny_scenario(
        scheduler, seed=seed, qps=qps, n=n, replicas=replicas, router="round-robin", kv_tokens_budget=True
    )
    sc = with_scheduler(base, preemption_mode="swap", swap_overlap=overlap, swap_copy=copy, swap_space_gib=space_gib)
    out = simulate(sc, preload_arrivals=preload)
    check_invariants(out)
    check_swap_invariants(out)


@pytest.mark.parametrize("scheduler", PREEMPTING)
def test_swap_resumes_without_re_prefilling(scheduler):
    base = tiny_scenario(scheduler, seed=3, qps=20, n=120, replicas=1, router="round-robin", kv_tokens_budget=True)
    rec = simulate(base)
    swp = simulate(with_scheduler(base, preemption_mode="swap"))
    check_invariants(swp)
    check_swap_invariants(swp)
    s_rec, s_swp = summarise(rec.result), summarise(swp.result)
    assert s_rec["preemptions"] > 0 and s_rec["swap_outs"] == 0
    assert s_swp["swap_outs"] == s_swp["preemptions"] > 0 and s_swp["swap_recompute_fallbacks"] == 0
    # Every prompt is prefilled once; a recompute prefills prompt + generated tokens again, a swap-in one token.
    prompts = int(swp.table.prompt.sum())
    swp_prefill = int(swp.result.iterations["prefill_tokens"].sum())
    assert prompts <= swp_prefill <= prompts + s_swp["swap_ins"]
    assert int(rec.result.iterations["prefill_tokens"].sum()) > swp_prefill
    # Bytes: whole blocks out and back, on every GPU.
    space = swp.swap_spaces[0]
    assert s_swp["swap_bytes"] == pytest.approx(2 * space.stats.bytes_out)
    assert space.stats.bytes_out % space.block_bytes == pytest.approx(0.0)


@pytest.mark.parametrize("scheduler", PREEMPTING)
def test_no_swap_space_falls_back_to_recompute_exactly(scheduler):
    base = tiny_scenario(scheduler, seed=5, qps=20, n=80, replicas=1, router="round-robin", kv_tokens_budget=True)
    rec = simulate(base)
    full = simulate(with_scheduler(base, preemption_mode="swap", swap_space_gib=0.0))
    s = summarise(full.result)
    assert s["swap_outs"] == 0 and s["swap_recompute_fallbacks"] == s["preemptions"] > 0
    cols = [c for c in rec.result.iterations.columns]
    assert rec.result.iterations[cols].equals(full.result.iterations[cols])
    assert rec.result.requests.equals(full.result.requests)


def test_explicit_recompute_is_the_default():
    base = tiny_scenario("vllm", seed=9, qps=20, n=60, replicas=1, router="round-robin", kv_tokens_budget=True)
    a, b = simulate(base), simulate(with_scheduler(base, preemption_mode="recompute"))
    assert a.result.iterations.equals(b.result.iterations) and a.result.requests.equals(b.result.requests)


def test_transfer_time_is_latency_per_copy_plus_bytes_over_bandwidth():
    link = Link("pcie", 32e9, 10e-6)
    by_block = SwapSpace(100, 1e6, link, copies_per_block=64, copies_per_sequence=0, overlap=False)
    grouped = SwapSpace(100, 1e6, link, copies_per_block=0, copies_per_sequence=64, overlap=False)
    assert by_block.transfer_s(10) == pytest.approx(640 * 10e-6 + 10e6 / 32e9)
    assert grouped.transfer_s(10) == pytest.approx(64 * 10e-6 + 10e6 / 32e9)


def test_blocking_copies_stall_and_overlapped_swap_outs_do_not():
    link = Link("pcie", 1e9, 0.0)
    blocking = SwapSpace(10, 1e6, link, 0, 0, overlap=False)  # 1 ms per block
    assert blocking.swap_out(1, 32, 2, now=0.0)
    assert blocking.stall_until == pytest.approx(2e-3)
    overlapped = SwapSpace(10, 1e6, link, 0, 0, overlap=True)
    assert overlapped.swap_out(1, 32, 2, now=0.0)
    assert overlapped.stall_until == 0.0 and overlapped.copy_free == pytest.approx(2e-3)
    # The swap-in queues behind the swap-out on the copy engine; the resuming sequence waits for both.
    assert overlapped.swap_in(1, now=1e-3) == 32
    assert overlapped.stall_until == pytest.approx(4e-3)
    # Full host space: recompute instead.
    assert not overlapped.swap_out(2, 200, 11, now=0.0) and overlapped.stats.fallbacks == 1


def test_bad_preemption_mode_names_the_field():
    base = tiny_scenario("vllm", seed=1, qps=5, n=5, replicas=1, router="round-robin", kv_tokens_budget=False)
    doc = base.model_dump()
    doc["scheduler"]["preemption_mode"] = "teleport"
    with pytest.raises(CapsimError) as err:
        build_system(Scenario.model_validate(doc))
    assert err.value.where == "scheduler.preemption_mode"


# ---------------------------------------------------------------- which mode wins (emerges from the model)
def starved(prompt: int, output: int, pcie_gbs: float, mode: str, n: int = 32) -> Scenario:
    """An offline batch on one H100 whose KV holds about eight prompts plus half an output each."""

    def doc(utilization: float) -> dict:
        return {
            "seed": 1,
            "model": "llama-3.1-8b",
            "deployment": {
                "device": {"base": "h100-sxm", "name": "h100-link", "interconnect": {"pcie_gbs": pcie_gbs}},
                "memory_utilization": utilization,
                "activation_reserve_gib": 0.0,
            },
            "scheduler": {
                "name": "vllm",
                "max_num_seqs": 64,
                "max_num_batched_tokens": 16384,
                "preemption_mode": mode,
                "swap_copy": "sequence",
                "swap_space_gib": 64,
            },
            "workload": {
                "arrival": "offline",
                "prompt": {"dist": "fixed", "value": prompt},
                "output": {"dist": "uniform", "low": output // 4, "high": output},
            },
            "simulation": {"num_requests": n},
        }

    mem = build_system(Scenario.model_validate(doc(0.9))).memory
    kv = 8 * (prompt + output // 2) * mem.kv_bytes_per_token
    return Scenario.model_validate(doc((mem.weights_bytes + kv) / mem.gpu_memory_bytes))


def makespan(prompt: int, output: int, pcie_gbs: float, mode: str) -> tuple[float, int]:
    out = simulate(starved(prompt, output, pcie_gbs, mode))
    check_invariants(out)
    s = summarise(out.result)
    return s["sim_time_s"], s["preemptions"]


def test_swap_beats_recompute_for_long_contexts_on_a_fast_link_only():
    long_rec, pre = makespan(6000, 1024, 64.0, "recompute")
    assert pre > 0
    long_fast, _ = makespan(6000, 1024, 64.0, "swap")
    long_slow, _ = makespan(6000, 1024, 2.0, "swap")
    short_rec, pre_short = makespan(128, 256, 64.0, "recompute")
    assert pre_short > 0
    short_fast, _ = makespan(128, 256, 64.0, "swap")
    assert long_fast < long_rec  # re-prefilling 6k+ tokens costs more than moving their KV twice at 64 GB/s
    assert long_slow > long_rec  # ... but not at 2 GB/s
    assert short_fast >= short_rec  # a short context re-prefills about as fast as a copy's fixed costs
    assert np.isfinite([long_rec, long_fast, long_slow, short_rec, short_fast]).all()


SWAP_WITH = {  # techniques that change a step's tokens, the KV kept per sequence, or add a host KV tier
    "draft-model": [
        {"name": "speculative-decoding", "drafter": "model", "draft_model": "llama-68m", "k": 4, "acceptance": 0.7}
    ],
    "h2o-300": [{"name": "kv-eviction", "policy": "h2o", "budget_tokens": 300}],
    "sparse-host": [
        {
            "name": "sparse-attention",
            "density": 0.25,
            "kv_location": "host",
            "host_kv_gib": 0.6,
            "host_tensors": "values",
            "key_rank": 64,
        }
    ],
}


@pytest.mark.parametrize("variant", sorted(SWAP_WITH))
@pytest.mark.parametrize("scheduler", PREEMPTING)
def test_swap_keeps_the_invariants_with_techniques_on(variant, scheduler):
    base = tiny_scenario(
        scheduler, seed=3, qps=50.0, n=80, replicas=1, router="round-robin", kv_tokens_budget=variant != "sparse-host"
    )
    doc = base.model_dump()
    doc["simulation"]["oversized"] = "drop"
    doc["deployment"]["memory_utilization"] += 0.015 if variant == "draft-model" else 0.0  # the draft's weights
    doc["techniques"] = SWAP_WITH[variant]
    doc["scheduler"].update(preemption_mode="swap", swap_space_gib=0.2)
    out = simulate(Scenario.model_validate(doc))
    check_invariants(out)
    check_swap_invariants(out)
    assert out.swap_spaces[0].stats.swap_outs > 0
