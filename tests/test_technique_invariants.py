"""The engine invariants (tests/test_engine_invariants.py) hold with every technique switched on.

Speculation changes how many tokens a step yields, how much KV a step writes and rolls back, and what
a step costs; KV quantisation changes bytes per token; eviction changes how many tokens each sequence
stores and attends. None of that may break "every request finishes once with all its tokens", monotone time,
the KV budget, or one recorded gap per token -- under every scheduler that accepts the technique,
with preemption, both arrival paths and every drafter. Sparse attention moves the KV cache to host memory
(a second capacity tier) and prices steps with overlapped PCIe fetches; the same invariants hold with it
on, alone and combined with speculation. Attention offloading (Lamina) keeps the whole KV cache on a pool of
attention devices whose memory alone bounds it, and prices steps as overlapped GPU, pool and link lanes.
"""

from __future__ import annotations

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator.config.schema import Scenario
from simulator.engine import simulate
from tests.test_engine_invariants import check_invariants, tiny_scenario

SPEC = "speculative-decoding"
TECHNIQUE_VARIANTS = {
    "draft-model": {"name": SPEC, "drafter": "model", "draft_model": "llama-68m", "k": 4, "acceptance": 0.7},
    "eagle-threshold": {"name": SPEC, "drafter": "eagle", "k": 6, "acceptance": 0.8, "policy": "threshold"},
    "medusa-tree": {"name": SPEC, "drafter": "medusa", "k": 3, "tree": [3, 2, 1], "acceptance": 0.4},
    "ngram-spread": {"name": SPEC, "drafter": "ngram", "k": 5, "acceptance": 0.6, "acceptance_concentration": 2.0},
    "skip-goodput": {"name": SPEC, "drafter": "layer-skip", "k": 4, "acceptance": 0.9, "policy": "goodput"},
    "all-accepted": {"name": SPEC, "drafter": "ngram", "k": 7, "acceptance": 1.0},
    "triforce": {"name": SPEC, "drafter": "hierarchical", "draft_model": "llama-68m", "k": 5, "acceptance": 0.9,
                 "kv_budget": 64, "draft_window": 32},
    "sparse-hbm": {"name": "sparse-attention", "density": 0.125, "page_size": 16, "dense_layers": 2},
    # KV in host memory: 0.6 GiB holds ~1,200 tokens of llama-2-7b's KV, so the host tier forces preemption.
    "sparse-host-values": {"name": "sparse-attention", "density": 0.25, "kv_location": "host", "host_kv_gib": 0.6,
                           "host_tensors": "values", "key_rank": 64},
    "sparse-prefill": {"name": "sparse-prefill", "density": 0.2},
    "sparse-host+spec": [{"name": "sparse-attention", "density": 0.5, "kv_location": "host", "host_kv_gib": 0.6},
                         {"name": SPEC, "drafter": "ngram", "k": 3, "acceptance": 0.7}],
    "prefix-caching": {"name": "prefix-caching"},
    "kv-quant-2bit": {"name": "kv-quantization", "bits": 2, "group_size": 32, "outlier_fraction": 0.01},
    "h2o": {"name": "kv-eviction", "policy": "h2o", "budget_tokens": 64, "selection_flops": 1.0},
    "snapkv-ratio": {"name": "kv-eviction", "policy": "snapkv", "retention": 0.3},
    "streaming-duo": {"name": "kv-eviction", "policy": "streaming", "sink_tokens": 4, "window_tokens": 60,
                      "full_head_fraction": 0.25},
    "minicache-think": {"name": "kv-eviction", "policy": "none", "merged_layer_fraction": 0.5,
                        "key_channel_pruning": 0.5},
    # KV on one small attention device (~1,200 tokens of llama-2-7b): the pool's memory forces preemption.
    "lamina-small-pool": {"name": "attention-offload", "device": {"base": "h20", "memory_gib": 0.6}, "count": 1,
                          "link": {"gbs": 50}},
    "lamina-no-overlap": {"name": "attention-offload", "count": 2, "overlap": False},
    "nanoflow-3": {"name": "nanoflow", "nano_batches": 3},
    "nanoflow-split-always": {"name": "nanoflow", "nano_batches": 2, "adaptive": False},
    # Composition of Experts: requests addressed to three experts, one resident at a time (switches over PCIe), and
    # a skewed mix with the starvation bound.
    "coe-one-slot": {"name": "composition-of-experts", "experts": ["a", "b", "c"]},
    "coe-skewed-bounded": {"name": "composition-of-experts", "experts": ["hot", "rare"],
                           "popularity": {"hot": 9, "rare": 1}, "max_wait_s": 0.5},
    # Composition: a quantised cache, H2O eviction and speculation at once.
    "int8-h2o-spec": [{"name": "kv-quantization", "bits": 8}, {"name": "kv-eviction", "budget_tokens": 128},
                      {"name": SPEC, "drafter": "ngram", "k": 3, "acceptance": 0.7}],
}


def with_technique(scenario: Scenario, variant: str) -> Scenario:
    # A technique's own KV (a draft model's, the verify lookahead) can make a request that fitted the tiny
    # budget unservable; those are dropped (and reported), the rest must keep every invariant.
    data = scenario.model_dump()
    data["simulation"]["oversized"] = "drop"
    if data["deployment"]["memory_utilization"] < 0.5:  # the tight budget: room for the heads' weights too
        data["deployment"]["memory_utilization"] += 0.015
    entry = TECHNIQUE_VARIANTS[variant]
    if variant == "prefix-caching":  # prompts need block ids: a shared system prompt (48 | every block size drawn)
        data["workload"]["sharing"] = {"pattern": "system-prompt", "shared_tokens": 150, "block_tokens": 48}
    return Scenario.model_validate({**data, "techniques": entry if isinstance(entry, list) else [entry]})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    scheduler=st.sampled_from(["vllm", "sarathi", "orca"]),
    variant=st.sampled_from(sorted(TECHNIQUE_VARIANTS)),
    seed=st.integers(0, 10_000),
    qps=st.floats(0.5, 40.0),
    n=st.integers(1, 50),
    replicas=st.integers(1, 3),
    router=st.sampled_from(["round-robin", "random", "least-outstanding"]),
    tight=st.booleans(),
    preload=st.booleans(),
    block_size=st.sampled_from([16, 12, 1]),
)
def test_invariants_hold_with_techniques_on(scheduler, variant, seed, qps, n, replicas, router, tight, preload,
                                            block_size):
    base = tiny_scenario(scheduler, seed=seed, qps=qps, n=n, replicas=replicas, router=router,
                         kv_tokens_budget=tight, block_size=block_size)
    out = simulate(with_technique(base, variant), preload_arrivals=preload)
    check_invariants(out)
    assert out.result.token_gaps.num_samples == int((out.table.output - 1).sum())


def test_tight_memory_with_speculation_preempts_and_finishes():
    base = tiny_scenario("vllm", seed=3, qps=50.0, n=80, replicas=1, router="round-robin", kv_tokens_budget=True)
    out = simulate(with_technique(base, "draft-model"))
    check_invariants(out)
    assert out.result.requests["preemptions"].sum() > 0


def test_host_kv_tier_preempts_and_finishes():
    base = tiny_scenario("vllm", seed=3, qps=50.0, n=80, replicas=1, router="round-robin", kv_tokens_budget=False)
    out = simulate(with_technique(base, "sparse-host-values"))
    check_invariants(out)
    assert out.result.requests["preemptions"].sum() > 0
    # KV in use never exceeds either tier: the host's bytes and the GPU's (key factor and page summaries).
    m = out.system.memory
    peak_tokens = max(out.kv_blocks_peak) * m.block_size
    assert m.host_kv_bytes_per_token > 0
    assert peak_tokens * m.host_kv_bytes_per_token <= m.host_kv_bytes
    assert peak_tokens * m.kv_bytes_per_token <= m.kv_bytes


def test_tight_memory_with_eviction_preempts_and_finishes():
    # A budget near the prompts' lengths still fills the tiny cache: preemption (recompute) must keep every
    # invariant, and a recomputed sequence is compressed again when its re-prefill completes.
    for scheduler in ("vllm", "sarathi"):
        base = tiny_scenario(scheduler, seed=3, qps=50.0, n=80, replicas=1, router="round-robin",
                             kv_tokens_budget=True)
        data = base.model_dump()
        data["techniques"] = [{"name": "kv-eviction", "policy": "h2o", "budget_tokens": 300}]
        out = simulate(Scenario.model_validate(data))
        check_invariants(out)
        assert out.result.requests["preemptions"].sum() > 0


def test_preloaded_arrivals_match_event_per_arrival_path_with_speculation():
    for scheduler in ("vllm", "sarathi", "orca"):
        sc = with_technique(tiny_scenario(scheduler, seed=5, qps=20.0, n=60, replicas=2, router="round-robin",
                                          kv_tokens_budget=True), "ngram-spread")
        fast, slow = simulate(sc).result, simulate(sc, preload_arrivals=False).result
        pd.testing.assert_frame_equal(fast.requests, slow.requests, rtol=1e-12, atol=1e-12)
        assert fast.token_gaps.num_samples == slow.token_gaps.num_samples


def test_every_shipped_technique_at_once_keeps_the_invariants():
    """Quantised KV, H2O eviction, sparse decode and prefill attention, speculation and nano-batching compose (list order),
    and together still serve every request with one gap per token and the KV budget kept."""
    from simulator.techniques import TECHNIQUES

    techniques = [{"name": "kv-quantization", "bits": 4}, {"name": "kv-eviction", "policy": "h2o", "budget_tokens": 512},
                  {"name": "sparse-attention", "density": 0.25}, {"name": "sparse-prefill", "density": 0.3},
                  {"name": SPEC, "drafter": "eagle", "k": 4, "acceptance": 0.7, "policy": "goodput"},
                  {"name": "nanoflow", "nano_batches": 2}]
    # Prefix caching cannot share blocks whose KV eviction rewrites: it takes eviction's place in a second stack.
    # weight-offload is refused beside nanoflow (both group every layer row): it replaces nanoflow in a third.
    with_prefix = [{"name": "prefix-caching"}, *(t for t in techniques if t["name"] != "kv-eviction")]
    # decode-kernel prices the decode-attention row on its own placement, which nanoflow's lanes would split off:
    # it rides in the third stack too.
    offload = [*techniques[:-1], {"name": "weight-offload", "fraction": 0.5},
               {"name": "decode-kernel", "kernel": "flash-decoding"}]
    # attention-offload moves the KV cache to its own devices and groups every layer row: it is refused beside
    # sparse-attention (which also places the KV), weight-offload and nanoflow, so it replaces those in a fourth.
    lamina = [t for t in techniques if t["name"] not in ("sparse-attention", "nanoflow")]
    lamina.append({"name": "attention-offload", "count": 1, "link": {"gbs": 25}})
    # attention-in-memory moves the KV as sparse-attention does and is refused beside it and nanoflow: a fifth
    # stack, on a device with a tier that computes.
    in_memory = [t for t in offload if t["name"] not in ("sparse-attention", "decode-kernel")] + [
        {"name": "attention-in-memory", "tier": "csd", "kv_gib": 64}]
    # npu-outliers pairs each GEMM with a row on a side processor in an overlap group of its own: refused beside
    # the techniques that group every layer row (nanoflow, weight-offload, attention-in-memory), so a sixth stack.
    outliers = [{"name": "npu-outliers", "fraction": 0.05, "processor_tflops": 1.0, "sync_us": 20},
                *(t for t in techniques if t["name"] != "nanoflow")]
    # duplex places decode attention (and MoE experts) by Op/B on a logic-die PIM: refused beside the techniques
    # that move attention or regroup every row (sparse-attention, nanoflow, weight-offload), so a seventh stack.
    duplex = [t for t in techniques if t["name"] not in ("sparse-attention", "nanoflow")] + [
        {"name": "duplex", "tier": "logic-pim"}]
    # dataflow-fusion needs a device with on-chip SRAM priced by its roofline (the sn40l), and composition-of-experts
    # switches experts from its DDR: an eighth stack on the RDU, with the KV and step techniques.
    rdu = [{"name": "dataflow-fusion"}, {"name": "composition-of-experts", "experts": ["a", "b", "c"], "hbm_slots": 2,
                                         "tier": "ddr"}, *techniques[:-1]]
    stacks = (techniques, with_prefix, offload, lamina, in_memory, outliers, duplex, rdu)
    named = {t["name"] for stack in stacks for t in stack}
    assert named == set(TECHNIQUES.names())  # a new technique joins this test
    csd_device = {"base": "a100-80gb-sxm", "memory_tiers": [
        {"name": "csd", "kind": "flash", "capacity_gib": 1024, "internal_bandwidth_gbs": 26, "compute_tflops": 1}],
        "tier_links": [{"name": "csd-p2p", "kind": "p2p", "between": ["hbm", "csd"], "bandwidth_gbs": 6.5}]}
    for stack in stacks:
        for scheduler in ("vllm", "sarathi"):
            base = tiny_scenario(scheduler, seed=11, qps=8.0, n=40, replicas=1, router="round-robin",
                                 kv_tokens_budget=False).model_dump()
            if stack is with_prefix:
                base["workload"]["sharing"] = {"pattern": "system-prompt", "shared_tokens": 100, "block_tokens": 32}
            if stack is in_memory:
                base["deployment"]["device"] = csd_device
            if stack is duplex:
                base["deployment"]["device"] = {"base": "a100-80gb-sxm", "memory_tiers": [
                    {"name": "logic-pim", "kind": "hbm", "internal_bandwidth_gbs": 8000, "compute_tflops": 50}]}
            if stack is rdu:
                base["deployment"]["device"] = "sn40l"
            out = simulate(Scenario.model_validate({**base, "techniques": stack}))
            check_invariants(out)
            assert out.result.token_gaps.num_samples == int((out.table.output - 1).sum())
