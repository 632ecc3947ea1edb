"""SLO checks per request, and the energy and cost formulas, on hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from capsim.errors import CapsimError
from simulator.metrics.energy import cost_usd, energy_joules
from simulator.metrics.result import request_latencies
from simulator.metrics.slo import SLOConfig

NAN = float("nan")


def requests() -> pd.DataFrame:
    # r0: ttft 0.2, e2e 1.0, tpot (1.0 - 0.2) / 4 = 0.2, worst gap 0.3
    # r1: ttft 0.6, e2e 0.8, one output token (no TPOT, no gaps)
    # r2: unfinished, fast first token
    # r3: ttft 0.1, e2e 3.1, tpot 3.0 / 2 = 1.5, worst gap 2.0
    return pd.DataFrame(
        {
            "request_id": [0, 1, 2, 3],
            "replica": [0, 0, 0, 0],
            "arrival_s": [0.0, 1.0, 2.0, 3.0],
            "prompt_tokens": [10, 10, 10, 10],
            "output_tokens": [5, 1, 8, 3],
            "schedule_s": [0.1, 1.5, 2.0, 3.0],
            "first_token_s": [0.2, 1.6, 2.05, 3.1],
            "finish_s": [1.0, 1.8, NAN, 6.1],
            "preemptions": [0, 0, 1, 0],
            "max_tbt_s": [0.3, NAN, 0.05, 2.0],
        }
    )


def test_latencies_follow_the_definitions() -> None:
    lat = request_latencies(requests())
    np.testing.assert_allclose(lat["ttft_s"], [0.2, 0.6, 0.05, 0.1])
    np.testing.assert_allclose(lat["e2e_s"][[0, 1, 3]], [1.0, 0.8, 3.1])
    np.testing.assert_allclose(lat["queue_s"], [0.1, 0.5, 0.0, 0.0], atol=1e-12)
    assert lat["tpot_s"][0] == pytest.approx(0.2)
    assert lat["tpot_s"][3] == pytest.approx(1.5)
    assert math.isnan(lat["tpot_s"][1]) and math.isnan(lat["tpot_s"][2])


@pytest.mark.parametrize(
    ("slo", "expected"),
    [
        (SLOConfig(), [True, True, False, True]),  # no targets: finished requests meet it
        (SLOConfig(ttft_s=0.5), [True, False, False, True]),
        (SLOConfig(tpot_s=1.0), [True, True, False, False]),  # one-token r1 has nothing to pace
        (SLOConfig(tbt_s=0.5), [True, True, False, False]),  # r1 has no gaps
        (SLOConfig(e2e_s=0.9), [False, True, False, False]),
        (SLOConfig(ttft_s=0.5, tbt_s=0.5), [True, False, False, False]),
    ],
)
def test_meets_applies_every_set_target_and_unfinished_requests_miss(slo: SLOConfig, expected: list[bool]) -> None:
    assert slo.meets(requests()).tolist() == expected


def test_slo_config_validates_its_fields() -> None:
    with pytest.raises(ValidationError):
        SLOConfig(ttft_s=-1)
    with pytest.raises(ValidationError):
        SLOConfig(attainment=1.5)
    with pytest.raises(ValidationError):
        SLOConfig(ttft=0.5)  # typo of ttft_s: extra keys are rejected
    assert SLOConfig(ttft_s=0.5, e2e_s=10).targets() == {"ttft_s": 0.5, "e2e_s": 10.0}
    assert SLOConfig.model_fields["tbt_s"].description


def test_energy_is_idle_power_for_the_window_plus_the_active_increment_while_busy() -> None:
    # 4 GPUs for 100 s at 80 W idle; 150 GPU-seconds busy at 700 W
    assert energy_joules(window_s=100, busy_gpu_s=150, num_gpus=4, idle_w=80, active_w=700) == pytest.approx(
        4 * 80 * 100 + (700 - 80) * 150
    )
    assert energy_joules(window_s=100, busy_gpu_s=0, num_gpus=4, idle_w=80, active_w=700) == pytest.approx(32_000)


def test_energy_rejects_impossible_inputs() -> None:
    with pytest.raises(CapsimError, match="idle"):
        energy_joules(window_s=1, busy_gpu_s=0, num_gpus=1, idle_w=500, active_w=400)
    with pytest.raises(CapsimError, match="exceeds"):
        energy_joules(window_s=1, busy_gpu_s=3, num_gpus=2, idle_w=50, active_w=400)


def test_cost_is_gpu_hours_times_price() -> None:
    assert cost_usd(window_s=1800, num_gpus=8, price_usd_per_gpu_hour=2.0) == pytest.approx(8.0)
    with pytest.raises(CapsimError, match="price"):
        cost_usd(window_s=1, num_gpus=1, price_usd_per_gpu_hour=-1)


def test_percentile_targets_judge_the_distribution_and_feed_slo_met():
    """DistServe-style P90 targets and Sarathi-style P99 of every gap: measured into the summary, and the SLO is
    met only when every percentile target holds (besides the per-request attainment)."""
    from simulator.config.schema import Scenario
    from simulator.engine import simulate
    from simulator.metrics.summary import summarise

    base = {
        "seed": 4, "model": "llama-2-7b", "deployment": {"device": "a100-80gb-sxm"},
        "workload": {"arrival": "poisson", "qps": 3, "prompt": {"dist": "uniform", "low": 64, "high": 1500},
                     "output": {"dist": "uniform", "low": 2, "high": 200}},
        "simulation": {"num_requests": 200},
    }
    out = simulate(Scenario.model_validate(base)).result
    plain = summarise(out, SLOConfig())
    p90, p99 = plain["ttft_p90_s"], plain["ttft_p99_s"]
    assert p90 < p99
    loose = SLOConfig(percentiles=[{"metric": "ttft_s", "percentile": 90, "max_s": (p90 + p99) / 2}])
    tight = SLOConfig(percentiles=[{"metric": "ttft_s", "percentile": 99, "max_s": (p90 + p99) / 2}])
    a, b = summarise(out, loose), summarise(out, tight)
    assert a["slo_ttft_p90_s"] == pytest.approx(p90) and a["slo_ttft_p90_ok"] and a["slo_met"]
    assert b["slo_ttft_p99_s"] == pytest.approx(p99) and not b["slo_ttft_p99_ok"] and not b["slo_met"]
    gaps = SLOConfig(percentiles=[{"metric": "tbt_s", "percentile": 99, "max_s": 10.0},
                                  {"metric": "queueing_s", "percentile": 50, "max_s": 10.0}])
    c = summarise(out, gaps)
    assert c["slo_tbt_p99_s"] == pytest.approx(plain["tbt_p99_s"]) and c["slo_met"]
    # An unfinished request is infinitely slow: a run stopped early cannot pass a P99 target.
    cut = simulate(Scenario.model_validate({**base, "simulation": {"num_requests": 200, "max_time_s": 30}})).result
    d = summarise(cut, SLOConfig(attainment=0.01, percentiles=[{"metric": "e2e_s", "percentile": 99, "max_s": 1e6}]))
    assert d["unfinished"] > 2 and not d["slo_e2e_p99_ok"] and not d["slo_met"]
