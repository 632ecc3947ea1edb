"""KV eviction, merging and structure: blocks held by hand, the retention function's decode segments, the
attended context the engine prices, and the effects that must emerge (fewer blocks, faster long-context decode,
more throughput where KV capacity binds)."""

from __future__ import annotations

import numpy as np
import pytest

from capsim.errors import CapsimError
from simulator.costmodel import features as F
from simulator.engine import simulate
from simulator.kvcache import NO_CAP, Retention
from simulator.metrics.summary import summarise
from simulator.system import build_system
from simulator.techniques.kv_eviction import KVEvictionParams, blocks_held
from tests.test_speculative import NGRAM, scenario

H100 = {"model": "llama-3.1-8b", "device": "h100-sxm"}
H2O = {"name": "kv-eviction", "policy": "h2o", "budget_tokens": 1024}


@pytest.mark.parametrize("params,prompt,generated,want", [
    ({"policy": "h2o", "budget_tokens": 1024}, 3000, 100, 64),  # capped: 1024 / 16
    ({"policy": "h2o", "budget_tokens": 1024}, 500, 100, 38),  # below the cap: ceil(600 / 16)
    ({"policy": "snapkv", "budget_tokens": 1024}, 3000, 100, 71),  # prompt to 1024, + 100 kept: ceil(1124 / 16)
    ({"policy": "snapkv", "retention": 0.25}, 3000, 100, 54),  # budget 750 + 100: ceil(850 / 16)
    ({"policy": "streaming", "sink_tokens": 4, "window_tokens": 1020}, 3000, 100, 64),
    # DuoAttention: a quarter of the heads keep all 3100 tokens, the rest 1024: 775 + 768 = 1543 -> 97 blocks
    ({"policy": "streaming", "full_head_fraction": 0.25}, 3000, 100, 97),
    ({"policy": "none", "merged_layer_fraction": 0.5}, 3000, 100, 194),  # no eviction: ceil(3100 / 16)
])
def test_blocks_held_by_hand(params, prompt, generated, want):
    assert blocks_held(KVEvictionParams(**params), prompt, generated, 16) == want


def test_retention_decode_segment_by_hand():
    # Three sequences: cap 100 (one at 60 tokens, one at 120 already capped), and a SnapKV one with no cap.
    r = Retention(after=np.array([50, 50, 40]), drop=np.array([0, 0, 30]), cap=np.array([100, 100, NO_CAP]))
    ids, kv = np.arange(3), np.array([60, 120, 90])
    attended, slope, until = r.decode_segment(ids, kv)
    assert attended == 61 + 100 + (91 - 30)  # the first step attends kv + 1 tokens, less what was evicted
    np.testing.assert_array_equal(slope, [1.0, 0.0, 1.0])
    assert until == 100 - 61 + 1  # sequence 0 attends 61, 62, ..., 100: 40 steps of growth one
    # Before the prompt is done nothing is evicted.
    assert r.retained(0, 49) == 49 and r.retained(2, 39) == 39 and r.retained(2, 40) == 10


def _one(techniques, prompt, output, **kw):
    return simulate(scenario(techniques, n=1, prompt=prompt, output=output, **{**H100, **kw}))


def test_decode_attends_the_retained_tokens_and_runs_are_cut_at_the_cap():
    # Prompt 1000, budget 1024: decode steps attend 1001, 1002, ..., 1024 tokens, then 1024 for the rest.
    out = _one([H2O], 1000, 100)
    it = out.result.iterations
    dec = it[it["prefill_tokens"] == 0]
    cm = out.system.cost_model()
    growing, capped = cm.decode_run(1, 1001, 24), cm.decode_run(1, 1024, 99 - 24, 0.0)
    assert dec["num_iterations"].sum() == 99
    assert dec["busy_s"].sum() == pytest.approx(growing.total + capped.total, rel=1e-9)
    assert dec["context_tokens"].iloc[0] == 1001 and dec["context_tokens"].iloc[-1] == 1024
    assert out.kv_blocks_peak == [64]  # ceil(1024 / 16), not ceil(1099 / 16)


def test_eviction_caps_blocks_and_lowers_long_context_decode_time():
    base, h2o = _one([], 8000, 200), _one([H2O], 8000, 200)
    assert base.kv_blocks_peak == [-(-8199 // 16)] and h2o.kv_blocks_peak == [64]
    tpot = lambda o: summarise(o.result)["tpot_mean_s"]  # noqa: E731
    # One sequence: the weights' 16 GB dominate a step, its 1 GB of KV barely counts -- a little faster.
    assert 0.9 * tpot(base) < tpot(h2o) < tpot(base)
    # 32 sequences at once: 33 GB of KV per step against 4 GB retained -- the step time falls by half or more.
    many = {"n": 32, "qps": 1000.0, "prompt": 8000, "output": 200, **H100}
    base32, h2o32 = simulate(scenario([], **many)), simulate(scenario([H2O], **many))

    def full_batch_step(o):  # mean decode step of the whole batch (no prefill stalls mixed in)
        it = o.result.iterations
        d = it[(it["prefill_tokens"] == 0) & (it["decode_seqs"] == 32)]
        return d["busy_s"].sum() / d["num_iterations"].sum()

    assert full_batch_step(h2o32) < 0.5 * full_batch_step(base32)
    # Every token still generated: eviction changes what is stored, never how many tokens a request gets.
    assert (h2o32.table.generated == 200).all() and (h2o32.table.kv_tokens == 0).all()


def test_eviction_raises_throughput_when_kv_capacity_binds():
    def tps(techniques):
        return summarise(simulate(scenario(techniques, qps=50, n=600, prompt=8000, output=1000, **H100)).result)[
            "output_tps"]

    base = tps([])
    assert tps([H2O]) > 1.5 * base
    assert tps([{"name": "kv-eviction", "policy": "snapkv", "retention": 0.2}]) > 1.3 * base


def test_eviction_composes_with_quantisation_and_speculation():
    quant = {"name": "kv-quantization", "bits": 4}
    spec = {**NGRAM, "k": 3, "acceptance": 0.8}
    alone = _one([spec], 8000, 200)
    both = _one([quant, H2O, spec], 8000, 200)
    assert both.table.generated[0] == 200
    assert summarise(both.result)["tpot_mean_s"] < summarise(alone.result)["tpot_mean_s"]
    assert both.system.memory.kv_bytes_per_token < alone.system.memory.kv_bytes_per_token


def test_structural_options_scale_bytes_per_token_and_attention_rows():
    base = build_system(scenario(**H100))
    for params, scale in (({"merged_layer_fraction": 0.5}, 0.75), ({"key_channel_pruning": 0.5}, 0.75),
                          ({"merged_layer_fraction": 0.5, "key_channel_pruning": 0.5}, 0.5625)):
        sys = build_system(scenario([{"name": "kv-eviction", "policy": "none", **params}], **H100))
        assert sys.memory.kv_bytes_per_token == pytest.approx(base.memory.kv_bytes_per_token * scale)
    think = build_system(scenario([{"name": "kv-eviction", "policy": "none", "key_channel_pruning": 0.5}], **H100))
    row = {o.name: o for o in think.table.layer_ops}["attention_decode"]
    plain = {o.name: o for o in base.table.layer_ops}["attention_decode"]
    assert row.bytes[F.DECODE_CONTEXT] == pytest.approx(0.75 * plain.bytes[F.DECODE_CONTEXT])
    assert row.flops[F.DECODE_CONTEXT] == pytest.approx(0.75 * plain.flops[F.DECODE_CONTEXT])
    assert think.kv_policy is None  # policy none: no retention, the default block manager


def test_selection_costs_are_a_row_of_their_own():
    h = build_system(scenario([{**H2O, "selection_flops": 1.0}], **H100)).table
    sel = {o.name: o for o in h.layer_ops}["kv_selection"]
    assert sel.flops[F.DECODE_CONTEXT] == 32  # one operation per attended token per query head (32 heads)
    s = build_system(scenario([{"name": "kv-eviction", "policy": "snapkv", "budget_tokens": 512,
                                "observation_window": 32}], **H100)).table
    sel = {o.name: o for o in s.layer_ops}["kv_selection"]
    assert sel.flops[F.PREFILL_TOKENS] == 2 * 32 * 128 * 32 and not sel.bytes.any()


@pytest.mark.parametrize("tech,where,text", [
    ({"name": "kv-eviction", "policy": "h2o"}, "techniques[0]", "needs budget_tokens or retention"),
    ({**H2O, "retention": 0.5}, "techniques[0]", "not both"),
    ({"name": "kv-eviction", "policy": "streaming", "budget_tokens": 10}, "techniques[0]", "takes no budget"),
    ({**H2O, "budget_tokens": 0}, "techniques[0].budget_tokens", "greater than or equal to 1"),
    ({**H2O, "full_head_fraction": 1.0}, "techniques[0].full_head_fraction", "less than 1"),
    ({**H2O, "policy": "lru"}, "techniques[0].policy", "snapkv"),
])
def test_bad_parameters_name_the_field(tech, where, text):
    with pytest.raises(CapsimError) as exc:
        build_system(scenario([tech], **H100))
    assert exc.value.where.startswith(where)
    assert text in exc.value.render()


def test_eviction_is_listed_once():
    with pytest.raises(CapsimError, match="listed twice"):
        build_system(scenario([H2O, {**H2O, "budget_tokens": 64}], **H100))


@pytest.mark.parametrize("scheduler", ["vllm", "sarathi", "orca"])
def test_fp8_cache_h2o_and_speculation_together_keep_the_engine_invariants(scheduler):
    from tests.test_engine_invariants import check_invariants

    sc = scenario([{"name": "kv-eviction", "policy": "h2o", "budget_tokens": 256, "selection_flops": 1.0},
                   {**NGRAM, "k": 3, "acceptance": 0.7}],
                  n=40, qps=20.0, prompt=700, output=300, scheduler={"name": scheduler},
                  deployment={"device": "a100-80gb-sxm", "kv_dtype": "fp8", "memory_utilization": 0.18,
                              "activation_reserve_gib": 0.0})
    out = simulate(sc)
    check_invariants(out)
    assert out.system.memory.kv_bytes_per_token == 2 * 32 * 32 * 128 * 1.0  # llama-2-7b, fp8
    assert max(out.kv_blocks_peak) <= out.system.memory.kv_blocks
