"""Speculative decoding: the closed forms, the verification table, round pricing, token bookkeeping and
the effects that must *emerge* from the simulation (speed-up at low load, slow-down at high load, goodput
policy backing off, a draft model costing KV capacity)."""

from __future__ import annotations

import numpy as np
import pytest

from capsim.errors import CapsimError
from simulator.config.schema import Scenario
from simulator.costmodel import features as F
from simulator.engine import simulate
from simulator.metrics.summary import summarise
from simulator.system import build_system
from simulator.techniques.presets import PRESETS, solve_acceptance
from simulator.techniques.speculative import RoundShape, expected_tokens, verify_table

NGRAM = {"name": "speculative-decoding", "drafter": "ngram"}
DRAFT = {"name": "speculative-decoding", "drafter": "model", "draft_model": "llama-68m"}


def scenario(techniques=(), *, qps=1.0, n=60, prompt=256, output=64, device="a100-80gb-sxm", model="llama-2-7b",
             scheduler=None, seed=3, **sections) -> Scenario:
    data = {
        "seed": seed, "model": model, "deployment": {"device": device},
        "workload": {"arrival": "poisson", "qps": qps, "prompt": {"dist": "fixed", "value": prompt},
                     "output": {"dist": "fixed", "value": output}},
        "simulation": {"num_requests": n}, "techniques": list(techniques),
    }
    if scheduler:
        data["scheduler"] = scheduler
    data.update(sections)
    return Scenario.model_validate(data)


# ------------------------------------------------------------------ closed forms
@pytest.mark.parametrize("a,k", [(0.6, 3), (0.9, 7), (0.3, 1), (1.0, 4)])
def test_chain_expected_tokens_is_the_geometric_closed_form(a, k):
    want = k + 1 if a == 1.0 else (1 - a ** (k + 1)) / (1 - a)
    assert expected_tokens(RoundShape((1,) * k), lambda j: a) == pytest.approx(want, rel=1e-12)


def test_tree_expected_tokens_by_hand():
    # [2, 1] at a = 0.5: level 1 accepted when either of 2 candidates is (0.75), level 2 then with 0.5.
    assert expected_tokens(RoundShape((2, 1)), lambda j: 0.5) == pytest.approx(1 + 0.75 + 0.375)
    assert RoundShape((2, 2)).verified == 1 + 2 + 4
    assert RoundShape((1,) * 5).verified == 6
    assert RoundShape((3, 2)).frontiers() == [1, 3]


def test_positional_acceptance_multiplies_along_the_chain():
    pos = [0.8, 0.5, 0.25]
    assert expected_tokens(RoundShape((1, 1, 1)), lambda j: pos[j]) == pytest.approx(1 + 0.8 + 0.4 + 0.1)


def test_acceptance_solver_inverts_the_closed_form():
    for widths, tau in (((1,) * 8, 2.95), ((4, 2, 2, 2), 2.52), ((1,) * 10, 1.68)):
        a = solve_acceptance(widths, tau)
        assert expected_tokens(RoundShape(widths), lambda j, a=a: a) == pytest.approx(tau, abs=1e-3)
    with pytest.raises(ValueError):
        solve_acceptance((1, 1), 3.5)  # a depth-2 round yields at most 3 tokens


# ------------------------------------------------------------------ the verification table
def test_verify_table_scales_per_sequence_work_but_reads_kv_once():
    system = build_system(scenario())
    base, q = system.table, 5
    ver = verify_table(base, q)
    by_name = {o.name: o for o in ver.layer_ops + ver.iteration_ops}
    for op in base.layer_ops + base.iteration_ops:
        v = by_name[op.name]
        assert v.flops[F.ONE] == op.flops[F.ONE] and v.bytes[F.ONE] == op.bytes[F.ONE]  # weights once
        assert np.array_equal(v.flops[F.PREFILL_TOKENS], op.flops[F.PREFILL_TOKENS])  # prefill untouched
        assert v.flops[F.DECODE_SEQS] == pytest.approx(q * op.flops[F.DECODE_SEQS] + (q - 1) * op.flops[F.LOGIT_SEQS])
    att = by_name["attention_decode"]
    base_att = next(o for o in base.layer_ops if o.name == "attention_decode")
    assert att.flops[F.DECODE_CONTEXT] == q * base_att.flops[F.DECODE_CONTEXT]
    assert att.bytes[F.DECODE_CONTEXT] == base_att.bytes[F.DECODE_CONTEXT]
    assert by_name["lm_head"].flops[F.DECODE_SEQS] == (q - 1) * by_name["lm_head"].flops[F.LOGIT_SEQS]
    assert verify_table(base, 1) is base


def test_verification_turns_compute_bound_at_large_batch():
    """A verify pass of K + 1 tokens costs about one decode step at batch 1 (memory-bound: weights are read
    once) but about K + 1 steps at a batch large enough to be compute-bound."""
    system = build_system(scenario(deployment={"device": "a100-80gb-sxm", "calibration": "datasheet"}))
    plain = system.cost_model()
    step = system.step  # None without techniques
    assert step is None
    sys5 = build_system(scenario([{**NGRAM, "k": 4}], deployment={"device": "a100-80gb-sxm", "calibration": "datasheet"}))
    verify = sys5.step.verify(5)
    small = verify.decode_run(1, 512, 1).first / plain.decode_run(1, 512, 1).first
    # Short contexts, so the GEMMs (not the KV read, which verification does once) dominate the step.
    large = verify.decode_run(512, 512 * 32, 1).first / plain.decode_run(512, 512 * 32, 1).first
    assert small < 1.2
    assert large > 3.0


# ------------------------------------------------------------------ round pricing and bookkeeping
def test_round_time_is_draft_plus_verify_on_the_same_gpus():
    sc = scenario([{**DRAFT, "k": 3, "acceptance": 0.5}])
    system = build_system(sc)
    step = system.step
    out = simulate(sc)
    bound = step.bind(out.table, np.random.default_rng(0))
    ids = np.arange(4)
    plan = bound.plan(ids)
    n, c0 = 4, 4 * 300
    run = bound.run(plan, n, c0, 1, float(n))
    verify = step.verify(4).decode_run(n, c0, 1).first
    draft = sum(step.drafter.models(1).decode_run(n, c0 + m * n, 1).first for m in range(3))
    assert run.first == pytest.approx(verify + draft, rel=1e-12)
    assert draft > 0


def test_overlap_on_a_separate_device_takes_the_longer_pass():
    tech = {**DRAFT, "draft_model": "llama-3.2-1b", "k": 4, "draft_device": "l4", "overlap": True}
    sc = scenario([tech], model="llama-3.1-8b", device="h100-sxm")
    step = build_system(sc).step
    bound = step.bind(simulate(sc).table, np.random.default_rng(0))
    plan = bound.plan(np.arange(2))
    verify = step.verify(5).decode_run(2, 1000, 1).first
    draft = step.drafter.round_run(plan.option, 2, 1000, 1, 2.0).first
    assert bound.run(plan, 2, 1000, 1, 2.0).first == pytest.approx(max(verify, draft))


def test_all_accepted_chain_yields_k_plus_one_tokens_a_round():
    """One request alone, every draft accepted, free drafting: its 64 - 1 tokens after the prefill come in
    ceil(63 / 4) = 16 rounds of K + 1 = 4 tokens (the last one capped)."""
    out = simulate(scenario([{**NGRAM, "k": 3, "acceptance": 1.0}], n=1, output=64))
    it = out.result.iterations
    assert int(it.loc[it["prefill_tokens"] == 0, "num_iterations"].sum()) == 16
    assert out.result.token_gaps.num_samples == 63  # one gap per token after the first
    assert int(out.table.generated[0]) == 64


def test_fractional_tokens_per_round_are_carried_per_request():
    # tau = 1 + 0.5 + 0.25 = 1.75 (k = 2, a = 0.5): 40 tokens after the prefill need ceil(40 / 1.75) = 23 rounds.
    out = simulate(scenario([{**NGRAM, "k": 2, "acceptance": 0.5}], n=1, output=41))
    it = out.result.iterations
    assert int(it.loc[it["prefill_tokens"] == 0, "num_iterations"].sum()) == 23


def test_technique_off_is_identical_to_no_techniques_section():
    a = simulate(scenario()).result
    b = simulate(Scenario.model_validate({**scenario().model_dump(), "techniques": []})).result
    assert a.requests.equals(b.requests) and a.iterations.equals(b.iterations)


# ------------------------------------------------------------------ effects that must emerge
def _tpot(sc) -> float:
    out = simulate(sc)
    return summarise(out.result, sc.slo)["tpot_p50_s"]


def test_speculation_helps_at_low_load_and_hurts_at_high_load():
    """Derived, not ruled: at one request at a time verification is memory-bound and K + 1 tokens cost
    about one step; with hundreds of sequences the verify pass is compute-bound and costs ~K + 1 steps
    for ~2.3 tokens, so TPOT gets worse (SmartSpec's finding)."""
    tech = [{**DRAFT, "k": 4, "acceptance": 0.6}]
    kw = dict(prompt=512, output=256, n=400)
    low = dict(qps=0.5, **kw)
    high = dict(qps=60.0, scheduler={"name": "vllm", "max_num_seqs": 256}, **kw)
    assert _tpot(scenario(tech, **low)) < 0.75 * _tpot(scenario(**low))
    assert _tpot(scenario(tech, **high)) > 1.1 * _tpot(scenario(**high))


def test_goodput_policy_backs_off_as_the_batch_grows():
    sc = scenario([{**DRAFT, "k": 6, "acceptance": 0.6, "policy": "goodput"}])
    out = simulate(sc)
    bound = build_system(sc).step.bind(out.table, np.random.default_rng(0))
    out.table.kv_tokens[:] = 512
    depths = [bound.plan(np.arange(n) % out.table.n).option.depth for n in (1, 8, 64, 256)]
    assert depths[0] >= 3
    assert depths == sorted(depths, reverse=True)
    assert depths[-1] == 0


def test_threshold_policy_follows_the_specdec_stopping_rule():
    # a = 0.8: P(>= 1 rejection in k) = 1 - 0.8^k <= 0.5 holds up to k = 3 (0.488), not at 4 (0.59).
    sc = scenario([{**NGRAM, "k": 8, "acceptance": 0.8, "policy": "threshold", "threshold": 0.5}])
    bound = build_system(sc).step.bind(simulate(sc).table, np.random.default_rng(0))
    assert bound.plan(np.arange(3)).option.depth == 3


def test_a_draft_model_costs_kv_capacity_and_ngram_does_not():
    plain = build_system(scenario()).memory.kv_capacity_tokens
    with_draft = build_system(scenario([{**DRAFT, "draft_model": "llama-2-7b", "k": 4}],
                                       deployment={"device": "a100-80gb-sxm"})).memory.kv_capacity_tokens
    ngram = build_system(scenario([NGRAM])).memory.kv_capacity_tokens
    assert ngram == plain
    assert with_draft < 0.5 * plain  # a same-size draft holds as much KV per token and as many weights


def test_per_request_acceptance_spreads_tpot_across_requests():
    tech = {**NGRAM, "k": 4, "acceptance": 0.6}
    same = simulate(scenario([tech], qps=0.2, n=40)).result.requests
    spread = simulate(scenario([{**tech, "acceptance_concentration": 2.0}], qps=0.2, n=40)).result.requests
    tpot = lambda r: (r["finish_s"] - r["first_token_s"]) / (r["output_tokens"] - 1)  # noqa: E731
    assert tpot(spread).std() > 3 * tpot(same).std()


def test_runs_are_deterministic_for_a_seed():
    sc = scenario([{**DRAFT, "acceptance_concentration": 3.0, "policy": "goodput"}], qps=4.0)
    a, b = simulate(sc).result, simulate(sc).result
    assert a.requests.equals(b.requests) and a.iterations.equals(b.iterations)


# ------------------------------------------------------------------ presets and bad input
@pytest.mark.parametrize("name", sorted(n for n, p in PRESETS.items() if p.tau is not None))
def test_solved_preset_rates_reproduce_the_reported_tau(name):
    preset = PRESETS[name]
    p = preset.params
    widths = tuple(p["tree"]) if p.get("tree") else (1,) * p["k"]
    assert p["acceptance"] == solve_acceptance(widths, preset.tau)
    assert expected_tokens(RoundShape(widths), lambda j: p["acceptance"]) == pytest.approx(preset.tau, abs=1e-3)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_and_runs(name):
    preset = PRESETS[name]
    model = preset.conditions.get("model", "llama-2-7b")
    out = simulate(scenario([{"name": "speculative-decoding", "preset": name}], model=model, n=5,
                            device="h100-sxm", deployment={"device": "h100-sxm", "tp": 4 if "70b" in model else 1}))
    assert out.table.finished_count == 5


@pytest.mark.parametrize("tech,where,text", [
    ({"name": "speculative-decoding", "drafter": "model"}, "techniques[0]", "draft_model"),
    ({**NGRAM, "overlap": True}, "techniques[0]", "draft_device"),
    ({**NGRAM, "preset": "nope"}, "techniques[0]", "known presets"),
    ({**DRAFT, "draft_model": "llama-9000"}, "techniques[0] (speculative-decoding).draft_model", "unknown model"),
    ({**NGRAM, "k": 0}, "techniques[0].k", "greater than or equal to 1"),
    ({**NGRAM, "tree": [2, 2], "policy": "threshold"}, "techniques[0]", "tree"),
])
def test_bad_parameters_name_the_field(tech, where, text):
    with pytest.raises(CapsimError) as exc:
        build_system(scenario([tech]))
    assert exc.value.where.startswith(where)
    assert text in exc.value.render()


def test_listing_speculation_twice_or_under_static_batching_is_refused():
    with pytest.raises(CapsimError, match="listed twice"):
        build_system(scenario([NGRAM, DRAFT]))
    with pytest.raises(CapsimError, match="static"):
        build_system(scenario([NGRAM], scheduler={"name": "static"}))


def test_planner_does_not_prune_with_speculation_on():
    from simulator.planner.bounds import TECHNIQUE, check

    sc = scenario([NGRAM], slo={"ttft_s": 1e-6})
    verdict = check(sc, build_system(sc))
    assert verdict.possible and verdict.reason == TECHNIQUE
    assert not check(scenario(slo={"ttft_s": 1e-6}), build_system(scenario(slo={"ttft_s": 1e-6}))).possible


def test_hierarchical_drafting_pays_off_most_at_long_context():
    """TriForce's regime: the middle stage reads at most kv_budget tokens of KV per sequence, so at a 60k
    context its drafting is cheap next to the target's full-cache verify; at a 1k context (below the
    budget) the middle stage costs as much as a target step, and the gain is only that of stacked
    speculation."""
    tech = {"name": "speculative-decoding", "drafter": "hierarchical", "draft_model": "llama-68m", "k": 6,
            "acceptance": 0.92, "inner_k": 4, "inner_acceptance": 0.7, "kv_budget": 4096}
    sc = scenario([tech], model="llama-3.1-8b", device="h100-sxm")
    system = build_system(sc)
    bound = system.step.bind(simulate(sc).table, np.random.default_rng(0), system.cost_model())
    plain = system.cost_model()
    plan = bound.plan(np.arange(1))
    speedup = {c: plan.tokens_per_step[0] * plain.decode_run(1, c, 1).first / bound.run(plan, 1, c, 1, 1.0).first
               for c in (1_000, 16_000, 60_000, 120_000)}
    values = list(speedup.values())
    assert values == sorted(values)  # the longer the context, the more hierarchy pays
    assert speedup[120_000] > 1.3 * speedup[1_000]


def test_a_draft_on_a_slower_inline_device_costs_more_and_frees_the_gpus_memory():
    cpu = {"name": "host-cpu", "vendor": "generic", "source": "test", "sram_mib": 300, "peak_tflops": {"bf16": 40},
           "memory_gib": 512, "memory_bandwidth_gbs": 300, "tdp_w": 700, "idle_w": 100,
           "interconnect": {"nvlink_gbs": 0, "pcie_gbs": 32, "link_latency_us": 10}, "price_usd_per_hour": 1.0}
    same = scenario([{**DRAFT, "draft_model": "llama-3.2-1b", "k": 4}], model="llama-3.1-8b", device="h100-sxm")
    apart = scenario([{**DRAFT, "draft_model": "llama-3.2-1b", "k": 4, "draft_device": cpu}], model="llama-3.1-8b",
                     device="h100-sxm")
    s_same, s_apart = build_system(same), build_system(apart)
    assert s_apart.memory.kv_capacity_tokens > s_same.memory.kv_capacity_tokens  # draft weights and KV moved off
    shape = s_same.step.chain_max
    slow = s_apart.step.drafter.round_run(shape, 4, 4000, 1, 4.0).first
    fast = s_same.step.drafter.round_run(shape, 4, 4000, 1, 4.0).first
    assert slow > 2 * fast  # 300 GB/s against an H100's HBM: the draft's weight reads dominate


def test_a_separate_draft_device_is_paid_for():
    """A draft GPU beside each replica is hardware: the planner's $/h, the run's cost and $/Mtok include it."""
    plain = scenario(model="llama-3.1-8b", device="h100-sxm", n=30)
    apart = scenario([{**DRAFT, "draft_model": "llama-3.2-1b", "k": 4, "draft_device": "l4"}], model="llama-3.1-8b",
                     device="h100-sxm", n=30)
    s_plain, s_apart = build_system(plain), build_system(apart)
    l4 = s_apart.extra_devices[0]
    assert l4.name == "l4" and l4.count == 1
    assert s_apart.cost_per_hour_usd == pytest.approx(s_plain.cost_per_hour_usd + l4.price_usd_per_hour)
    a, b = (summarise(simulate(sc).result, sc.slo) for sc in (plain, apart))
    assert a["cost_usd"] == pytest.approx(a["window_s"] * s_plain.cost_per_hour_usd / 3600, rel=1e-12)
    assert b["cost_usd"] == pytest.approx(b["window_s"] * s_apart.cost_per_hour_usd / 3600, rel=1e-12)
    # The L4 idles at least for the whole window: energy exceeds the H100's own by its idle draw.
    assert b["energy_j"] > a["energy_j"] * b["window_s"] / a["window_s"]
    assert build_system(scenario([DRAFT])).extra_devices == ()  # on the same GPUs: nothing added


def test_goodput_sizes_a_tree_per_batch():
    """With a tree, the goodput policy drafts fewer of its levels as the batch grows (dynamic tree size)."""
    sc = scenario([{**DRAFT, "tree": [4, 2, 2, 1], "k": 4, "acceptance": 0.6, "policy": "goodput"}])
    out = simulate(sc)
    bound = build_system(sc).step.bind(out.table, np.random.default_rng(0))
    out.table.kv_tokens[:] = 512
    depths = [bound.plan(np.arange(n) % out.table.n).option.depth for n in (1, 16, 64, 256)]
    assert depths[0] >= 2 and depths == sorted(depths, reverse=True) and depths[-1] < depths[0]
    assert bound.plan(np.arange(1)).option.widths == (4, 2, 2, 1)[: depths[0]]
