"""Exact quantiles of weighted samples, and of the compactly stored inter-token gaps.

Why: a run of a million requests produces hundreds of millions of inter-token gaps (TBT samples). The engine stores
them as runs of arithmetic progressions with a multiplicity (:class:`~simulator.metrics.result.TokenGaps`), and this
module answers percentile questions about the *expanded* sample exactly, without ever building it.

Definition. Every quantile here is the one :func:`numpy.quantile` returns with its default ``method="linear"``
(Hyndman & Fan type 7) on the expanded sample of N values sorted as x_0 ≤ … ≤ x_{N−1}: with h = q·(N − 1),
Q(q) = x_⌊h⌋ + (h − ⌊h⌋)·(x_⌊h⌋+1 − x_⌊h⌋). So everything reduces to "the value at rank r" of a weighted set.

Method for weighted points (:func:`weighted_quantiles`): sort the distinct values once, take the cumulative weights
c, and the value at rank r is the first value whose c exceeds r (one ``searchsorted``).

Method for token gaps (:func:`token_gap_quantiles`). A *pair* is one distinct (run, k) gap value with its weight; the
expanded sample has Σ count·weight values but only Σ count pairs, and runs with step 0 collapse to one pair.

* Small case (pairs ≤ ``max_pairs``, the usual one): expand the pairs with ``np.repeat``/``cumsum`` index arithmetic
  (no Python loop) and use :func:`weighted_quantiles`. Memory ≈ 50 bytes per pair.
* Large case: a bisection on the *value* axis that never expands more than ``max_pairs`` pairs. The weighted count
  F(x) = #{samples ≤ x} is computed in O(runs) by solving ``first + k·step ≤ x`` for k in every run at once (a
  vectorised floor, then an exact check against the same floating-point expression used to expand, with a
  vectorised binary search for any run where rounding made the estimate wrong). Keeping F(lo) ≤ r < F(hi), the
  interval (lo, hi] is halved until it holds at most ``max_pairs`` pairs; those are expanded, sorted, and the value
  at rank r − F(lo) is read off. If (lo, hi] cannot be split any more (adjacent floats), the answer is hi. Memory
  is O(runs + max_pairs); time is O(runs) per bisection step, about 20–60 steps per rank.

Negative steps are first rewritten as positive ones from the other end of the run, so every progression is
ascending; the expanded values then differ from ``first + k·step`` by at most a rounding error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from capsim.errors import CapsimError
from simulator.metrics.result import TokenGaps

#: Most (value, weight) pairs expanded at once: about 200 MB of temporaries, so 50M+ gaps stay well under 2 GB.
DEFAULT_MAX_PAIRS = 4_000_000
# In the large case, bisect until a bracket holds this few pairs: a few more O(runs) steps are cheaper than sorting
# millions of pairs per rank.
_SELECT_PAIRS = 1 << 18


def _check_qs(qs: float | np.ndarray | list[float]) -> np.ndarray:
    q = np.atleast_1d(np.asarray(qs, dtype=np.float64))
    if q.ndim != 1 or not np.all((q >= 0) & (q <= 1)):
        raise CapsimError(f"quantile levels must lie in [0, 1], got {qs!r}", where="qs", fix="pass e.g. [0.5, 0.99]")
    return q


def _int_weights(weights: np.ndarray | list[int], n: int) -> np.ndarray:
    w = np.asarray(weights)
    if w.shape != (n,):
        raise CapsimError(f"weights must have shape ({n},), got {w.shape}", where="weights")
    if w.dtype.kind == "f":
        if not np.all(np.isfinite(w)) or np.any(w != np.round(w)):
            raise CapsimError("weights must be whole numbers (sample multiplicities)", where="weights")
    elif w.dtype.kind not in "iub":
        raise CapsimError(f"weights must be integers, got dtype {w.dtype}", where="weights")
    w = w.astype(np.int64)
    if np.any(w < 0):
        raise CapsimError("weights must be non-negative", where="weights")
    return w


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Linear interpolation written the way numpy does it, so results agree to the last bit in the usual cases."""
    diff = b - a
    out = a + diff * t
    return np.where(t >= 0.5, b - diff * (1 - t), out)


def _quantiles_by_rank(value_at: Callable[[np.ndarray], np.ndarray], total: int, q: np.ndarray) -> np.ndarray:
    """Type-7 quantiles given a function that returns the values at integer ranks of the sorted sample."""
    h = q * (total - 1)
    below = np.floor(h)
    gamma = h - below
    lo = below.astype(np.int64)
    hi = np.minimum(lo + 1, total - 1)
    both = value_at(np.concatenate([lo, hi]))
    return _lerp(both[: len(q)], both[len(q) :], gamma)


def weighted_quantiles(
    values: np.ndarray | list[float], weights: np.ndarray | list[int], qs: float | list[float] | np.ndarray
) -> np.ndarray:
    """Exact type-7 quantiles of the sample in which ``values[i]`` occurs ``weights[i]`` times.

    Equal to ``np.quantile(np.repeat(values, weights), qs)`` without building the repeated array. Returns NaN for
    every level when the total weight is zero.

    >>> weighted_quantiles([3.0, 1.0, 2.0], [1, 2, 1], [0.0, 0.5, 1.0]).tolist()
    [1.0, 1.5, 3.0]
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    w = _int_weights(weights, len(v))
    q = _check_qs(qs)
    keep = w > 0
    v, w = v[keep], w[keep]
    total = int(w.sum())
    if total == 0:
        return np.full(len(q), np.nan)
    order = np.argsort(v, kind="stable")
    sorted_v = v[order]
    cum = np.cumsum(w[order])
    return _quantiles_by_rank(lambda ranks: sorted_v[np.searchsorted(cum, ranks, side="right")], total, q)


def _expand(
    first: np.ndarray, step: np.ndarray, k0: np.ndarray, n: np.ndarray, weight: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Values ``first + k·step`` for k in [k0, k0 + n) of every run, with the run's weight; vectorised."""
    sel = n > 0
    first, step, k0, n, weight = first[sel], step[sel], k0[sel], n[sel], weight[sel]
    total = int(n.sum())
    run = np.repeat(np.arange(len(n)), n)
    k = np.arange(total, dtype=np.int64)
    k -= (np.cumsum(n) - n - k0)[run]
    return first[run] + k * step[run], weight[run]


class _Runs:
    """Ascending arithmetic progressions (step > 0, count ≥ 2) with weights; value k of run j is first + k·step."""

    def __init__(self, first: np.ndarray, step: np.ndarray, count: np.ndarray, weight: np.ndarray):
        self.first, self.step, self.count, self.weight = first, step, count, weight
        self.last = first + (count - 1) * step  # the same expression _expand evaluates, so comparisons are exact

    def __len__(self) -> int:
        return len(self.first)

    def take(self, rows: np.ndarray) -> _Runs:
        return _Runs(self.first[rows], self.step[rows], self.count[rows], self.weight[rows])

    def _value(self, k: np.ndarray, rows: slice | np.ndarray = slice(None)) -> np.ndarray:
        return self.first[rows] + k * self.step[rows]

    def n_le(self, x: float) -> np.ndarray:
        """Per run, how many of its values are ≤ x (exact w.r.t. the expanded floating-point values)."""
        f, s, c = self.first, self.step, self.count
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            raw = np.floor((x - f) / s)
        k = np.clip(np.nan_to_num(raw, nan=-1.0), -1, c - 1).astype(np.int64)  # last index with value <= x
        ok_low = (k < 0) | (self._value(np.maximum(k, 0)) <= x)
        ok_high = (k >= c - 1) | (self._value(np.minimum(k + 1, c - 1)) > x)
        bad = np.flatnonzero(~(ok_low & ok_high))
        if len(bad):  # rounding fooled the estimate: settle those runs by binary search on k
            lo = np.full(len(bad), -1, dtype=np.int64)
            hi = c[bad].copy()
            while True:
                open_ = hi - lo > 1
                if not open_.any():
                    break
                mid = (lo + hi) // 2
                fits = self._value(np.maximum(mid, 0), bad) <= x
                lo = np.where(open_ & fits, mid, lo)
                hi = np.where(open_ & ~fits, mid, hi)
            k[bad] = lo
        return k + 1


class _GapIndex:
    """The gaps split into ascending progressions (count ≥ 2, step ≠ 0) and weighted points (everything else)."""

    def __init__(self, gaps: TokenGaps):
        c, w, s = gaps.count, gaps.weight, gaps.step
        live = (c > 0) & (w > 0)
        prog = live & (c >= 2) & (s != 0)
        pts = live & ~prog
        f, s, c, w = gaps.first[prog], s[prog], c[prog], w[prog]
        descending = s < 0
        self.runs = _Runs(np.where(descending, f + (c - 1) * s, f), np.abs(s), c, w)
        pv = np.concatenate([gaps.first[pts], gaps.single_values])
        pw = np.concatenate([gaps.count[pts] * gaps.weight[pts], np.ones(len(gaps.single_values), dtype=np.int64)])
        order = np.argsort(pv, kind="stable")
        self.point_values = pv[order]
        self.point_weights = pw[order]
        self.point_cum0 = np.concatenate([[0], np.cumsum(self.point_weights)]).astype(np.int64)
        self.total = int(np.dot(c, w)) + int(self.point_cum0[-1])
        self.num_pairs = int(c.sum()) + len(pv)

    # -- extent ---------------------------------------------------------------------------------------------------
    def min(self) -> float:
        cands = [self.runs.first.min()] if len(self.runs) else []
        if len(self.point_values):
            cands.append(self.point_values[0])
        return float(min(cands))

    def max(self) -> float:
        cands = [self.runs.last.max()] if len(self.runs) else []
        if len(self.point_values):
            cands.append(self.point_values[-1])
        return float(max(cands))

    def points_le(self, x: float) -> int:
        return int(np.searchsorted(self.point_values, x, side="right"))

    # -- expansion ------------------------------------------------------------------------------------------------
    def all_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        r = self.runs
        pv, pw = _expand(r.first, r.step, np.zeros_like(r.count), r.count, r.weight)
        return np.concatenate([pv, self.point_values]), np.concatenate([pw, self.point_weights])

    def chunks(self, max_pairs: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """All pairs, at most ``max_pairs`` at a time (a single long run is split across chunks)."""
        r = self.runs
        ends = np.cumsum(r.count)
        starts = ends - r.count
        total_prog = int(ends[-1]) if len(ends) else 0
        for a in range(0, total_prog, max_pairs):
            b = min(a + max_pairs, total_prog)
            rows = slice(int(np.searchsorted(ends, a, side="right")), int(np.searchsorted(starts, b, side="left")))
            k0 = np.maximum(a - starts[rows], 0)
            k1 = np.minimum(b - starts[rows], r.count[rows])
            yield _expand(r.first[rows], r.step[rows], k0, k1 - k0, r.weight[rows])
        for a in range(0, len(self.point_values), max_pairs):
            yield self.point_values[a : a + max_pairs], self.point_weights[a : a + max_pairs]

    # -- selection ------------------------------------------------------------------------------------------------
    def values_at_ranks(self, ranks: np.ndarray, max_pairs: int) -> np.ndarray:
        """The values at the given 0-based ranks of the expanded sample, by bisection on the value axis.

        Invariant: F(lo) ≤ r < F(hi), F = weighted count of samples ≤ x. Runs lying wholly at or below lo add their
        full weight to F(x) for every x in the bracket, and runs wholly above hi add nothing, so only the runs that
        straddle the bracket are re-counted; that set shrinks as the bracket narrows. Ranks are handled in
        increasing order (one rank's lower bracket is valid for the next), and all ranks that fall in an expanded
        bracket are answered from that one expansion.
        """
        max_pairs = min(max_pairs, _SELECT_PAIRS)
        todo = np.unique(np.asarray(ranks, dtype=np.int64))
        found: dict[int, float] = {}
        lo, f_lo = float(np.nextafter(self.min(), -np.inf)), 0
        i = 0
        while i < len(todo):
            r = int(todo[i])
            hi, f_hi = self.max(), self.total
            below = self.runs.last <= lo
            base = int(np.dot(self.runs.count[below], self.runs.weight[below]))  # weight of runs wholly ≤ lo
            runs = self.runs.take(np.flatnonzero(~below))
            n_lo, n_hi = runs.n_le(lo), runs.count.copy()
            while True:
                pairs = int((n_hi - n_lo).sum()) + self.points_le(hi) - self.points_le(lo)
                if pairs <= max_pairs:
                    values, weights = _expand(runs.first, runs.step, n_lo, n_hi - n_lo, runs.weight)
                    a, b = self.points_le(lo), self.points_le(hi)
                    values = np.concatenate([values, self.point_values[a:b]])
                    weights = np.concatenate([weights, self.point_weights[a:b]])
                    order = np.argsort(values, kind="stable")
                    values, cum = values[order], np.cumsum(weights[order])
                    while i < len(todo) and todo[i] < f_hi:
                        found[int(todo[i])] = float(values[np.searchsorted(cum, todo[i] - f_lo, side="right")])
                        i += 1
                    break
                mid = lo + (hi - lo) / 2
                if not lo < mid < hi:  # (lo, hi] holds a single float: every rank in [f_lo, f_hi) has that value
                    while i < len(todo) and todo[i] < f_hi:
                        found[int(todo[i])] = hi
                        i += 1
                    break
                n_mid = runs.n_le(mid)
                f_mid = base + int(np.dot(n_mid, runs.weight)) + int(self.point_cum0[self.points_le(mid)])
                if f_mid > r:
                    hi, n_hi, f_hi = mid, n_mid, f_mid
                else:
                    lo, n_lo, f_lo = mid, n_mid, f_mid
                keep = (runs.last > lo) & (runs.first <= hi)
                if 2 * int(keep.sum()) < len(runs):  # drop runs that no longer straddle the bracket
                    gone_below = ~keep & (runs.last <= lo)
                    base += int(np.dot(runs.count[gone_below], runs.weight[gone_below]))
                    rows = np.flatnonzero(keep)
                    runs, n_lo, n_hi = runs.take(rows), n_lo[rows], n_hi[rows]
        return np.array([found[int(r)] for r in np.asarray(ranks, dtype=np.int64)])


def token_gap_quantiles(
    gaps: TokenGaps, qs: float | list[float] | np.ndarray, *, max_pairs: int = DEFAULT_MAX_PAIRS
) -> np.ndarray:
    """Exact type-7 quantiles of all inter-token gaps (NaN when there are none); see the module docstring.

    >>> g = TokenGaps.from_runs(first=[1.0], step=[1.0], count=[3], weight=[2])  # 1,1,2,2,3,3
    >>> token_gap_quantiles(g, [0.5]).tolist()
    [2.0]
    """
    if max_pairs < 1:
        raise CapsimError(f"max_pairs must be at least 1, got {max_pairs}", where="max_pairs")
    q = _check_qs(qs)
    index = _GapIndex(gaps)
    if index.total == 0:
        return np.full(len(q), np.nan)
    if index.num_pairs <= max_pairs:
        values, weights = index.all_pairs()
        return weighted_quantiles(values, weights, q)

    return _quantiles_by_rank(lambda ranks: index.values_at_ranks(ranks, max_pairs), index.total, q)


def token_gap_mean(gaps: TokenGaps) -> float:
    """Exact mean gap: Σ_j w_j·(c_j·first_j + step_j·c_j(c_j−1)/2) + Σ singles, over the number of samples."""
    n = gaps.num_samples
    if n == 0:
        return float("nan")
    c = gaps.count.astype(np.float64)
    per_run = c * gaps.first + gaps.step * c * (c - 1) / 2
    return float((np.dot(per_run, gaps.weight.astype(np.float64)) + gaps.single_values.sum()) / n)


def _downsample_cdf(
    sorted_values: np.ndarray, cum: np.ndarray, total: float, num_points: int
) -> tuple[np.ndarray, np.ndarray]:
    frac = cum / total
    if len(sorted_values) <= num_points:
        return sorted_values, frac
    picks = np.searchsorted(frac, np.linspace(0, 1, num_points), side="left")
    picks = np.unique(np.clip(np.concatenate([[0], picks, [len(frac) - 1]]), 0, len(frac) - 1))
    return sorted_values[picks], frac[picks]


def ecdf_points(values: np.ndarray, num_points: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """At most ``num_points`` points (x, F(x)) of the empirical CDF of the finite values, for plotting."""
    v = np.sort(np.asarray(values, dtype=np.float64)[np.isfinite(values)])
    if len(v) == 0:
        return v, v
    return _downsample_cdf(v, np.arange(1, len(v) + 1, dtype=np.float64), len(v), num_points)


def token_gap_cdf(
    gaps: TokenGaps, num_points: int = 512, *, max_pairs: int = DEFAULT_MAX_PAIRS
) -> tuple[np.ndarray, np.ndarray]:
    """Points (x, F(x)) of the CDF of all gaps, for plotting.

    Exact at the returned x when the pairs fit in ``max_pairs``; otherwise a weighted histogram accumulated chunk
    by chunk over 4096 geometric bins (exact at the bin edges), so memory stays bounded.
    """
    index = _GapIndex(gaps)
    if index.total == 0:
        return np.zeros(0), np.zeros(0)
    if index.num_pairs <= max_pairs:
        values, weights = index.all_pairs()
        order = np.argsort(values, kind="stable")
        return _downsample_cdf(values[order], np.cumsum(weights[order]).astype(np.float64), index.total, num_points)
    lo, hi = index.min(), index.max()
    edges = np.geomspace(lo, hi, 4097) if lo > 0 else np.linspace(lo, hi, 4097)
    hist = np.zeros(len(edges) - 1)
    for values, weights in index.chunks(max_pairs):
        hist += np.histogram(values, bins=edges, weights=weights)[0]
    return _downsample_cdf(edges[1:], np.cumsum(hist), index.total, num_points)
