"""Closed-loop users as benchmark harnesses run them: all at once by default, or started over a ramp, with fixed
or exponential think times."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from simulator.config.schema import Scenario
from simulator.engine import simulate


def closed(**workload):
    return Scenario.model_validate({
        "seed": 3, "model": "llama-3.1-8b", "deployment": {"device": "h100-sxm"},
        "workload": {"arrival": "closed-loop", "concurrency": 16, "prompt": {"dist": "fixed", "value": 1024},
                     "output": {"dist": "fixed", "value": 128}, **workload},
        "simulation": {"num_requests": 160},
    })


def test_defaults_start_every_user_at_once_and_stay_in_lockstep():
    req = simulate(closed()).result.requests
    assert (req["arrival_s"].iloc[:16] == 0).all()
    # equal lengths, no think time: waves of 16 requests issued at the same instant
    assert req["arrival_s"].round(9).value_counts().max() >= 16


def test_a_ramp_spreads_the_first_requests_and_breaks_the_lockstep():
    req = simulate(closed(ramp_up_s=2.0)).result.requests
    starts = 2.0 * np.arange(16) / 16  # user i starts at i/16 of the ramp (early users send more meanwhile)
    arrivals = req["arrival_s"].to_numpy()
    assert all(np.isclose(arrivals, t).any() for t in starts)
    assert (arrivals[:16] < 2.0).all()
    assert req["arrival_s"].round(9).value_counts().max() < 16
    lock = simulate(closed()).result.requests
    ttft = lambda r: (r["first_token_s"] - r["arrival_s"]).to_numpy()  # noqa: E731
    assert np.percentile(ttft(req), 90) < np.percentile(ttft(lock), 90)  # no wave of 16 prefills at once


def test_exponential_think_times_have_the_mean_and_are_seeded():
    a = simulate(closed(think_time_s=0.5, think_time_dist="exponential")).result.requests
    b = simulate(closed(think_time_s=0.5, think_time_dist="exponential")).result.requests
    assert a.equals(b)
    fixed = simulate(closed(think_time_s=0.5)).result.requests
    assert not a["arrival_s"].equals(fixed["arrival_s"])
    # a user's next request follows its previous finish by the think time: the gaps average about 0.5 s
    finish = np.sort(a["finish_s"].to_numpy())[:-16]
    arrive = np.sort(a["arrival_s"].to_numpy())[16:]
    assert 0.3 < float(np.mean(arrive - finish)) < 0.8


@pytest.mark.parametrize("field", [{"ramp_up_s": 1.0}, {"think_time_dist": "exponential"}])
def test_closed_loop_options_are_refused_for_open_loop_arrivals(field):
    with pytest.raises(ValidationError) as err:
        Scenario.model_validate({"workload": {"arrival": "poisson", "qps": 2, **field}})
    assert next(iter(field)) in str(err.value)
