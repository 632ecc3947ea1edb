"""Chunk runs (``Replica._chunk_run``): a chunked-prefill scheduler's iterations that continue one prompt's
chunks beside the same decodes run without a scheduler plan each, and change no recorded number.

Why compared against ``chunk_runs=False`` on whole tables: the run replays the scheduler's decisions and the
plain path's bookkeeping from its own state, so any divergence (a budget, a block count, a float boundary,
a decode's gap) shows up as a differing row. Each case also checks that the runs were taken (the scheduler
was asked fewer times), so the equality is not the plain path compared with itself.
"""

from __future__ import annotations

import numpy as np
import pytest

from simulator.config.schema import Scenario
from simulator.engine import simulate
from simulator.schedulers.sarathi import SarathiScheduler
from traces import RequestStream

BASE = {
    "seed": 3,
    "model": "llama-2-7b",
    "deployment": {"device": "a100-80gb-sxm", "num_replicas": 2},
    "scheduler": {"name": "sarathi", "chunk_size": 256},
    "router": {"name": "least-outstanding"},
    "workload": {
        "arrival": "poisson",
        "qps": 4,
        "prompt": {"dist": "uniform", "low": 16, "high": 3000},
        "output": {"dist": "uniform", "low": 1, "high": 300},
    },
    "simulation": {"num_requests": 150},
}

CASES = {
    "least-outstanding": {},
    # Preloaded arrivals (an oblivious router): arrivals during a run join the queue when it ends.
    "round-robin": {"router": {"name": "round-robin"}},
    # Warm-up requests' gaps stay out of the statistics: the general bookkeeping inside the run.
    "warm-up": {"simulation": {"num_requests": 150, "warmup_s": 5.0}},
    # More decodes than the small-batch bookkeeping takes (> 32 sequences beside a chunk).
    "large-batch": {
        "workload": {
            "arrival": "poisson",
            "qps": 30,
            "prompt": {"dist": "uniform", "low": 600, "high": 3000},
            "output": {"dist": "uniform", "low": 100, "high": 400},
        },
        "scheduler": {"name": "sarathi", "chunk_size": 512},
    },
    # A KV budget so small that runs meet full memory (the run is refused, preemption happens as before).
    "tight-memory": {
        "deployment": {"device": "a100-80gb-sxm", "memory_utilization": 0.2, "activation_reserve_gib": 0.0},
        "workload": {
            "arrival": "poisson",
            "qps": 8,
            "prompt": {"dist": "uniform", "low": 600, "high": 3000},
            "output": {"dist": "uniform", "low": 50, "high": 400},
        },
    },
    # The simulation stops mid-run: the iteration in flight at the stop is not recorded, as before.
    "stopped": {"simulation": {"num_requests": 150, "max_time_s": 17.0}},
}


def _scenario(name: str) -> Scenario:
    return Scenario.model_validate({**BASE, "name": name, **CASES[name]})


def _run(sc: Scenario, chunk_runs: bool, monkeypatch, stream: RequestStream | None = None) -> tuple[object, int]:
    plans = [0]
    plan = SarathiScheduler.plan

    def counted(self):
        plans[0] += 1
        return plan(self)

    with monkeypatch.context() as m:
        m.setattr(SarathiScheduler, "plan", counted)
        out = simulate(sc, chunk_runs=chunk_runs, stream=stream).result
    return out, plans[0]


def _same(a, b) -> None:
    assert list(a.columns) == list(b.columns)
    for col in a.columns:
        np.testing.assert_array_equal(a[col].to_numpy(), b[col].to_numpy(), err_msg=col)


@pytest.mark.parametrize("name", sorted(CASES))
def test_chunk_runs_change_no_number(name, monkeypatch):
    sc = _scenario(name)
    fast, fast_plans = _run(sc, True, monkeypatch)
    slow, slow_plans = _run(sc, False, monkeypatch)
    assert fast_plans < slow_plans, "no chunk run was taken"
    assert len(fast.iterations) > 0
    _same(fast.iterations, slow.iterations)
    _same(fast.requests, slow.requests)
    for field in ("first", "step", "count", "weight"):
        np.testing.assert_array_equal(getattr(fast.token_gaps, field), getattr(slow.token_gaps, field), err_msg=field)


def test_runs_cover_the_chunks_the_scheduler_would_repeat(monkeypatch):
    """The plans saved are the run's: one prompt of 10 chunks beside one decode, alone on a replica with
    nothing waiting, is planned once for all 10 (8 repeated chunks, then the one completing it)."""
    sc = Scenario.model_validate({**BASE, "name": "one-prompt", "deployment": {"device": "a100-80gb-sxm"}})
    stream = RequestStream(np.array([0.0, 0.05]), np.array([8, 2550]), np.array([200, 2]), source="test")
    fast, fast_plans = _run(sc, True, monkeypatch, stream)
    slow, slow_plans = _run(sc, False, monkeypatch, stream)
    _same(fast.iterations, slow.iterations)
    # Budget 256 - 1 decode = 255 tokens a chunk: 2,550 tokens are 10 chunks, the first 9 not completing.
    mixed = slow.iterations[slow.iterations["prefill_tokens"] > 0]
    assert mixed["prefill_tokens"].tolist()[1:] == [255] * 10  # after the short prompt's own prefill
    assert slow_plans - fast_plans == 9
