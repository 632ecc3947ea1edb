"""Property: any valid synthetic workload config yields a valid stream of the requested size."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from traces import WorkloadConfig, build_requests

small = st.integers(1, 5000)


@st.composite
def length_configs(draw):
    dist = draw(st.sampled_from(["fixed", "uniform", "normal", "lognormal", "zipf", "empirical"]))
    if dist == "fixed":
        return {"dist": dist, "value": draw(small)}
    if dist == "uniform":
        low = draw(small)
        return {"dist": dist, "low": low, "high": low + draw(st.integers(0, 5000))}
    if dist in ("normal", "lognormal"):
        cfg = {"dist": dist, "mean": draw(st.floats(1, 5000)), "std": draw(st.floats(0, 5000))}
        if draw(st.booleans()):
            cfg["min"] = draw(small)
            cfg["max"] = cfg["min"] + draw(st.integers(0, 5000))
        return cfg
    if dist == "zipf":
        low = draw(small)
        return {"dist": dist, "a": draw(st.floats(0.1, 3.0)), "min": low, "max": low + draw(st.integers(0, 5000))}
    values = draw(st.lists(small, min_size=1, max_size=10))
    return {"dist": dist, "values": values, "weights": [draw(st.floats(0.1, 10)) for _ in values]}


@st.composite
def workloads(draw):
    arrival = draw(st.sampled_from(["poisson", "gamma", "constant", "closed-loop"]))
    cfg: dict = {"arrival": arrival, "prompt": draw(length_configs()), "output": draw(length_configs())}
    if arrival == "closed-loop":
        cfg["concurrency"] = draw(st.integers(1, 512))
        cfg["think_time_s"] = draw(st.floats(0, 10))
    else:
        cfg["qps"] = draw(st.floats(0.01, 1000))
    if arrival == "gamma":
        cfg["cv"] = draw(st.floats(0.1, 8))
    return WorkloadConfig.model_validate(cfg)


@settings(max_examples=80, deadline=None)
@given(cfg=workloads(), n=st.integers(0, 2000), seed=st.integers(0, 2**32 - 1))
def test_valid_synthetic_config_gives_valid_stream(cfg, n, seed):
    s = build_requests(cfg, seed=seed, num_requests=n)
    assert len(s) == n
    assert np.all(np.diff(s.arrival_s) >= 0) and (n == 0 or s.arrival_s[0] == 0.0)
    assert np.all(s.prompt_tokens >= 1) and np.all(s.output_tokens >= 1)
    for side, arr in (("prompt", s.prompt_tokens), ("output", s.output_tokens)):
        spec = getattr(cfg, side)
        if spec.max is not None and n:
            assert arr.max() <= spec.max
        if spec.min is not None and n:
            assert arr.min() >= spec.min
    again = build_requests(cfg, seed=seed, num_requests=n)
    np.testing.assert_array_equal(s.arrival_s, again.arrival_s)
    np.testing.assert_array_equal(s.output_tokens, again.output_tokens)


@settings(max_examples=40, deadline=None)
@given(
    qps=st.floats(0.1, 200),
    duration=st.floats(0.01, 100),
    arrival=st.sampled_from(["poisson", "gamma", "constant"]),
    seed=st.integers(0, 1000),
)
def test_duration_only_streams_stay_inside_the_window(qps, duration, arrival, seed):
    s = build_requests(WorkloadConfig(arrival=arrival, qps=qps), seed=seed, duration_s=duration)
    assert len(s) >= 1 and s.arrival_s.max() < duration
