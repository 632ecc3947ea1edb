"""The mixed-iteration fast path's own plans and memos (``costmodel/exact_mixed.py``) price to the numpy path's bit.

Why these besides ``tests/test_exact_mixed.py``: the fast path now plans a key the first time it sees it (pricing
the fixed rows itself instead of after the numpy path), keeps the varying rows' times by the features that decide
them across keys, and prices prefill-only iterations as well. Each of those could change a last bit (a fixed row
priced with other work, a memo keyed by too little, a sum in another order), so hypothesis draws chunk sizes,
cached prefixes, decode batches and contexts, and every price is compared with ``==`` against a model whose fast
path is off and against :meth:`IterationCostModel.price_features` of the same feature vector. Counters check that
the new paths priced them (else the equality would compare the numpy path with itself).
"""

from __future__ import annotations

from functools import cache
from typing import ClassVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator.config.schema import DeploymentConfig, Scenario
from simulator.costmodel import features as F
from simulator.costmodel.exact_mixed import ExactMixed, _declared_pure
from simulator.costmodel.iteration import IterationCostModel, OverheadTerms
from simulator.costmodel.pricers import (
    BudgetedPricer,
    DecodeCurvePricer,
    GemmCurvePricer,
    MemoryCurvePricer,
    PrefillCurvePricer,
    RooflinePricer,
    RowPricer,
)
from simulator.system import build_system

ENGINE = OverheadTerms(per_iteration_s=1.3e-4, per_sequence_s=2.1e-6, per_layer_s=3.7e-7, name="test",
                       per_token_s=1.1e-8, per_collective_s=5e-6, gqa_reread=0.3)
VLLM_LIKE = OverheadTerms(per_layer_s=3.584e-05, name="vllm-like")  # no term reads the decode context

CASES = {
    "h100-vllm-like": ("llama-3.1-8b", "h100-sxm", VLLM_LIKE),  # workload 8's pricing
    "a100-none": ("llama-2-7b", "a100-80gb-sxm", None),  # split regimes that follow the context
    "h100-reread": ("llama-3.1-8b", "h100-sxm", ENGINE),  # the engine's time read per call (GQA re-read)
}


@cache
def _table(model: str, device: str):
    sys_ = build_system(Scenario(model=model, deployment=DeploymentConfig(device=device, engine="none")))
    return sys_.table, sys_.roofline


def _pair(case: str) -> tuple[IterationCostModel, IterationCostModel]:
    """A model with the fast path and one without, of the same table (fresh: empty caches and memos)."""
    model, device, overheads = CASES[case]
    table, roofline = _table(model, device)
    fast = IterationCostModel(table, roofline, overheads)
    slow = IterationCostModel(table, roofline, overheads)
    slow._exact_mixed = None
    return fast, slow


_MODELS: dict[str, tuple[IterationCostModel, IterationCostModel]] = {}


def _shared(case: str) -> tuple[IterationCostModel, IterationCostModel]:
    """One pair per case for all hypothesis examples, so later examples meet keys and memo entries earlier
    ones left (the replay's situation), not only fresh ones."""
    if case not in _MODELS:
        _MODELS[case] = _pair(case)
    return _MODELS[case]


def _totals(q: int, cached: int, seqs: int, per_seq: int, completes: bool) -> tuple:
    return (q, seqs + completes, 0.0 + F.prefill_attention_work(q, cached), F.prefill_kv_read(q, cached), seqs,
            seqs * per_seq)


def _bits(cost) -> tuple[float, float, float]:
    return cost.time_s, cost.flops, cost.bytes


def _by_features(model: IterationCostModel, args: tuple) -> tuple[float, float, float]:
    """The same iteration priced from its whole feature vector (numpy sums, every row priced)."""
    q, logits, work, kv_read, seqs, context = args
    x = model._totals_x(q, logits, work, kv_read, seqs)
    x[F.DECODE_CONTEXT] = context
    return model.price_features(x), float(model._flops_total @ x), float(model._bytes_total @ x)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    case=st.sampled_from(sorted(CASES)),
    q=st.sampled_from([1, 7, 100, 511, 512, 513, 2048]) | st.integers(1, 4096),
    cached=st.sampled_from([0, 512, 1024, 100_000]) | st.integers(0, 40_000),
    seqs=st.sampled_from([0, 1, 2, 8]) | st.integers(0, 256),
    per_seq=st.integers(1, 20_000),
    completes=st.booleans(),
)
def test_drawn_iterations_price_to_the_last_bit(case, q, cached, seqs, per_seq, completes):
    fast, slow = _shared(case)
    args = _totals(q, cached, seqs, per_seq, completes)
    em = fast._exact_mixed
    before, seen = em.taken, args in fast._cache
    got = _bits(fast.iteration_from_totals(*args))
    # Every drawn shape is on the grid and below the bound: the fast path priced it (unless drawn before).
    assert em.taken == before + (not seen)
    assert got == _bits(slow.iteration_from_totals(*args)), args
    assert got == _by_features(slow, args), args


def test_first_seen_keys_are_planned_without_the_numpy_path():
    fast, slow = _pair("h100-vllm-like")
    em = fast._exact_mixed
    shapes = [_totals(q, cached, seqs, 300 + seqs, completes)
              for q in (17, 512) for cached in (0, 512, 4096) for seqs in (0, 3, 40) for completes in (False, True)]
    for args in shapes:
        assert _bits(fast.iteration_from_totals(*args)) == _bits(slow.iteration_from_totals(*args)), args
    keys = {(a[0], a[1], a[4]) for a in shapes}
    assert em.taken == len(shapes)  # prefill-only iterations (no decodes) included
    assert em.planned == len(keys)  # each key's fixed rows priced once, here
    # The fixed rows are left where the numpy path keeps them, with its values: a declined call reuses them.
    for key in keys:
        assert fast._layer._fixed[key] == slow._layer._fixed.get(key, fast._layer._fixed[key])


def test_varying_rows_are_memoised_across_keys():
    """The same chunk (size and position) beside different decode batches is priced once by the curve."""
    fast, slow = _pair("h100-vllm-like")
    em = fast._exact_mixed
    (prefill,) = [i for i, p in enumerate(fast._layer.pricers) if isinstance(p, PrefillCurvePricer)]
    (decode,) = [i for i, p in enumerate(fast._layer.pricers) if isinstance(p, DecodeCurvePricer)]
    memos = em._layer_rows.memos
    shapes = [_totals(512, 1024, seqs, 700, False) for seqs in range(1, 41)]
    for args in shapes:
        assert _bits(fast.iteration_from_totals(*args)) == _bits(slow.iteration_from_totals(*args)), args
    assert len(memos[prefill].times) == 1  # one chunk: one curve price, 40 keys
    assert len(memos[decode].times) == 40
    for args in shapes:  # new chunk positions, the same decode batches and contexts
        moved = (args[0], args[1], args[2] + 512.0 * 512, args[3] + 512, args[4], args[5])
        assert _bits(fast.iteration_from_totals(*moved)) == _bits(slow.iteration_from_totals(*moved)), moved
    assert len(memos[decode].times) == 40  # every decode row found
    assert len(memos[prefill].times) == 2
    assert em.taken == 80


class _Pure(RowPricer):
    pure = True
    reads_features = ()

    def price(self, x, flops, nbytes):
        raise NotImplementedError


class _RepricesPure(_Pure):
    def price(self, x, flops, nbytes):
        raise NotImplementedError


class _SaysPureBelowItsPrice(_RepricesPure):
    pure = True


class _Stateful(DecodeCurvePricer):
    """Re-prices the decode row with a counter: a price that is not a function of its arguments."""

    calls: ClassVar[list[int]] = [0]

    def price(self, x, flops, nbytes):
        self.calls[0] += 1
        return super().price(x, flops, nbytes)

    def time_s(self, x, flops, nbytes):
        return self.price(x, flops, nbytes).time_s


def test_only_pricers_that_say_they_are_pure_are_memoised():
    for kind in (RooflinePricer, GemmCurvePricer, PrefillCurvePricer, DecodeCurvePricer, MemoryCurvePricer):
        assert _declared_pure(kind), kind
    assert not _declared_pure(RowPricer)
    assert not _declared_pure(BudgetedPricer)
    assert _declared_pure(_Pure)
    assert not _declared_pure(_RepricesPure)  # inherits the promise, not the prices it was made for
    assert _declared_pure(_SaysPureBelowItsPrice)
    assert not _declared_pure(_Stateful)


def test_a_pricer_without_the_promise_is_asked_every_call():
    fast, slow = _pair("h100-vllm-like")
    i = next(i for i, p in enumerate(fast._layer.pricers) if isinstance(p, DecodeCurvePricer))
    stateful = object.__new__(_Stateful)
    stateful.__dict__.update(fast._layer.pricers[i].__dict__)
    pricers = list(fast._layer.pricers)
    pricers[i] = stateful
    fast._layer.pricers = tuple(pricers)
    fast._exact_mixed = ExactMixed.build(fast)  # rebuilt over the swapped pricer
    assert fast._exact_mixed._layer_rows.memos[i] is None
    _Stateful.calls[0] = 0
    shapes = [_totals(512, 1024 * k, 4, 900, False) for k in range(6)]  # one decode batch and context, 6 chunks
    for args in shapes:
        assert _bits(fast.iteration_from_totals(*args)) == _bits(slow.iteration_from_totals(*args)), args
    assert _Stateful.calls[0] == len(shapes)
    assert fast._exact_mixed.taken == len(shapes)


def test_keys_of_one_token_count_share_their_fixed_rows():
    """A chunk of 500 beside 12 decodes and one of 510 beside 2 feed every GEMM and norm the same 512 tokens:
    the layer's fixed rows are priced once for both keys (and for a third key with the same decodes)."""
    fast, slow = _pair("h100-vllm-like")
    em = fast._exact_mixed
    shapes = [_totals(500, 0, 12, 800, False), _totals(510, 2048, 2, 900, True), _totals(500, 512, 12, 800, True)]
    for args in shapes:
        assert _bits(fast.iteration_from_totals(*args)) == _bits(slow.iteration_from_totals(*args)), args
    assert em.planned == 3
    assert len(em._layer_rows.by_signature) == 1
    keys = [(a[0], a[1], a[4]) for a in shapes]
    assert fast._layer._fixed[keys[0]] == slow._layer._fixed[keys[1]]  # the numpy path's prices for the other key


def test_fixed_rows_of_a_pricer_without_the_promise_are_priced_per_key():
    fast, _ = _pair("h100-vllm-like")
    i = next(i for i, v in enumerate(fast._layer._varying) if not v)
    loose = object.__new__(_RepricesPure)
    loose.__dict__.update(fast._layer.pricers[i].__dict__)
    pricers = list(fast._layer.pricers)
    pricers[i] = loose
    fast._layer.pricers = tuple(pricers)
    assert ExactMixed.build(fast)._layer_rows.signature is None
    assert ExactMixed.build(fast)._iter_rows.signature is not None
