"""Fit efficiency curves to measured kernels and write a calibrated device profile.

A *dataset* is the rows of one device, op class, numeric format and origin
(``aiconfigurator``, ``vidur`` or our own ``measure``); collectives are further
split by operation variant, group size and link. Each dataset gets the curve
family of :mod:`hwmodels.calibration.curves` for its op class, fitted with
``scipy.optimize.least_squares`` on the LOG of predicted / measured time, so a
2 us kernel and a 20 ms one weigh the same and the fit minimises relative error;
plain least squares (a robust loss was tried and dropped: it treats whole
regimes the curve fits badly, e.g. decode at tiny contexts, as outliers and
ignores them). GEMM and attention fits then add a residual surface fitted on the
same rows (:mod:`hwmodels.calibration.correction`). Efficiencies are fractions of the device's datasheet peaks
(catalog devices) or, for a device with no datasheet (this machine's CPU), of
the best rate seen in the measurements -- the profile says which.

The profile (YAML) is what the cost model reads: per op class and format the
curve's form and parameters, and for collectives alpha-beta per group size, each
stating the rows, source, kernel and library versions it was fitted on and its
held-out error (from :mod:`hwmodels.calibration.validate`).
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from capsim.errors import CapsimError
from hwmodels.calibration import correction, curves
from hwmodels.calibration.profile import dump_yaml
from hwmodels.calibration.schema import COLLECTIVES
from hwmodels.calibration.work import attention_inputs, element_bytes, gemm_element_bytes

ORIGIN_PREFERENCE: tuple[str, ...] = ("measure", "aiconfigurator", "vidur")
"""Which source a profile uses when several measured the same op class (first wins):
our own measurements, then aiconfigurator (newest kernels, CUDA graphs), then vidur."""

MAX_FIT_ROWS = 12_000
"""Largest training set per fit; bigger ones are thinned to every k-th row (deterministic)."""

COMPUTE_CLASSES = ("gemm", "attention_prefill", "attention_decode", "elementwise", "memcpy")
PROFILE_FORMAT = "capsim-calibration-profile/1"


def origin_of(sources: pd.Series) -> pd.Series:
    """``aiconfigurator`` / ``vidur`` / ``measure`` from the ``source`` column's first path part."""
    first = sources.astype(str).str.split("/", n=1).str[0].str.split(" ", n=1).str[0]
    return first.where(first.isin(["aiconfigurator", "vidur"]), "measure")


def dataset_keys(df: pd.DataFrame) -> pd.DataFrame:
    """The columns that define a dataset, one row per measurement."""
    keys = pd.DataFrame({"device": df["device"], "op_class": df["op_class"], "dtype": df["dtype"]})
    keys["origin"] = origin_of(df["source"])
    coll = df["op_class"].isin(COLLECTIVES + ("host_copy",))
    by_op = coll | df["op_class"].isin(["elementwise", "memcpy"])
    keys["op"] = np.where(by_op, df["op"], "")
    keys["group_size"] = np.where(coll, df["group_size"].fillna(0), 0).astype(int)
    keys["link"] = np.where(coll, df["link"], "")
    return keys


# ------------------------------------------------------------------------- peaks


@dataclass(frozen=True)
class Peaks:
    """Reference rates efficiencies are fractions of."""

    flops: Mapping[str, float]  # FLOP/s by format
    bandwidth: float  # bytes/s
    basis: str  # "datasheet (hwmodels/devices.yaml)" or "measured maximum ..."

    def for_dtype(self, dtype: str) -> float:
        if dtype in self.flops:
            return self.flops[dtype]
        for alt in ({"bf16": "fp16", "fp16": "bf16"}.get(dtype, ""), "bf16", "fp32"):
            if alt in self.flops:
                return self.flops[alt]
        return max(self.flops.values())


def reference_peaks(device: str, df: pd.DataFrame | None = None) -> Peaks | None:
    """Datasheet peaks of a catalog device; else the best rates measured on it; else None."""
    from capsim.registry import normalise_name
    from hwmodels.device import DEVICES

    if device in DEVICES:
        spec = DEVICES.get(device)
        return Peaks({k: v * 1e12 for k, v in spec.peak_tflops.items()}, spec.memory_bandwidth,
                     f"datasheet ({spec.name} in hwmodels/devices.yaml)")
    if df is None:
        return None
    from hwmodels.calibration.work import flops_and_bytes

    rows = df[df["device"].map(normalise_name) == normalise_name(device)]
    if rows.empty:
        return None
    flops, nbytes = flops_and_bytes(rows)
    t = rows["measured_s"].to_numpy()
    gemm = (rows["op_class"] == "gemm").to_numpy()
    mem = rows["op_class"].isin(["memcpy", "elementwise"]).to_numpy()
    if not gemm.any() or not mem.any():
        return None
    peak_flops = {d: float(np.max(flops[gemm & (rows["dtype"] == d).to_numpy()] / t[gemm & (rows["dtype"] == d).to_numpy()]))
                  for d in rows.loc[gemm, "dtype"].unique()}
    bw = float(np.max(nbytes[mem] / t[mem]))
    return Peaks(peak_flops, bw, "measured maximum on this device (no datasheet): best GEMM FLOP/s per format and "
                                 "best copy/elementwise bytes/s in the measurements")


# ------------------------------------------------------------------------ inputs


def curve_inputs(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """Named input arrays of a one-op-class table, as the curve families take them."""
    cls = df["op_class"].iat[0]
    eb = np.array([element_bytes(d) for d in df["dtype"]], dtype=float)
    if cls == "gemm":
        act, weight = gemm_element_bytes(eb)
        return {"m": df["m"].to_numpy(float), "n": df["n"].to_numpy(float), "k": df["k"].to_numpy(float),
                "act_bytes": act, "weight_bytes": weight}
    if cls.startswith("attention"):
        x = attention_inputs(df)
        # Every measured row was timed by replaying the kernel on the same buffers (warm L2).
        return {**x, "act_bytes": eb, "kv_bytes": eb, "l2_warm": np.ones(len(df))}
    return {"nbytes": df["nbytes"].to_numpy(float)}


# -------------------------------------------------------------------------- fits


@dataclass
class FittedCurve:
    """One fitted curve and what it was fitted on."""

    form: str
    params: dict[str, Any]
    rows: int
    rms_log_error: float
    info: dict[str, Any] = field(default_factory=dict)

    def predict(self, df: pd.DataFrame, peaks: Peaks | None) -> np.ndarray:
        fam = curves.family(self.form)
        x = curve_inputs(df)
        dtype = df["dtype"].iat[0] if len(df) else "bf16"
        peak = peaks.for_dtype(dtype) if peaks else 1.0
        bw = peaks.bandwidth if peaks else 1.0
        return np.asarray(fam.predict(self.params, x, peak, bw), dtype=float)


def device_facts(device: str) -> dict[str, float]:
    """Catalog facts some curve families use unfitted: SM count and L2 bytes (``hwmodels/devices.yaml``).

    A device outside the catalog (this machine's CPU) gets one "SM" and no L2,
    which reduces the wave and cache terms to nothing.
    """
    from hwmodels.device import DEVICES

    if device in DEVICES:
        spec = DEVICES.get(device)
        return {"sms": float(spec.num_sms or 1), "l2_bytes": float((spec.sram_mib or 0.0) * 2**20)}
    return {"sms": 1.0, "l2_bytes": 0.0}


KERNEL_FACT_DEFAULTS: Mapping[str, float] = {"ctas_per_sm": 1.0, "kv_block_cap": 0.0, "q_tile_rows": 0.0,
                                             "serial_merge": 0.0, "swap_copy": 0.0, "cache_write": 0.0}
"""What the attention curves assume of a kernel they have no entry for (FlashAttention-3 and everything else)."""

KERNEL_FACTS: Mapping[str, Mapping[str, float]] = {
    "vllm_flash_attn": {"ctas_per_sm": 2.0, "kv_block_cap": 1.0, "q_tile_rows": 64.0, "serial_merge": 1.0,
                        "swap_copy": 1.0, "cache_write": 1.0},
}
"""Facts of the kernel that timed a table's rows, read from its source, not fitted.

FlashAttention-2 (vLLM's ``vllm_flash_attn`` build, the A100 tables), ``csrc/flash_attn/flash_api.cpp``:

* ``ctas_per_sm`` = 2: ``set_params_splitkv`` calls ``num_splits_heuristic`` with twice
  the SM count, because its split-KV kernel runs 128-thread blocks, two per SM;
* ``kv_block_cap`` = 1: it passes ``num_n_blocks = ceil(max_seqlen_k / block_n)``, which
  caps the split count and makes it skip counts that leave the blocks per split
  unchanged, so a short context is split less and a one-block context not at all
  (:func:`hwmodels.calibration.attention_curves.fa_splits`);
* ``q_tile_rows`` = 64: with one query token per sequence the query heads of a KV
  head become the query rows (``seqlenq_ngroups_swapped``) of a ``kBlockM`` = 64-row
  tile, so the tensor-core work is padded to 64 rows
  (:func:`hwmodels.calibration.attention_curves.decode_query_rows`);
* ``serial_merge`` = 1: its combine kernel walks the splits one after another, so a
  split step pays ``kappa_m_s`` per split (a fitted parameter, held at 0 for kernels
  without this fact);
* ``swap_copy`` = 1: its varlen entry point makes that swap with
  ``q.reshape({b, h_kv, g, d}).transpose(1, 2).reshape({b * g, h_kv, d})``, which is a
  view only when ``b = 1`` or ``h_kv = 1``; otherwise torch copies the query in a
  kernel of its own before the attention kernel, a fixed ``t_swap_s`` (fitted, held
  at 0 without this fact) plus the copy's bytes
  (:func:`hwmodels.calibration.attention_curves.decode_swap_copy`;
  ``docs/calibration-decisions.md`` 21);
* ``cache_write`` = 1: the measured call (aiconfigurator's vLLM collector replays
  ``FlashAttentionImpl.forward``) first writes the new keys and values into the paged
  cache with ``reshape_and_cache_flash``, one CTA per token, before the attention
  kernel; the prefill curve adds that kernel's time
  (:func:`hwmodels.calibration.attention_curves.cache_write_time`,
  ``docs/calibration-decisions.md`` 24). Only this build: on the FlashAttention-3 tables
  the write's cost is not additive.
"""


GEMM_ROW_BANDS: Mapping[str, tuple[tuple[float, float, float, float], ...]] = {
    "CutlassFP8ScaledMMLinearKernel": (
        (1.0, 16.0, 0.0, 16.0), (17.0, 64.0, 0.0, 64.0), (65.0, 128.0, 0.0, 128.0),
        (8192.0, math.inf, 6144.0, 512.0), (129.0, math.inf, 0.0, 256.0),
    ),
}
"""Row bands ``(m_min, m_max, k_min, band)``, first match wins, of GEMM kernels that switch tiles by ``m``.

Read from the library's source, not fitted. vLLM's Hopper fp8 per-tensor path
(``CutlassFP8ScaledMMLinearKernel``; ``csrc/quantization/cutlass_w8a8/c3x/
scaled_mm_sm90_fp8_dispatch.cuh``): m <= 16 and m <= 64 run with A and B
swapped, the rows on the 16- or 64-wide tile side; m <= 128 a 64-row tile in a
cluster of 2 CTAs along m; above that a 128-row tile in a cluster of 2 (256 rows),
and 256-row tiles in a cluster of 2 (512 rows) from m = 8192 when k >= 6144.
The residual surface of such a kernel gets the band's fill as a fourth axis
(``correction.band_fill``, kind ``gemm-banded``; ``docs/calibration-decisions.md`` 16).
"""


def _one_kernels_entry(df: pd.DataFrame, entry: Callable[[str | None], Any], differ_in: str) -> Any:
    """``entry(kernel)`` for the kernel that timed a dataset's rows (``entry(None)`` when the rows name none).

    Why: facts read from one kernel's source cannot describe rows another kernel timed, so
    rows whose kernels have different entries are refused rather than fitted together.
    """
    kernels = set(df["kernel"].astype(str)) if "kernel" in df else set()
    found = {entry(k) for k in kernels} or {entry(None)}
    if len(found) > 1:
        raise CapsimError(f"rows from kernels with different {differ_in} ({', '.join(sorted(kernels))})",
                          where=f"fit {df['device'].iat[0]} {df['op_class'].iat[0]}",
                          fix="fit each kernel's rows separately (one measurement file per kernel)")
    return found.pop()


def gemm_row_bands(df: pd.DataFrame) -> tuple[tuple[float, float, float, float], ...] | None:
    """The :data:`GEMM_ROW_BANDS` of the kernel that timed a GEMM dataset's rows (None if it has none)."""
    return _one_kernels_entry(df, GEMM_ROW_BANDS.get, "row bands")


def kernel_facts(df: pd.DataFrame) -> dict[str, float]:
    """The :data:`KERNEL_FACTS` of the kernel that produced a dataset's rows (defaults where it has none)."""
    def facts(kernel: str | None) -> tuple[tuple[str, float], ...]:
        return tuple(sorted({**KERNEL_FACT_DEFAULTS, **KERNEL_FACTS.get(kernel or "", {})}.items()))

    return dict(_one_kernels_entry(df, facts, "split heuristics"))


def _thin(n: int, limit: int) -> np.ndarray:
    if n <= limit:
        return np.arange(n)
    return np.linspace(0, n - 1, limit).round().astype(int)


def _starting_points(fam: curves.Family, x: dict, t: np.ndarray, peak: float, bw: float) -> list[np.ndarray]:
    """The family's defaults, plus a variant with t0 / alpha set from the data's fastest rows."""
    base = []
    for spec in fam.params:
        v = spec.init
        base.append(math.log(v) if spec.log else v)
    starts = [np.array(base)]
    fastest = float(np.percentile(t, 1))
    alt = list(base)
    for i, spec in enumerate(fam.params):
        if spec.name in ("t0_s", "alpha1_s"):
            alt[i] = min(max(0.8 * fastest, spec.lo), spec.hi)
    starts.append(np.array(alt))
    for override in fam.extra_starts:
        extra = list(alt)
        for i, spec in enumerate(fam.params):
            if spec.name in override:
                v = override[spec.name]
                extra[i] = math.log(v) if spec.log else v
        starts.append(np.array(extra))
    if fam.form.startswith("alpha-beta-"):
        extra_q = ("q",) if any(spec.name == "q" for spec in fam.params) else ()
        for line in _alpha_beta_starts(x["nbytes"], t):
            # v2: each line start once as v1 (q = 1) and once with half-overlapped latency (q = 2).
            starts.extend([np.append(line, q) for q in (1.0, 2.0)] if extra_q else [line])
    return starts


def _alpha_beta_starts(nbytes: np.ndarray, t: np.ndarray) -> list[np.ndarray]:
    """Starts from the single relative-error line ``t ~ alpha + bytes/beta``: that line alone (all three
    pairs equal, so the fit can only improve on it) and three pairs spread around it."""
    a_mat = np.column_stack([np.ones_like(t), nbytes]) / t[:, None]
    (alpha, inv_beta), *_ = np.linalg.lstsq(a_mat, np.ones_like(t), rcond=None)
    alpha = float(min(max(alpha, 1e-7), 0.5))
    beta = float(min(max(1.0 / inv_beta if inv_beta > 0 else 1e11, 1e4), 1e13))
    out = []
    for pairs in ([(alpha, beta)] * 3, [(alpha * 0.5, beta * 0.3), (alpha, beta), (alpha * 3.0, beta * 2.0)]):
        out.append(np.array([v for a, b in pairs for v in (a, math.log(b))]))
    return out


def fit_curve(form: str, df: pd.DataFrame, peaks: Peaks | None, *, max_rows: int = MAX_FIT_ROWS,
              correct: bool = True) -> FittedCurve:
    """Fit the ``form`` family to the rows of ``df`` (one dataset); returns the best of a few starts.

    Then, with ``correct``, for the families that can carry one (``correction.KIND_OF_FORM``),
    a residual surface on top of the physical curve, fitted on the same rows
    (:mod:`hwmodels.calibration.correction`).
    """
    from scipy.optimize import least_squares

    fam = curves.family(form)
    if len(df) < len(fam.params) + 1:
        raise CapsimError(
            f"only {len(df)} measurements for a {len(fam.params)}-parameter {form} curve",
            where=f"fit {df['device'].iat[0]} {df['op_class'].iat[0]}" if len(df) else "fit",
            fix="measure more shapes (drop --quick) or leave this op class uncalibrated",
        )
    take = _thin(len(df), max_rows)
    sub = df.iloc[take]
    x = curve_inputs(sub)
    t = sub["measured_s"].to_numpy(float)
    dtype = sub["dtype"].iat[0]
    peak = peaks.for_dtype(dtype) if peaks else 1.0
    bw = peaks.bandwidth if peaks else 1.0
    table_keys: list[float] = []
    if fam.table_params:
        table_keys = sorted({float(d) for d in x["head_dim"]})
    log_t = np.log(t)
    facts = {k: v for k, v in device_facts(str(df["device"].iat[0])).items() if k in fam.device_facts}
    if any(name in KERNEL_FACT_DEFAULTS for name in fam.device_facts):
        facts.update({k: v for k, v in kernel_facts(df).items() if k in fam.device_facts})
    # A parameter whose term the kernel does not have is held at 0, not fitted (``Family.gated_by``).
    held = {name: 0.0 for name, fact, floor in fam.gated_by if not facts.get(fact, 0.0) > floor}
    free = [i for i, spec in enumerate(fam.params) if spec.name not in held]
    specs = [fam.params[i] for i in free]
    lo = [math.log(s.lo) if s.log else s.lo for s in specs] + [0.02] * len(table_keys)
    hi = [math.log(s.hi) if s.log else s.hi for s in specs] + [1.0] * len(table_keys)

    def residuals(vec: np.ndarray) -> np.ndarray:
        p = {**fam.vector_to_params(vec, table_keys, held), **facts}
        with np.errstate(all="ignore"):
            pred = fam.predict(p, x, peak, bw)
            r = np.log(np.maximum(pred, 1e-15)) - log_t
        return np.where(np.isfinite(r), r, 10.0)

    best = None
    for start in _starting_points(fam, x, t, peak, bw):
        vec0 = np.concatenate([start[free], np.full(len(table_keys), 0.6)])
        vec0 = np.clip(vec0, np.array(lo) + 1e-9, np.array(hi) - 1e-9)
        res = least_squares(residuals, vec0, bounds=(lo, hi), x_scale="jac", max_nfev=400 * len(vec0))
        if best is None or res.cost < best.cost:
            best = res
    params = _round_params({**fam.vector_to_params(best.x, table_keys, held), **facts})
    kind = correction.KIND_OF_FORM.get(form) if correct else None
    if kind:
        params["correction"] = fit_correction(kind, params, fam, x, sub, log_t, peak, bw)
    with np.errstate(all="ignore"):
        pred = fam.predict(params, x, peak, bw)
    rms = float(np.sqrt(np.mean((np.log(np.maximum(pred, 1e-15)) - log_t) ** 2)))
    return FittedCurve(form, params, len(df), rms)


def fit_correction(kind: str, params: Mapping[str, Any], fam: curves.Family, x: Mapping[str, np.ndarray],
                   rows: pd.DataFrame, log_t: np.ndarray, peak: float, bw: float) -> dict[str, Any]:
    """The residual surface of a fitted physical curve on its fit rows (see :mod:`hwmodels.calibration.correction`)."""
    if kind == "decode":
        from hwmodels.calibration.attention_curves import decode_v2_parts

        parts = decode_v2_parts(params, x["seqs"], x["context"], x["heads"], x["kv_heads"], x["head_dim"],
                                x["act_bytes"], x["kv_bytes"], peak, bw, x["l2_warm"])
        corr, _ = correction.fit_decode(correction.features(kind, x), parts, log_t, shape_groups(rows))
    else:
        with np.errstate(all="ignore"):
            resid = log_t - np.log(np.maximum(fam.predict(params, x, peak, bw), 1e-15))
        if kind == "prefill" and np.unique(x["head_dim"]).size > 1:
            kind = "prefill-dh"  # several head sizes: the surface gets a head-size axis (decision 20)
        bands = gemm_row_bands(rows) if kind == "gemm" else None
        if bands:
            kind, x = "gemm-banded", {**x, "fill": correction.band_fill(bands, x["m"], x["k"])}
        corr, _ = correction.fit(kind, correction.features(kind, x), resid, shape_groups(rows))
        if bands:
            corr["row_bands"] = [list(b) for b in bands]
    corr["fitted_on"] = (f"log(measured / physical) of the {len(rows)} fit rows of this dataset; curvature "
                         "penalty chosen by an inner 2-fold split of those rows by shape group")
    return corr


def shape_groups(df: pd.DataFrame) -> np.ndarray:
    """A label per row naming its shape group: the weight shape (GEMM) or head configuration (attention).

    The residual surface's inner split alternates over these, as the held-out
    split does over the whole table (:mod:`hwmodels.calibration.folds`).
    """
    if df["op_class"].iat[0] == "gemm":
        cols = ["n", "k"]
    else:
        cols = ["heads", "kv_heads", "head_dim"]
    v = df[cols].fillna(0).to_numpy(float)
    return v @ np.array([1e12, 1e6, 1.0][: len(cols)])


def _round_params(p: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in p.items():
        if k == "correction":
            out[k] = v
            continue
        out[k] = {int(kk): float(f"{vv:.6g}") for kk, vv in v.items()} if isinstance(v, dict) else float(f"{v:.6g}")
    return out


def describe_rows(df: pd.DataFrame) -> str:
    """What a dataset holds, in one line for the profile: files, kernels, versions, models, shape ranges.

    One string rather than a nested mapping: profiles are parsed at the start
    of every simulation, and YAML parsing time grows with the node count.
    """
    files = sorted({s.rsplit(" row ", 1)[0] for s in df["source"].astype(str)})
    ranges = []
    for col in ("m", "n", "k", "batch", "seq", "context", "heads", "kv_heads", "head_dim", "nbytes", "tokens", "tp"):
        v = df[col].dropna()
        if len(v):
            ranges.append(f"{col} {v.min():.6g}..{v.max():.6g}")
    models = sorted(m for m in df["model"].astype(str).unique() if m)
    parts = [
        f"{len(df)} rows",
        "files: " + ", ".join(files[:6]) + (f" (+{len(files) - 6} more)" if len(files) > 6 else ""),
        "kernels: " + ", ".join(sorted({k for k in df["kernel"].astype(str) if k})[:4]),
        "versions: " + ", ".join(sorted({v for v in df["versions"].astype(str) if v})[:3]),
    ]
    if models:
        parts.append("models: " + ", ".join(models))
    parts.append("shapes: " + ", ".join(ranges))
    parts.append(f"measured {df['measured_s'].min():.3g}..{df['measured_s'].max():.3g} s")
    return "; ".join(parts)


# ----------------------------------------------------------------------- datasets


@dataclass(frozen=True)
class Dataset:
    """Rows of one device / op class / format / origin (and collective variant)."""

    device: str
    op_class: str
    dtype: str
    origin: str
    op: str
    group_size: int
    link: str
    index: pd.Index

    @property
    def is_collective(self) -> bool:
        return self.op_class in COLLECTIVES or self.op_class == "host_copy"

    @property
    def form(self) -> str:
        return curves.FORM_FOR_OP_CLASS[self.op_class]

    @property
    def profile_key(self) -> str:
        """Key under ``operators`` in a profile: the op class, or ``elementwise:<op>``."""
        return f"{self.op_class}:{self.op}" if self.op_class in ("elementwise", "memcpy") else self.op_class


def datasets(df: pd.DataFrame) -> list[Dataset]:
    """Split a measurement table into fittable datasets (CPU-overhead rows are overheads.py's job)."""
    keys = dataset_keys(df)
    keys = keys[df["op_class"] != "cpu_overhead"]
    out = []
    for key, idx in keys.groupby(list(keys.columns), sort=True).groups.items():
        device, op_class, dtype, origin, op, group_size, link = key
        out.append(Dataset(device, op_class, dtype, origin, op, int(group_size), link, idx))
    return out


def dtype_group(dtype: str) -> str:
    """bf16 and fp16 run at the same peak with the same bytes: one group for choosing a source."""
    return "16-bit" if dtype in ("bf16", "fp16") else dtype


def is_primary(ds: Dataset, all_sets: list[Dataset]) -> bool:
    """Whether ``ds`` is the source the profile uses for its device / op class (and op) / format group."""
    mine = (ds.device, ds.profile_key, dtype_group(ds.dtype), ds.op, ds.group_size, ds.link)
    rivals = {d.origin for d in all_sets
              if (d.device, d.profile_key, dtype_group(d.dtype), d.op, d.group_size, d.link) == mine}
    for origin in ORIGIN_PREFERENCE:
        if origin in rivals:
            return ds.origin == origin
    return True


# ------------------------------------------------------------------------ profile


def build_profile(
    df: pd.DataFrame,
    device: str,
    *,
    heldout: Mapping[tuple, Mapping[str, Any]] | None = None,
    split_note: str = "",
    progress: Callable[[int, int, str], None] | None = None,
) -> dict[str, Any]:
    """Fit every dataset of ``device`` on ALL its rows and return the profile document.

    ``progress(done, total, dataset)`` is called before each dataset's fit and once at the end.

    ``heldout`` maps a dataset key (see :func:`heldout_key`) to its held-out error
    summary from :func:`hwmodels.calibration.validate.cross_validate`.
    """
    rows = df[df["device"] == device]
    if rows.empty:
        raise CapsimError(
            f"no measurements for device {device!r}",
            where="calibrate fit",
            fix=f"devices in the table: {', '.join(sorted(df['device'].unique()))}",
        )
    peaks = reference_peaks(device, df)
    sets = datasets(rows)
    operators: dict[str, dict[str, Any]] = {}
    alternatives: dict[str, dict[str, Any]] = {}
    collectives: dict[str, list[dict[str, Any]]] = {}
    skipped: list[str] = []
    for i, ds in enumerate(sets):
        if progress is not None:
            progress(i, len(sets), f"{ds.op_class}/{ds.dtype}")
        part = df.loc[ds.index]
        if not ds.is_collective and peaks is None:
            skipped.append(f"{ds.op_class}/{ds.dtype}/{ds.origin}: no datasheet peaks and no GEMM+copy measurements")
            continue
        try:
            fitted = fit_curve(ds.form, part, peaks)
        except CapsimError as err:
            skipped.append(f"{ds.op_class}/{ds.dtype}/{ds.origin}/{ds.op}/{ds.group_size}: {err.problem}")
            continue
        entry: dict[str, Any] = {
            "form": fitted.form,
            "params": fitted.params,
            "source": ds.origin,
            "rows": fitted.rows,
            "rms_log_error": round(fitted.rms_log_error, 4),
            "fitted_on": describe_rows(part),
        }
        held = (heldout or {}).get(heldout_key(ds))
        if held:
            entry["heldout"] = held
        if ds.is_collective:
            entry = {"op": ds.op, "dtype": ds.dtype, "group_size": ds.group_size, "link": ds.link, **entry}
            collectives.setdefault(ds.op_class, []).append(entry)
        elif is_primary(ds, sets):
            operators.setdefault(ds.profile_key, {})[ds.dtype] = entry
        else:
            alternatives.setdefault(f"{ds.profile_key}@{ds.origin}", {})[ds.dtype] = entry
    origins = sorted({ds.origin for ds in sets})
    doc: dict[str, Any] = {
        "format": PROFILE_FORMAT,
        "device": device,
        "generated": f"capsim calibrate fit, {_dt.date.today().isoformat()}",
        "fitted_on": (
            f"{len(rows)} measured kernels of {device} from {', '.join(origins)}; every curve on ALL rows of its "
            "dataset (see each entry's fitted_on), held-out errors from 2-fold cross-validation"
        ),
        "split": split_note,
        "peaks": {
            "basis": peaks.basis if peaks else "none",
            "flops_per_s": {k: float(f"{v:.6g}") for k, v in (peaks.flops.items() if peaks else [])},
            "memory_bandwidth_Bps": float(f"{peaks.bandwidth:.6g}") if peaks else None,
        },
        "operators": operators,
        "collectives": collectives,
    }
    if alternatives:
        doc["alternatives"] = alternatives
    if skipped:
        doc["not_calibrated"] = skipped
    if progress is not None:
        progress(len(sets), len(sets), "done")
    return doc


def heldout_key(ds: Dataset) -> tuple:
    return (ds.device, ds.op_class, ds.dtype, ds.origin, ds.op, ds.group_size, ds.link)


def write_profile(doc: Mapping[str, Any], path: str | Path) -> Path:
    """Write a profile document as YAML (keys in insertion order)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (
        "# capsim calibrated device profile -- written by `capsim calibrate fit`; do not edit by hand.\n"
        "# Curves: hwmodels/calibration/curves.py. Provenance and held-out errors are in each entry.\n"
    )
    path.write_text(header + dump_yaml(doc), encoding="utf-8")
    return path
