"""A mixed iteration's few decodes advance element by element (``Replica._advance_one``) with the numbers of the
array path (``_advance_decodes``).

Why whole tables, token gaps included, against ``ONE_TOKEN_LOOP = 0`` (the array path everywhere): the loop
repeats the block count, the gap records (one or two last-token times, or several) and the table writes of the
array path on Python floats, so a different comparison, order or rounding would show up as a differing row. Each
case counts the loop's calls, so the equality is not the array path compared with itself.
"""

from __future__ import annotations

import numpy as np
import pytest

import simulator.replica as replica
from simulator.config.schema import Scenario
from simulator.engine import simulate

BASE = {
    "seed": 11,
    "model": "llama-3.1-8b",
    "deployment": {"device": "h100-sxm", "num_replicas": 2, "engine": "none"},
    "scheduler": {"name": "sarathi", "chunk_size": 256},
    "router": {"name": "least-outstanding"},
    "workload": {
        "arrival": "poisson",
        "qps": 3,
        "prompt": {"dist": "uniform", "low": 16, "high": 2000},
        "output": {"dist": "uniform", "low": 1, "high": 200},
    },
    "simulation": {"num_requests": 120},
}

CASES = {
    "light": {},  # mostly one decode beside each chunk
    "busier": {"workload": {**BASE["workload"], "qps": 12}},  # up to four, with differing last-token times
    # A step model advances its own decodes (several tokens a step): the loop must stay out of its iterations.
    "speculative": {"techniques": [{"name": "speculative-decoding", "drafter": "eagle", "k": 4, "acceptance": 0.7}]},
}


def _run(sc: Scenario, monkeypatch, loop: bool):
    calls = [0]
    advance = replica.Replica._advance_one

    def counted(self, *args):
        calls[0] += 1
        return advance(self, *args)

    with monkeypatch.context() as m:
        m.setattr(replica.Replica, "_advance_one", counted)
        if not loop:
            m.setattr(replica, "ONE_TOKEN_LOOP", 0)
        out = simulate(sc).result
    return out, calls[0]


@pytest.mark.parametrize("name", sorted(CASES))
def test_one_token_loop_changes_no_number(name, monkeypatch):
    sc = Scenario.model_validate({**BASE, "name": name, **CASES[name]})
    fast, calls = _run(sc, monkeypatch, True)
    slow, none = _run(sc, monkeypatch, False)
    assert none == 0
    if name == "speculative":
        assert calls == 0
    else:
        assert calls > 50
    for table in ("iterations", "requests"):
        a, b = getattr(fast, table), getattr(slow, table)
        assert list(a.columns) == list(b.columns)
        for col in a.columns:
            np.testing.assert_array_equal(a[col].to_numpy(), b[col].to_numpy(), err_msg=f"{table}.{col}")
    for field in ("first", "step", "count", "weight"):
        np.testing.assert_array_equal(getattr(fast.token_gaps, field), getattr(slow.token_gaps, field), err_msg=field)


class _Calls:
    """A recorder that keeps the gap calls it gets, in order."""

    def __init__(self):
        self.calls: list[tuple] = []

    def gap_run(self, *args):
        self.calls.append(("run", *args))

    def gap_values(self, values):
        self.calls.append(("values", *np.asarray(values).tolist()))


class _Scheduler:
    pads_finished = False


def _replica(rng, n: int):
    """A bare replica holding ``n`` requests' progress, for the two advance paths alone."""
    from simulator.kvcache import BlockManager
    from simulator.requests import RequestTable

    table = RequestTable(np.zeros(n), np.full(n, 50, dtype=np.int64), np.full(n, 500, dtype=np.int64))
    table.kv_tokens[:] = rng.integers(1, 200, n)
    table.generated[:] = rng.integers(1, 100, n)
    table.max_tbt_s[:] = rng.uniform(0.0, 0.05, n)
    rep = object.__new__(replica.Replica)
    rep.table, rep.recorder, rep.scheduler, rep.warmup_s = table, _Calls(), _Scheduler(), 0.0
    rep.blocks = BlockManager(10_000, 16, table)
    return rep


@pytest.mark.parametrize("distinct", [1, 2, 3])
def test_one_token_loop_matches_the_array_path_whatever_the_last_tokens(distinct):
    """One, two or three last-token times among the decodes (preempted or received sequences rejoin with their
    own): each branch of the gap records, against :meth:`Replica._advance_decodes` on a copy of the same state."""
    rng = np.random.default_rng(distinct)
    for _ in range(50):
        n = int(rng.integers(distinct, replica.ONE_TOKEN_LOOP + 1))
        a = _replica(rng, 12)
        ids = rng.choice(12, n, replace=False).astype(np.int64)
        times = rng.uniform(0.0, 1.0, distinct)
        a.table.last_token_s[ids] = times[np.arange(n) % distinct]
        b = _replica(np.random.default_rng(0), 12)
        for name in ("kv_tokens", "generated", "max_tbt_s", "last_token_s"):
            getattr(b.table, name)[:] = getattr(a.table, name)
        kv = a.table.kv_tokens[ids]
        a._advance_one(ids, kv.copy(), 0.03, 1.5, 1.47)
        b._advance_decodes(ids, replica.DecodeRun(1, 0.03, 0.0, True), 1.5, 1.47, kv.copy())
        assert a.recorder.calls == b.recorder.calls
        assert a.blocks.used_blocks == b.blocks.used_blocks
        for name in ("kv_tokens", "generated", "max_tbt_s", "last_token_s"):
            np.testing.assert_array_equal(getattr(a.table, name), getattr(b.table, name), err_msg=name)
