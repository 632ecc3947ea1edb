"""Energy and cost of the GPUs over a time window.

Assumption (docs/energy-and-cost.md): a GPU draws its idle power P_idle whenever it is allocated and its
board power limit (TDP) while its replica is executing an iteration, so over a window of length T

    energy = Σ_gpus (P_idle·T + (P_active − P_idle)·T_busy),   P_active = TDP,

where T_busy is the time the GPU's replica spent inside iterations. This is a two-level upper-bound model: real
GPUs rarely sit at TDP during memory-bound decode, so it overstates decode energy; a calibrated utilisation-weighted
power curve can replace it later without changing callers. Host CPU, network and cooling (PUE) are not included.

Cost is rental: every allocated GPU is paid for the whole window whether busy or idle,

    cost = GPUs × hours × price per GPU-hour.

>>> energy_joules(window_s=10.0, busy_gpu_s=5.0, num_gpus=1, idle_w=100.0, active_w=700.0)
4000.0
>>> round(cost_usd(window_s=3600.0, num_gpus=8, price_usd_per_gpu_hour=2.5), 6)
20.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from capsim.errors import CapsimError


def energy_joules(*, window_s: float, busy_gpu_s: float, num_gpus: int, idle_w: float, active_w: float) -> float:
    """Energy in joules of ``num_gpus`` GPUs over ``window_s`` seconds, ``busy_gpu_s`` of which (summed over GPUs)
    were spent executing iterations."""
    if idle_w < 0 or active_w < idle_w:
        raise CapsimError(
            f"device power must satisfy 0 ≤ idle ≤ active, got idle {idle_w} W and active (TDP) {active_w} W",
            where="device power",
            fix="check tdp_w and idle_w in the device catalog entry",
        )
    if window_s < 0 or busy_gpu_s < 0:
        raise CapsimError(f"times must be non-negative, got window {window_s} s and busy {busy_gpu_s} GPU·s")
    if busy_gpu_s > num_gpus * window_s * (1 + 1e-9) + 1e-12:
        raise CapsimError(
            f"busy time {busy_gpu_s} GPU·s exceeds {num_gpus} GPUs × {window_s} s",
            where="iterations.busy_s",
            fix="iterations of one replica must not overlap in time",
        )
    return num_gpus * idle_w * window_s + (active_w - idle_w) * busy_gpu_s


def cost_usd(*, window_s: float, num_gpus: int, price_usd_per_gpu_hour: float) -> float:
    """Rental cost in US dollars of ``num_gpus`` GPUs held for ``window_s`` seconds."""
    if price_usd_per_gpu_hour < 0:
        raise CapsimError(
            f"price must be non-negative, got {price_usd_per_gpu_hour} $/GPU-hour",
            where="device price",
            fix="check price_usd_per_gpu_hour in the device catalog entry",
        )
    return num_gpus * (window_s / 3600.0) * price_usd_per_gpu_hour


@dataclass(frozen=True)
class ThermalPower:
    """The thermal figures a run's energy needs (the device's :class:`hwmodels.device.Thermal`, as plain data
    for ``summary.json``): a throttled device's busy power above idle is scaled by ``speed ** power_exponent``
    (:mod:`simulator.metrics.thermal_power`)."""

    sustained_fraction: float
    time_constant_s: float
    power_exponent: int = 1


@dataclass(frozen=True)
class PowerUnit:
    """Hardware beside a replica's GPUs that draws power while the run holds it: a device a technique adds
    (a draft device), or a memory tier a technique keeps data or runs operators in (host DRAM, NVMe, PIM, a CSD).

    ``count`` is how many of it each replica (engine) holds: a tier exists once per GPU, so a TP-2 replica
    holds two. ``idle_w``/``active_w`` are per unit; ``None`` when the source gives no power figure, and the
    unit's energy is then unknown (reported, left out of the totals). ``capex_usd`` is the purchase price of
    one unit for the TCO view (NaN: not given; a tier's hardware is part of the server and has none).
    """

    name: str
    count: float
    idle_w: float | None
    active_w: float | None
    capex_usd: float = math.nan

    @property
    def powered(self) -> bool:
        """Whether both power figures are known."""
        return self.idle_w is not None and self.active_w is not None


def unit_energy_joules(unit: PowerUnit, *, window_s: float, replicas: int, busy_replica_s: float) -> float:
    """Energy of ``unit`` over the window, in J; NaN when its power is not given.

    Two-level like the GPUs': idle power for the whole window on every replica, plus the step to active
    power while its replica runs iterations (``busy_replica_s``, summed over replicas). The engine records
    when a replica is busy, not when each tier is, so a tier counts as active for the whole of every iteration
    of its replica: an upper bound (a tier streaming weights works for part of a step; doc:
    docs/energy-and-cost.md).

    >>> unit_energy_joules(PowerUnit("tier.host", 2, 5.0, 20.0), window_s=10.0, replicas=1, busy_replica_s=4.0)
    220.0
    """
    if not unit.powered:
        return math.nan
    idle, active = float(unit.idle_w), float(unit.active_w)
    if active < idle:
        raise CapsimError(
            f"{unit.name}: active power {active} W is below its idle power {idle} W",
            where=unit.name,
            fix="give active_w >= idle_w",
        )
    return unit.count * (replicas * idle * window_s + (active - idle) * busy_replica_s)
