"""summarise() on a small hand-computed run: warm-up exclusion, window rates, SLO, utilisation, energy, cost."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from capsim.errors import CapsimError
from simulator.metrics.result import (
    RunInfo,
    SimulationResult,
    TokenGaps,
    empty_iterations_frame,
    empty_requests_frame,
)
from simulator.metrics.slo import SLOConfig
from simulator.metrics.summary import SUMMARY_KEYS, summarise

NAN = float("nan")


def info(**overrides: object) -> RunInfo:
    fields = dict(
        scenario_name="hand",
        seed=1,
        model="m",
        device="d",
        num_replicas=1,
        gpus_per_replica=2,
        peak_flops_per_gpu=1e15,
        mem_bandwidth_per_gpu=2e12,
        price_usd_per_gpu_hour=3.0,
        tdp_w=700.0,
        idle_w=100.0,
        kv_capacity_tokens_per_replica=1600,
        kv_block_size=16,
        weights_bytes_per_gpu=1e10,
        gpu_memory_bytes=8e10,
        warmup_s=10.0,
        wall_time_s=2.0,
        sim_end_s=24.0,
    )
    fields.update(overrides)
    return RunInfo(**fields)  # type: ignore[arg-type]


def hand_requests() -> pd.DataFrame:
    # r0 arrives in warm-up (excluded; its 7 preemptions must not count)
    # r1 ttft 1.0, e2e 5.0, tpot 4/4 = 1.0, queue 0.5
    # r2 ttft 0.5, e2e 8.0, one token (no tpot), queue 0
    # r3 unfinished, ttft 2.0, queue 0.2, 2 preemptions
    # r4 ttft 0.3, e2e 2.3, tpot 2/4 = 0.5, queue 0.1, worst gap 1.5
    return pd.DataFrame(
        {
            "request_id": [0, 1, 2, 3, 4],
            "replica": [0, 0, 0, 0, 0],
            "arrival_s": [5.0, 10.0, 12.0, 14.0, 16.0],
            "prompt_tokens": [1000, 100, 200, 50, 10],
            "output_tokens": [3, 5, 1, 10, 5],
            "schedule_s": [5.0, 10.5, 12.0, 14.2, 16.1],
            "first_token_s": [6.0, 11.0, 12.5, 16.0, 16.3],
            "finish_s": [8.0, 15.0, 20.0, NAN, 18.3],
            "preemptions": [7, 0, 0, 2, 1],
            "max_tbt_s": [0.5, 1.2, NAN, 0.3, 1.5],
        }
    )


def hand_iterations() -> pd.DataFrame:
    # window is [10, 20]: run A lies before it, run B inside, half of run C inside
    return pd.DataFrame(
        {
            "replica": [0, 0, 0],
            "start_s": [0.0, 10.0, 16.0],
            "end_s": [10.0, 14.0, 24.0],
            "num_iterations": [100, 40, 80],
            "prefill_tokens": [512, 0, 64],
            "prefill_seqs": [1, 0, 2],
            "decode_seqs": [3, 4, 2],
            "context_tokens": [100, 400, 300],
            "duration_first_s": [0.1, 0.1, 0.1],
            "duration_last_s": [0.1, 0.1, 0.1],
            "kv_blocks_used": [95, 50, 80],
            "kv_blocks_total": [100, 100, 100],
            "flops": [1e15, 4e15, 8e15],
            "bytes": [1e12, 8e12, 16e12],
            "busy_s": [10.0, 4.0, 8.0],
        }
    )


GAPS = TokenGaps.from_runs(first=[0.1, 0.2], step=[0.01, 0.0], count=[4, 3], weight=[2, 1], single_values=[1.2, 1.5])


def hand_result(**info_overrides: object) -> SimulationResult:
    return SimulationResult(hand_requests(), hand_iterations(), GAPS, info(**info_overrides))


def test_summary_has_exactly_the_documented_keys_and_is_json_serialisable() -> None:
    s = summarise(hand_result(), SLOConfig(ttft_s=0.8))
    assert list(s) == list(SUMMARY_KEYS)
    json.dumps(s)  # plain Python types only
    assert all(desc for desc in SUMMARY_KEYS.values())


def test_warmup_requests_are_excluded_from_counts_and_latencies() -> None:
    s = summarise(hand_result(), SLOConfig())
    assert (s["num_requests"], s["completed"], s["unfinished"], s["warmup_requests"]) == (4, 3, 1, 1)
    assert s["ttft_mean_s"] == pytest.approx((1.0 + 0.5 + 2.0 + 0.3) / 4)
    assert s["ttft_p50_s"] == pytest.approx(np.quantile([1.0, 0.5, 2.0, 0.3], 0.5))
    assert s["e2e_p99_s"] == pytest.approx(np.quantile([5.0, 8.0, 2.3], 0.99))
    assert s["queue_mean_s"] == pytest.approx((0.5 + 0.0 + 0.2 + 0.1) / 4)
    assert s["preemptions"] == 3
    # with no warm-up, r0 counts too
    s0 = summarise(hand_result(warmup_s=0.0), SLOConfig())
    assert s0["num_requests"] == 5 and s0["preemptions"] == 10


def test_tpot_is_post_first_token_time_over_remaining_tokens() -> None:
    s = summarise(hand_result(), SLOConfig())
    # r1: (5.0 - 1.0) / 4 = 1.0; r4: (2.3 - 0.3) / 4 = 0.5; the one-token r2 and unfinished r3 have none
    assert s["tpot_mean_s"] == pytest.approx(0.75)
    assert s["tpot_p50_s"] == pytest.approx(0.75)
    assert s["tpot_p99_s"] == pytest.approx(np.quantile([1.0, 0.5], 0.99))


def test_tbt_statistics_come_from_the_weighted_gaps() -> None:
    s = summarise(hand_result(), SLOConfig())
    sample = np.array([0.1, 0.1, 0.11, 0.11, 0.12, 0.12, 0.13, 0.13, 0.2, 0.2, 0.2, 1.2, 1.5])
    assert s["tbt_mean_s"] == pytest.approx(sample.mean())
    for p in (50, 90, 95, 99):
        assert s[f"tbt_p{p}_s"] == pytest.approx(np.quantile(sample, p / 100))


def test_rates_attainment_and_goodput_over_the_measurement_window() -> None:
    slo = SLOConfig(ttft_s=0.8, tbt_s=1.3, attainment=0.2)
    s = summarise(hand_result(), slo)
    assert (s["window_start_s"], s["window_end_s"], s["window_s"]) == (10.0, 20.0, 10.0)
    assert s["throughput_rps"] == pytest.approx(0.3)
    assert s["output_tps"] == pytest.approx((5 + 1 + 5) / 10)
    assert s["input_tps"] == pytest.approx((100 + 200 + 10) / 10)
    # r1 misses TTFT, r3 is unfinished, r4 misses TBT: only r2 meets the SLO
    assert s["slo_attainment"] == pytest.approx(0.25)
    assert s["goodput_rps"] == pytest.approx(0.1)
    assert s["slo_met"] is True
    assert summarise(hand_result(), slo.model_copy(update={"attainment": 0.5}))["slo_met"] is False
    assert (s["slo_ttft_s"], s["slo_tpot_s"], s["slo_target_attainment"]) == (0.8, None, 0.2)


def test_unfinished_requests_count_as_misses_even_without_targets() -> None:
    s = summarise(hand_result(), SLOConfig())
    assert s["slo_attainment"] == pytest.approx(3 / 4)


def test_utilisation_batch_and_kv_are_prorated_to_the_window() -> None:
    s = summarise(hand_result(), SLOConfig())
    # FLOPs in window: all of B (4e15) + half of C (4e15) over 1e15 FLOP/s x 10 s x 2 GPUs
    assert s["mfu"] == pytest.approx(0.4)
    assert s["mbu"] == pytest.approx((8e12 + 8e12) / (2e12 * 10 * 2))
    # 40 iterations of B (batch 4) and 40 of C (batch 4, decode 2)
    assert s["mean_batch_size"] == pytest.approx(4.0)
    assert s["mean_decode_batch"] == pytest.approx(3.0)
    assert s["kv_util_mean"] == pytest.approx((4 * 0.5 + 4 * 0.8) / 8)
    assert s["kv_util_peak"] == pytest.approx(0.8)  # run A's 0.95 is outside the window
    assert s["iterations"] == 220


def test_energy_and_cost_cover_the_window() -> None:
    s = summarise(hand_result(), SLOConfig())
    # 2 GPUs x 100 W x 10 s + (700 - 100) W x 8 busy s x 2 GPUs
    assert s["energy_j"] == pytest.approx(2000 + 9600)
    assert s["energy_per_output_token_j"] == pytest.approx(11600 / 11)
    assert s["cost_usd"] == pytest.approx(2 * 10 / 3600 * 3.0)
    # steady state: a run that keeps up serves the offered tokens per second, 3 gaps over 6 s of arrivals times
    # a mean of (5 + 1 + 10 + 5) / 4 output tokens
    assert s["overloaded"] is False
    assert s["offered_output_tps"] == pytest.approx(3 / 6 * 21 / 4)
    assert s["served_output_tps"] == s["offered_output_tps"]
    assert s["cost_per_million_output_tokens_usd"] == pytest.approx(2 * 3.0 / 3600 / (3 / 6 * 21 / 4) * 1e6)
    assert s["sim_speed_rps"] == pytest.approx(5 / 2.0)
    assert s["num_gpus"] == 2


def test_offered_and_served_rates_over_the_arrival_window() -> None:
    s = summarise(hand_result(), SLOConfig())
    assert s["offered_rps"] == pytest.approx(3 / 6)  # 4 measured arrivals from 10 to 16 s
    # median E2E of 2.3, 5, 8 and (unfinished) inf is 6.5: finishes in [16.5, 22.5] are r2 (20) and r4 (18.3)
    assert s["served_rps"] == pytest.approx(2 / 6)
    # queueing delays 0.5 and 0 before the window's midpoint (13 s), 0.2 and 0.1 after it
    assert s["queue_growth_s"] == pytest.approx(0.15 - 0.25)
    assert s["overloaded"] is False


def fcfs_result(arrival_rate: float, service_rate: float, n: int = 400) -> SimulationResult:
    """One server handling one request at a time in arrival order: a queue that grows when arrivals outpace it."""
    arrival = np.arange(n) / arrival_rate
    finish = np.empty(n)
    start = np.empty(n)
    free = 0.0
    for k, a in enumerate(arrival):
        start[k] = max(a, free)
        free = finish[k] = start[k] + 1 / service_rate
    req = pd.DataFrame({
        "request_id": np.arange(n), "replica": 0, "arrival_s": arrival, "prompt_tokens": 10, "output_tokens": 1,
        "schedule_s": start, "first_token_s": finish, "finish_s": finish, "preemptions": 0, "max_tbt_s": NAN,
    })
    return SimulationResult(req, empty_iterations_frame(), TokenGaps.empty(),
                            info(warmup_s=0.0, sim_end_s=float(finish[-1])))


def test_a_configuration_slower_than_its_arrivals_is_overloaded() -> None:
    slow = summarise(fcfs_result(arrival_rate=4.0, service_rate=2.0), SLOConfig(ttft_s=1e6))
    assert slow["offered_rps"] == pytest.approx(4.0)
    assert slow["served_rps"] == pytest.approx(2.0, rel=0.02)  # its own capacity, not the drain-diluted rate
    assert slow["throughput_rps"] < slow["served_rps"]
    assert slow["queue_growth_s"] > 0 and slow["overloaded"] is True
    assert slow["slo_met"] is True  # a loose enough SLO is met: overload is a separate verdict
    # it serves its capacity (one token per request here), not the offered tokens, and pays for them at that rate
    assert slow["served_output_tps"] == pytest.approx(slow["served_rps"])
    assert slow["served_output_tps"] < slow["offered_output_tps"] / 1.9
    fast = summarise(fcfs_result(arrival_rate=4.0, service_rate=5.0), SLOConfig())
    assert fast["served_rps"] == pytest.approx(4.0, rel=0.01)
    assert fast["queue_growth_s"] == pytest.approx(0.0) and fast["overloaded"] is False
    assert fast["served_output_tps"] == fast["offered_output_tps"] == pytest.approx(4.0)
    # arrivals barely faster than service: a shortfall within the noise of the arrival count is not overload
    edge = summarise(fcfs_result(arrival_rate=4.0, service_rate=3.96), SLOConfig())
    assert 0 < (edge["offered_rps"] - edge["served_rps"]) * 100 < 2 * math.sqrt(400)
    assert edge["overloaded"] is False


def test_long_and_short_requests_that_never_queue_are_not_overloaded() -> None:
    """Requests of very different lengths finish far from the median latency, so fewer of them fall in the shifted
    window than arrived -- a shortfall well beyond 2 sqrt(n) -- but nothing queues up: not overload."""
    n = 400
    rng = np.random.default_rng(8)
    arrival = np.arange(n) / 4.0
    schedule = arrival + rng.exponential(0.01, n)  # jitter without a trend (this draw happens to rise a little)
    finish = schedule + np.where(np.arange(n) % 2 == 0, 1.0, 60.0)
    req = pd.DataFrame({
        "request_id": np.arange(n), "replica": 0, "arrival_s": arrival, "prompt_tokens": 10, "output_tokens": 1,
        "schedule_s": schedule, "first_token_s": finish, "finish_s": finish, "preemptions": 0, "max_tbt_s": NAN,
    })
    result = SimulationResult(req, empty_iterations_frame(), TokenGaps.empty(),
                              info(warmup_s=0.0, sim_end_s=float(finish.max())))
    s = summarise(result, SLOConfig())
    assert (s["offered_rps"] - s["served_rps"]) * (n - 1) / s["offered_rps"] > 2 * math.sqrt(n)
    # the queue "grows" by a fraction of a millisecond: chance, well within two standard errors, not a backlog
    assert 0 < s["queue_growth_s"] < 0.001
    assert s["overloaded"] is False


def test_tokens_generated_in_a_window_come_from_the_iteration_records() -> None:
    result = hand_result()
    from simulator.metrics.summary import output_tokens_between

    # over the whole run: every first token, and every decode sequence of every iteration
    assert output_tokens_between(result, 0.0, 24.0) == pytest.approx(5 + 300 + 160 + 160)
    # half of run C (decode 2 x 80 iterations over [16, 24]) and no first token in [20, 24]
    assert output_tokens_between(result, 20.0, 24.0) == pytest.approx(80)


def test_a_run_with_nothing_to_measure_gives_nan_not_an_exception() -> None:
    empty = SimulationResult(empty_requests_frame(), empty_iterations_frame(), TokenGaps.empty(), info())
    s = summarise(empty, SLOConfig(ttft_s=1.0))
    assert (s["num_requests"], s["completed"], s["preemptions"], s["iterations"]) == (0, 0, 0, 0)
    for key in ("ttft_p99_s", "tbt_p50_s", "tpot_mean_s", "throughput_rps", "slo_attainment", "mfu", "energy_j"):
        assert math.isnan(s[key]), key
    assert s["slo_met"] is False


def test_no_finished_request_gives_nan_rates_and_zero_attainment() -> None:
    req = hand_requests()
    req["finish_s"] = NAN
    s = summarise(SimulationResult(req, hand_iterations(), GAPS, info()), SLOConfig())
    assert s["completed"] == 0 and s["unfinished"] == 4
    assert s["slo_attainment"] == 0.0 and s["slo_met"] is False
    assert math.isnan(s["throughput_rps"]) and math.isnan(s["e2e_p50_s"])
    assert s["ttft_p50_s"] == pytest.approx(np.quantile([1.0, 0.5, 2.0, 0.3], 0.5))  # first tokens still count


def test_missing_columns_are_reported_with_a_fix() -> None:
    with pytest.raises(CapsimError, match="finish_s"):
        SimulationResult(hand_requests().drop(columns=["finish_s"]), hand_iterations(), GAPS, info())


def test_tokens_from_iterations_add_up_to_the_requests_output_in_a_simulation() -> None:
    from simulator.config.schema import Scenario
    from simulator.engine import simulate
    from simulator.metrics.summary import output_tokens_between

    scenario = Scenario.model_validate({
        "name": "tokens", "model": "llama-3.1-8b", "deployment": {"device": "a100-80gb-sxm"},
        "scheduler": {"name": "sarathi", "chunk_size": 512},
        "workload": {"arrival": "poisson", "qps": 6, "trace": {"name": "sharegpt-lengths"}},
        "simulation": {"num_requests": 200},
    })
    result = simulate(scenario).result
    assert np.isfinite(result.requests["finish_s"]).all()
    total = output_tokens_between(result, 0.0, float(result.info.sim_end_s))
    assert total == pytest.approx(float(result.requests["output_tokens"].sum()))
