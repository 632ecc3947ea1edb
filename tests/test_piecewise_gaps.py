"""Gaps of a non-affine decode run are recorded as affine pieces, and expand back to the same durations."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.recorder import Recorder
from simulator.replica import _record_piecewise


def _expand(rec: Recorder) -> np.ndarray:
    gaps = rec.token_gaps()
    out = [f + s * np.arange(c) for f, s, c in zip(gaps.first, gaps.step, gaps.count, strict=True)]
    return np.concatenate(out) if out else np.zeros(0)


pieces = st.lists(
    st.tuples(st.floats(1e-4, 1e-1), st.floats(-1e-6, 1e-5), st.integers(1, 40)), min_size=1, max_size=6)


@settings(max_examples=150, deadline=None)
@given(pieces, st.integers(1, 64))
def test_piecewise_gaps_expand_to_the_durations(spec, weight):
    durations = np.concatenate([first + step * np.arange(count) for first, step, count in spec])
    rec = Recorder()
    _record_piecewise(rec, durations, weight)
    gaps = rec.token_gaps()
    np.testing.assert_allclose(_expand(rec), durations, rtol=1e-7, atol=1e-12)
    assert set(gaps.weight.tolist()) == {weight}
    # One entry per affine piece at most (a piece of one duration may pair with the next).
    assert len(gaps.count) <= len(spec) + 1


def test_a_run_that_jumps_once_is_two_records():
    durations = np.concatenate([0.010 + 1e-6 * np.arange(50), 0.012 + 1e-6 * np.arange(30)])
    rec = Recorder()
    _record_piecewise(rec, durations, 3)
    gaps = rec.token_gaps()
    assert gaps.count.tolist() == [50, 30]
