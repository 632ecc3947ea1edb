"""The goodput search finds known thresholds with few evaluations: a synthetic one and an M/D/1 replica."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.config.schema import Scenario
from simulator.engine import simulate
from simulator.metrics.summary import summarise
from simulator.planner.search import bracket_search, find_max_rate, partial_result
from simulator.planner.worker import evaluate_rate, is_good
from simulator.system import build_system


def evaluation_budget(start: float, threshold: float, low: float, high: float, rel_tol: float, growth: float) -> int:
    """Bracketing steps to cross the threshold plus bisection steps to reach rel_tol, plus the first probe."""
    inside = min(max(threshold, low), high)
    bracket = math.ceil(abs(math.log(inside / start)) / math.log(growth)) + 1
    bisect = math.ceil(math.log2(math.log(growth) / math.log1p(rel_tol))) + 1
    return 1 + bracket + bisect


class Counter:
    def __init__(self, threshold: float):
        self.threshold = threshold
        self.calls: list[float] = []

    def __call__(self, rate: float) -> bool:
        self.calls.append(rate)
        return rate <= self.threshold


@settings(max_examples=200, deadline=None)
@given(
    threshold=st.floats(0.2, 900.0),
    start=st.floats(0.5, 50.0),
    rel_tol=st.sampled_from([0.01, 0.02, 0.05, 0.1]),
)
def test_synthetic_threshold_found_within_tolerance(threshold, start, rel_tol):
    good = Counter(threshold)
    result = find_max_rate(good, start=start, low=0.1, high=1000.0, rel_tol=rel_tol, max_evals=64)
    assert result.converged
    assert result.max_rate <= threshold < result.upper  # the threshold is bracketed ...
    assert result.upper / result.max_rate - 1 <= rel_tol  # ... to the tolerance
    assert result.evaluations == len(good.calls) == len(set(good.calls))  # every evaluation counted, none repeated
    assert result.evaluations <= evaluation_budget(start, threshold, 0.1, 1000.0, rel_tol, 2.0)
    assert result.probes[0][0] == pytest.approx(start, rel=1e-5)  # the target rate is answered first


def test_evaluation_count_is_logarithmic():
    """From target 10 to a threshold of 37.1 at 1 %: 3 to bracket, 7 to bisect -- not a scan of 2,700 rates."""
    good = Counter(37.1)
    result = find_max_rate(good, start=10, low=0.1, high=1000, rel_tol=0.01)
    assert result.evaluations == len(good.calls) == 10
    assert [r for r, _ in result.probes[:4]] == [10.0, 20.0, 40.0, pytest.approx(math.sqrt(800), rel=1e-5)]


def test_limits_of_the_bracket():
    never = find_max_rate(lambda r: False, start=8, low=0.5, high=64, rel_tol=0.05)
    assert never.max_rate == 0.0 and never.upper == 0.5 and never.converged
    assert [r for r, _ in never.probes] == [8, 4, 2, 1, 0.5]
    always = find_max_rate(lambda r: True, start=8, low=0.5, high=64, rel_tol=0.05)
    assert always.max_rate == 64 and always.upper is None and always.capped
    assert [r for r, _ in always.probes] == [8, 16, 32, 64]


def test_budget_and_determinism():
    short = find_max_rate(Counter(3.3), start=1, low=0.1, high=100, rel_tol=0.001, max_evals=4)
    assert short.evaluations == 4 and not short.converged
    assert short.max_rate <= 3.3 < short.upper
    again = find_max_rate(Counter(3.3), start=1, low=0.1, high=100, rel_tol=0.001, max_evals=4)
    assert again == short
    assert partial_result(short.probes).max_rate == short.max_rate


def test_generator_protocol_and_bad_arguments():
    gen = bracket_search(start=5, low=1, high=10, rel_tol=0.5)
    assert next(gen) == 5
    assert gen.send(True) == 10
    with pytest.raises(StopIteration) as stop:
        gen.send(True)
    assert stop.value.value.max_rate == 10 and stop.value.value.capped
    with pytest.raises(ValueError):
        next(bracket_search(start=1, low=2, high=1))


# --------------------------------------------------------------------------- M/D/1
# One replica, request-level batching with batch size 1, fixed prompt and output lengths,
# Poisson arrivals: every request has the same service time S, so the replica is an M/D/1 queue
# and the queueing delay is its waiting time W.
PROMPT, OUTPUT = 512, 24


def md1_scenario(qps: float, **slo) -> Scenario:
    return Scenario.model_validate({
        "seed": 3,
        "model": "llama-3.1-8b",
        "deployment": {"device": "h100-sxm"},
        "scheduler": {"name": "static", "batch_size": 1},
        "workload": {"arrival": "poisson", "qps": qps, "prompt": {"dist": "fixed", "value": PROMPT},
                     "output": {"dist": "fixed", "value": OUTPUT}},
        "slo": slo or {"ttft_s": 10.0},
        "simulation": {"num_requests": 6000, "warmup_s": 20.0},
    })


def service_times() -> tuple[float, float]:
    """(prefill time, whole service time S) of one request, from the cost model."""
    from simulator.costmodel.features import BatchShape

    cost = build_system(md1_scenario(1.0)).cost_model()
    prefill = cost.iteration(BatchShape(prefill_chunks=((PROMPT, 0, True),))).time_s
    return prefill, prefill + cost.decode_run(1, PROMPT + 1, OUTPUT - 1).total


def md1_wait_cdf(t: float, lam: float, s: float) -> float:
    """P(W <= t) in M/D/1 (Erlang's formula): (1 - rho) sum_{k <= t/s} (lam (k s - t))^k / k! e^{-lam (k s - t)}."""
    total = 0.0
    for k in range(int(t // s) + 1):
        x = lam * (k * s - t)
        total += x**k / math.factorial(k) * math.exp(-x)
    return (1 - lam * s) * total


def test_md1_service_time_matches_the_cost_model():
    _, s = service_times()
    req = simulate(md1_scenario(0.01)).result.requests  # so sparse that almost nobody waits
    alone = (req["schedule_s"] - req["arrival_s"]).abs() < 1e-9
    assert alone.mean() > 0.99
    assert (req["finish_s"] - req["arrival_s"])[alone].to_numpy() == pytest.approx(s, rel=1e-9)


def test_md1_mean_wait_threshold():
    """Highest rate with mean wait <= S: theory rho = 2W / (S + 2W) = 2/3 (Pollaczek-Khinchine for M/D/1)."""
    _, s = service_times()
    target_wait = s
    theory = 2 * target_wait / (s + 2 * target_wait) / s

    def good(rate: float) -> bool:
        sc = md1_scenario(rate)
        return summarise(simulate(sc).result, sc.slo)["queue_mean_s"] <= target_wait

    result = find_max_rate(good, start=theory / 3, low=0.05, high=100, rel_tol=0.02)
    assert result.evaluations <= 10
    assert result.max_rate == pytest.approx(theory, rel=0.08)


def test_md1_ttft_attainment_threshold_matches_theory_and_a_dense_scan():
    """Highest rate with TTFT p90 <= target, found by the planner's own verdict (simulate + slo_met).

    Theory: TTFT = W + prefill, so the SLO holds while P(W <= ttft - prefill) >= 0.9 in M/D/1.
    """
    prefill, s = service_times()
    ttft = prefill + 1.5 * s
    lo, hi = 0.01 / s, 0.999 / s
    for _ in range(60):  # bisection on the closed form
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if md1_wait_cdf(ttft - prefill, mid, s) >= 0.9 else (lo, mid)
    theory = lo

    calls = []

    def good(rate: float) -> bool:
        calls.append(rate)
        return is_good(evaluate_rate(md1_scenario(rate, ttft_s=ttft, attainment=0.9).model_dump(mode="json")))

    result = find_max_rate(good, start=1.0, low=0.05, high=100, rel_tol=0.02)
    assert result.max_rate == pytest.approx(theory, rel=0.08)
    assert len(calls) == result.evaluations <= 10
    # A dense scan of the same verdict (1.5 % steps around the answer) agrees with the search.
    scan = [theory * (0.91 + 0.015 * i) for i in range(13)]
    verdicts = [good(r) for r in scan]
    last_good = max((r for r, ok in zip(scan, verdicts, strict=True) if ok), default=0.0)
    assert last_good == pytest.approx(result.max_rate, rel=0.05)
