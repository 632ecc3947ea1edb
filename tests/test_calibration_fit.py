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

from hwmodels.calibration import curves
from hwmodels.calibration.fit import Peaks, fit_curve
from hwmodels.calibration.folds import assign_folds
from hwmodels.calibration.schema import make_frame

PEAKS = Peaks({"bf16": 989e12}, 3.35e12, "test")

GEMM_TRUE = {
    "t0_s": 4e-6, "c_max": 0.8, "m0": 48.0, "am": 1.2, "n0": 300.0, "an": 0.9, "k0": 200.0, "ak": 1.1,
    "m_max": 0.85, "b0": 2e6, "ab": 0.8, "q": 3.0, "tile": 0.0,
}


def _gemm_rows(params, *, noise=0.0, seed=0) -> pd.DataFrame:
    ms = [1, 4, 16, 64, 128, 256, 1024, 4096]
    nks = [128, 512, 2048, 4096, 8192, 16384]
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
    df = _gemm_rows(GEMM_TRUE, noise=0.03, seed=1)
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
