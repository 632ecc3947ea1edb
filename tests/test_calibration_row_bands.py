"""GEMM kernels that compute rows in bands: the band's fill as a fourth feature of the residual surface.

vLLM's Hopper fp8 CUTLASS kernel runs a partly filled last band of rows more
slowly than a full one (``docs/calibration-decisions.md``, 16). These tests
check the band rule itself, that a fit on rows of such a kernel picks up a
slowdown generated from the fill (and a fit on another kernel's rows cannot),
and that the engine's pricer reads the same surface as the fitted curve.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from hwmodels.calibration import correction, curves
from hwmodels.calibration.fit import GEMM_ROW_BANDS, Peaks, fit_curve
from hwmodels.calibration.pricing import GemmPricer
from hwmodels.calibration.profile import Curve
from hwmodels.calibration.schema import make_frame

FP8_KERNEL = "CutlassFP8ScaledMMLinearKernel"
BANDS = GEMM_ROW_BANDS[FP8_KERNEL]
PEAKS = Peaks({"fp8": 1979e12}, 3.35e12, "test")
TRUE = {"t0_s": 4e-6, "c_max": 0.8, "m0": 48.0, "am": 1.2, "n0": 300.0, "an": 0.9, "k0": 200.0, "ak": 1.1,
        "m_max": 0.85, "b0": 2e6, "ab": 0.8, "q": 3.0, "tile": 0.5}
SLOWDOWN = 0.4  # a half-filled band takes 1 + 0.4 * 0.5 = 1.2x the physical time


@pytest.mark.parametrize(("m", "k", "fill"), [
    (1, 4096, 1 / 16), (16, 4096, 1.0), (17, 4096, 17 / 64), (64, 4096, 1.0), (65, 4096, 65 / 128),
    (129, 4096, 129 / 256), (256, 4096, 1.0), (257, 4096, 257 / 512), (513, 4096, 513 / 768),
    (8193, 8192, 8193 / 8704), (8193, 4096, 8193 / 8448), (16.2, 4096, 17 / 64),
])
def test_band_fill_follows_the_kernels_dispatch(m, k, fill):
    assert correction.band_fill(BANDS, m, k) == pytest.approx(fill)
    many = correction.band_fill(BANDS, np.array([m, m]), np.array([k, k]))
    assert np.allclose(many, fill)


def test_band_fill_is_one_where_no_band_applies():
    assert correction.band_fill([(1.0, 16.0, 0.0, 16.0)], 100.0, 64.0) == 1.0
    assert np.all(correction.band_fill([(1.0, 16.0, 0.0, 16.0)], np.array([100.0, 300.0]), 64.0) == 1.0)


def _rows(kernel: str) -> pd.DataFrame:
    ms = [1, 8, 16, 17, 32, 64, 65, 96, 128, 129, 192, 256, 257, 512, 513, 768, 769, 1024, 1025, 1280, 2048, 2049, 4096]
    nks = [512, 2048, 4096, 8192, 16384]
    m, n, k = np.array(list(itertools.product(ms, nks, nks)), dtype=float).T
    t = curves.gemm_time(TRUE, m, n, k, 2.0, 1.0, PEAKS.flops["fp8"], PEAKS.bandwidth)  # fp8 weights, 16-bit activations
    t = t * (1.0 + SLOWDOWN * (1.0 - correction.band_fill(BANDS, m, k)))
    return make_frame(pd.DataFrame({"device": "test-gpu", "op_class": "gemm", "dtype": "fp8", "m": m, "n": n, "k": k,
                                    "measured_s": t, "kernel": kernel, "source": "synthetic"}))


def test_a_banded_kernels_fit_follows_the_partly_filled_band():
    df = _rows(FP8_KERNEL)
    fitted = fit_curve("gemm-v1", df, PEAKS)
    corr = fitted.params["correction"]
    assert corr["kind"] == "gemm-banded" and corr["row_bands"] == [list(b) for b in BANDS]
    err = np.abs(fitted.predict(df, PEAKS) / df["measured_s"].to_numpy() - 1.0)
    # The same rows under a kernel with no band rule: the fill cannot be seen, the sawtooth stays in the error.
    plain = fit_curve("gemm-v1", _rows("some-other-kernel"), PEAKS)
    assert plain.params["correction"]["kind"] == "gemm"
    plain_err = np.abs(plain.predict(df, PEAKS) / df["measured_s"].to_numpy() - 1.0)
    assert np.percentile(err, 90) < 0.5 * np.percentile(plain_err, 90)
    # Just past a band edge (65, 129, 257, 513 rows: bands about half full) the banded fit follows the
    # generated slowdown; the plain one, whose m axis has a knot at the edge's other side, cannot.
    past_edge = df["m"].isin([65.0, 129.0, 257.0, 513.0, 1025.0, 2049.0]).to_numpy()
    assert np.median(err[past_edge]) < 0.03 < np.median(plain_err[past_edge])


def test_the_pricer_reads_the_banded_surface_like_the_fitted_curve():
    df = _rows(FP8_KERNEL)
    fitted = fit_curve("gemm-v1", df, PEAKS)
    curve = Curve("gemm", "fp8", "gemm-v1", fitted.params, "synthetic")
    n, k = 4096.0, 8192.0
    pricer = GemmPricer(curve, [(n, k, 1.0)], PEAKS.flops["fp8"], PEAKS.bandwidth)
    m = np.array([1.0, 17.0, 129.0, 257.0, 512.0, 1025.0])
    flops, nbytes = 2.0 * m * n * k, 2.0 * (m * k + m * n) + n * k
    rows = make_frame(pd.DataFrame({"device": "test-gpu", "op_class": "gemm", "dtype": "fp8", "m": m, "n": n, "k": k,
                                    "measured_s": 1.0, "kernel": FP8_KERNEL, "source": "synthetic"}))
    expected = fitted.predict(rows, PEAKS)
    many = pricer.price_many(flops, nbytes).time_s
    one = [pricer.price(float(f), float(b)).time_s for f, b in zip(flops, nbytes, strict=True)]
    assert np.allclose(many, expected, rtol=1e-9) and np.allclose(one, expected, rtol=1e-9)
    assert not math.isclose(one[3] / one[4], 257 / 512, rel_tol=0.05)  # not a plain row count


def test_the_shipped_h100_fp8_gemm_curve_is_banded_and_prices_the_same_scalar_and_array():
    from hwmodels.calibration.profile import shipped_profile

    prof = shipped_profile("h100-sxm")
    curve = prof.curve("gemm", "fp8")
    corr = curve.params["correction"]
    assert corr["kind"] == "gemm-banded" and [tuple(b) for b in corr["row_bands"]] == list(BANDS)
    assert prof.curve("gemm", "bf16").params["correction"]["kind"] == "gemm"  # cuBLAS rows: no bands
    pricer = GemmPricer(curve, [(6144.0, 4096.0, 1.0), (4096.0, 4096.0, 1.0)],
                        prof.doc["peaks"]["flops_per_s"]["fp8"], prof.doc["peaks"]["memory_bandwidth_Bps"])
    m = np.array([1.0, 17.0, 129.0, 256.0, 257.0, 1000.0, 40000.0])
    flops = 2.0 * m * pricer.weight_elements
    nbytes = 2.0 * m * 8192 + pricer.weight_elements
    many = pricer.price_many(flops, nbytes).time_s
    one = [pricer.price(float(f), float(b)).time_s for f, b in zip(flops, nbytes, strict=True)]
    assert np.allclose(many, one, rtol=1e-12, atol=0.0)
    assert one[4] > one[3]  # one row past a 256-row band edge costs a step, as measured
