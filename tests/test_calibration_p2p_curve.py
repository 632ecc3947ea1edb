"""The pipelined alpha-beta family (``alpha-beta-v2``): its formula, and that fitting recovers a known curve."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hwmodels.calibration import curves
from hwmodels.calibration.fit import fit_curve
from hwmodels.calibration.schema import make_frame

TRUE = {"alpha1_s": 17e-6, "beta1_Bps": 250e9, "q": 1.7}


def _rows(params, sizes) -> pd.DataFrame:
    return make_frame(pd.DataFrame({
        "device": "test-gpu", "op_class": "send_recv", "op": "nccl_send_recv", "dtype": "fp16", "nbytes": sizes,
        "group_size": 2, "link": "nvswitch", "measured_s": curves.alpha_beta_time(params, sizes),
        "source": "synthetic",
    }))


def test_q_one_is_the_v1_sum_and_large_q_hides_the_latency():
    v1 = {"alpha1_s": 10e-6, "beta1_Bps": 100e9}
    assert curves.alpha_beta_time({**v1, "q": 1.0}, 1e6) == pytest.approx(curves.alpha_beta_time(v1, 1e6))
    assert curves.alpha_beta_time(v1, 1e6) == pytest.approx(20e-6)
    # Perfect overlap: the larger of latency and wire time, so a 10 MB message costs its wire time only.
    assert curves.alpha_beta_time({**v1, "q": 30.0}, 1e7) == pytest.approx(100e-6, rel=1e-3)
    # Scalars stay Python floats (the cost model's per-shape pricing), arrays stay arrays.
    assert isinstance(curves.alpha_beta_time(TRUE, 1e6), float)
    assert curves.alpha_beta_time(TRUE, np.array([1e3, 1e6])).shape == (2,)


def test_fit_recovers_a_pipelined_point_to_point_curve():
    sizes = np.logspace(3, 8, 60)
    df = _rows(TRUE, sizes)
    fitted = fit_curve("alpha-beta-v2", df, None)
    pred = fitted.predict(df, None)
    assert np.abs(pred / df["measured_s"].to_numpy() - 1).max() < 0.01
    # The corner is convex: a v1 fit (minimum of sums) cannot follow it as closely.
    v1 = fit_curve("alpha-beta-v1", df, None).predict(df, None)
    assert np.abs(v1 / df["measured_s"].to_numpy() - 1).max() > 0.05
    # Small messages pin the latency, large ones the bandwidth.
    assert float(curves.alpha_beta_time(fitted.params, 1.0)) == pytest.approx(TRUE["alpha1_s"], rel=0.02)
    assert 1e10 / float(curves.alpha_beta_time(fitted.params, 1e10)) == pytest.approx(TRUE["beta1_Bps"], rel=0.02)


def test_send_recv_uses_the_pipelined_family():
    assert curves.FORM_FOR_OP_CLASS["send_recv"] == "alpha-beta-v2"
