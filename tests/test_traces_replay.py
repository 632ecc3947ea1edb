"""Trace replay through build_requests: windows, sub-sampling, time scaling, qps rescale, lengths from traces."""

import numpy as np
import pytest

from capsim.errors import CapsimError
from traces import TraceConfig, WorkloadConfig, build_requests, load_trace

AZURE = {"name": "azure-conv-2023"}


def replay(seed=0, n=None, duration=None, qps=None, **trace):
    cfg = WorkloadConfig(arrival="trace", qps=qps, trace={**AZURE, **trace})
    return build_requests(cfg, seed=seed, num_requests=n, duration_s=duration)


def test_full_replay_matches_the_file():
    s = replay()
    assert len(s) == 19_366 and s.arrival_s[0] == 0.0
    assert s.duration_s / 60 == pytest.approx(58.4, abs=0.05)
    assert s.prompt_tokens.mean() == pytest.approx(1155, abs=1)
    assert s.source == "azure-conv-2023" and s.prefix_block_hashes is None


def test_time_scale_halves_the_span():
    assert replay(time_scale=0.5).duration_s == pytest.approx(replay().duration_s / 2)


def test_qps_rescale_hits_the_target_mean_rate():
    s = replay(qps=20.0)
    assert s.mean_rate == pytest.approx(20.0, rel=1e-9)
    np.testing.assert_array_equal(s.prompt_tokens, replay().prompt_tokens)
    assert "rescaled to 20 req/s" in s.source


def test_sample_fraction_is_seeded_and_keeps_order():
    a, b, c = (
        replay(sample_fraction=0.25, seed=1),
        replay(sample_fraction=0.25, seed=1),
        replay(sample_fraction=0.25, seed=2),
    )
    assert len(a) == round(0.25 * 19_366)
    np.testing.assert_array_equal(a.prompt_tokens, b.prompt_tokens)
    assert not np.array_equal(a.prompt_tokens, c.prompt_tokens)
    assert np.all(np.diff(a.arrival_s) >= 0) and a.arrival_s[0] == 0.0
    assert a.mean_rate == pytest.approx(0.25 * replay().mean_rate, rel=0.05)


def test_window_and_truncation():
    w = replay(start_s=600, duration_s=300)
    full = load_trace(TraceConfig(**AZURE))
    inside = full[(full.arrival_s >= 600) & (full.arrival_s < 900)]
    assert len(w) == len(inside) and w.arrival_s[0] == 0.0
    assert w.duration_s < 300
    assert len(replay(n=100)) == 100
    assert replay(duration=60.0).arrival_s.max() < 60.0
    with pytest.raises(CapsimError, match="holds no requests"):
        replay(start_s=10_000)
    with pytest.warns(UserWarning, match="holds only 19366 requests"):
        replay(n=50_000)


def test_mooncake_replay_carries_prefix_hashes_and_clipping_trims_them():
    cfg = WorkloadConfig(arrival="trace", trace={"name": "mooncake-conversation", "max_prompt_tokens": 4096})
    s = build_requests(cfg, seed=0, num_requests=2000)
    assert s.duration_s == pytest.approx(s.arrival_s[1999])
    assert s.prompt_tokens.max() == 4096
    assert all(len(h) == -(-int(p) // 512) for h, p in zip(s.prefix_block_hashes, s.prompt_tokens, strict=True))


def test_trace_lengths_with_synthetic_arrivals_keep_pairs():
    cfg = WorkloadConfig(arrival="poisson", qps=10.0, trace={"name": "sharegpt-lengths"})
    s = build_requests(cfg, seed=3, num_requests=20_000)
    assert 1 / np.diff(s.arrival_s).mean() == pytest.approx(10.0, rel=0.03)
    assert s.prompt_tokens.mean() == pytest.approx(2340, rel=0.03)
    trace = load_trace(TraceConfig(name="sharegpt-lengths"))
    pairs = set(zip(trace.prompt_tokens, trace.output_tokens, strict=True))
    assert all(p in pairs for p in zip(s.prompt_tokens[:2000], s.output_tokens[:2000], strict=True))
    assert s.source == "poisson(10 req/s) x sharegpt-lengths lengths"


def test_explicit_side_overrides_the_trace_column():
    cfg = WorkloadConfig(arrival="trace", trace=AZURE, output={"dist": "fixed", "value": 64})
    s = build_requests(cfg, seed=0)
    assert set(s.output_tokens) == {64} and s.prompt_tokens.mean() == pytest.approx(1155, abs=1)
    assert "with output fixed(64)" in s.source


def test_length_only_trace_cannot_supply_arrivals():
    cfg = WorkloadConfig(arrival="trace", trace={"name": "sharegpt-lengths"})
    with pytest.raises(CapsimError, match="no arrival times") as err:
        build_requests(cfg, seed=0)
    assert "poisson" in err.value.fix


def test_generic_csv_path_relative_to_base_dir(tmp_path):
    (tmp_path / "my.csv").write_text("sec,p,o\n5,10,1\n6,20,2\n8,30,3\n")
    cfg = WorkloadConfig.model_validate(
        {"arrival": "trace", "trace": {"path": "my.csv", "columns": {"arrival": "sec", "prompt": "p", "output": "o"}}}
    )
    s = build_requests(cfg, seed=0, base_dir=tmp_path)
    np.testing.assert_array_equal(s.arrival_s, [0.0, 1.0, 3.0])
    assert s.source == "my.csv"


def test_load_trace_returns_a_private_copy():
    a = load_trace(TraceConfig(**AZURE))
    a.loc[0, "prompt_tokens"] = 999_999
    assert load_trace(TraceConfig(**AZURE)).loc[0, "prompt_tokens"] != 999_999
