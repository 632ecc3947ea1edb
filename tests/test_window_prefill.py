"""Window-aware prefill attention (issue 19): a sliding-window layer's prefill attends min(window, position)
keys per query and reads the window's KV, not the whole causal context. Hand checks on Mistral-7B-v0.1 (every
layer a 4,096-token window) and gpt-oss-20b (half the layers a 128-token window); models without a window
keep their features to the bit; the engine's TTFT follows."""

from __future__ import annotations

import numpy as np
import pytest

from simulator.config.schema import Scenario
from simulator.costmodel import features as F
from simulator.costmodel.features import BatchShape, PrefillWindow
from simulator.engine import simulate
from tests.test_sparse_attention import cost, system

W = 4096
# Mistral-7B-v0.1: 32 layers, 32 query heads, 8 KV heads of 128 channels, bf16 KV.
L, H, HKV, DH = 32, 32, 8, 128


def prefill_row(model: str, chunk: tuple[int, int], device: str = "h100-pcie"):
    q, c = chunk
    rows = {r.name: r for r in cost(system(model=model, device=device)).breakdown(
        BatchShape(prefill_chunks=((q, c, True),)))}
    return rows["attention_prefill"]


def test_16k_prompt_on_mistral_7b_v01_by_hand():
    """One 16,384-token prompt: query p attends min(p, 4096) keys, so a layer covers 4096^2 / 2 +
    (16384 - 4096) x 4096 = 58,720,256 pairs against 16384^2 / 2 = 134,217,728 causal ones (7/16), each pair
    4 h d_h FLOPs; Mistral-7B-v0.2 (the same geometry, no window) keeps the full count."""
    windowed = 4096 * 4096 / 2 + (16384 - 4096) * 4096
    assert windowed == 58_720_256
    v01 = prefill_row("mistral-7b-v0.1", (16384, 0))
    v02 = prefill_row("mistral-7b-v0.2", (16384, 0))
    assert v01.flops == pytest.approx(L * 4 * H * DH * windowed, rel=1e-12)
    assert v02.flops == pytest.approx(L * 4 * H * DH * 16384**2 / 2, rel=1e-12)
    assert v01.flops / v02.flops == pytest.approx(7 / 16, rel=1e-12)
    assert v01.time_s < 0.5 * v02.time_s  # compute-bound at this length: the time follows the pairs


def test_a_late_chunk_reads_the_window_not_the_context():
    """The last 2,048-token chunk of the 16k prompt (14,336 cached): each query attends 4,096 keys, and the
    chunk reads the 4,096 cached keys the rolling buffer keeps plus its own 2,048, not 16,384."""
    v01 = prefill_row("mistral-7b-v0.1", (2048, 14336))
    v02 = prefill_row("mistral-7b-v0.2", (2048, 14336))
    kv_token = 2 * HKV * DH * 2  # K and V, bf16
    assert v02.bytes - v01.bytes == pytest.approx(L * kv_token * (16384 - 6144), rel=1e-12)
    assert v01.flops == pytest.approx(L * 4 * H * DH * 2048 * 4096, rel=1e-12)


def test_chunks_add_up_to_the_whole_prompt():
    """The pairs of a prompt cut into chunks at any points sum to its pairs in one chunk (exact integral)."""
    win = PrefillWindow(W, 0.0)
    rng = np.random.default_rng(3)
    for _ in range(50):
        n = int(rng.integers(1, 40000))
        cuts = sorted({0, n, *rng.integers(1, n + 1, size=int(rng.integers(0, 6))).tolist()})
        parts = sum(win.pairs(b - a, a) for a, b in zip(cuts, cuts[1:], strict=False))
        assert parts == pytest.approx(win.pairs(n, 0), rel=1e-12)
        assert win.pairs(n, 0) <= F.prefill_attention_work(n, 0)


def test_within_the_window_the_features_are_those_of_full_attention_to_the_bit():
    shape = BatchShape(prefill_chunks=((1000, 3000, True), (96, 0, False)), decode_seqs=3, decode_context=900)
    assert np.array_equal(shape.features(window=PrefillWindow(W, 0.0)), shape.features())


def test_gpt_oss_half_the_layers_windowed():
    """gpt-oss-20b: 12 of 24 layers attend 128 tokens: the features are the layer mean of both counts."""
    sys_ = system(model="gpt-oss-20b")
    win = sys_.table.prefill_window
    assert (win.window, win.full) == (128, 0.5)
    x = cost(sys_).features(BatchShape(prefill_chunks=((8192, 0, True),)))
    assert x[F.PREFILL_ATTN_WORK] == pytest.approx(0.5 * 8192**2 / 2 + 0.5 * (128**2 / 2 + (8192 - 128) * 128))
    assert x[F.PREFILL_KV_READ] == pytest.approx(8192)


def test_models_without_a_window_carry_none():
    assert system(model="llama-3.1-8b").table.prefill_window is None


def ttft_p50(model: str) -> float:
    out = simulate(Scenario.model_validate({
        "seed": 2, "model": model, "deployment": {"device": "h100-sxm"},
        "scheduler": {"name": "sarathi", "chunk_size": 2048},
        "workload": {"arrival": "poisson", "qps": 0.2, "prompt": {"dist": "fixed", "value": 16384},
                     "output": {"dist": "fixed", "value": 16}},
        "simulation": {"num_requests": 8},
    }))
    r = out.result.requests
    return float((r["first_token_s"] - r["arrival_s"]).median())


def test_windowed_model_prefills_a_long_prompt_faster_in_the_engine():
    """Same geometry, same chunks: the v0.1 window makes the later chunks' attention cheaper, so TTFT drops."""
    assert ttft_p50("mistral-7b-v0.1") < 0.95 * ttft_p50("mistral-7b-v0.2")
