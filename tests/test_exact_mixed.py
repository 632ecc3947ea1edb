"""Mixed iterations priced in plain floats (``costmodel/exact_mixed.py``) give the numpy path's numbers to the bit.

Why compared with ``==`` against a model whose fast path is off, over shapes a chunked-prefill replay meets (the
same chunk size and batch at many chunk positions and decode contexts): the fast path computes the rows' work as
short Python sums, which equal numpy's products only because every term is exact; a wrong grid, bound or
summation order would change a last bit somewhere here. Each case also counts the iterations the fast path
priced, so the equality is not the numpy path compared with itself.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from simulator.config.schema import DeploymentConfig, Scenario
from simulator.costmodel import features as F
from simulator.costmodel.exact_mixed import ExactMixed, grid_shift
from simulator.costmodel.iteration import IterationCostModel, OverheadTerms
from simulator.engine import simulate
from simulator.kvcache import BlockManager
from simulator.requests import RequestTable
from simulator.system import build_system

ENGINE = OverheadTerms(
    per_iteration_s=1.3e-4,
    per_sequence_s=2.1e-6,
    per_layer_s=3.7e-7,
    name="test",
    per_token_s=1.1e-8,
    per_collective_s=5e-6,
    gqa_reread=0.3,
)


def _models(model: str, device: str, tp: int = 1, overheads: OverheadTerms | None = None):
    sys_ = build_system(Scenario(model=model, deployment=DeploymentConfig(device=device, tp=tp, engine="none")))
    fast = IterationCostModel(sys_.table, sys_.roofline, overheads)
    slow = IterationCostModel(sys_.table, sys_.roofline, overheads)
    slow._exact_mixed = None
    return fast, slow


def _replay_shapes(seed: int, n: int = 3000) -> list[tuple]:
    """Mixed-iteration totals as a chunked-prefill replay produces them: a few (chunk, batch) pairs, each at
    many chunk positions and summed decode contexts (odd chunks give half-integer causal pairs)."""
    rng = np.random.default_rng(seed)
    pairs = [(int(rng.integers(1, 2049)), int(rng.integers(1, 257))) for _ in range(12)]
    out = []
    for _ in range(n):
        q, seqs = pairs[int(rng.integers(len(pairs)))]
        cached = int(rng.integers(0, 30_000))
        ctx = seqs * int(rng.integers(1, 20_000))
        completes = bool(rng.integers(0, 2))
        out.append(
            (q, seqs + completes, 0.0 + F.prefill_attention_work(q, cached), F.prefill_kv_read(q, cached), seqs, ctx)
        )
    return out


@pytest.mark.parametrize(
    ("model", "device", "tp", "overheads"),
    [
        ("llama-3.1-8b", "h100-sxm", 1, None),  # workload 8's model: FlashAttention-2 decode lines
        ("llama-2-7b", "a100-80gb-sxm", 1, None),  # split regimes change with the context's KV blocks
        ("llama-3.1-8b", "h100-sxm", 1, ENGINE),  # every engine term, the GQA re-read reading the context
        ("llama-3.1-70b", "h100-sxm", 4, ENGINE),  # fitted collectives
    ],
)
def test_fast_path_prices_to_the_last_bit(model, device, tp, overheads):
    fast, slow = _models(model, device, tp, overheads)
    assert fast._exact_mixed is not None
    for args in _replay_shapes(seed=tp + len(device)):
        a, b = fast.iteration_from_totals(*args), slow.iteration_from_totals(*args)
        assert (a.time_s, a.flops, a.bytes) == (b.time_s, b.flops, b.bytes), args
    assert fast._exact_mixed.taken > 2000  # all but each key's first shape (and repeats)


def test_off_grid_or_huge_features_take_the_numpy_path():
    fast, slow = _models("llama-3.1-8b", "h100-sxm")
    em = fast._exact_mixed
    # The first shape of a key is planned in plain floats as well; off-grid or huge varying features are not.
    shapes = [(512, 8, 512 * 300.0, 812, 8, 8000), (512, 8, 512 * 301.0, 813, 8, 8008)]
    shapes += [(512, 8, 512 * 300.3, 812, 8, 8000), (512, 8, 512 * 301.0, 813, 8, 2**60), (512, 8, 0.25, 1, 8, 7)]
    taken = []
    for args in shapes:
        before = em.taken
        a, b = fast.iteration_from_totals(*args), slow.iteration_from_totals(*args)
        assert (a.time_s, a.flops, a.bytes) == (b.time_s, b.flops, b.bytes), args
        taken.append(em.taken - before)
    assert taken == [1, 1, 0, 0, 0]


def test_grid_and_tables_the_fast_path_declines():
    assert grid_shift(np.array([3.0, 0.5, 0.25])) == 2
    assert grid_shift(np.array([1e10, 7.0])) == 0
    assert grid_shift(np.array([0.1])) is None
    assert grid_shift(np.array([1.0, -2.0])) is None
    assert grid_shift(np.array([1.0, np.inf])) is None
    sys_ = build_system(Scenario(model="llama-3.1-8b", deployment=DeploymentConfig(device="h100-sxm", engine="none")))
    norm = sys_.table.layer_ops[0]
    odd = replace(norm, name="scaled_norm", flops=norm.flops * 0.1, bytes=norm.bytes * 0.1)
    table = sys_.table.with_ops(layer_ops=(*sys_.table.layer_ops, odd))
    assert ExactMixed.build(IterationCostModel(table, sys_.roofline)) is None
    datasheet = build_system(
        Scenario(
            model="llama-3.1-8b", deployment=DeploymentConfig(device="h100-sxm", engine="none", calibration="datasheet")
        )
    )
    assert IterationCostModel(datasheet.table, datasheet.roofline)._exact_mixed is None  # matrix sums, not rows


def test_a_chunked_prefill_run_is_unchanged(monkeypatch):
    sc = Scenario.model_validate(
        {
            "seed": 5,
            "model": "llama-3.1-8b",
            "deployment": {"device": "h100-sxm", "num_replicas": 2, "engine": "none"},
            "scheduler": {"name": "sarathi", "chunk_size": 384},
            "router": {"name": "least-outstanding"},
            "workload": {
                "arrival": "poisson",
                "qps": 6,
                "prompt": {"dist": "uniform", "low": 16, "high": 3000},
                "output": {"dist": "uniform", "low": 1, "high": 300},
            },
            "simulation": {"num_requests": 150},
        }
    )
    priced = [0]
    price = ExactMixed.price

    def counted(self, *args):
        got = price(self, *args)
        priced[0] += got is not None
        return got

    monkeypatch.setattr(ExactMixed, "price", counted)
    fast = simulate(sc).result
    assert priced[0] > 100
    monkeypatch.setattr(ExactMixed, "build", classmethod(lambda cls, model: None))
    slow = simulate(sc).result
    for name in ("iterations", "requests"):
        a, b = getattr(fast, name), getattr(slow, name)
        assert list(a.columns) == list(b.columns)
        for col in a.columns:
            np.testing.assert_array_equal(a[col].to_numpy(), b[col].to_numpy(), err_msg=f"{name}.{col}")


@pytest.mark.parametrize("reserved", [False, True])
def test_growth_fits_answers_as_growth_after(reserved):
    rng = np.random.default_rng(7)
    n = 400
    table = RequestTable(np.zeros(n), np.full(n, 100, dtype=np.int64), np.full(n, 100, dtype=np.int64))
    table.kv_tokens[:] = rng.integers(1, 5000, n)
    blocks = BlockManager(100_000, 16, table)
    if reserved:
        blocks.reserve(3, 9000)
    for _ in range(500):
        ids = rng.choice(n, int(rng.integers(1, 60)), replace=False).astype(np.int64)
        steps = int(rng.integers(1, 70))
        free = int(rng.integers(-5, 200))
        assert blocks.growth_fits(ids, steps, free) == (blocks.growth_after(ids, steps) <= free)


def test_growth_after_one_token_counts_full_blocks():
    """One more token opens a block exactly where a sequence's blocks are full; small batches count it in Python,
    larger ones with numpy: both against the ceiling divisions."""
    rng = np.random.default_rng(3)
    n = 200
    table = RequestTable(np.zeros(n), np.full(n, 100, dtype=np.int64), np.full(n, 100, dtype=np.int64))
    table.kv_tokens[:] = rng.integers(1, 100, n) * rng.choice([1, 16], n)  # many on a block boundary
    blocks = BlockManager(100_000, 16, table)
    for size in (1, 2, 3, 4, 5, 9, 40):
        for _ in range(40):
            ids = rng.choice(n, size, replace=False).astype(np.int64)
            kv = table.kv_tokens[ids]
            assert blocks.growth_after(ids, 1) == int((-(-(kv + 1) // 16) - -(-kv // 16)).sum())


def test_a_pricer_that_reprices_a_row_keeps_its_price_on_the_fast_path():
    """A subclass overriding ``price`` but not ``time_s`` (inheriting a faster ``time_s`` of its parent) is asked
    for its own price."""
    from simulator.costmodel.exact_mixed import _time_of
    from simulator.costmodel.pricers import DecodeCurvePricer

    class Doubled(DecodeCurvePricer):
        def price(self, x, flops, nbytes):
            p = super().price(x, flops, nbytes)
            return replace(p, time_s=2.0 * p.time_s)

    fast, _ = _models("llama-3.1-8b", "h100-sxm")
    (decode,) = [p for p in fast._layer.pricers if isinstance(p, DecodeCurvePricer)]
    doubled = object.__new__(Doubled)
    doubled.__dict__.update(decode.__dict__)
    x = [1.0, 0.0, 4.0, 4.0, 0.0, 0.0, 4096.0, 0.0]
    assert _time_of(decode)(x, 1e6, 1e7) == decode.price(x, 1e6, 1e7).time_s
    assert _time_of(doubled)(x, 1e6, 1e7) == 2.0 * decode.price(x, 1e6, 1e7).time_s
