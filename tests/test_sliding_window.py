"""Sliding-window attention as a model property (Mistral-7B-v0.1, gpt-oss): KV kept and attended per sequence
``f n + (1 - f) min(n, W)``, hand-checked, and what it does to a simulation."""

from __future__ import annotations

import numpy as np
import pytest

from capsim.errors import CapsimError
from simulator.config.schema import Scenario
from simulator.engine import simulate
from simulator.models import get_model
from simulator.requests import RequestTable
from simulator.system import build_system


def test_gpt_oss_attends_half_its_layers_over_128_tokens():
    system = build_system(Scenario.model_validate({
        "model": "gpt-oss-120b", "deployment": {"device": "h100-sxm", "tp": 4, "weight_dtype": "mxfp4"}}))
    table = RequestTable(np.zeros(3), np.array([100, 32_000, 128]), np.array([10, 10, 10]))
    retention = system.kv_policy.bind(table)
    kept = retention.retained(np.arange(3), np.array([100, 32_000, 128]))
    assert kept.tolist() == [100, 0.5 * 32_000 + 0.5 * 128, 128]
    # KV bytes per token on the full layers: 36 layers x 2 (K, V) x 8 heads x 64 x 2 B
    assert get_model("gpt-oss-120b").kv_bytes_per_token(2) == 36 * 2 * 8 * 64 * 2


def test_mistral_v01_decode_reads_at_most_the_window():
    """At a 16k context Mistral-7B-v0.1 (window 4096 on every layer) reads a quarter of the KV that v0.2 (no
    window, same shapes) reads per decode step."""
    def step_bytes(model, ctx):
        sc = Scenario.model_validate({"model": model, "deployment": {"device": "h100-sxm"},
                                      "scheduler": {"name": "vllm", "max_num_batched_tokens": 32768},
                                      "workload": {"prompt": {"dist": "fixed", "value": ctx},
                                                   "output": {"dist": "fixed", "value": 64}, "qps": 0.05},
                                      "simulation": {"num_requests": 3}})
        it = simulate(sc).result.iterations
        dec = it[(it["decode_seqs"] == 1) & (it["prefill_seqs"] == 0)].iloc[0]
        return dec["bytes"] / dec["num_iterations"], dec["context_tokens"]

    win, ctx_win = step_bytes("mistral-7b", 16_000)
    full, ctx_full = step_bytes("mistral-7b-v0.2", 16_000)
    assert ctx_win == 4096 and ctx_full == 16_001
    kv_full = 16_000 * 131_072  # tokens x KV bytes per token (32 layers x 2 x 8 heads x 128 x 2 B)
    assert full - win == pytest.approx(kv_full - 4096 * 131_072, rel=0.02)


def test_window_caps_the_blocks_each_sequence_holds():
    sc = Scenario.model_validate({
        "model": "mistral-7b", "deployment": {"device": "h100-sxm"},
        "scheduler": {"name": "vllm", "max_num_batched_tokens": 16384},
        "workload": {"arrival": "offline", "prompt": {"dist": "fixed", "value": 12_000},
                     "output": {"dist": "fixed", "value": 20}},
        "simulation": {"num_requests": 8},
    })
    out = simulate(sc)
    assert out.result.requests["finish_s"].notna().all()
    assert max(out.kv_blocks_peak) <= 8 * (4096 // 16 + 1)  # every sequence capped at the window
    assert out.kv_blocks_used_at_end == [0]


def test_window_models_are_refused_with_kv_eviction_and_semi_pd_pools():
    with pytest.raises(CapsimError) as err:
        build_system(Scenario.model_validate({
            "model": "mistral-7b", "techniques": [{"name": "kv-eviction", "policy": "h2o", "budget_tokens": 512}]}))
    assert "sliding window" in str(err.value)
    from simulator.pools.build import build_pools

    # disaggregated pools keep the window (a hand-off moves it: tests/test_pool_techniques.py); semi-PD's shared
    # KV cache does not model it yet
    pools = [{"name": "p", "role": "prefill"}, {"name": "d", "role": "decode"}]
    built = build_pools(Scenario.model_validate({"model": "mistral-7b", "serving": {"name": "disaggregated"},
                                                 "pools": pools}))
    assert all(p.system.kv_policy is not None for p in built.pools)
    with pytest.raises(CapsimError) as err:
        build_pools(Scenario.model_validate({"model": "mistral-7b", "serving": {"name": "semi-pd"}, "pools": pools}))
    assert "sliding window" in str(err.value)


def test_the_planner_does_not_bound_a_windowed_model():
    from simulator.planner.bounds import check

    sc = Scenario.model_validate({"model": "mistral-7b", "slo": {"ttft_s": 1.0}, "workload": {"qps": 1},
                                  "simulation": {"num_requests": 20}})
    verdict = check(sc, build_system(sc))
    assert verdict.possible and "sliding window" in verdict.detail


def test_mxfp4_weights_are_4_25_bits():
    from simulator.costmodel.precision import bytes_per_element

    assert bytes_per_element("mxfp4", field="x") == pytest.approx(4.25 / 8)
    sc = Scenario.model_validate({"model": "gpt-oss-120b", "deployment": {"device": "h100-sxm", "weight_dtype": "mxfp4"}})
    system = build_system(sc)  # fits on one 80 GB GPU, as OpenAI's model card says of the MXFP4 release
    assert system.memory.weights_bytes < 70 * 2**30
