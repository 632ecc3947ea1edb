"""Fitting recovers known curves, and the held-out split follows its stated rules.

Synthetic measurements are generated from a curve with known parameters; the fit
must reproduce the generating curve (times within a fraction of a percent) and
the parameters that the data pin down.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from capsim.errors import CapsimError
from hwmodels.calibration import curves
from hwmodels.calibration.fit import Peaks, fit_curve
from hwmodels.calibration.folds import assign_folds
from hwmodels.calibration.schema import make_frame

PEAKS = Peaks({"bf16": 989e12}, 3.35e12, "test")

GEMM_TRUE = {
    "t0_s": 4e-6, "c_max": 0.8, "m0": 48.0, "am": 1.2, "n0": 300.0, "an": 0.9, "k0": 200.0, "ak": 1.1,
    "m_max": 0.85, "b0": 2e6, "ab": 0.8, "q": 3.0, "tile": 0.0,
}


def _gemm_rows(params, *, noise=0.0, seed=0, dense=False) -> pd.DataFrame:
    ms = [1, 4, 16, 64, 128, 256, 1024, 4096]
    nks = [128, 512, 2048, 4096, 8192, 16384]
    if dense:  # several shapes per knot of the residual surface, as the measured grids have
        ms = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024, 2048, 4096]
        nks = [128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192, 12288, 16384]
    grid = np.array(list(itertools.product(ms, nks, nks)), dtype=float)
    m, n, k = grid.T
    t = curves.gemm_time(params, m, n, k, 2.0, 2.0, PEAKS.flops["bf16"], PEAKS.bandwidth)
    if noise:
        t = t * np.exp(np.random.default_rng(seed).normal(0.0, noise, len(t)))
    return make_frame(pd.DataFrame({
        "device": "test-gpu", "op_class": "gemm", "dtype": "bf16", "m": m, "n": n, "k": k, "measured_s": t,
        "source": "synthetic",
    }))


def test_gemm_fit_recovers_the_generating_curve():
    df = _gemm_rows(GEMM_TRUE)
    fitted = fit_curve("gemm-v1", df, PEAKS)
    pred = fitted.predict(df, PEAKS)
    err = np.abs(pred / df["measured_s"].to_numpy() - 1.0)
    assert np.median(err) < 0.005 and err.max() < 0.05
    # The well-determined parameters: the fixed cost and the two efficiency ceilings.
    assert fitted.params["t0_s"] == pytest.approx(GEMM_TRUE["t0_s"], rel=0.1)
    assert fitted.params["c_max"] == pytest.approx(GEMM_TRUE["c_max"], rel=0.05)
    assert fitted.params["m_max"] == pytest.approx(GEMM_TRUE["m_max"], rel=0.05)


def test_gemm_fit_with_noise_is_unbiased():
    # Dense: with one shape per knot of the residual surface (n, k knots every 2x) the surface could only
    # reproduce each shape's noise; with several between knots, as in the measured grids, it averages out.
    df = _gemm_rows(GEMM_TRUE, noise=0.03, seed=1, dense=True)
    fitted = fit_curve("gemm-v1", df, PEAKS)
    truth = curves.gemm_time(GEMM_TRUE, df["m"].to_numpy(), df["n"].to_numpy(), df["k"].to_numpy(), 2.0, 2.0,
                             PEAKS.flops["bf16"], PEAKS.bandwidth)
    ratio = fitted.predict(df, PEAKS) / truth
    assert abs(np.median(ratio) - 1.0) < 0.01  # 3 % log-normal noise averages out
    assert np.percentile(np.abs(ratio - 1.0), 90) < 0.03


def test_alpha_beta_fit_recovers_latency_and_bandwidth():
    sizes = np.logspace(3, 9, 40)
    alpha, beta = 12e-6, 150e9
    df = make_frame(pd.DataFrame({
        "device": "test-gpu", "op_class": "all_reduce", "op": "nccl_all_reduce", "dtype": "fp16",
        "nbytes": sizes, "group_size": 4, "link": "nvswitch", "measured_s": alpha + sizes / beta, "source": "synthetic",
    }))
    fitted = fit_curve("alpha-beta-v1", df, None)
    pred = fitted.predict(df, None)
    assert np.abs(pred / df["measured_s"].to_numpy() - 1).max() < 0.01
    # Small messages pin the latency, large ones the bandwidth.
    assert float(curves.alpha_beta_time(fitted.params, 1.0)) == pytest.approx(alpha, rel=0.02)
    big = 1e10
    assert big / (float(curves.alpha_beta_time(fitted.params, big)) - alpha) == pytest.approx(beta, rel=0.02)


def test_decode_fit_recovers_bandwidth_and_fixed_costs():
    true = {"t0_s": 10e-6, "kappa_u_s": 2e-8, "kappa_h_s": 1e-10, "m_max": 0.9, "u0": 8.0, "au": 1.0,
            "mha_factor": 1.0, "c_max": 0.5, "tau_mha_s": 0.0, "u_sat": 100.0}
    rows = list(itertools.product([1, 4, 16, 64, 256], [127, 1023, 8191, 32767], [(32, 8), (8, 1), (64, 8)]))
    b = np.array([r[0] for r in rows], float)
    ctx = np.array([r[1] for r in rows], float)
    h = np.array([r[2][0] for r in rows], float)
    hkv = np.array([r[2][1] for r in rows], float)
    t = curves.decode_attention_time(true, b, b * (ctx + 1), h, hkv, 128.0, 2.0, 2.0, 989e12, 3.35e12)
    df = make_frame(pd.DataFrame({
        "device": "test-gpu", "op_class": "attention_decode", "dtype": "bf16", "batch": b, "seq": 1, "context": ctx,
        "heads": h, "kv_heads": hkv, "head_dim": 128, "measured_s": t, "source": "synthetic",
    }))
    fitted = fit_curve("attention-decode-v1", df, PEAKS)
    assert np.abs(fitted.predict(df, PEAKS) / t - 1).max() < 0.02
    assert fitted.params["m_max"] == pytest.approx(0.9, rel=0.03)
    assert fitted.params["t0_s"] == pytest.approx(10e-6, rel=0.1)


# ------------------------------------------------------------------------------ folds


def _rows(**cols) -> pd.DataFrame:
    n = max(len(v) for v in cols.values() if isinstance(v, list))
    base = {"device": "g", "op_class": "gemm", "measured_s": 1e-3, "source": "x"}
    return make_frame(pd.DataFrame({**base, **{k: v if isinstance(v, list) else [v] * n for k, v in cols.items()}}))


def test_model_rows_split_by_model_size():
    df = _rows(model=["llama-7b", "llama-70b", "phi-2", "qwen-72b"], hidden=[4096, 8192, 2560, 8192],
               m=[1, 1, 1, 1], n=[1, 1, 1, 1], k=[1, 1, 1, 1])
    assert assign_folds(df).tolist() == ["A", "B", "A", "B"]


def test_gemm_grid_is_a_checkerboard_over_weight_shapes():
    grid = list(itertools.product([64, 128, 256], [64, 128, 256]))
    df = _rows(m=[8] * 9, n=[g[0] for g in grid], k=[g[1] for g in grid])
    folds = dict(zip(grid, assign_folds(df), strict=True))
    assert folds[(64, 64)] != folds[(64, 128)] != folds[(128, 128)]
    assert folds[(64, 64)] == folds[(128, 128)] == folds[(256, 256)]
    # every m of one weight shape lands in the same fold
    df2 = _rows(m=[1, 2, 4, 8], n=[128] * 4, k=[256] * 4)
    assert assign_folds(df2).nunique() == 1


def test_attention_grid_keeps_every_head_size_in_both_folds():
    configs = [(h, kv, dh) for dh in (64, 128) for h, kv in ((8, 1), (8, 8), (32, 8), (32, 32))]
    df = _rows(op_class="attention_prefill", batch=1, seq=128, context=0,
               heads=[c[0] for c in configs], kv_heads=[c[1] for c in configs], head_dim=[c[2] for c in configs])
    df["op_class"] = "attention_prefill"
    folds = assign_folds(df)
    for dh in (64, 128):
        assert set(folds[df["head_dim"] == dh]) == {"A", "B"}


# ------------------------------------------------------------------ attention v2


DECODE_V2_TRUE = {
    "t0_s": 11e-6, "t_split_s": 3e-6, "kappa_h_s": 2e-10, "kappa_u_s": 3e-8, "kappa_s_s": 1e-8, "m_max": 0.85,
    "u0": 2.0, "au": 1.0, "c_max": 0.6, "tau_s": 0.0, "tau_mha_s": 2e-8, "l2_gain": 1.0,
}


def _decode_v2_rows(params, device="h100-sxm"):
    from hwmodels.calibration import attention_curves as ac
    from hwmodels.calibration.fit import device_facts

    p = {**params, **device_facts(device)}
    rows = list(itertools.product([1, 4, 16, 64, 256, 1024], [31, 511, 4095, 32767],
                                  [(32, 8), (8, 1), (64, 8), (8, 8)]))
    b, ctx, h, hkv = (np.array(col, float) for col in zip(*[(r[0], r[1], *r[2]) for r in rows], strict=True))
    t = ac.decode_v2_time(p, b, b * (ctx + 1), h, hkv, 128.0, 2.0, 2.0, 989e12, 3.35e12, 1.0)
    return make_frame(pd.DataFrame({
        "device": device, "op_class": "attention_decode", "dtype": "bf16", "batch": b, "seq": 1, "context": ctx,
        "heads": h, "kv_heads": hkv, "head_dim": 128, "measured_s": t, "source": "synthetic",
    })), t


def test_decode_v2_fit_recovers_its_generating_curve_and_device_facts():
    df, t = _decode_v2_rows(DECODE_V2_TRUE)
    fitted = fit_curve("attention-decode-v2", df, PEAKS)
    assert np.abs(fitted.predict(df, PEAKS) / t - 1).max() < 0.03
    assert fitted.params["sms"] == 132 and fitted.params["l2_bytes"] == 50 * 2**20
    assert fitted.params["m_max"] == pytest.approx(0.85, rel=0.05)
    assert fitted.params["kappa_u_s"] == pytest.approx(3e-8, rel=0.1)
    assert fitted.params["tau_mha_s"] == pytest.approx(2e-8, rel=0.1)


def test_fa_splits_follows_the_flashattention_heuristic():
    from hwmodels.calibration.attention_curves import fa_splits

    assert fa_splits(120, 132) == 1  # 0.8 * 132 units already fill the GPU
    # One unit: efficiency s/132, best 128/132, first s reaching 85 % of it is ceil(0.85 * 128) = 109.
    assert fa_splits(1, 132) == 109
    for u in (1, 3, 8, 50):
        s = fa_splits(u, 108)
        assert 1 <= s <= 108 and (u * s / 108) / np.ceil(u * s / 108) >= 0.85 * 0.9


def test_decode_v2_mha_serial_path_counts_waves_over_the_sms():
    from hwmodels.calibration.attention_curves import decode_v2_cta_slope

    p = {**DECODE_V2_TRUE, "sms": 108.0}
    one_wave = decode_v2_cta_slope(p, 13.0, 8.0, 8.0) * 13.0  # 104 CTAs: one wave
    two_waves = decode_v2_cta_slope(p, 14.0, 8.0, 8.0) * 14.0  # 112 CTAs: two
    assert two_waves == pytest.approx(2.0 * one_wave) and one_wave == pytest.approx(2e-8)
    assert decode_v2_cta_slope(p, 14.0, 32.0, 8.0) == 0.0  # grouped heads take the split kernel


def test_prefill_shape_recovers_chunks_from_batch_sums():
    from hwmodels.calibration.attention_curves import prefill_shape

    n, q, c = 3.0, 512.0, 1000.0
    q_hat, c_hat, n_hat = prefill_shape(n * q, n * q * (c + q / 2), n * (c + q))
    assert (q_hat, c_hat, n_hat) == pytest.approx((q, c, n))


PREFILL_V2_TRUE = {
    "t0_s": 10e-6, "kappa_s": 2e-10, "kappa_u_s": 2e-8, "L0": 100.0, "aL": 1.0, "u0": 60.0, "au": 1.0,
    "m_max": 0.7, "q": 4.0, "mha_factor": 1.0, "tile": 0.5, "pack": 1.0, "c_max_by_head_dim": {64: 0.55, 128: 0.7},
}


def test_prefill_v2_fit_recovers_its_generating_curve():
    from hwmodels.calibration import attention_curves as ac

    rows = list(itertools.product([1, 2, 4, 8, 32, 128], [1, 16, 64, 100, 256, 512, 1024, 2048, 8192, 16384],
                                  [(32, 8, 128), (16, 16, 64), (8, 1, 128), (64, 8, 64)]))
    b, q, h, hkv, dh = (np.array(col, float) for col in zip(*[(r[0], r[1], *r[2]) for r in rows], strict=True))
    t = ac.prefill_v2_time(PREFILL_V2_TRUE, b * q, b * q * q / 2, b * q, h, hkv, dh, 2.0, 2.0, 989e12, 3.35e12)
    df = make_frame(pd.DataFrame({
        "device": "test-gpu", "op_class": "attention_prefill", "dtype": "bf16", "batch": b, "seq": q, "context": 0,
        "heads": h, "kv_heads": hkv, "head_dim": dh, "measured_s": t, "source": "synthetic",
    }))
    fitted = fit_curve("attention-prefill-v2", df, PEAKS)
    err = np.abs(fitted.predict(df, PEAKS) / t - 1)
    # The saturations in keys per query and in CTAs trade off a little: close, not exact.
    assert np.median(err) < 0.015 and err.max() < 0.12
    assert fitted.params["c_max_by_head_dim"][128] == pytest.approx(0.7, rel=0.1)
    # Tile padding: a 100-token prompt pays for a 128-row tile, so the fitted blend is clearly above zero
    # (it trades off against the keys-per-query saturation L0, so its value is not pinned more closely).
    assert fitted.params["tile"] > 0.25


def test_inner_predictions_read_only_their_outer_fold():
    """The nested split design decisions are made on: changing every row of the other outer fold, even to
    nonsense, leaves the inner predictions unchanged; and each inner half is predicted by a fit on the other."""
    from hwmodels.calibration.fit import Dataset
    from hwmodels.calibration.validate import inner_predictions

    df = _gemm_rows(GEMM_TRUE, noise=0.02, seed=3)
    folds = assign_folds(df)
    ds = Dataset("test-gpu", "gemm", "bf16", "measure", "", 0, "", df.index)
    pred = inner_predictions(df, ds, folds, "A", PEAKS)
    assert pred.index.equals(df.index[folds == "A"]) and pred.notna().all()
    ratio = pred / df.loc[pred.index, "measured_s"]
    assert np.percentile(np.abs(ratio - 1.0), 90) < 0.08  # fits on half the weight shapes still track the curve

    scrambled = df.copy()
    other = folds != "A"
    scrambled.loc[other, "measured_s"] = scrambled.loc[other, "measured_s"] * 7.0
    again = inner_predictions(scrambled, ds, folds, "A", PEAKS)
    assert np.array_equal(again.to_numpy(), pred.to_numpy())


def test_flashattention2_rows_count_two_ctas_per_sm_in_the_split_heuristic():
    """FlashAttention-2 calls its split heuristic with 2 x SMs: on an A100 (108 SMs) 100 KV streams are below
    0.8 x 216, so the step splits (and pays the merge kernel), where a one-CTA-per-SM kernel would not."""
    from hwmodels.calibration.attention_curves import decode_v2_lines
    from hwmodels.calibration.fit import kernel_facts

    rows = make_frame(pd.DataFrame({"device": "a100-80gb-sxm", "op_class": "attention_decode",
                                    "kernel": ["vllm_flash_attn"] * 2, "measured_s": 1e-4}))
    assert kernel_facts(rows) == {"ctas_per_sm": 2.0, "kv_block_cap": 1.0, "q_tile_rows": 64.0, "serial_merge": 1.0,
                                  "swap_copy": 1.0, "cache_write": 1.0}
    assert kernel_facts(rows.assign(kernel="vllm_flash_attn_fa3")) == {
        "ctas_per_sm": 1.0, "kv_block_cap": 0.0, "q_tile_rows": 0.0, "serial_merge": 0.0, "swap_copy": 0.0,
        "cache_write": 0.0}
    with pytest.raises(CapsimError, match="different split heuristics"):
        kernel_facts(rows.assign(kernel=["vllm_flash_attn", "vllm_flash_attn_fa3"]))

    p = {**DECODE_V2_TRUE, "sms": 108.0, "t_split_s": 5e-6, "kappa_h_s": 0.0}
    fixed_one, *_ = decode_v2_lines(p, 25.0, 32.0, 4.0, 128.0, 2.0, 312e12, 2.0e12)  # 100 streams
    fixed_two, *_ = decode_v2_lines({**p, "ctas_per_sm": 2.0}, 25.0, 32.0, 4.0, 128.0, 2.0, 312e12, 2.0e12)
    assert fixed_two - fixed_one == pytest.approx(5e-6)

    # The fit copies the fact from the rows' kernel into the profile's params.
    df, _ = _decode_v2_rows(DECODE_V2_TRUE)
    fitted = fit_curve("attention-decode-v2", df.assign(kernel="vllm_flash_attn"), PEAKS)
    assert fitted.params["ctas_per_sm"] == 2.0


def test_flashattention2_caps_its_splits_by_the_contexts_kv_blocks():
    """FlashAttention-2's whole heuristic on an A100 (2 x 108 slots), one sequence with one KV head: a one-block
    context is not split, up to 128 blocks every block is a split, and a split count that leaves the blocks per
    split unchanged is skipped (150 blocks: 76..128 splits all give 2 blocks each, so 75 is taken)."""
    from hwmodels.calibration.attention_curves import fa_splits, kv_block_tokens

    assert kv_block_tokens(128) == 128 and kv_block_tokens(64) == 256 and kv_block_tokens(256) == 64
    assert fa_splits(1, 216, 1) == 1
    assert fa_splits(1, 216, 2) == 2
    assert fa_splits(1, 216, 64) == 64
    assert fa_splits(1, 216, 128) == 128
    assert fa_splits(1, 216, 150) == 75
    assert fa_splits(1, 216) == 109  # the long-context limit: no cap, no eligibility rule
    assert fa_splits(200, 216, 1000) == 1  # 200 CTAs fill 80 % of the slots: no split at any context


def test_capped_splits_change_the_decode_step_with_context_only_below_the_cap():
    """With ``kv_block_cap`` a one-block context runs no merge kernel; a long one prices as the long-context limit."""
    from hwmodels.calibration.attention_curves import decode_v2_lines

    p = {**DECODE_V2_TRUE, "sms": 108.0, "ctas_per_sm": 2.0, "t_split_s": 5e-6, "kappa_h_s": 0.0,
         "kappa_m_s": 1e-7}
    args = (1.0, 8.0, 1.0, 128.0, 2.0, 312e12, 2.0e12)
    uncapped = decode_v2_lines(p, *args, context_per_seq=100.0)
    capped_short = decode_v2_lines({**p, "kv_block_cap": 1.0}, *args, context_per_seq=100.0)
    capped_long = decode_v2_lines({**p, "kv_block_cap": 1.0}, *args, context_per_seq=10_000_000.0)
    # Merge kernel: t_split + kappa_m * s, paid only when split (109 splits uncapped; none for one block).
    assert uncapped[0] - capped_short[0] == pytest.approx(5e-6 + 109 * 1e-7)
    assert capped_long[0] > capped_short[0]


def test_flashattention2_decode_pads_query_heads_to_64_row_tiles():
    from hwmodels.calibration.attention_curves import decode_query_rows

    assert decode_query_rows({}, 32.0, 8.0) == 32.0
    assert decode_query_rows({"q_tile_rows": 64.0}, 32.0, 8.0) == 8.0 * 64.0  # groups of 4 -> one 64-row tile
    assert decode_query_rows({"q_tile_rows": 64.0}, 128.0, 1.0) == 128.0  # a group of 128 -> two tiles


def test_a_parameter_gated_by_a_kernel_fact_is_held_at_zero_without_it():
    """``kappa_m_s`` (FlashAttention-2's serial merge) is fitted on FA2 rows and held at 0 on FA3 rows."""
    from hwmodels.calibration.fit import KERNEL_FACTS

    fa3_rows, _ = _decode_v2_rows(DECODE_V2_TRUE)
    fa3 = fit_curve("attention-decode-v2", fa3_rows.assign(kernel="vllm_flash_attn_fa3"), PEAKS, correct=False)
    assert fa3.params["kappa_m_s"] == 0.0 and fa3.params["serial_merge"] == 0.0
    truth = {**DECODE_V2_TRUE, "tau_s": 5e-8, "kappa_m_s": 2e-7, **KERNEL_FACTS["vllm_flash_attn"]}
    fa2_rows, _ = _decode_v2_rows(truth, device="a100-80gb-sxm")
    fa2 = fit_curve("attention-decode-v2", fa2_rows.assign(kernel="vllm_flash_attn"), PEAKS, correct=False)
    assert fa2.params["serial_merge"] == 1.0
    assert fa2.params["kappa_m_s"] == pytest.approx(2e-7, rel=0.2)


@pytest.mark.parametrize(("m", "n", "sms", "expected"), [
    (128.0, 256.0 * 108, 108.0, 1.0),  # exactly one full wave of 128 x 256 tiles
    (256.0, 4096.0, 108.0, 32 / 108),  # 2 x 16 tiles: a third of one wave
    (1024.0, 4096.0, 108.0, 128 / 216),  # 8 x 16 tiles: one full wave and 20 of 108 slots of the second
    (129.0, 257.0, 108.0, 4 / 108),  # partial tiles count whole
    (1024.0, 4096.0, 1.0, 1.0),  # one "SM" (a CPU): no waves to quantise
])
def test_wave_efficiency_counts_128_by_256_output_tiles_over_the_sms(m, n, sms, expected):
    assert curves.wave_efficiency(m, n, sms) == pytest.approx(expected)
    assert curves.wave_efficiency(np.array([m, m]), n, sms) == pytest.approx([expected, expected])


def test_gemm_fit_recovers_a_wave_quantisation_weight_on_a_catalog_device():
    # The SM count is a catalog fact (108 on the A100): not fitted, copied into the params.
    truth = {**GEMM_TRUE, "wave": 0.7, "sms": 108.0}
    df = _gemm_rows(truth).assign(device="a100-80gb-sxm")
    fitted = fit_curve("gemm-v1", df, PEAKS, correct=False)
    assert fitted.params["sms"] == 108.0
    assert fitted.params["wave"] == pytest.approx(0.7, abs=0.05)
    err = np.abs(fitted.predict(df, PEAKS) / df["measured_s"].to_numpy() - 1.0)
    assert np.median(err) < 0.01 and np.percentile(err, 90) < 0.03


def test_a_gemm_curve_without_a_wave_weight_prices_as_before():
    m, n, k = np.array([1.0, 200.0, 1000.0, 5000.0]), 4096.0, 4096.0
    old = curves.gemm_time(GEMM_TRUE, m, n, k, 2.0, 2.0, PEAKS.flops["bf16"], PEAKS.bandwidth)
    zero = curves.gemm_time({**GEMM_TRUE, "wave": 0.0, "sms": 108.0}, m, n, k, 2.0, 2.0, PEAKS.flops["bf16"],
                            PEAKS.bandwidth)
    waved = curves.gemm_time({**GEMM_TRUE, "wave": 1.0, "sms": 108.0}, m, n, k, 2.0, 2.0, PEAKS.flops["bf16"],
                             PEAKS.bandwidth)
    assert np.array_equal(old, zero)
    # 1000 rows: 8 x 16 tiles fill 128 of 216 slots, so the compute-bound shape is slower with the wave term.
    assert waved[2] > 1.3 * old[2] and np.all(waved >= old)  # a part-empty wave only ever slows a GEMM


def test_prefill_v2_streams_its_bytes_at_the_occupancy_of_its_ctas():
    """Few CTAs cannot keep enough loads in flight to reach the bandwidth: the memory side carries the same
    occupancy factor as the compute side (docs/calibration-decisions.md, 19)."""
    from hwmodels.calibration import attention_curves as ac

    p = {**PREFILL_V2_TRUE, "q": 30.0}
    # One 4k-token MHA sequence of 4 heads (128 CTAs) against 64 of them (8,192 CTAs), per CTA the same.
    few = ac.prefill_v2_terms(p, 4096.0, 4096.0 * 2048, 4096.0, 4.0, 4.0, 128.0)
    many = ac.prefill_v2_terms(p, 64 * 4096.0, 64 * 4096.0 * 2048, 64 * 4096.0, 4.0, 4.0, 128.0)
    occupancy_few = curves.sat(4 * 32.0, p["u0"], p["au"])
    occupancy_many = curves.sat(64 * 4 * 32.0, p["u0"], p["au"])
    assert few[2] == pytest.approx(p["m_max"] * occupancy_few) and many[2] == pytest.approx(p["m_max"] * occupancy_many)
    assert few[2] < many[2] <= p["m_max"]
    # The compute side carries the same factor: their ratio does not depend on the CTA count.
    assert few[1] / few[2] == pytest.approx(many[1] / many[2])


def test_flashattention2_pays_the_query_copy_of_its_group_swap_only_where_torch_must_copy():
    """``q.reshape({b, h_kv, g, d}).transpose(1, 2).reshape({b * g, h_kv, d})`` is a view for one sequence or one
    KV head, a copy otherwise (decision 21): the fixed term grows by t_swap_s plus the copy's bytes exactly there."""
    from hwmodels.calibration.attention_curves import decode_swap_copy, decode_v2_lines

    bw = 2.0e12
    p = {**DECODE_V2_TRUE, "sms": 108.0, "swap_copy": 1.0, "t_swap_s": 5e-6}
    copy_bytes = 2.0 * 16 * 64 * 128 * 2.0  # read and write of b * h * d bf16 values
    assert decode_swap_copy(p, 16.0, 64.0, 8.0, 128.0, bw) == pytest.approx(5e-6 + copy_bytes / (bw * p["m_max"]))
    for seqs, heads, kv_heads in ((1.0, 64.0, 8.0), (16.0, 64.0, 1.0), (16.0, 8.0, 8.0)):  # view, view, no swap (MHA)
        assert decode_swap_copy(p, seqs, heads, kv_heads, 128.0, bw) == 0.0
    assert decode_swap_copy({**p, "swap_copy": 0.0}, 16.0, 64.0, 8.0, 128.0, bw) == 0.0  # FlashAttention-3
    seqs = np.array([1.0, 2.0, 64.0])
    many = decode_swap_copy(p, seqs, 32.0, 4.0, 128.0, bw)
    assert many[0] == 0.0 and np.all(np.diff(many) > 0.0)
    with_copy, *_ = decode_v2_lines(p, 16.0, 64.0, 8.0, 128.0, 2.0, 312e12, bw)
    without, *_ = decode_v2_lines({**p, "swap_copy": 0.0}, 16.0, 64.0, 8.0, 128.0, 2.0, 312e12, bw)
    assert with_copy - without == pytest.approx(decode_swap_copy(p, 16.0, 64.0, 8.0, 128.0, bw))


def test_vllm_cache_write_runs_in_waves_of_one_cta_per_token():
    """``reshape_and_cache_flash`` launches one CTA of min(h_kv d, 512) threads per token (decision 24): at 8,192
    tokens on 108 SMs that is 5, 10 and 19 waves for 1, 2 and 4 KV heads of 128 (16, 8, 4 CTAs per SM), and 8 KV
    heads take the same 19 waves with a second loop iteration each."""
    from hwmodels.calibration.attention_curves import cache_write_time

    p = {"sms": 108.0, "m_max": 0.8, "cache_write": 1.0, "t_cw_s": 5.5e-6, "t_cw_iter_s": 4e-7}
    fast = 1e18  # bandwidth high enough that the latency side decides
    t = {hkv: cache_write_time(p, 8192.0, float(hkv), 128.0, 2.0, fast) for hkv in (1, 2, 4, 8)}
    assert t[1] == pytest.approx(5 * 5.5e-6) and t[2] == pytest.approx(10 * 5.5e-6)
    assert t[4] == pytest.approx(19 * 5.5e-6) and t[8] == pytest.approx(19 * (5.5e-6 + 4e-7))
    # Many KV heads: the bytes (keys and values read and written) at the stream rate take longer than the waves.
    bw = 2.0e12
    mha = cache_write_time(p, 8192.0, 64.0, 128.0, 2.0, bw)
    assert mha == pytest.approx(4 * 8192 * 64 * 128 * 2.0 / (bw * 0.8))
    assert cache_write_time({**p, "cache_write": 0.0}, 8192.0, 4.0, 128.0, 2.0, bw) == 0.0  # a table without it
    many = cache_write_time(p, np.array([100.0, 8192.0, 65536.0]), 4.0, 128.0, 2.0, fast)
    assert many == pytest.approx([5.5e-6, 19 * 5.5e-6, 152 * 5.5e-6])


def test_prefill_fit_recovers_the_cache_write_of_a_table_that_includes_it():
    """Rows generated with the write's waves (a vLLM FlashAttention-2 table on an A100): the fit finds the
    per-wave time, and predicts the KV-head steps at fixed tokens that the attention curve alone cannot."""
    from hwmodels.calibration import attention_curves as ac

    truth = {**PREFILL_V2_TRUE, "sms": 108.0, "cache_write": 1.0, "t_cw_s": 5.5e-6, "t_cw_iter_s": 4e-7}
    rows = list(itertools.product([1, 4, 16, 64], [64, 256, 1024, 4096], [(8, 1), (8, 2), (8, 4), (8, 8), (32, 4),
                                                                         (32, 32), (64, 8)]))
    b, q, h, hkv = (np.array(col, float) for col in zip(*[(r[0], r[1], *r[2]) for r in rows], strict=True))
    t = ac.prefill_v2_time(truth, b * q, b * q * q / 2, b * q, h, hkv, 128.0, 2.0, 2.0, 312e12, 2.0e12)
    df = make_frame(pd.DataFrame({
        "device": "a100-80gb-sxm", "op_class": "attention_prefill", "dtype": "bf16", "batch": b, "seq": q,
        "context": 0, "heads": h, "kv_heads": hkv, "head_dim": 128.0, "measured_s": t, "source": "synthetic",
        "kernel": "vllm_flash_attn",
    }))
    a100 = Peaks({"bf16": 312e12}, 2.0e12, "test")
    fitted = fit_curve("attention-prefill-v2", df, a100)
    assert fitted.params["cache_write"] == 1.0 and fitted.params["sms"] == 108.0
    assert fitted.params["t_cw_s"] == pytest.approx(5.5e-6, rel=0.15)
    err = np.abs(fitted.predict(df, a100) / t - 1)
    assert np.median(err) < 0.02 and np.percentile(err, 90) < 0.06
    # The same rows timed by FlashAttention-3 (no such fact): the write's parameters are held at 0, not fitted.
    fa3 = fit_curve("attention-prefill-v2", df.assign(kernel="vllm_flash_attn_fa3"), a100)
    assert fa3.params["cache_write"] == 0.0 and fa3.params["t_cw_s"] == 0.0 and fa3.params["t_cw_iter_s"] == 0.0
