"""Exact weighted quantiles and compact token-gap statistics agree with numpy on the expanded sample."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capsim.errors import CapsimError
from simulator.metrics.quantiles import (
    ecdf_points,
    token_gap_cdf,
    token_gap_mean,
    token_gap_quantiles,
    weighted_quantiles,
)
from simulator.metrics.result import TokenGaps, TokenGapsBuilder

LEVELS = st.lists(st.floats(0.0, 1.0), min_size=1, max_size=6)


def expanded(gaps: TokenGaps) -> np.ndarray:
    """The reference sample, written independently of TokenGaps.expand: a plain Python loop."""
    out = []
    for f, s, c, w in zip(gaps.first, gaps.step, gaps.count, gaps.weight, strict=True):
        for k in range(int(c)):
            out.extend([f + k * s] * int(w))
    out.extend(gaps.single_values.tolist())
    return np.array(out, dtype=np.float64)


@st.composite
def token_gaps(draw: st.DrawFn) -> TokenGaps:
    n = draw(st.integers(0, 8))
    base = st.sampled_from([0.0, 0.01, 0.02, 0.5]) | st.floats(0.0, 2.0)
    step = st.sampled_from([0.0, 0.001, -0.001, 1e-20]) | st.floats(-0.01, 0.01)
    return TokenGaps.from_runs(
        first=draw(st.lists(base, min_size=n, max_size=n)),
        step=draw(st.lists(step, min_size=n, max_size=n)),
        count=draw(st.lists(st.integers(0, 12), min_size=n, max_size=n)),
        weight=draw(st.lists(st.integers(0, 5), min_size=n, max_size=n)),
        single_values=draw(st.lists(base, max_size=5)),
    )


@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=30),
    data=st.data(),
    qs=LEVELS,
)
def test_weighted_quantiles_match_numpy_on_repeated_sample(
    values: list[float], data: st.DataObject, qs: list[float]
) -> None:
    weights = data.draw(st.lists(st.integers(0, 6), min_size=len(values), max_size=len(values)))
    sample = np.repeat(values, weights)
    got = weighted_quantiles(values, weights, qs)
    if len(sample) == 0:
        assert np.isnan(got).all()
    else:
        np.testing.assert_allclose(got, np.quantile(sample, qs), rtol=1e-12, atol=1e-12)


@settings(max_examples=200, deadline=None)
@given(gaps=token_gaps(), qs=LEVELS, max_pairs=st.sampled_from([1, 2, 5, 10_000]))
def test_token_gap_quantiles_are_exact_for_every_expansion_limit(
    gaps: TokenGaps, qs: list[float], max_pairs: int
) -> None:
    sample = expanded(gaps)
    got = token_gap_quantiles(gaps, qs, max_pairs=max_pairs)
    assert gaps.num_samples == len(sample)
    if len(sample) == 0:
        assert np.isnan(got).all()
        return
    np.testing.assert_allclose(got, np.quantile(sample, qs), rtol=1e-12, atol=1e-15)
    assert np.isclose(token_gap_mean(gaps), sample.mean(), rtol=1e-12, atol=1e-15)


def test_bisection_path_returns_the_same_floats_as_full_expansion() -> None:
    rng = np.random.default_rng(7)
    n = 3000
    gaps = TokenGaps(
        first=rng.gamma(4, 0.005, n) + 0.01,
        step=rng.normal(0, 1e-4, n),
        count=rng.integers(1, 40, n),
        weight=rng.integers(1, 50, n),
        single_values=rng.gamma(2, 0.05, 500),
    )
    qs = [0.0, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0]
    direct = token_gap_quantiles(gaps, qs, max_pairs=10**9)
    bisected = token_gap_quantiles(gaps, qs, max_pairs=97)
    np.testing.assert_array_equal(direct, bisected)
    np.testing.assert_allclose(direct, np.quantile(gaps.expand(), qs), rtol=1e-12)


def test_runs_whose_values_collapse_under_rounding_are_counted_exactly() -> None:
    # 1.0 + k * 1e-20 == 1.0 for every k: the progression is 1000 copies of 1.0.
    gaps = TokenGaps.from_runs(first=[1.0, 0.5], step=[1e-20, 0.25], count=[1000, 3], weight=[1, 400])
    sample = gaps.expand()
    for max_pairs in (1, 3, 10**6):
        np.testing.assert_allclose(
            token_gap_quantiles(gaps, [0.1, 0.5, 0.9], max_pairs=max_pairs), np.quantile(sample, [0.1, 0.5, 0.9])
        )


def test_expand_matches_reference_loop_and_builder_and_concat_agree() -> None:
    b = TokenGapsBuilder()
    b.add_run(first=0.02, step=0.001, count=3, weight=2)
    b.add_run(first=0.05, step=0.0, count=0, weight=9)  # empty run is dropped
    b.add_singles([0.3, 0.4])
    gaps = b.build()
    assert gaps.num_runs == 1
    np.testing.assert_allclose(np.sort(gaps.expand()), np.sort(expanded(gaps)))
    both = TokenGaps.concat([gaps, gaps])
    assert both.num_samples == 2 * gaps.num_samples == 16
    assert TokenGaps.concat([]).num_samples == 0


def test_token_gaps_reject_inconsistent_arrays() -> None:
    with pytest.raises(CapsimError, match="same length"):
        TokenGaps.from_runs(first=[0.1, 0.2], step=[0.0], count=[1], weight=[1])
    with pytest.raises(CapsimError, match="non-negative"):
        TokenGaps.from_runs(first=[0.1], step=[0.0], count=[-1], weight=[1])
    with pytest.raises(CapsimError, match="finite"):
        TokenGaps.from_runs(single_values=[float("nan")])


def test_weighted_quantiles_reject_bad_input() -> None:
    with pytest.raises(CapsimError, match="whole numbers"):
        weighted_quantiles([1.0, 2.0], [0.5, 1.0], [0.5])
    with pytest.raises(CapsimError, match=r"\[0, 1\]"):
        weighted_quantiles([1.0], [1], [99])
    with pytest.raises(CapsimError, match="non-negative"):
        weighted_quantiles([1.0], [-1], [0.5])


def test_cdf_points_are_monotone_and_end_at_one_in_both_modes() -> None:
    rng = np.random.default_rng(3)
    gaps = TokenGaps(
        first=rng.random(200) + 0.01,
        step=np.full(200, 0.001),
        count=rng.integers(1, 20, 200),
        weight=rng.integers(1, 9, 200),
        single_values=rng.random(10) + 0.01,
    )
    for max_pairs in (10**6, 50):
        x, f = token_gap_cdf(gaps, num_points=64, max_pairs=max_pairs)
        assert len(x) <= 66
        assert np.all(np.diff(x) >= 0) and np.all(np.diff(f) >= 0)
        assert f[-1] == pytest.approx(1.0)
        # F at the median point is close to the true fraction of samples <= x
        sample = gaps.expand()
        mid = len(x) // 2
        assert f[mid] == pytest.approx(np.mean(sample <= x[mid] * (1 + 1e-12)), abs=0.02)
    x, f = ecdf_points(np.array([3.0, np.nan, 1.0, 2.0]))
    assert x.tolist() == [1.0, 2.0, 3.0] and f.tolist() == pytest.approx([1 / 3, 2 / 3, 1.0])
