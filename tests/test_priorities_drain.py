"""Llumnix's priority classes and instance draining in a migrating pool: conservation (no request lost or
duplicated while a replica drains), a draining replica takes no new work, bad input named by field, and the
effect that must emerge -- high-priority requests' tail TTFT improves over the same requests without
priorities, under load."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capsim.errors import CapsimError
from simulator.config.schema import Scenario
from simulator.engine import simulate
from simulator.metrics.result import request_latencies
from simulator.metrics.summary import summarise
from simulator.pools.priority import queue_ahead
from tests.test_migration import check, llumnix


def scenario(serving=None, migration=None, **kw) -> Scenario:
    data = llumnix(**kw).model_dump(exclude_unset=True)
    data["serving"].update(serving or {})
    if migration is not None:
        data["serving"]["migration"] = migration
    return Scenario.model_validate(data)


def test_queue_ahead_keeps_fcfs_within_each_class():
    high = np.array([False, True, False, True, True])
    q = deque([0, 1, 2])
    queue_ahead(q, high)  # 2 is normal: stays last
    assert list(q) == [0, 1, 2]
    q.append(3)
    queue_ahead(q, high)
    assert list(q) == [3, 0, 1, 2]  # ahead of every normal request (0 is normal)
    q.append(4)
    queue_ahead(q, high)
    assert list(q) == [3, 4, 0, 1, 2]  # behind the high-priority request already queued


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    qps=st.floats(3.0, 10.0),
    scheduler=st.sampled_from(["vllm", "sarathi", "orca"]),
    at_s=st.floats(0.0, 20.0),
    headroom=st.sampled_from([0, 512]),
)
def test_draining_and_priorities_conserve_every_request(seed, qps, scheduler, at_s, headroom):
    sc = scenario(
        serving={"priorities": {"high_fraction": 0.3, "headroom_tokens": headroom}},
        migration={"drain": [{"replica": 2, "at_s": at_s}]},
        seed=seed, qps=qps, n=150, scheduler=scheduler,
    )
    out = simulate(sc)
    check(out)  # every request finished once, with its tokens; KV conserved and freed; invariants
    req = out.result.requests
    if not out.result.info.drains:  # every request finished before the drain was due
        assert req["finish_s"].max() < at_s + 0.1 + 1e-9
        return
    (drained, start, emptied), = out.result.info.drains
    assert at_s <= start < at_s + 0.1 + 1e-9  # at the migrator's first step after at_s (interval 0.1 s)
    # no request that arrived after the drain started was served there
    assert not ((req["arrival_s"] > start) & (req["replica"] == drained)).any()
    if np.isfinite(emptied):  # and nothing ran there once it was empty
        it = out.result.iterations
        assert (it.loc[it["replica"] == drained, "start_s"] < emptied + 1e-9).all()
    s = summarise(out.result)
    assert s["drained_replicas"] == 1
    assert s["priority.high.requests"] + s["priority.normal.requests"] == s["num_requests"]


def test_drain_moves_running_requests_away_and_empties_the_replica():
    out = simulate(scenario(migration={"drain": [{"replica": 1, "at_s": 20.0}]}, qps=5.0, n=400))
    check(out)
    s = summarise(out.result)
    assert s["drain_emptied"] == 1 and s["drain_migrations"] > 0
    assert s["drain_time_mean_s"] > 0


@pytest.mark.parametrize("seed", [0, 1])
def test_high_priority_tail_ttft_improves_under_load(seed):
    """Same requests, same arrivals: with 20 % of them high-priority (queued first), their TTFT p99 falls
    against the run without priorities; the normal class pays for it."""
    plain = simulate(scenario(qps=8.0, n=800, seed=seed)).result.requests
    out = simulate(scenario(serving={"priorities": {"high_fraction": 0.2}}, qps=8.0, n=800, seed=seed))
    check(out)
    req = out.result.requests
    high = req["priority"].to_numpy() == 1
    with_p, without = request_latencies(req)["ttft_s"].to_numpy(), request_latencies(plain)["ttft_s"].to_numpy()
    assert np.percentile(with_p[high], 99) < 0.8 * np.percentile(without[high], 99)
    assert np.percentile(with_p[~high], 99) >= np.percentile(without[~high], 99) * 0.95


@pytest.mark.parametrize(
    ("serving", "where"),
    [
        ({"priorities": {"high_fraction": 1.5}}, "serving.priorities.high_fraction"),
        ({"priorities": {"share": 0.2}}, "serving.priorities"),
        ({"migration": {"drain": [{"replica": 4, "at_s": 1}]}}, "serving.migration.drain.0.replica"),
        ({"migration": {"drain": [{"replica": 0, "at_s": -1}]}}, "serving.migration.drain.0.at_s"),
        ({"migration": {"drain": [{"replica": 0, "at_s": 1, "pool": "other"}]}}, "serving.migration.drain.0.pool"),
        ({"migration": {"drain": [{"replica": r, "at_s": 1} for r in range(4)]}}, "serving.migration.drain.3.replica"),
    ],
)
def test_bad_priority_and_drain_input_names_the_field(serving, where):
    data = llumnix(n=10).model_dump(exclude_unset=True)
    data["serving"].update(serving)
    with pytest.raises(CapsimError) as err:
        simulate(Scenario.model_validate(data))
    assert err.value.where.startswith(where), str(err.value)
