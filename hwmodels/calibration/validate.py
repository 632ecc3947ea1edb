"""Held-out accuracy of the calibrated model, beside the datasheet-only roofline.

For every dataset (see :mod:`hwmodels.calibration.fit`) we fit on fold A and
predict fold B, then the other way round (:mod:`hwmodels.calibration.folds`
says why the folds are what they are), so every row is predicted by a curve
that never saw it. The same rows are priced by the datasheet-only roofline
(catalog peaks, the uncalibrated efficiency constants and launch overhead of
``hwmodels/devices.yaml``; collectives by the ring alpha-beta model over the
device's link) so the gain from calibration is visible.

Errors are absolute percentage errors ``|predicted / measured - 1| * 100``,
summarised per device and operator class as median, p90, max and count, over
rows measured at or above a time threshold (20 us by default: below that a
kernel's time is mostly its fixed cost and the issue's targets exclude it);
the same statistics over all rows are kept under ``*_all``.

Two extra kinds of row:

* ``<op_class>@<origin>``: a second source for the same op class (vidur's
  per-model GEMMs), cross-validated within that source by model size;
* ``<op_class>@<origin> cross-source``: the shipped (primary-source) curve
  predicting the other source's rows -- different software stacks, so this
  measures how well a profile transfers, not how well it fits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from capsim.errors import CapsimError
from hwmodels.calibration.fit import (
    Dataset,
    FittedCurve,
    Peaks,
    datasets,
    dtype_group,
    fit_curve,
    heldout_key,
    is_primary,
    reference_peaks,
)
from hwmodels.calibration.folds import FOLDS, assign_folds
from hwmodels.calibration.schema import COLLECTIVES
from hwmodels.calibration.work import flops_and_bytes

DEFAULT_MIN_TIME_S = 20e-6


def ape(pred: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Absolute percentage error, in percent."""
    return np.abs(np.asarray(pred, float) / np.asarray(measured, float) - 1.0) * 100.0


def summarise(errors: np.ndarray) -> dict[str, float | int | None]:
    """median / p90 / max APE (percent) and count of the finite errors."""
    e = np.asarray(errors, float)
    e = e[np.isfinite(e)]
    if e.size == 0:
        return {"median_ape": None, "p90_ape": None, "max_ape": None, "n": 0}
    return {
        "median_ape": round(float(np.median(e)), 2),
        "p90_ape": round(float(np.percentile(e, 90)), 2),
        "max_ape": round(float(e.max()), 2),
        "n": int(e.size),
    }


# --------------------------------------------------------------------- datasheet


def datasheet_times(df: pd.DataFrame) -> np.ndarray:
    """The uncalibrated model's time for every row (NaN where it has no opinion)."""
    from hwmodels.device import DEVICES

    out = np.full(len(df), np.nan)
    flops, nbytes = flops_and_bytes(df)
    t_ranks = df["group_size"].to_numpy(float)
    for device, idx in df.groupby("device").indices.items():
        if device not in DEVICES:
            continue
        spec = DEVICES.get(device)
        eff = spec.efficiency
        part = df.iloc[idx]
        cls = part["op_class"].to_numpy()
        peak = np.array([spec.peak_tflops.get({"fp16": "fp16"}.get(d, d), spec.peak_tflops.get("bf16", 0.0))
                         for d in part["dtype"]]) * 1e12
        compute = np.isin(cls, ["gemm", "attention_prefill", "attention_decode", "elementwise", "memcpy"])
        with np.errstate(divide="ignore", invalid="ignore"):
            tc = np.where(peak > 0, flops[idx] / (peak * eff.compute), 0.0)
        tm = nbytes[idx] / (spec.memory_bandwidth * eff.memory)
        roof = np.maximum(tc, tm) + eff.launch_overhead_us * 1e-6
        res = np.where(compute, roof, np.nan)
        # Collectives: the ring / point-to-point alpha-beta model over the device's scale-up link.
        bw = spec.nvlink_bandwidth if spec.nvlink_bandwidth > 0 else spec.pcie_bandwidth
        alpha = spec.interconnect.link_latency_us * 1e-6
        t = t_ranks[idx]
        link = part["link"].to_numpy()
        intra = link != "ib"
        ar = 2.0 * (t - 1) / t * nbytes[idx] / bw + 2.0 * (t - 1) * alpha
        gather = (t - 1) / t * nbytes[idx] / bw + (t - 1) * alpha
        p2p = alpha + nbytes[idx] / bw
        res = np.where((cls == "all_reduce") & intra, ar, res)
        res = np.where(np.isin(cls, ["all_gather", "reduce_scatter", "all_to_all"]) & intra, gather, res)
        res = np.where((cls == "send_recv") & intra, p2p, res)
        res = np.where(cls == "host_copy", alpha + nbytes[idx] / spec.pcie_bandwidth, res)
        out[idx] = res
    return out


# ------------------------------------------------------------------ validation


def report_key(ds: Dataset, primary: bool) -> str:
    """Row label of a dataset in the error table."""
    key = ds.profile_key
    if dtype_group(ds.dtype) != "16-bit":
        key += f" {ds.dtype}"
    if ds.is_collective:
        default = f"nccl_{ds.op_class}"
        if ds.op != default:
            key += f":{ds.op.removeprefix('nccl_')}"
        if ds.link and ds.link != "nvswitch":
            key += f"[{ds.link}]"
    if not primary:
        key += f"@{ds.origin}"
    return key


@dataclass
class Validation:
    """Held-out predictions of every row, and the summary table."""

    rows: pd.DataFrame  # device, key, measured_s, calibrated_s, datasheet_s, fold, op_class
    table: dict[str, dict[str, dict[str, Any]]]  # device -> key -> stats
    per_dataset: dict[tuple, dict[str, Any]]  # heldout_key(ds) -> stats (for the profile)
    notes: list[str]

    def to_json(self) -> dict[str, dict[str, dict[str, Any]]]:
        return self.table


def _predict_fold(part: pd.DataFrame, ds: Dataset, folds: pd.Series, peaks: Peaks | None, notes: list[str]):
    """Held-out predictions for ``part``: fit on one fold, predict the other."""
    pred = pd.Series(np.nan, index=part.index)
    for train_fold in FOLDS:
        test_fold = "B" if train_fold == "A" else "A"
        train = part[folds[part.index] == train_fold]
        test = part[folds[part.index] == test_fold]
        if test.empty:
            continue
        try:
            fitted = fit_curve(ds.form, train, peaks)
        except CapsimError as err:
            notes.append(f"{ds.device} {report_key(ds, True)}: fold {train_fold} not fitted ({err.problem})")
            continue
        pred[test.index] = fitted.predict(test, peaks)
    return pred


def cross_validate(
    df: pd.DataFrame,
    *,
    devices: list[str] | None = None,
    min_time_s: float = DEFAULT_MIN_TIME_S,
    cross_source: bool = True,
    progress: Callable[[int, int, str], None] | None = None,
) -> Validation:
    """2-fold held-out validation of every dataset of ``devices`` (all when None).

    ``progress(done, total, dataset)`` is called after each dataset (its folds refit: seconds each).
    """
    if devices:
        df = df[df["device"].isin(devices)]
    df = df[df["op_class"] != "cpu_overhead"]
    if df.empty:
        raise CapsimError("no measurements to validate", where="calibrate validate",
                          fix="import or measure first; check --device")
    folds = assign_folds(df)
    sets = datasets(df)
    datasheet = pd.Series(datasheet_times(df), index=df.index)
    notes: list[str] = []
    frames = []
    per_dataset: dict[tuple, dict[str, Any]] = {}
    peaks_cache: dict[str, Peaks | None] = {}
    primary_fits: dict[tuple, tuple[FittedCurve, Peaks | None]] = {}
    for i, ds in enumerate(sets):
        if progress is not None:
            progress(i, len(sets), f"{ds.device} {ds.op_class}")
        if ds.device not in peaks_cache:
            peaks_cache[ds.device] = reference_peaks(ds.device, df)
        peaks = peaks_cache[ds.device]
        if peaks is None and not ds.is_collective:
            notes.append(f"{ds.device} {ds.op_class}: no peaks (not in the catalog, no GEMM+copy rows); skipped")
            continue
        part = df.loc[ds.index]
        primary = is_primary(ds, sets)
        key = report_key(ds, primary)
        usable = part[folds[part.index].isin(FOLDS)]
        pred = _predict_fold(usable, ds, folds, peaks, notes) if len(usable) else pd.Series(dtype=float)
        rows = pd.DataFrame({
            "row": usable.index, "device": ds.device, "key": key, "op_class": ds.op_class, "fold": folds[usable.index],
            "measured_s": usable["measured_s"], "calibrated_s": pred, "datasheet_s": datasheet[usable.index],
        })
        frames.append(rows)
        sel = rows["measured_s"] >= min_time_s
        per_dataset[heldout_key(ds)] = {
            "min_time_us": round(min_time_s * 1e6, 3),
            "calibrated": summarise(ape(rows.loc[sel, "calibrated_s"], rows.loc[sel, "measured_s"])),
            "datasheet": summarise(ape(rows.loc[sel, "datasheet_s"], rows.loc[sel, "measured_s"])),
        }
        if primary and not ds.is_collective and len(part) > 20:
            try:
                primary_fits[(ds.device, ds.profile_key, ds.dtype)] = (fit_curve(ds.form, part, peaks), peaks)
            except CapsimError:
                pass
    if progress is not None:
        progress(len(sets), len(sets), "done")
    if cross_source:
        frames.extend(_cross_source(df, sets, primary_fits, datasheet))
    all_rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return Validation(all_rows, _table(all_rows, min_time_s), per_dataset, notes)


def inner_predictions(part: pd.DataFrame, ds: Dataset, folds: pd.Series, outer: str, peaks: Peaks | None) -> pd.Series:
    """Predictions of the rows of outer fold ``outer`` from fits on the other half of that fold's shape groups.

    Why: choosing between designs of a curve by their held-out error would tune
    the test split. This split lives inside ONE outer training fold: its shape
    groups (weight shape, head configuration; :func:`hwmodels.calibration.fit.shape_groups`)
    alternate into two halves, each predicted by a fit on the other, and no row
    outside ``outer`` is read. ``benchmarks/nested_cv.py`` reports it; design
    changes are decided on it, and the outer table is run once afterwards.
    """
    from hwmodels.calibration.correction import inner_split
    from hwmodels.calibration.fit import shape_groups

    rows = part[folds[part.index] == outer]
    pred = pd.Series(np.nan, index=rows.index)
    if rows.empty:
        return pred
    half = inner_split(shape_groups(rows))
    for side in (0, 1):
        train, test = rows[half == side], rows[half != side]
        if test.empty or train.empty:
            continue
        pred[test.index] = fit_curve(ds.form, train, peaks).predict(test, peaks)
    return pred


def _cross_source(df, sets, primary_fits, datasheet) -> list[pd.DataFrame]:
    """The primary curve of a device / op class predicting another source's rows of the same op class."""
    out = []
    for ds in sets:
        if ds.is_collective or is_primary(ds, sets):
            continue
        rivals = [key for key in primary_fits
                  if key[:2] == (ds.device, ds.profile_key) and dtype_group(key[2]) == dtype_group(ds.dtype)]
        if not rivals:
            continue
        fitted, peaks = primary_fits[rivals[0]]
        part = df.loc[ds.index]
        pred = fitted.predict(part, peaks)
        out.append(pd.DataFrame({
            "row": part.index, "device": ds.device, "key": f"{report_key(ds, False)} cross-source", "op_class": ds.op_class,
            "fold": "cross", "measured_s": part["measured_s"], "calibrated_s": pred,
            "datasheet_s": datasheet[part.index],
        }))
    return out


def _table(rows: pd.DataFrame, min_time_s: float) -> dict[str, dict[str, dict[str, Any]]]:
    table: dict[str, dict[str, dict[str, Any]]] = {}
    if rows.empty:
        return table
    for (device, key), part in rows.groupby(["device", "key"], sort=True):
        sel = part["measured_s"] >= min_time_s
        table.setdefault(device, {})[key] = {
            "calibrated": summarise(ape(part.loc[sel, "calibrated_s"], part.loc[sel, "measured_s"])),
            "datasheet": summarise(ape(part.loc[sel, "datasheet_s"], part.loc[sel, "measured_s"])),
            "calibrated_all": summarise(ape(part["calibrated_s"], part["measured_s"])),
            "datasheet_all": summarise(ape(part["datasheet_s"], part["measured_s"])),
            "min_time_us": round(min_time_s * 1e6, 3),
        }
    return table


# -------------------------------------------------------------------- targets


TARGETS: Mapping[str, tuple[float, float | None]] = {
    "gemm": (5.0, 15.0),
    "attention_prefill": (5.0, 15.0),
    "attention_decode": (5.0, 15.0),
    "all_reduce": (10.0, None),
    "all_gather": (10.0, None),
    "reduce_scatter": (10.0, None),
    "all_to_all": (10.0, None),
    "send_recv": (10.0, None),
}
"""Issue targets per op class: (median APE, p90 APE or None), in percent, measured >= 20 us."""


TARGET_DEVICES = ("a100-80gb-sxm", "h100-sxm", "h200")
"""The issue's targets are for these GPUs."""


def target_status(key: str, stats: Mapping[str, Any], device: str = TARGET_DEVICES[0]) -> str:
    """``met`` / ``MISSED`` / ``-`` (no target for this row) for one table row's calibrated stats."""
    base = key.split("@")[0].split(":")[0].split("[")[0].split(" ")[0]
    if base not in TARGETS or "@" in key or device not in TARGET_DEVICES:
        return "-"
    med, p90 = TARGETS[base]
    s = stats["calibrated"]
    if not s["n"]:
        return "-"
    ok = s["median_ape"] <= med and (p90 is None or s["p90_ape"] <= p90)
    return "met" if ok else "MISSED"


def stored_table(devices: list[str] | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """The held-out error table as recorded in the shipped profiles (what ``calibrate fit`` measured with the
    same 2-fold split), in seconds instead of a refit. One row per curve: operator class (and dtype where it is
    not 16-bit) and collective (with its group size, since each group size is fitted and held out on its own)."""
    from capsim.registry import normalise_name
    from hwmodels.calibration.profile import shipped_profile, shipped_profile_names

    names = shipped_profile_names() if not devices else [normalise_name(d) for d in devices]
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for name in names:
        profile = shipped_profile(name)
        if profile is None:
            continue
        rows: dict[str, dict[str, Any]] = {}
        for op_class, by_dtype in sorted((profile.doc.get("operators") or {}).items()):
            for dtype, entry in sorted(by_dtype.items()):
                held = entry.get("heldout")
                if held:
                    key = op_class if dtype_group(dtype) == "16-bit" else f"{op_class} {dtype}"
                    rows[key] = {"calibrated": held["calibrated"], "datasheet": held.get("datasheet", _NO_ROWS)}
        for kind, entries in sorted((profile.doc.get("collectives") or {}).items()):
            for entry in entries:
                held = entry.get("heldout")
                if held:
                    link = entry.get("link")
                    key = f"{kind} x{entry.get('group_size')}" + (f"[{link}]" if link and link != "nvswitch" else "")
                    rows[key] = {"calibrated": held["calibrated"], "datasheet": held.get("datasheet", _NO_ROWS)}
        table[profile.doc.get("device", name)] = rows
    return table


_NO_ROWS = {"median_ape": float("nan"), "p90_ape": float("nan"), "max_ape": float("nan"), "n": 0}


def format_table(table: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """Plain-text error table: one line per device and op class."""
    head = (f"{'device':15} {'op class':38} {'n':>6} | {'calibrated med/p90/max APE %':>29} | "
            f"{'datasheet med/p90/max APE %':>29} | target")
    lines = [head, "-" * len(head)]

    def fmt(s: Mapping[str, Any]) -> str:
        if not s["n"]:
            return f"{'(no rows)':>29}"
        return f"{s['median_ape']:>8.1f} {s['p90_ape']:>9.1f} {s['max_ape']:>10.1f}"

    for device, rows in table.items():
        for key, stats in rows.items():
            lines.append(f"{device:15} {key:38} {stats['calibrated']['n']:>6} | {fmt(stats['calibrated'])} | "
                         f"{fmt(stats['datasheet'])} | {target_status(key, stats, device)}")
    return "\n".join(lines)


def plot_scatter(rows: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Log-log predicted-vs-measured PNG per device (held-out rows; datasheet in grey)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for device, part in rows.groupby("device"):
        keys = [k for k in part["key"].unique() if "cross-source" not in k]
        cols = min(4, max(1, len(keys)))
        nrows = -(-len(keys) // cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3.6 * nrows), squeeze=False)
        for ax, key in zip(axes.flat, keys, strict=False):
            p = part[part["key"] == key]
            lo = max(p["measured_s"].min(), 1e-7)
            hi = p["measured_s"].max()
            ax.scatter(p["measured_s"], p["datasheet_s"], s=2, c="0.7", label="datasheet", rasterized=True)
            ax.scatter(p["measured_s"], p["calibrated_s"], s=2, c="tab:blue", label="calibrated", rasterized=True)
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(key, fontsize=9)
            ax.set_xlabel("measured s")
            ax.set_ylabel("predicted s")
        for ax in list(axes.flat)[len(keys):]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=7, markerscale=4)
        fig.suptitle(f"{device}: held-out predicted vs measured")
        fig.tight_layout()
        path = out_dir / f"heldout_{device}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def is_collective(op_class: str) -> bool:
    return op_class in COLLECTIVES
