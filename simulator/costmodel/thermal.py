"""Thermal throttling: one replica's device slows down as sustained work heats it (a first-order RC model).

Why: a phone or a fanless edge module cannot dissipate its peak power for long; after a minute or so of
continuous work its governor lowers the clocks (MELT, Laskaridis et al., MobiCom 2024, arXiv 2403.12844,
reports continuous on-device LLM execution limited by thermals). Over a long chat session the same prompt
then costs more late than early, which a fixed price per iteration cannot show.

The model (:class:`hwmodels.device.Thermal`): a heat level ``h`` in [0, 1] obeys
``dh/dt = (busy - h) / tau`` (busy = 1 while the device computes, 0 while it idles) and the device runs at
``s(h) = 1 - (1 - f) h`` of its peak compute and memory rates (``f`` = ``sustained_fraction``). Work priced
at ``w`` seconds at peak therefore takes the time ``t`` that solves

    W(t) = f t + (1 - f)(1 - h0) tau (1 - exp(-t / tau)) = w

from heat ``h0`` (during the work ``h(t) = 1 - (1 - h0) exp(-t / tau)``). ``W`` is increasing and concave,
so Newton's method from ``t = w`` climbs to the root monotonically; a decode run solves every step
boundary at once. Idle time cools the device: ``h <- h exp(-idle / tau)``.

:class:`ThermalCostModel` wraps one replica's cost model and keeps ``h`` for that replica. It is told the
time of every call (the replica prices an iteration or run when it starts), and updates ``h`` lazily: the
work since the last call heated the device up to the earlier of now and the end of what was priced (a run
an arrival cut short ended at now), and any time after that cooled it. Nothing else in the engine knows:
:func:`bind_thermal` returns the cost model unchanged for a device without ``thermal`` (every GPU entry), so
those runs stay byte-identical and closed-form. With throttling on, a decode run is priced step by step
(its durations no longer grow affinely). A throttled device draws less: the run's energy replays the heat from
the iteration records and scales busy power by ``speed ** power_exponent``
(:mod:`simulator.metrics.thermal_power`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from hwmodels.device import Thermal
from simulator.costmodel.iteration import DecodeRun, IterationCost

_NEWTON_STEPS = 60
_REL_TOL = 1e-13


def speed(thermal: Thermal, heat: float) -> float:
    """Fraction of peak rates the device runs at with heat level ``heat`` (1 cold, ``sustained_fraction`` hot)."""
    return 1.0 - (1.0 - thermal.sustained_fraction) * heat


def heat_after(thermal: Thermal, heat: float, busy_s: float, idle_s: float = 0.0) -> float:
    """Heat level after ``busy_s`` seconds of work and then ``idle_s`` seconds of idling from ``heat``."""
    tau = thermal.time_constant_s
    h = 1.0 - (1.0 - heat) * math.exp(-busy_s / tau)
    return h * math.exp(-idle_s / tau) if idle_s > 0 else h


def wall_times(thermal: Thermal, heat: float, work_s: np.ndarray) -> np.ndarray:
    """Wall-clock times at which cumulative peak-rate work ``work_s`` (ascending) is done, from heat ``heat``.

    Solves ``W(t) = work`` (module docstring) by Newton's method for every entry at once.
    """
    f, tau = thermal.sustained_fraction, thermal.time_constant_s
    if f == 1.0:
        return np.asarray(work_s, dtype=float).copy()
    w = np.asarray(work_s, dtype=float)
    a = (1.0 - f) * (1.0 - heat)
    t = w.copy()
    for _ in range(_NEWTON_STEPS):
        e = np.exp(-t / tau)
        g = f * t + a * tau * (1.0 - e) - w
        step = g / (f + a * e)
        t = t - step
        if np.all(np.abs(step) <= _REL_TOL * np.maximum(t, 1e-30)):
            break
    return t


class ThermalCostModel:
    """One replica's cost model with thermal throttling: each price is stretched by the device's heat.

    Delegates everything else to the wrapped model (``decode_work`` counts work, not time, and is unchanged).
    """

    def __init__(self, inner: Any, thermal: Thermal, clock: Callable[[], float]):
        self._inner = inner
        self.thermal = thermal
        self._clock = clock
        self._heat = 0.0  # at _start
        self._start = 0.0  # when the last priced work began
        self._end = 0.0  # when it was to end

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @property
    def heat(self) -> float:
        """The heat level now (cooled or heated since the last priced work)."""
        return self._heat_at(self._clock())

    def _heat_at(self, now: float) -> float:
        busy = max(0.0, min(now, self._end) - self._start)
        idle = max(0.0, now - max(self._end, self._start))
        return heat_after(self.thermal, self._heat, busy, idle)

    def _begin(self, work_s: np.ndarray) -> np.ndarray:
        """Wall times of the cumulative work ``work_s`` starting now; records the work as in flight."""
        now = self._clock()
        h = self._heat_at(now)
        ends = wall_times(self.thermal, h, work_s)
        self._heat, self._start, self._end = h, now, now + float(ends[-1])
        return ends

    def iteration_from_totals(self, *args: Any) -> IterationCost:
        cost = self._inner.iteration_from_totals(*args)
        took = float(self._begin(np.array([cost.time_s]))[0])
        return IterationCost(took, cost.flops, cost.bytes)

    def decode_run(self, batch: int, context0: int, iterations: int, growth: float | None = None) -> DecodeRun:
        run = self._inner.decode_run(batch, context0, iterations, growth)
        ends = self._begin(np.cumsum(run.all_durations()))
        d = np.diff(ends, prepend=0.0)
        return DecodeRun(run.iterations, float(d[0]), 0.0, False, d)


def bind_thermal(cost: Any, thermal: Thermal | None, clock: Callable[[], float]) -> Any:
    """The cost model one replica prices with: ``cost`` itself without throttling, else a
    :class:`ThermalCostModel` of its own (each replica's device heats on its own)."""
    if thermal is None:
        return cost
    return ThermalCostModel(cost, thermal, clock)


__all__ = ["ThermalCostModel", "bind_thermal", "heat_after", "speed", "wall_times"]
