"""Busy power of a throttled device: energy follows the clocks the thermal model lowered.

Why: :mod:`simulator.costmodel.thermal` stretches the work of a hot device (it runs at ``s(h)`` of its peak
rates), and a device running at lower clocks draws less power. Counting ``tdp_w`` for every busy second of a
throttled run overstated its energy, and by more the longer the session ran.

The relation used is the dynamic-power one, ``P_dyn = C V^2 f``: the busy power above idle at speed ``s`` is
``(tdp_w - idle_w) * s**k`` with ``k`` = :attr:`hwmodels.device.Thermal.power_exponent` (1: the clock alone at a
fixed voltage, the default and an upper bound; 3: voltage tracking the clock). Idle (static) power is unchanged.

The heat level is a function of the busy intervals alone (busy heats, idle cools: the ODE of
:mod:`simulator.costmodel.thermal`), so it is replayed here from each replica's iteration records, from cold at
time 0, exactly as the replica's cost model evolved it; nothing is recorded in the engine. During busy time from
heat ``h0`` the speed is ``s(t) = f + a e^(-t/tau)`` with ``a = (1 - f)(1 - h0)``, so for integer ``k``

    integral_0^T s^k dt = f^k T + sum_{j=1..k} C(k, j) f^(k-j) a^j (tau / j) (1 - e^(-j T / tau))

in closed form. With ``k = 1`` that is the peak-rate work done in the interval (``W(T)`` of the thermal module):
a throttled device then spends the same busy energy per unit of work as a cold one.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from hwmodels.device import Thermal
from simulator.costmodel.thermal import heat_after
from simulator.metrics.energy import ThermalPower


def thermal_power(thermal: Thermal | None) -> ThermalPower | None:
    """The run record's copy of a device's thermal curve (None without one)."""
    if thermal is None:
        return None
    return ThermalPower(thermal.sustained_fraction, thermal.time_constant_s, thermal.power_exponent)


def busy_power_integral(thermal: Thermal | ThermalPower, heat: float, duration_s: float) -> float:
    """``integral s(t)^k dt`` over ``duration_s`` seconds of work from heat ``heat`` (seconds at full power)."""
    if duration_s <= 0:
        return 0.0
    f, tau, k = thermal.sustained_fraction, thermal.time_constant_s, thermal.power_exponent
    a = (1.0 - f) * (1.0 - heat)
    total = f**k * duration_s
    for j in range(1, k + 1):
        total += math.comb(k, j) * f ** (k - j) * a**j * (tau / j) * -math.expm1(-j * duration_s / tau)
    return total


def throttled_busy_s(
    thermal: Thermal | ThermalPower, replica: np.ndarray, start: np.ndarray, end: np.ndarray, t0: float, t1: float
) -> float:
    """Busy seconds inside ``[t0, t1]`` weighted by the throttled power fraction ``s^k``, summed over replicas.

    ``replica``, ``start``, ``end``: one entry per iteration record. Each replica's heat is replayed from cold
    at time 0 over all its records (the window only bounds what is counted). Without throttling
    (``sustained_fraction`` 1) this equals the plain busy time in the window.
    """
    total = 0.0
    for r in np.unique(replica):
        mine = replica == r
        order = np.argsort(start[mine], kind="stable")
        heat, clock = 0.0, 0.0
        for s, e in zip(start[mine][order], end[mine][order], strict=True):
            s, e = float(s), float(e)
            if s > clock:
                heat = heat_after(thermal, heat, 0.0, s - clock)
                clock = s
            s = max(s, clock)  # records of one replica do not overlap; guard rounding
            if e <= s:
                continue
            a, b = max(s, t0), min(e, t1)
            if b > a:
                at_a = heat_after(thermal, heat, a - s) if a > s else heat
                total += busy_power_integral(thermal, at_a, b - a)
            heat = heat_after(thermal, heat, e - s)
            clock = e
    return total


def powered_busy_s(info: Any, iterations: Any, t0: float, t1: float, busy_s: float) -> float:
    """Busy replica-seconds in ``[t0, t1]`` to price at the device's full busy power: ``busy_s`` itself for a
    device without a thermal curve (every GPU, unchanged), else each second weighted by ``s^k``."""
    thermal = getattr(info, "thermal", None)
    if thermal is None or not len(iterations):
        return busy_s
    return throttled_busy_s(
        thermal,
        iterations["replica"].to_numpy(),
        iterations["start_s"].to_numpy(dtype=np.float64),
        iterations["end_s"].to_numpy(dtype=np.float64),
        t0,
        t1,
    )


__all__ = ["busy_power_integral", "powered_busy_s", "thermal_power", "throttled_busy_s"]
