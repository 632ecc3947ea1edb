"""Where a prediction interval's spread comes from: held-out errors capsim already stores.

Why not fit something new: an interval is only honest if its width comes from errors measured on data the
model never saw. capsim stores two kinds (the method is registered in ``docs/calibration-decisions.md``,
*Prediction intervals*):

* the **end-to-end** held-out rows of an engine profile fitted on whole-server measurements
  (``hwmodels/calibration/data/e2e/heldout_residuals.csv``: signed ratios measured / predicted);
* the **kernel** held-out errors of a device's calibrated profile (median, p90 and max absolute percentage
  error per curve, what ``capsim calibrate validate`` prints).

:func:`residuals_for` picks one per deployment and returns, per phase, the distribution of the multiplier
``measured / predicted`` that an iteration time is scaled by. A deployment with neither gets a
:class:`~capsim.errors.CapsimError` that says so -- never a zero-width interval.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np

from capsim.errors import CapsimError
from capsim.registry import normalise_name
from hwmodels.calibration.engine_fit import E2E_DIR, RESIDUALS_FILE

RESIDUALS_PATH = E2E_DIR / RESIDUALS_FILE

#: The curves whose held-out errors stand for each phase's iteration (the classes that take most of its time).
PHASE_CURVES: dict[str, tuple[str, ...]] = {
    "prefill": ("gemm", "attention_prefill"),
    "decode": ("gemm", "attention_decode"),
}
_SIXTEEN_BIT = ("bf16", "fp16")
_MAX_APE = 0.99  # predicted / measured - 1 > -1 always (positive times); keeps 1 / (1 - a) finite


@dataclass(frozen=True)
class PhaseResiduals:
    """The distribution of ``measured / predicted`` for one phase's iterations.

    Two forms: ``ratios`` -- signed end-to-end ratios, used as they are (resampled; quantiles by linear
    interpolation); ``ape`` -- (median, p90, max) absolute relative errors (fractions) of kernel curves, read as
    a piecewise-linear quantile function of ``|a|`` with an unknown sign (+ or - equally likely), so the
    multiplier is ``1 / (1 + a)`` or ``1 / (1 - a)``.
    """

    ratios: tuple[float, ...] = ()
    ape: tuple[float, float, float] | None = None
    n: int = 0  # rows behind it (held-out measurements)

    def quantiles(self, qs: Sequence[float] | np.ndarray) -> np.ndarray:
        """The multiplier's quantiles at ``qs`` (each in [0, 1])."""
        q = np.clip(np.asarray(qs, dtype=float), 0.0, 1.0)
        if self.ape is None:
            return np.quantile(np.asarray(self.ratios, dtype=float), q)
        up = q >= 0.5
        a = self._abs_quantile(np.where(up, 2.0 * q - 1.0, 1.0 - 2.0 * q))
        return np.where(up, 1.0 / (1.0 - a), 1.0 / (1.0 + a))

    def _abs_quantile(self, v: np.ndarray) -> np.ndarray:
        med, p90, top = self.ape
        return np.minimum(np.interp(v, (0.0, 0.5, 0.9, 1.0), (0.0, med, p90, top)), _MAX_APE)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` independent multipliers."""
        if self.ape is None:
            return rng.choice(np.asarray(self.ratios, dtype=float), size=n, replace=True)
        return self.quantiles(rng.random(n))

    def describe(self) -> str:
        if self.ape is None:
            return f"{self.n} held-out end-to-end ratios"
        med, p90, top = (100 * x for x in self.ape)
        return f"kernel held-out APE median {med:.1f} %, p90 {p90:.1f} %, max {top:.1f} %"


@dataclass(frozen=True)
class ResidualModel:
    """The multiplier distributions of one deployment, and what they stand for."""

    prefill: PhaseResiduals
    decode: PhaseResiduals
    source: str  # e.g. "end-to-end held-out rows of engine profile tensorrt-llm-2023 (16 rows)"
    not_covered: str | None = None  # what the interval leaves out (an engine profile with no held-out rows)
    extra: dict[str, Any] = field(default_factory=dict)

    def phase(self, name: str) -> PhaseResiduals:
        return self.prefill if name == "prefill" else self.decode


@cache
def e2e_residuals() -> dict[str, list[dict[str, Any]]]:
    """The stored end-to-end held-out rows by engine profile (empty when the file is absent)."""
    if not RESIDUALS_PATH.is_file():
        return {}
    out: dict[str, list[dict[str, Any]]] = {}
    with RESIDUALS_PATH.open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            out.setdefault(normalise_name(row["engine"]), []).append(
                {**row, "ratio": float(row["ratio"]), "tp": int(row["tp"])}
            )
    return out


def _curve_stats(profile_doc: dict, op_class: str, dtype: str, column: str) -> dict | None:
    by_dtype = (profile_doc.get("operators") or {}).get(op_class) or {}
    for candidate in (dtype, *_SIXTEEN_BIT, *by_dtype):
        held = (by_dtype.get(candidate) or {}).get("heldout") or {}
        stats = held.get(column)
        if stats and stats.get("n"):
            return stats
    return None


def kernel_residuals(
    profile_doc: dict, phase: str, weight_dtype: str, column: str = "calibrated"
) -> PhaseResiduals | None:
    """A phase's kernel-error distribution from a profile's stored held-out table, or None without one.

    The envelope (the larger of each statistic) of the phase's curves in :data:`PHASE_CURVES`; the GEMM curve in
    the weights' format where the profile has one.
    """
    stats = []
    for op_class in PHASE_CURVES[phase]:
        s = _curve_stats(profile_doc, op_class, weight_dtype if op_class == "gemm" else "bf16", column)
        if s is None:
            return None
        stats.append(s)
    med = max(float(s["median_ape"]) for s in stats) / 100
    p90 = max(float(s["p90_ape"]) for s in stats) / 100
    top = max(float(s.get("max_ape") or s["p90_ape"]) for s in stats) / 100
    if not np.isfinite([med, p90, top]).all():
        return None
    return PhaseResiduals(ape=(med, max(p90, med), max(top, p90, med)), n=int(sum(int(s["n"]) for s in stats)))


def residuals_for(system, *, where: str = "simulation.intervals") -> ResidualModel:
    """The residual distributions for ``system`` (a :class:`simulator.system.System`), chosen by the registered
    order: the engine profile's end-to-end rows, else the device profile's kernel errors, else an error."""
    from hwmodels.calibration.engines import engine_name_of
    from hwmodels.calibration.profile import shipped_profile

    dep = system.deployment
    engine = normalise_name(engine_name_of(dep.engine, dep.overheads, system.device.serving_engine))
    profile = system.roofline.profile
    column = "calibrated"
    if profile is None and dep.calibration == "datasheet":
        profile, column = shipped_profile(system.device.name), "datasheet"
    if profile is None:
        raise CapsimError(
            f"device {system.device.name!r} has no calibrated profile, so capsim has no stored held-out residuals "
            "to size a prediction interval from (an interval of zero width would claim a certainty nobody measured)",
            where=where,
            fix="turn intervals off, or use a device with a shipped profile (a100-80gb-sxm, h100-sxm, h200; "
            "`capsim calibrate validate` lists them)",
        )
    device = str(profile.doc.get("device", system.device.name))
    rows = e2e_residuals().get(engine, [])
    if column == "calibrated" and rows and any(r["device"] == device for r in rows):
        ratios = tuple(r["ratio"] for r in rows)
        phase = PhaseResiduals(ratios=ratios, n=len(ratios))
        return ResidualModel(
            phase,
            phase,
            source=f"end-to-end held-out rows of engine profile {engine} ({len(ratios)} rows, pooled over devices "
            "and phases; they include the kernels' error)",
        )
    prefill = kernel_residuals(profile.doc, "prefill", dep.weight_dtype, column)
    decode = kernel_residuals(profile.doc, "decode", dep.weight_dtype, column)
    if prefill is None or decode is None:
        raise CapsimError(
            f"the profile of {device} stores no held-out errors for the curves that price "
            f"{'prefill' if prefill is None else 'decode'} ({', '.join(PHASE_CURVES['prefill' if prefill is None else 'decode'])})",
            where=where,
            fix="turn intervals off, or refit the profile with `capsim calibrate fit` (it stores held-out errors)",
        )
    pricing = "datasheet pricing" if column == "datasheet" else "calibrated profile"
    not_covered = None
    if engine != "none":
        not_covered = (
            f"engine profile {engine} has no held-out end-to-end rows on {device}: the interval covers "
            "the kernel calibration error only, not the error of the engine's own terms"
        )
    else:
        not_covered = (
            "engine 'none' prices the kernels alone: the interval covers their calibration error, "
            "not what a serving engine adds around them (docs/engine-profiles.md)"
        )
    return ResidualModel(
        prefill,
        decode,
        source=f"kernel held-out errors of the {device} {pricing} (prefill: {prefill.describe()}; "
        f"decode: {decode.describe()})",
        not_covered=not_covered,
    )
