"""Writers, plots and tables: every file appears, summary.json is strict JSON that round-trips, PNGs are real."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from simulator.metrics.plots import binned_mean, plot_batch_and_kv
from simulator.metrics.result import RunInfo, SimulationResult, TokenGaps
from simulator.metrics.slo import SLOConfig
from simulator.metrics.summary import SUMMARY_KEYS, summarise
from simulator.metrics.table import comparison_table, summary_table
from simulator.metrics.writers import write_outputs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def synthetic_result(num_requests: int = 300, replicas: int = 2, seed: int = 0) -> SimulationResult:
    """A plausible run: Poisson arrivals, runs of iterations back to back on each replica, a few unfinished."""
    rng = np.random.default_rng(seed)
    arrival = np.cumsum(rng.exponential(0.05, num_requests))
    out = rng.integers(1, 60, num_requests)
    schedule = arrival + rng.exponential(0.02, num_requests)
    first = schedule + rng.exponential(0.05, num_requests)
    finish = first + out * 0.02
    finish[-5:] = np.nan
    requests = pd.DataFrame(
        {
            "request_id": np.arange(num_requests),
            "replica": np.arange(num_requests) % replicas,
            "arrival_s": arrival,
            "prompt_tokens": rng.integers(10, 500, num_requests),
            "output_tokens": out,
            "schedule_s": schedule,
            "first_token_s": first,
            "finish_s": finish,
            "preemptions": rng.integers(0, 2, num_requests),
            "max_tbt_s": np.where(out > 1, 0.02 + rng.exponential(0.01, num_requests), np.nan),
        }
    )
    rows = []
    end_time = float(np.nanmax(finish))
    for r in range(replicas):
        t = 0.0
        while t < end_time:
            n = int(rng.integers(1, 20))
            dur = 0.02
            rows.append(
                dict(
                    replica=r,
                    start_s=t,
                    end_s=t + n * dur,
                    num_iterations=n,
                    prefill_tokens=int(rng.integers(0, 256)),
                    prefill_seqs=int(rng.integers(0, 2)),
                    decode_seqs=int(rng.integers(1, 32)),
                    context_tokens=5000,
                    duration_first_s=dur,
                    duration_last_s=dur,
                    kv_blocks_used=int(rng.integers(0, 100)),
                    kv_blocks_total=100,
                    flops=1e13 * n,
                    bytes=1e11 * n,
                    busy_s=n * dur,
                )
            )
            t += n * dur + float(rng.exponential(0.01))
    gaps = TokenGaps(
        first=rng.uniform(0.015, 0.03, 200),
        step=rng.normal(0, 1e-4, 200),
        count=rng.integers(1, 30, 200),
        weight=rng.integers(1, 16, 200),
        single_values=rng.uniform(0.02, 0.3, 50),
    )
    info = RunInfo(
        scenario_name="synthetic",
        seed=seed,
        model="m",
        device="d",
        num_replicas=replicas,
        gpus_per_replica=1,
        peak_flops_per_gpu=1e15,
        mem_bandwidth_per_gpu=3e12,
        price_usd_per_gpu_hour=2.0,
        tdp_w=700,
        idle_w=90,
        kv_capacity_tokens_per_replica=1600,
        kv_block_size=16,
        weights_bytes_per_gpu=1.6e10,
        gpu_memory_bytes=8e10,
        warmup_s=1.0,
        wall_time_s=0.5,
        sim_end_s=end_time,
    )
    return SimulationResult(requests, pd.DataFrame(rows), gaps, info)


def test_write_outputs_produces_every_file_and_summary_json_round_trips(tmp_path: Path) -> None:
    result = synthetic_result()
    summary = summarise(result, SLOConfig(ttft_s=0.1, tbt_s=0.05))
    written = write_outputs(result, summary, tmp_path / "run")
    names = sorted(p.name for p in written)
    assert names == sorted(
        ["requests.csv", "iterations.csv", "summary.json", "latency_cdfs.png", "batch_and_kv.png", "throughput.png"]
    )
    assert all(p.exists() and p.stat().st_size > 0 for p in written)

    def no_nan(token: str) -> None:
        raise AssertionError(f"summary.json is not strict JSON: {token}")

    doc = json.loads((tmp_path / "run" / "summary.json").read_text(), parse_constant=no_nan)
    assert doc["info"]["scenario_name"] == "synthetic" and doc["info"]["num_replicas"] == 2
    assert set(doc) == set(SUMMARY_KEYS) | {"info"}
    for key, value in summary.items():
        if isinstance(value, float) and math.isnan(value):
            assert doc[key] is None, key
        else:
            assert doc[key] == value, key

    reread = pd.read_csv(tmp_path / "run" / "requests.csv")
    assert len(reread) == 300 and reread["finish_s"].isna().sum() == 5
    assert len(pd.read_csv(tmp_path / "run" / "iterations.csv")) == len(result.iterations)


def test_plots_are_non_empty_pngs_and_can_be_skipped(tmp_path: Path) -> None:
    result = synthetic_result()
    summary = summarise(result, SLOConfig())
    written = write_outputs(result, summary, tmp_path, plots=False)
    assert not any(p.suffix == ".png" for p in written)
    for path in write_outputs(result, summary, tmp_path):
        if path.suffix == ".png":
            data = path.read_bytes()
            assert data.startswith(PNG_MAGIC) and len(data) > 5000, path.name


def test_many_replicas_are_aggregated_and_empty_runs_still_plot(tmp_path: Path) -> None:
    many = synthetic_result(num_requests=200, replicas=12)
    assert plot_batch_and_kv(many, tmp_path / "many.png").read_bytes().startswith(PNG_MAGIC)
    nothing = synthetic_result(num_requests=50)
    nothing.requests["finish_s"] = np.nan
    nothing.requests["first_token_s"] = np.nan
    nothing.token_gaps = TokenGaps.empty()
    nothing.iterations = nothing.iterations.iloc[0:0]
    summary = summarise(nothing, SLOConfig())
    assert all(
        p.read_bytes().startswith(PNG_MAGIC)
        for p in write_outputs(nothing, summary, tmp_path / "e")
        if p.suffix == ".png"
    )


def test_binned_mean_is_time_weighted_and_counts_gaps_as_zero() -> None:
    # value 3 on [0, 2), value 1 on [2, 3), nothing on [3, 4)
    means = binned_mean(
        np.array([0.0, 2.0]), np.array([2.0, 3.0]), np.array([3.0, 1.0]), np.array([0.0, 1.0, 2.0, 4.0])
    )
    np.testing.assert_allclose(means, [3.0, 3.0, 0.5])


def render(table: object) -> str:
    console = Console(record=True, width=220, color_system=None)
    console.print(table)
    return console.export_text()


def test_comparison_table_lists_each_summary_by_name_with_formatted_values() -> None:
    s = summarise(synthetic_result(), SLOConfig(ttft_s=0.5))
    broken = {"name": "nothing-finished", "ttft_p50_s": float("nan")}
    text = render(comparison_table([{"name": "a100-tp1", **s}, broken]))
    assert "a100-tp1" in text and "nothing-finished" in text
    assert "TTFT p50" in text and "$/Mtok" in text
    assert f"{100 * s['slo_attainment']:.1f}%" in text
    assert "–" in text  # NaN and missing values print as a dash
    header = text.splitlines()[1]
    assert header.index("name") < header.index("TTFT p50")


def test_summary_table_shows_latency_percentiles_and_totals() -> None:
    s = summarise(synthetic_result(), SLOConfig())
    text = render(summary_table(s, title="run"))
    for label in ("TTFT", "TBT", "TPOT", "E2E", "queueing", "p99", "goodput", "MFU / MBU", "preemptions"):
        assert label in text
    assert f"{s['completed']} / {s['unfinished']}" in text


@pytest.mark.parametrize("value", [0.0123, 2.5, 0.0004])
def test_seconds_format_keeps_the_magnitude(value: float) -> None:
    from simulator.metrics.table import fmt_seconds

    text = fmt_seconds(value)
    number = float(text.split()[0])
    unit = text.split()[1]
    assert number * {"s": 1, "ms": 1e-3, "µs": 1e-6}[unit] == pytest.approx(value, rel=0.05)
