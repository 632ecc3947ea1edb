"""The shipped vLLM / SGLang serving-run extract parses, and the comparison code runs on a small subset.

The full comparison (``benchmarks/serving_accuracy.py``) simulates every run three times per profile; here a
few dozen requests per run keep each test to seconds.
"""

from __future__ import annotations

import math

import pytest

from hwmodels.calibration.serving_runs import (
    COMPARED,
    NOT_COMPARED,
    SERVER_SETTINGS,
    Lengths,
    compare,
    error_table,
    load_runs,
    mean_output_tokens,
    registered_lengths,
    scenario_for,
)
from simulator.config.schema import Scenario


@pytest.fixture(scope="module")
def runs():
    return load_runs()


def test_extract_has_every_published_run_with_its_metrics(runs):
    assert len(runs) == 12
    online = [r for r in runs if r.mode == "online"]
    offline = [r for r in runs if r.mode == "offline"]
    assert len(online) == 8 and len(offline) == 4
    for r in online:
        assert r.request_rate in (4.0, 8.0)
        assert r.num_prompts == 300 * r.request_rate  # 1,200 prompts at 4/s, 2,400 at 8/s
        assert set(r.measured) == {"e2e_p50_ms", "ttft_p50_ms", "tpot_p50_ms", "itl_p50_ms"}
    for r in offline:
        assert r.request_rate is None and r.num_prompts == 5000
        assert set(r.measured) == {"request_throughput_rps", "output_throughput_tps"}
    for r in runs:
        assert r.engine in SERVER_SETTINGS
        assert all(v > 0 and math.isfinite(v) for v in r.measured.values())
        assert set(r.measured) <= set(COMPARED) | set(NOT_COMPARED)
        # a latency median is at least the first token's
        if r.mode == "online":
            assert r.measured["e2e_p50_ms"] > r.measured["ttft_p50_ms"]


def test_the_offline_rows_agree_on_the_mean_output_length(runs):
    """Output throughput / request throughput is the workload's mean output length: the same for every run."""
    ratios = [
        r.measured["output_throughput_tps"] / r.measured["request_throughput_rps"] for r in runs if r.mode == "offline"
    ]
    assert max(ratios) / min(ratios) < 1.005
    assert mean_output_tokens(runs) == pytest.approx(sum(ratios) / len(ratios))


def test_every_run_becomes_a_valid_scenario(runs):
    lengths = registered_lengths(runs)
    for r in runs:
        for engine in (r.engine, "none"):
            s = Scenario.model_validate(scenario_for(r, engine, seed=1, lengths=lengths))
            assert s.deployment.engine == engine and s.deployment.tp == r.tp
            assert s.simulation.num_requests == r.num_prompts
            assert s.workload.arrival == ("poisson" if r.mode == "online" else "closed-loop")


def test_comparison_runs_on_a_small_subset_and_the_engine_profile_slows_the_decode_step(runs):
    subset = [
        next(r for r in runs if r.engine == "vllm" and r.mode == "online"),
        next(r for r in runs if r.engine == "vllm" and r.mode == "offline"),
    ]
    comps = compare(subset, Lengths(prompt_mean=231, output_mean=194), seeds=(1,), num_prompts=40)
    metrics = {(c.run.mode, c.metric) for c in comps}
    assert metrics == {
        ("online", "ttft_p50_ms"),
        ("online", "tpot_p50_ms"),
        ("online", "e2e_p50_ms"),
        ("offline", "request_throughput_rps"),
        ("offline", "output_throughput_tps"),
    }
    for c in comps:
        assert set(c.predicted) == {"vllm", "none"}
        assert all(v > 0 and math.isfinite(v) for v in c.predicted.values())
        assert c.ape("vllm") >= 0
    tpot = next(c for c in comps if c.metric == "tpot_p50_ms")
    # the vllm profile adds per-layer launch time to every step: its decode step is slower than the kernels'
    assert tpot.predicted["vllm"] > tpot.predicted["none"]
    table = error_table(comps)
    assert {row["metric"] for row in table} == {m for _, m in metrics}
    for row in table:
        assert row["server"] == "vllm" and row["n"] == 1
        assert row["profile"]["median_ape"] == pytest.approx(row["profile"]["p90_ape"])


def test_multi_step_variant_sets_the_servers_flag_and_delays_first_tokens(runs):
    """The post-hoc variant sets vLLM's --num-scheduler-steps (10) on the vLLM rows only, and a new request's
    prefill then waits for the decode window in flight: median TTFT rises on an online run."""
    lengths = registered_lengths(runs)
    for r in runs:
        plain = scenario_for(r, r.engine, seed=1, lengths=lengths)
        multi = scenario_for(r, r.engine, seed=1, lengths=lengths, multi_step=True)
        assert "num_scheduler_steps" not in plain["scheduler"]
        assert multi["scheduler"].get("num_scheduler_steps", 1) == (10 if r.engine == "vllm" else 1)
        Scenario.model_validate(multi)
    online = [next(r for r in runs if r.engine == "vllm" and r.mode == "online")]
    one = compare(online, lengths, seeds=(1,), num_prompts=60)
    ten = compare(online, lengths, seeds=(1,), num_prompts=60, multi_step=True)
    ttft = {c.metric: c.predicted["vllm"] for c in one}["ttft_p50_ms"]
    ttft10 = {c.metric: c.predicted["vllm"] for c in ten}["ttft_p50_ms"]
    assert ttft10 > ttft


def test_sglang_admission_variant_gives_only_the_sglang_rows_sglangs_scheduler(runs):
    """The post-hoc variant puts the SGLang rows on the ``sglang`` scheduler with its defaults (nothing set) and
    leaves the vLLM rows as registered; on a small offline burst the reservation keeps the decode batch smaller."""
    lengths = registered_lengths(runs)
    for r in runs:
        plain = scenario_for(r, r.engine, seed=1, lengths=lengths)
        posthoc = scenario_for(r, r.engine, seed=1, lengths=lengths, sglang_admission=True)
        assert plain["scheduler"]["name"] == "vllm"
        if r.engine == "sglang":
            assert posthoc["scheduler"] == {"name": "sglang"}
        else:
            assert posthoc == plain
        Scenario.model_validate(posthoc)
    from simulator.engine import simulate

    offline = next(r for r in runs if r.engine == "sglang" and r.mode == "offline" and r.tp == 1)
    widest = {}
    for flag in (False, True):
        s = Scenario.model_validate(
            scenario_for(offline, "none", seed=1, lengths=lengths, num_prompts=1500, sglang_admission=flag)
        )
        widest[flag] = int(simulate(s).result.iterations["decode_seqs"].max())
    assert widest[True] < widest[False]
