"""Arrival processes: rates, gap distributions, windows, determinism and independence of seed streams."""

import time

import numpy as np
import pytest
from scipy import stats

from capsim.errors import CapsimError
from traces import WorkloadConfig, build_requests


def arrivals(seed=0, n=None, duration=None, **cfg):
    return build_requests(WorkloadConfig(**cfg), seed=seed, num_requests=n, duration_s=duration).arrival_s


def test_poisson_mean_rate_and_exponential_gaps():
    t = arrivals(arrival="poisson", qps=8.0, n=50_000, seed=3)
    assert t[0] == 0.0
    gaps = np.diff(t)
    assert 1 / gaps.mean() == pytest.approx(8.0, rel=0.02)
    assert stats.kstest(gaps, "expon", args=(0, 1 / 8.0)).pvalue > 0.01
    # A gamma(cv=2) process has the same mean gap and must fail the same KS test.
    bursty = np.diff(arrivals(arrival="gamma", qps=8.0, cv=2.0, n=50_000, seed=3))
    assert stats.kstest(bursty, "expon", args=(0, 1 / 8.0)).pvalue < 1e-6


@pytest.mark.parametrize("cv", [0.5, 2.0, 4.0])
def test_gamma_recovers_rate_and_cv(cv):
    gaps = np.diff(arrivals(arrival="gamma", qps=5.0, cv=cv, n=100_001, seed=11))
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.10)
    assert 1 / gaps.mean() == pytest.approx(5.0, rel=0.05)


def test_constant_has_exact_gaps():
    t = arrivals(arrival="constant", qps=4.0, n=1001)
    np.testing.assert_array_equal(t, np.arange(1001) / 4.0)
    assert t[-1] == 250.0


def test_duration_only_keeps_arrivals_inside_the_window():
    t = arrivals(arrival="poisson", qps=50.0, duration=100.0, seed=5)
    assert t.max() < 100.0
    assert len(t) == pytest.approx(5000, rel=0.05)
    c = arrivals(arrival="constant", qps=3.0, duration=10.0)
    assert len(c) == 30 and c[-1] < 10.0


def test_with_both_limits_whichever_ends_first():
    assert len(arrivals(qps=10.0, n=50, duration=1000.0)) == 50
    t = arrivals(qps=10.0, n=10_000, duration=5.0)
    assert len(t) < 100 and t.max() < 5.0


def test_same_seed_same_stream_different_seed_different():
    cfg = WorkloadConfig(arrival="gamma", qps=3.0, cv=2.0, prompt={"dist": "lognormal", "mean": 800, "std": 600})
    a = build_requests(cfg, seed=42, num_requests=500)
    b = build_requests(cfg, seed=42, num_requests=500)
    c = build_requests(cfg, seed=43, num_requests=500)
    np.testing.assert_array_equal(a.arrival_s, b.arrival_s)
    np.testing.assert_array_equal(a.prompt_tokens, b.prompt_tokens)
    assert not np.array_equal(a.arrival_s, c.arrival_s)
    assert not np.array_equal(a.prompt_tokens, c.prompt_tokens)


def test_changing_output_distribution_leaves_arrivals_and_prompts_unchanged():
    base = {"arrival": "poisson", "qps": 2.0, "prompt": {"dist": "uniform", "low": 1, "high": 4000}}
    a = build_requests(WorkloadConfig(**base, output={"dist": "fixed", "value": 10}), seed=7, num_requests=300)
    b = build_requests(WorkloadConfig(**base, output={"dist": "zipf", "a": 1.1, "max": 2000}), seed=7, num_requests=300)
    np.testing.assert_array_equal(a.arrival_s, b.arrival_s)
    np.testing.assert_array_equal(a.prompt_tokens, b.prompt_tokens)
    assert not np.array_equal(a.output_tokens, b.output_tokens)


def test_closed_loop_stream():
    s = build_requests(
        WorkloadConfig(arrival="closed-loop", concurrency=16, think_time_s=1.5), seed=0, num_requests=100
    )
    assert len(s) == 100 and not s.arrival_s.any()
    assert (s.closed_loop.concurrency, s.closed_loop.think_time_s) == (16, 1.5)
    with pytest.raises(CapsimError, match="number of requests"):
        build_requests(WorkloadConfig(arrival="closed-loop", concurrency=16), seed=0, duration_s=10.0)


def test_missing_qps_and_missing_limits_are_clear_errors():
    with pytest.raises(CapsimError) as err:
        build_requests(WorkloadConfig(arrival="poisson"), seed=0, num_requests=10)
    assert err.value.where == "workload.qps"
    with pytest.raises(CapsimError, match="num_requests and/or duration_s"):
        build_requests(WorkloadConfig(qps=1.0), seed=0)
    with pytest.raises(CapsimError, match="about"):
        build_requests(WorkloadConfig(qps=1e9), seed=0, duration_s=1e6)


def test_a_million_requests_is_fast():
    cfg = WorkloadConfig(
        arrival="gamma",
        qps=100.0,
        cv=1.5,
        prompt={"dist": "normal", "mean": 1000, "std": 300},
        output={"dist": "lognormal", "mean": 200, "std": 150},
    )
    start = time.perf_counter()
    s = build_requests(cfg, seed=0, num_requests=1_000_000)
    assert time.perf_counter() - start < 1.0
    assert len(s) == 1_000_000


def test_offline_workload_puts_every_request_at_time_zero():
    import pytest

    from capsim.errors import CapsimError
    from simulator.config.schema import Scenario
    from simulator.engine import simulate

    sc = Scenario.model_validate({
        "model": "llama-2-7b", "deployment": {"device": "a100-80gb-sxm"},
        "scheduler": {"name": "vllm", "max_num_seqs": 64},
        "workload": {"arrival": "offline", "prompt": {"dist": "fixed", "value": 256},
                     "output": {"dist": "fixed", "value": 32}},
        "simulation": {"num_requests": 200},
    })
    req = simulate(sc).result.requests
    assert (req["arrival_s"] == 0).all()
    assert req["finish_s"].notna().all()
    # The batch cap admits 64 at a time: later requests queue, so first tokens spread over several waves.
    assert req["first_token_s"].nunique() > 3
    with pytest.raises(CapsimError, match="number of requests"):
        simulate(Scenario.model_validate({**sc.model_dump(), "simulation": {"num_requests": None, "duration_s": 5}}))
