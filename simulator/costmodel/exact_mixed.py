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
Python sum of its terms gives it. The model's coefficients are checked once (:meth:`ExactMixed.build`), each key's
(chunk tokens, sequences with logits, decode batch) fixed features once, each call's three varying features and
the bound every time; anything else (a sliding-window model's fractional pairs, a non-dyadic coefficient, a huge
value) declines, so the caller takes the numpy path. The rows themselves are priced by the same pricers with the same
arguments, and summed in table order from the same cached prefix (:meth:`RowByRow.time_keyed`'s arrangement).
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


@dataclass(frozen=True, slots=True)
class _Row:
    """A row whose price moves with the varying features: its pricer and its work as dot products."""

    time_s: Callable  # the row's pricer's ``time_s``
    flops: Terms
    bytes: Terms


@dataclass(frozen=True, slots=True)
class _ScopePlan:
    """A scope at one key: the cached running sum of its leading fixed rows, then each later row's cached
    price or, where it varies, the row to price."""

    prefix: float
    rest: tuple[float | _Row, ...]


@dataclass(frozen=True, slots=True)
class _KeyPlan:
    """Everything about one key that does not move with the varying features."""

    xl: tuple[float, ...]  # the features at zero varying features, as a list would hold them
    bound: float  # the terms' magnitudes summed at zero varying features
    layer: _ScopePlan | float  # a float: the scope's sum, no row of it moving
    it: _ScopePlan | float
    comms: float
    flops: Terms
    bytes: Terms


class ExactMixed:
    """The plain-float price of mixed iterations of one cost model, where provably bit-identical (see the module).

    ``price(key, work, kv_read, context)`` returns ``(time_s, flops, bytes)`` or None (the caller takes the numpy
    path); a key is planned once its scopes hold their cached rows (after the numpy path priced it once).
    """

    def __init__(self, model: IterationCostModel, shift: int, colmax: np.ndarray):
        self.model = model
        self._limit = float(2 ** (52 - shift - _FEATURE_SHIFT))  # one bit of margin for the bound's own rounding
        self._colmax = colmax.tolist()
        self._varying_max = tuple(self._colmax[j] for j in MIXED_VARYING)
        self._plans: dict[tuple, _KeyPlan | None] = {}
        self.taken = 0  # mixed iterations priced here (tests check the path is used)

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
    def _plan(self, key: tuple, base: np.ndarray) -> _KeyPlan | None:
        m = self.model
        layer_hit, it_hit = m._layer._fixed.get(key), m._iter._fixed.get(key)
        if layer_hit is None or it_hit is None:
            return None  # the numpy path has not priced this key yet: nothing cached to reuse
        xl = base.tolist()
        for j in MIXED_VARYING:
            xl[j] = 0.0
        if not all(v - v == 0.0 for v in xl):  # an infinite or NaN feature: a zero coefficient times it is NaN
            self._plans[key] = None
            return None
        colmax = self._colmax
        fixed_cols = [j for j in range(F.NUM_FEATURES) if j not in MIXED_VARYING and colmax[j] != 0.0]
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

        def terms(row: np.ndarray) -> Terms:
            coef = row.tolist()
            const = 0.0
            for j in fixed_cols:  # exact: every term and partial sum is on the grid and below the bound
                if coef[j] != 0.0:
                    const += coef[j] * xl[j]
            return const, coef[_W], coef[_R], coef[_C]

        def scope_plan(scope: RowByRow, hit: tuple[float, list[float | None]]) -> _ScopePlan:
            prefix, cached = hit
            first = scope._first_varying
            rest: list[float | _Row] = []
            for i, t in enumerate(cached, first):
                if t is None:
                    rest.append(_Row(_time_of(scope.pricers[i]), terms(scope.flops[i]), terms(scope.bytes[i])))
                else:
                    rest.append(t)
            return _ScopePlan(prefix, tuple(rest))

        # Collectives read no varying feature (checked in build): their time at this key is that of any context.
        plan = _KeyPlan(
            tuple(xl),
            bound,
            _constant(scope_plan(m._layer, layer_hit)),
            _constant(scope_plan(m._iter, it_hit)),
            m._comms.time(base),
            terms(m._flops_total),
            terms(m._bytes_total),
        )
        self._plans[key] = plan
        return plan

    # ------------------------------------------------------------------- per call
    def price(
        self, key: tuple, base: np.ndarray, work: float, kv_read: float, context: float
    ) -> tuple[float, float, float] | None:
        """``(time_s, flops, bytes)`` of the mixed iteration at ``key`` with these varying features, or None."""
        plan = self._plans.get(key, _MISSING)
        if plan is _MISSING:
            plan = self._plan(key, base)
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
        xl = list(plan.xl)
        xl[_W] = w
        xl[_R] = r
        xl[_C] = c
        # The scopes' sums (RowByRow.time_keyed's additions in its order; a scope whose rows all stay is one number).
        layer = plan.layer
        if layer.__class__ is _ScopePlan:
            layer = _scope_time(layer, xl, w, r, c)
        it = plan.it
        if it.__class__ is _ScopePlan:
            it = _scope_time(it, xl, w, r, c)
        m = self.model
        time_s = m._layers * layer + it + plan.comms
        time_s = float(time_s + m.overhead_of(xl)) if m._overheads_active else float(time_s + 0.0)
        self.taken += 1
        f0, fw, fr, fc = plan.flops
        b0, bw, br, bc = plan.bytes
        return time_s, f0 + fw * w + fr * r + fc * c, b0 + bw * w + br * r + bc * c


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


def _scope_time(plan: _ScopePlan, xl: list[float], w: float, r: float, c: float) -> float:
    """:meth:`RowByRow.time_keyed` of a planned key: the same additions in the same order."""
    total = plan.prefix
    for t in plan.rest:
        if t.__class__ is _Row:
            f0, fw, fr, fc = t.flops
            b0, bw, br, bc = t.bytes
            total += t.time_s(xl, f0 + fw * w + fr * r + fc * c, b0 + bw * w + br * r + bc * c)
        else:
            total += t
    return total


def _constant(plan: _ScopePlan) -> _ScopePlan | float:
    """A scope with no row to price per call, as its sum (the same additions in the same order), else itself."""
    if any(t.__class__ is _Row for t in plan.rest):
        return plan
    total = plan.prefix
    for t in plan.rest:
        total += t
    return total
