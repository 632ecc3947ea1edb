"""A throttled device draws less power (issue 17, item 4): busy power above idle follows the throttled speed.

Hand checks: the closed-form power integral against the thermal model's work integral (k = 1) and against a
numerical integral (k = 3); a throttled session at k = 1 spends the busy energy of the same work done cold;
k = 3 spends less; a device without a curve keeps ``tdp_w`` for every busy second.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from hwmodels.device import Thermal
from simulator.config.schema import Scenario
from simulator.costmodel.thermal import heat_after, wall_times
from simulator.engine import simulate
from simulator.metrics.summary import summarise
from simulator.metrics.thermal_power import busy_power_integral, thermal_power, throttled_busy_s

PHONE = "snapdragon-8-gen3"


def session(device, n=6) -> Scenario:
    """One user, back-to-back requests (no think time): the device is busy almost all the time."""
    return Scenario.model_validate(
        {
            "seed": 5,
            "model": "phi-3-mini",
            "deployment": {"device": device, "weight_dtype": "int8", "kv_dtype": "fp16"},
            "scheduler": {"name": "vllm", "max_num_seqs": 1},
            "workload": {
                "arrival": "closed-loop",
                "concurrency": 1,
                "think_time_s": 0.0,
                "prompt": {"dist": "fixed", "value": 256},
                "output": {"dist": "fixed", "value": 64},
            },
            "simulation": {"num_requests": n},
        }
    )


def hot_phone(k: int) -> dict:
    return {
        "base": PHONE,
        "name": f"hot-phone-k{k}",
        "thermal": {"sustained_fraction": 0.5, "time_constant_s": 5.0, "power_exponent": k},
    }


def test_linear_power_integral_is_the_work_done():
    """k = 1: the power-weighted busy time of an interval is the peak-rate work the thermal model fits in it."""
    th = Thermal(sustained_fraction=0.4, time_constant_s=12.0)
    for h0, work in ((0.0, 3.0), (0.3, 30.0), (0.9, 0.5)):
        t = float(wall_times(th, h0, np.array([work]))[0])
        assert busy_power_integral(th, h0, t) == pytest.approx(work, rel=1e-10)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_power_integral_matches_a_numerical_integral(k):
    th = Thermal(sustained_fraction=0.55, time_constant_s=7.0, power_exponent=k)
    h0, T = 0.2, 25.0
    t = np.linspace(0.0, T, 200_001)
    s = th.sustained_fraction + (1 - th.sustained_fraction) * (1 - h0) * np.exp(-t / th.time_constant_s)
    assert busy_power_integral(th, h0, T) == pytest.approx(np.trapezoid(s**k, t), rel=1e-8)
    # Cold and short: full power; hot: the sustained fraction to the k-th power.
    assert busy_power_integral(th, 0.0, 1e-6) == pytest.approx(1e-6, rel=1e-6)
    assert busy_power_integral(th, 1.0, 2.0) == pytest.approx(2.0 * 0.55**k, rel=1e-12)


def test_replay_cools_between_records_and_counts_only_the_window():
    th = Thermal(sustained_fraction=0.5, time_constant_s=10.0)
    # Two busy intervals of 10 s with 10 s idle between; the window starts halfway through the first.
    replica = np.array([0, 0])
    start, end = np.array([0.0, 20.0]), np.array([10.0, 30.0])
    got = throttled_busy_s(th, replica, start, end, 5.0, 100.0)
    h5 = heat_after(th, 0.0, 5.0)
    h20 = heat_after(th, heat_after(th, 0.0, 10.0), 0.0, 10.0)
    assert got == pytest.approx(busy_power_integral(th, h5, 5.0) + busy_power_integral(th, h20, 10.0), rel=1e-12)
    # Without throttling the weighted time is the plain busy time.
    flat = Thermal(sustained_fraction=1.0, time_constant_s=10.0)
    assert throttled_busy_s(flat, replica, start, end, 5.0, 100.0) == pytest.approx(15.0)


def test_a_throttled_session_spends_the_busy_energy_of_its_work_at_k1_and_less_at_k3():
    cold = simulate(session(PHONE)).result
    k1 = simulate(session(hot_phone(1))).result
    k3 = simulate(session(hot_phone(3))).result
    busy = lambda r: float((r.iterations["end_s"] - r.iterations["start_s"]).sum())  # noqa: E731
    assert busy(k1) > 1.2 * busy(cold)  # throttling stretched the same work
    e_cold, e1, e3 = (summarise(r)["energy_j"] for r in (cold, k1, k3))
    # The phone's idle_w is 0, so energy is tdp_w x power-weighted busy time; at k = 1 that is the work itself.
    assert e_cold == pytest.approx(7.0 * busy(cold), rel=1e-9)
    assert e1 == pytest.approx(e_cold, rel=1e-6)
    assert e3 < 0.9 * e1
    # Before this change a throttled second cost tdp_w: the energy would have grown with the stretched time.
    assert e1 < 0.85 * 7.0 * busy(k1)
    # The energy view (energy_total_j) agrees with the summary's energy_j.
    assert summarise(k3)["energy_total_j"] == pytest.approx(e3, rel=1e-12)


def test_no_curve_keeps_full_power_and_the_record_carries_the_curve():
    assert thermal_power(None) is None
    tp = thermal_power(Thermal(sustained_fraction=0.5, time_constant_s=5.0, power_exponent=3))
    assert dataclasses.asdict(tp) == {"sustained_fraction": 0.5, "time_constant_s": 5.0, "power_exponent": 3}
    r = simulate(session(PHONE, n=2)).result
    assert r.info.thermal is None
    assert math.isclose(summarise(r)["energy_j"], 7.0 * float((r.iterations["end_s"] - r.iterations["start_s"]).sum()))
