"""Energy and cost of the GPUs over a time window.

Assumption (COSTMODEL.md, "Energy and cost"): a GPU draws its idle power P_idle whenever it is allocated and its
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
