"""Roofline pricing of operators.

An operator does ``flops`` of arithmetic and moves ``bytes`` through device
memory. On a device with peak arithmetic rate ``P`` and memory bandwidth ``W``
its time is bounded below by both ``flops / P`` and ``bytes / W``; real kernels
reach only a fraction (the *efficiency*) of each peak, and every kernel launch
costs a fixed overhead:

    time = max(flops / (P * eta_c), bytes / (W * eta_m)) + overhead

(docs/cost-model.md, "From work to time"). The functions here are vectorised over numpy
arrays because the simulator prices whole runs of decode iterations at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class RooflineDevice:
    """The handful of numbers roofline pricing needs, for one numeric format.

    Built from a catalog :class:`~hwmodels.device.DeviceSpec`; efficiencies are
    the device's uncalibrated constants. When ``profile`` is set (a
    :class:`hwmodels.calibration.profile.DeviceProfile`), operators with a
    fitted curve in it are priced by that curve at their own shape instead
    (:mod:`simulator.costmodel.iteration`), and the constants price the rest.
    """

    name: str
    peak_flops: float  # FLOP/s at the compute format
    memory_bandwidth: float  # bytes/s of the main memory tier (HBM)
    compute_efficiency: float
    memory_efficiency: float
    launch_overhead_s: float
    profile: Any = None  # calibrated DeviceProfile, or None for datasheet-only pricing
    compute_format: str = "bf16"  # numeric format of the GEMMs (selects the profile's curve)
    # Share of the GPU this pricing view gets (SM partitioning, simulator/pools/partition.py): ``peak_flops`` and
    # ``memory_bandwidth`` above are already scaled; the profile's fitted peaks are scaled by these. 1: whole GPU.
    compute_share: float = 1.0
    bandwidth_share: float = 1.0

    @property
    def effective_flops(self) -> float:
        return self.peak_flops * self.compute_efficiency

    @property
    def effective_bandwidth(self) -> float:
        return self.memory_bandwidth * self.memory_efficiency

    @property
    def ridge_point(self) -> float:
        """Arithmetic intensity (FLOP/byte) above which an operator is compute-bound."""
        return self.effective_flops / self.effective_bandwidth


def roofline_time(flops, nbytes, device: RooflineDevice, *, launches=1.0):
    """Time of operator(s) with ``flops`` and ``nbytes`` (scalars or arrays)."""
    compute = np.asarray(flops, dtype=float) / device.effective_flops
    memory = np.asarray(nbytes, dtype=float) / device.effective_bandwidth
    return np.maximum(compute, memory) + launches * device.launch_overhead_s


def is_compute_bound(flops: float, nbytes: float, device: RooflineDevice) -> bool:
    """True when the arithmetic side of the roofline is the binding one."""
    return flops / device.effective_flops >= nbytes / device.effective_bandwidth
