"""Mixed (chunked-prefill) iterations priced in plain Python floats, to the same last bit as the numpy path.

Why: a chunked-prefill replay meets a new mixed shape at nearly every step (the summed decode context and the
chunk's position move), and :meth:`IterationCostModel.iteration_from_totals` then spent ~14 us a shape, most of
it in numpy calls on 8-element vectors (a copy, three item sets, two matrix-vector products per scope, two dot
products for the work totals), each ~1 us of call overhead for a few multiplications.

Why the result is the same number: the simulated times are fingerprinted byte for byte, and numpy (BLAS) sums a
dot product in an order of its own (blocked, vector lanes, fused multiply-adds), which Python cannot mimic in
general. But where every coefficient is a multiple of ``2**-s`` and every feature a multiple of ``1/2`` (token
counts, KV tokens, and causal pairs ``q (c + q/2)`` are), and the terms' magnitudes sum below ``2**(52 - s - 1)``
(one bit below the exact limit, for the rounding of the bound itself), every product and every partial sum is an
exact float: the dot product then has one value whatever the order of its additions (the exact one), and a short
Python sum of its terms gives it -- as does numpy's own product, which is how a key's context-free work is taken
(one product of every row's coefficients with the key's features). The model's coefficients are checked once
(:meth:`ExactMixed.build`), each key's (chunk tokens, sequences with logits, decode batch) fixed features once,
each call's three varying features and the bound every time; anything else (a non-dyadic coefficient, a
fractional expert count, a huge value) declines, so the caller takes the numpy path. The rows themselves are
priced by the same pricers with the same arguments, and summed in table order from the same prefix
(:meth:`RowByRow.time_keyed`'s arrangement).

What a key costs, and what a call costs:

* A key is planned the first time it is seen, prefill-only keys (no decodes) included. Its fixed rows are priced
  here (the numpy path did that before, and the plan was made at the key's second call) and left in the scopes'
  caches (``RowByRow._fixed``), so a later call the fast path declines finds them as it would have.
* A varying row (prefill and decode attention) is memoised across keys where its time is a function of the
  features its pricer reads: the pricer says it is pure (``RowPricer.pure``, declared at or below the class that
  defines its ``price`` and ``time_s``) and what it reads (``reads_features``, the decode context among them
  where it reads that), and the row's work follows no other feature. Its memo key is those features' values:
  ``attention_prefill`` by (chunk tokens, causal pairs, KV read) -- a prompt's first chunks recur across
  requests and beside every decode batch -- and ``attention_decode`` by (decode batch, summed context).
* The engine's time is kept per key where no term of it reads a varying feature (no GQA re-read term).

Measured on workload 8 of ``benchmarks/sim_speed.py`` (H100, llama-3.1-8b, ``sarathi`` chunk 512, ``vllm``
engine; 2-core shared machine, 2026-12-05, alternating with the code before, caba0a9): its 53,428 pricing calls
meet 2,373 keys (511 layer signatures of fixed rows), 5,739 distinct prefill chunks and 12,175 distinct decode
(batch, context) pairs; 39,212 calls are priced here (36,510 before: each key's first call and the prefill-only
ones took the numpy path). Replaying them on a fresh cost model (``benchmarks/mixed_pricing.py replay``, best of
7) takes 0.29 s against 0.37 s before; inside ``simulate()`` they take ~0.40 s against ~0.54 s. What remains is
spread thin: ~1.3 us per call warm (a memo lookup per varying row, the in-order sum, the work totals) but ~5 us
inside a simulation, whose plans and memos are no longer in the CPU's caches; ~35 us per new key there, with
its GEMM and norm curves; ~11 us per new prefill chunk in its curve (docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

import numpy as np

from simulator.costmodel import features as F
from simulator.costmodel.pricers import RowPricer
from simulator.costmodel.scopes import MIXED_VARYING, RowByRow

if TYPE_CHECKING:
    from simulator.costmodel.iteration import IterationCostModel

_MAX_SHIFT = 16
"""Coefficients must be multiples of ``2**-s`` for some ``s`` up to this (operator tables count whole FLOPs and
bytes, or halves and quarters of a byte for packed weights)."""

_FEATURE_SHIFT = 1
"""Features must be multiples of ``2**-1``: whole counts, and causal pairs ``q (c + q/2)``."""

Terms = tuple[float, float, float, float]
"""A dot product at one key: the exact sum of its context-free terms, then the coefficients of the three varying
features (chunk attention work, its KV read, the decode context), zeros included: a zero term adds an exact 0.0."""

_W, _R, _C = MIXED_VARYING  # where the three varying features sit in a feature vector
_MISSING = object()


def grid_shift(values: np.ndarray) -> int | None:
    """The smallest ``s <= _MAX_SHIFT`` with every value a non-negative finite multiple of ``2**-s``, else None."""
    v = np.asarray(values, dtype=float).ravel()
    if not bool(np.all(np.isfinite(v))) or bool(np.any(v < 0.0)):
        return None
    for s in range(_MAX_SHIFT + 1):
        scaled = v * float(2**s)  # a power of two: exact
        if bool(np.all(scaled == np.floor(scaled))):
            return s
    return None


@dataclass(slots=True)
class _Row:
    """A row whose price moves with the varying features: its pricer and its work as dot products.

    ``memo`` (shared by every key; None where the row may not be memoised) holds the row's times by
    ``(fixed, w * uses[0], r * uses[1], c * uses[2])``: ``fixed`` the values at this key of the other features
    that decide its time, ``uses`` 1.0 for each varying feature that does, else 0.0 (the key holds 0.0 there)."""

    time_s: Callable  # the row's pricer's ``time_s``
    flops: Terms
    bytes: Terms
    memo: dict[tuple, float] | None
    fixed: tuple[float, ...]
    uses: tuple[float, float, float]


@dataclass(slots=True)
class _ScopePlan:
    """A scope at one key: the cached running sum of its leading fixed rows (up to the first varying one), then
    each varying row with the cached prices of the fixed rows that follow it, in table order."""

    prefix: float
    segments: tuple[tuple[_Row, tuple[float, ...]], ...]


@dataclass(slots=True)
class _KeyPlan:
    """Everything about one key that does not move with the varying features.

    The plan records are slotted but not frozen: a frozen record's ``__init__`` sets each field through
    ``object.__setattr__``, ~1 us a record, paid at every key's first call; nothing changes them once built."""

    xl: tuple[float, ...]  # the features at zero varying features, as a list would hold them
    bound: float  # the terms' magnitudes summed at zero varying features
    layer: _ScopePlan | float  # a float: the scope's sum, no row of it moving
    it: _ScopePlan | float
    comms: float
    overhead: float | None  # the engine's time where no varying feature moves it, else None (asked per call)
    flops: Terms
    bytes: Terms


@dataclass(frozen=True, slots=True)
class _RowMemo:
    """How one varying row is memoised: its times by what decides them, and which features those are."""

    times: dict[tuple, float]
    fixed_cols: tuple[int, ...]  # non-varying features its time reads (their values at a key join the memo key)
    uses: tuple[float, float, float]  # 1.0 for each varying feature its time reads, else 0.0


@dataclass(frozen=True, slots=True)
class _ScopeRows:
    """What a plan needs of one scope, fixed when the fast path is built: where its rows' work sits in the
    stacked products, each varying row's coefficients of the varying features, pricer time and memo."""

    scope: RowByRow
    flops_at: int  # index of its first row's FLOPs in the stacked products (bytes follow all FLOPs)
    bytes_at: int
    varying_flops: list[tuple[float, float, float] | None]
    varying_bytes: list[tuple[float, float, float] | None]
    times: list[Callable | None]
    memos: list[_RowMemo | None]
    # The fixed rows' prices by what decides them, where every fixed row's pricer is pure (else None): the rows'
    # work and the features their pricers read, as ``signature @ features`` (keys of another batch make-up often
    # share them: the same tokens in all, a chunk of 500 beside 12 decodes or of 510 beside 2).
    signature: np.ndarray | None
    by_signature: dict[bytes, tuple[float, list[float | None]]]


class ExactMixed:
    """The plain-float price of mixed iterations of one cost model, where provably bit-identical (see the module).

    ``price(key, work, kv_read, context)`` returns ``(time_s, flops, bytes)`` or None (the caller takes the numpy
    path). A key is planned the first time it is seen: its fixed rows come from the scopes' caches where the
    numpy path left them, else are priced here (and left in those caches, as the numpy path would have).
    """

    def __init__(self, model: IterationCostModel, shift: int, colmax: np.ndarray):
        self.model = model
        self._limit = float(2 ** (52 - shift - _FEATURE_SHIFT))  # one bit of margin for the bound's own rounding
        self._colmax = colmax.tolist()
        self._varying_max = tuple(self._colmax[j] for j in MIXED_VARYING)
        self._fixed_cols = [j for j in range(F.NUM_FEATURES) if j not in MIXED_VARYING and self._colmax[j] != 0.0]
        # Every row's FLOPs and bytes, then the work totals, as one matrix: a key's context-free work in one product.
        layer, it = model._layer, model._iter
        self._stack = np.vstack([layer.flops, layer.bytes, it.flops, it.bytes,
                                 model._flops_total[None, :], model._bytes_total[None, :]])
        n_layer, n_it = len(layer.pricers), len(it.pricers)
        self._layer_rows = _scope_rows(layer, 0, n_layer)
        self._iter_rows = _scope_rows(it, 2 * n_layer, 2 * n_layer + n_it)
        self._totals_at = 2 * (n_layer + n_it)
        self._totals_varying = tuple(_varying_coefficients(v) for v in (model._flops_total, model._bytes_total))
        self._plans: dict[tuple, _KeyPlan | None] = {}
        self.taken = 0  # mixed iterations priced here (tests check the path is used)
        self.planned = 0  # keys whose fixed rows were priced here, not by the numpy path first

    @classmethod
    def build(cls, model: IterationCostModel) -> ExactMixed | None:
        """The fast path of ``model``, or None where it cannot apply: a scope that is not summed row by row in
        table order, collectives that read a varying feature, or coefficients off a coarse binary grid."""
        layer, it = model._layer, model._iter
        if type(layer) is not RowByRow or type(it) is not RowByRow:
            return None
        comms = model._comms
        varying = list(MIXED_VARYING)
        if not comms._none and (comms.link[varying].any() or any(c.bytes[varying].any() for c in comms.fitted)):
            return None
        mats = [layer.flops, layer.bytes, it.flops, it.bytes, model._flops_total[None, :], model._bytes_total[None, :]]
        shift = grid_shift(np.concatenate([m.ravel() for m in mats]))
        if shift is None:
            return None
        colmax = np.max(np.vstack(mats), axis=0)
        return cls(model, shift, colmax)

    # ------------------------------------------------------------------ per key
    def _plan(self, key: tuple) -> _KeyPlan | None:
        """The plan of ``key``, or None (remembered) where its fixed features are off the grid or too large."""
        m = self.model
        base = m._mixed_base_of(key)  # zero at the varying features
        xl = base.tolist()
        total = sum(xl)
        if total - total != 0.0:  # an infinite or NaN feature (a zero coefficient times it is NaN), or a huge sum
            self._plans[key] = None
            return None
        colmax, fixed_cols = self._colmax, self._fixed_cols
        for j in fixed_cols:  # features a coefficient reads must be on the grid too
            v = xl[j]
            if not (v >= 0.0 and (v * 2.0).is_integer()):
                self._plans[key] = None
                return None
        bound = 0.0
        for j in fixed_cols:
            bound += colmax[j] * xl[j]
        if not bound < self._limit:
            self._plans[key] = None
            return None
        # Exact: every coefficient and feature is on the grid and the terms' magnitudes sum below the bound, so
        # every product and partial sum is exact and numpy's sum is the exact one, whatever its order.
        work = (self._stack @ base).tolist()
        at = self._totals_at
        plan = _KeyPlan(
            tuple(xl),
            bound,
            _constant(self._scope_plan(self._layer_rows, key, base, xl, work)),
            _constant(self._scope_plan(self._iter_rows, key, base, xl, work)),
            # Collectives read no varying feature (checked in build): their time at this key is that of any call.
            m._comms.time(base),
            # The engine's time reads the decode context only through the GQA re-read term: without it, it is fixed.
            None if m._reread_slope else m.overhead_of(xl),
            (work[at], *self._totals_varying[0]),
            (work[at + 1], *self._totals_varying[1]),
        )
        self._plans[key] = plan
        return plan

    def _scope_plan(
        self, rows: _ScopeRows, key: tuple, base: np.ndarray, xl: list[float], work: list[float]
    ) -> _ScopePlan:
        """One scope at ``key``: its cached fixed rows, and each varying row with its work at zero varying
        features (``work``: the stacked products at ``base``)."""
        scope = rows.scope
        fl = work[rows.flops_at:rows.flops_at + len(scope.pricers)]
        by = work[rows.bytes_at:rows.bytes_at + len(scope.pricers)]
        prefix, cached = self._fixed_rows(rows, key, base, xl, fl, by)
        segments: list[tuple[_Row, list[float]]] = []
        for i, t in enumerate(cached, scope._first_varying):  # the first is a varying row (None)
            if t is not None:
                segments[-1][1].append(t)
                continue
            memo = rows.memos[i]
            times, fixed, uses = (None, (), (0.0, 0.0, 0.0)) if memo is None else (
                memo.times, tuple(xl[j] for j in memo.fixed_cols), memo.uses)
            row = _Row(rows.times[i], (fl[i], *rows.varying_flops[i]), (by[i], *rows.varying_bytes[i]),
                       times, fixed, uses)
            segments.append((row, []))
        return _ScopePlan(prefix, tuple((row, tuple(tail)) for row, tail in segments))

    def _fixed_rows(
        self, rows: _ScopeRows, key: tuple, base: np.ndarray, xl: list[float], fl: list[float], by: list[float]
    ) -> tuple[float, list[float | None]]:
        """The scope's cached rows at ``key`` (:meth:`RowByRow.time_keyed`'s ``(prefix, rest)``), pricing them here
        where the numpy path has not: the same pricers with the same arguments, the prefix summed in table order.

        ``fl`` and ``by`` are the rows' work at ``key`` with zero varying features: what ``time_keyed`` gives a
        fixed row at any call of this key (its coefficients of the varying features are zero, the sums exact),
        and its pricer reads no varying feature either. Where another key had the same signature (every fixed
        row's work and read features equal to the bit, every pricer pure) its prices are these. Left in the
        scope's cache: a later call of this key that the fast path declines then reuses them, as it would have
        after the numpy path."""
        scope = rows.scope
        hit = scope._fixed.get(key)
        if hit is not None:
            return hit
        self.planned += scope is self.model._layer
        signature = None if rows.signature is None else (rows.signature @ base).tobytes()
        if signature is not None:
            hit = rows.by_signature.get(signature)
        if hit is None:
            hit = scope.fixed_prices(xl, fl, by)
            if signature is not None:
                rows.by_signature[signature] = hit
        scope._fixed[key] = hit
        return hit

    # ------------------------------------------------------------------- per call
    def price(self, key: tuple, work: float, kv_read: float, context: float) -> tuple[float, float, float] | None:
        """``(time_s, flops, bytes)`` of the mixed iteration at ``key`` with these varying features, or None."""
        plan = self._plans.get(key, _MISSING)
        if plan is _MISSING:
            plan = self._plan(key)
        if plan is None:
            return None
        w, r, c = float(work), float(kv_read), float(context)
        if not (
            w >= 0.0
            and r >= 0.0
            and c >= 0.0
            and (w * 2.0).is_integer()
            and (r * 2.0).is_integer()
            and (c * 2.0).is_integer()
        ):
            return None
        mw, mr, mc = self._varying_max
        if not plan.bound + mw * w + mr * r + mc * c < self._limit:
            return None
        # The scopes' sums (RowByRow.time_keyed's additions in its order; a scope whose rows all stay is one number).
        layer = plan.layer
        if layer.__class__ is _ScopePlan:
            layer = _scope_time(layer, plan, w, r, c)
        it = plan.it
        if it.__class__ is _ScopePlan:
            it = _scope_time(it, plan, w, r, c)
        m = self.model
        time_s = m._layers * layer + it + plan.comms
        overhead = plan.overhead
        if overhead is None:
            overhead = m.overhead_of(_features(plan, w, r, c))
        time_s = float(time_s + overhead) if m._overheads_active else float(time_s + 0.0)
        self.taken += 1
        f0, fw, fr, fc = plan.flops
        b0, bw, br, bc = plan.bytes
        return time_s, f0 + fw * w + fr * r + fc * c, b0 + bw * w + br * r + bc * c


def _varying_coefficients(row: np.ndarray) -> tuple[float, float, float]:
    """A coefficient row's entries at the three varying features."""
    return row[_W].item(), row[_R].item(), row[_C].item()


def _scope_rows(scope: RowByRow, flops_at: int, bytes_at: int) -> _ScopeRows:
    """What every plan needs of ``scope``'s varying rows (None at its fixed rows)."""
    varying = scope._varying
    return _ScopeRows(
        scope,
        flops_at,
        bytes_at,
        [_varying_coefficients(scope.flops[i]) if v else None for i, v in enumerate(varying)],
        [_varying_coefficients(scope.bytes[i]) if v else None for i, v in enumerate(varying)],
        [_time_of(scope.pricers[i]) if v else None for i, v in enumerate(varying)],
        [_row_memo(scope, i) if v else None for i, v in enumerate(varying)],
        _fixed_signature(scope),
        {},
    )


def _fixed_signature(scope: RowByRow) -> np.ndarray | None:
    """The matrix whose product with a key's features is everything the scope's fixed rows' prices follow: each
    fixed row's FLOPs and bytes coefficients, then a unit row per feature their pricers read. None where a fixed
    row's pricer does not say it is pure (its price may follow more than its arguments)."""
    fixed = [i for i, v in enumerate(scope._varying) if not v]
    pricers = [scope.pricers[i] for i in fixed]
    if not all(_declared_pure(type(p)) for p in pricers):
        return None
    reads = sorted({j for p in pricers for j in p.reads_features})  # declared: a fixed row's pricer says
    return np.vstack([scope.flops[fixed], scope.bytes[fixed], np.eye(F.NUM_FEATURES)[reads]])


def _row_memo(scope: RowByRow, i: int) -> _RowMemo | None:
    """How row ``i`` of ``scope`` may be memoised, or None. Its time must be a function of the features its
    pricer reads: the pricer must say it is pure and what it reads (the decode context among them where it
    reads that), and the row's work may follow no other feature but the constant one."""
    pricer = scope.pricers[i]
    reads = pricer.reads_features
    if not _declared_pure(type(pricer)) or reads is None or (pricer.reads_context and F.DECODE_CONTEXT not in reads):
        return None
    used = set(np.flatnonzero(scope.flops[i]).tolist()) | set(np.flatnonzero(scope.bytes[i]).tolist())
    if not used <= {F.ONE, *reads}:
        return None
    fixed_cols = tuple(sorted(j for j in reads if j not in MIXED_VARYING))
    uses = tuple(1.0 if j in reads else 0.0 for j in MIXED_VARYING)
    return _RowMemo({}, fixed_cols, uses)


@cache
def _declared_pure(kind: type) -> bool:
    """Whether ``kind`` says its prices are pure (``RowPricer.pure``) at or below the classes that define its
    ``price`` and ``time_s``: a subclass that re-prices a row inherits no promise made for its parent's prices."""
    mro = kind.__mro__
    said = next(c for c in mro if "pure" in c.__dict__)
    if not said.__dict__["pure"]:
        return False
    return all(issubclass(said, next(c for c in mro if name in c.__dict__)) for name in ("price", "time_s"))


def _features(plan: _KeyPlan, w: float, r: float, c: float) -> list[float]:
    """The call's feature vector as a list (built only where a row or the engine's time must read it)."""
    xl = list(plan.xl)
    xl[_W] = w
    xl[_R] = r
    xl[_C] = c
    return xl


def _time_of(pricer: RowPricer) -> Callable:
    """The pricer's ``time_s`` where it is the time of its own ``price`` (the default, or one defined with or
    below ``price``), else ``price(...).time_s``: a subclass that re-prices a row keeps its price here too."""
    if _time_is_own_price(type(pricer)):
        return pricer.time_s
    return lambda x, flops, nbytes: pricer.price(x, flops, nbytes).time_s


@cache
def _time_is_own_price(kind: type) -> bool:
    """Whether ``kind.time_s`` is the time of ``kind.price`` (asked once per pricer class, not per planned key)."""
    mro = kind.__mro__
    own_time = next(c for c in mro if "time_s" in c.__dict__)
    own_price = next(c for c in mro if "price" in c.__dict__)
    return own_time is RowPricer or issubclass(own_time, own_price)


def _scope_time(plan: _ScopePlan, key_plan: _KeyPlan, w: float, r: float, c: float) -> float:
    """:meth:`RowByRow.time_keyed` of a planned key: the same additions in the same order (a memoised row's time
    looked up here, not in a call of its own: most calls find it)."""
    total = plan.prefix
    for row, tail in plan.segments:
        memo = row.memo
        if memo is None:
            total += _row_time(row, key_plan, w, r, c)
        else:
            uw, ur, uc = row.uses
            k = (row.fixed, w * uw, r * ur, c * uc)
            v = memo.get(k)
            if v is None:
                v = memo[k] = _row_time(row, key_plan, w, r, c)
            total += v
        for t in tail:
            total += t
    return total


def _row_time(row: _Row, plan: _KeyPlan, w: float, r: float, c: float) -> float:
    """The varying row's time at these varying features, priced by its pricer."""
    f0, fw, fr, fc = row.flops
    b0, bw, br, bc = row.bytes
    return row.time_s(_features(plan, w, r, c), f0 + fw * w + fr * r + fc * c, b0 + bw * w + br * r + bc * c)


def _constant(plan: _ScopePlan) -> _ScopePlan | float:
    """A scope with no row to price per call, as its sum (its prefix: every row is in it), else itself."""
    return plan if plan.segments else plan.prefix
