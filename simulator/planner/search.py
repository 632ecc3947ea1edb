"""Bracketing search for the highest request rate a configuration sustains.

DistServe (Zhong et al., OSDI 2024, Sec. 2) defines a configuration's
*goodput* as the highest request rate at which the SLO attainment goal still
holds. Attainment falls as the rate rises, so the set of good rates is (in
expectation) an interval ``(0, r*]``; we find ``r*`` with few evaluations:

1. probe ``start`` (the planner's target rate: the answer to "does it meet the
   target?" comes first);
2. bracket: multiply by ``growth`` while the rate is good (or divide while it is
   bad) until the verdict flips, staying within ``[low, high]``;
3. bisect the bracket geometrically (rates span orders of magnitude) until
   ``hi / lo - 1 <= rel_tol``.

The search is a generator that yields rates and receives verdicts, so the
planner can interleave the searches of many configurations and run each round
of simulations in parallel; :func:`find_max_rate` drives it with a plain
function. Deterministic: the probed rates depend only on the verdicts. Rates
are rounded to 6 significant digits so that the scenarios they produce (and
their store keys) read cleanly.

>>> result = find_max_rate(lambda r: r <= 7.3, start=4, low=0.1, high=100, rel_tol=0.01)
>>> result.max_rate <= 7.3 < result.upper, result.upper / result.max_rate - 1 <= 0.01, result.evaluations
(True, True, 9)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SearchResult:
    """Outcome of one search.

    ``max_rate`` is the highest rate verified good (0.0 when even ``low`` fails);
    ``upper`` the lowest rate verified bad (None when ``high`` is good: the true
    maximum is at least ``high``). ``probes`` lists every (rate, verdict) in order.
    """

    max_rate: float
    upper: float | None
    probes: tuple[tuple[float, bool], ...] = field(default=())
    converged: bool = True  # False when the evaluation budget ran out first

    @property
    def evaluations(self) -> int:
        return len(self.probes)

    @property
    def capped(self) -> bool:
        """The search hit ``high`` while still good."""
        return self.upper is None and self.max_rate > 0


def _round(rate: float) -> float:
    return float(f"{rate:.6g}")


def bracket_search(
    *,
    start: float,
    low: float,
    high: float,
    rel_tol: float = 0.05,
    max_evals: int = 12,
    growth: float = 2.0,
) -> Generator[float, bool, SearchResult]:
    """Yield rates to evaluate; send back whether each one met the SLO; returns a :class:`SearchResult`."""
    if not 0 < low <= high:
        raise ValueError(f"need 0 < low <= high, got low={low}, high={high}")
    if rel_tol <= 0 or growth <= 1 or max_evals < 1:
        raise ValueError("need rel_tol > 0, growth > 1 and max_evals >= 1")
    probes: list[tuple[float, bool]] = []
    lo: float | None = None  # highest good rate
    hi: float | None = None  # lowest bad rate

    def result(converged: bool) -> SearchResult:
        return SearchResult(lo or 0.0, hi, tuple(probes), converged)

    rate = _round(min(max(start, low), high))
    while True:
        good = yield rate
        probes.append((rate, bool(good)))
        if good:
            lo = rate
        else:
            hi = rate
        if hi is None:  # still bracketing upwards
            if lo >= high:
                return result(True)
            nxt = min(lo * growth, high)
        elif lo is None:  # still bracketing downwards
            if hi <= low:
                return result(True)
            nxt = max(hi / growth, low)
        else:  # bisect
            if hi / lo - 1.0 <= rel_tol:
                return result(True)
            nxt = math.sqrt(lo * hi)
        nxt = _round(nxt)
        if len(probes) >= max_evals or any(nxt == r for r, _ in probes):
            return result(hi is not None and lo is not None and hi / lo - 1.0 <= rel_tol)
        rate = nxt


def partial_result(probes: list[tuple[float, bool]] | tuple[tuple[float, bool], ...]) -> SearchResult:
    """The result of a search stopped early (budget spent) after ``probes``: best good, lowest bad rate."""
    good = [r for r, ok in probes if ok]
    bad = [r for r, ok in probes if not ok]
    return SearchResult(max(good) if good else 0.0, min(bad) if bad else None, tuple(probes), converged=False)


def find_max_rate(
    good: Callable[[float], bool],
    *,
    start: float,
    low: float,
    high: float,
    rel_tol: float = 0.05,
    max_evals: int = 12,
    growth: float = 2.0,
) -> SearchResult:
    """Run :func:`bracket_search` with ``good(rate)`` as the verdict."""
    gen = bracket_search(start=start, low=low, high=high, rel_tol=rel_tol, max_evals=max_evals, growth=growth)
    rate = next(gen)
    while True:
        try:
            rate = gen.send(good(rate))
        except StopIteration as stop:
            return stop.value
