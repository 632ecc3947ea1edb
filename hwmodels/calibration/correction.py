"""A fitted residual surface on top of a physical curve: ``time = physical * exp(g(features))``.

Why: the physical families (:mod:`hwmodels.calibration.curves`,
:mod:`hwmodels.calibration.attention_curves`) follow tiles, waves and split-KV,
but the libraries also switch kernel configurations by size (cuBLAS / CUTLASS
tile shapes by ``m``, ``n`` and ``k``; FlashAttention's heuristics by tokens per
sequence and head grouping), and those switches leave a residual that is smooth
in the logarithm of a few sizes that every shape has. ``g`` is that residual:
the log of measured / physical time on the TRAINING rows, as a small grid over
log2 of those sizes, read by multilinear interpolation (clamped at the grid's
edges, so it never extrapolates a trend past the measured sizes).

Fit: regularised least squares on the grid values ``v``:
``|A v - r|^2 / N + lam |D v|^2 / |D| + RIDGE |v|^2 / |v|``, ``A`` the
interpolation weights of the rows, ``r`` their log residuals, ``D`` the second
differences along every axis (curvature, so a cell with few rows follows its
neighbours' trend), the small ridge pulling cells with no rows towards
"no correction". ``lam`` is chosen by an inner 2-fold split of the TRAINING
rows by shape group (weight shape for GEMM, head configuration for attention)
-- the held-out fold is never consulted.

Features (``kind`` of a correction):

* ``gemm``: ``m`` (tokens), ``n``, ``k``. Weight shapes interpolate between
  fitted grid neighbours in ``(n, k)``.
* ``gemm-banded``: the same plus the fill of the kernel's row band
  (:func:`band_fill`), for kernels whose library computes the rows in bands
  of a known width that switch with ``m`` (``fit.GEMM_ROW_BANDS``); the bands
  are stored with the grid (``row_bands``) so a profile prices on its own.
* ``prefill``: tokens per sequence ``q`` (recovered from the batch sums by
  :func:`hwmodels.calibration.attention_curves.prefill_shape`), the (sequence,
  query head) pairs ``n * h`` -- the kernel's parallel work -- and the query
  heads per KV head (FlashAttention packs a group into one tile for short queries),
  with MHA on a knot of its own (:func:`group_feature`).
* ``prefill-dh``: the same plus the head size, for tables that measure several
  (FlashAttention-3 picks its tile sizes per head size, so a grouping regime's
  residual differs by head size; ``docs/calibration-decisions.md`` 20). A
  table with one head size keeps the three-axis ``prefill`` surface.
* ``decode``: ``u = batch * kv_heads`` (the CTAs before split-KV), the group size
  ``h / h_kv`` and the head size. (Decode keeps MHA on the group-1 knot of a
  smooth axis: a separate MHA knot, tried for prefill and decode together in a
  nested split of the training rows, helped every prefill dataset and none of
  decode's consistently -- ``docs/calibration-decisions.md``.) None depends on the context, and the decode
  surface is TWO grids (:func:`fit_decode`, kind ``decode-lines``): one factor on
  the step's fixed, flat and base terms and one on its per-context-token slope,
  so a run of steps stays exactly two lines in the summed context
  (``simulator/costmodel/iteration.py``) while short- and long-context rows of a
  batch can still be corrected differently.

The grid is stored in the curve's params as ``correction``: ``axes`` (name,
first knot, knot step, knot count; knots in log2 of the feature) and ``log_factor``
(nested lists, last axis innermost), ``lambda`` (the penalty chosen) and
``fitted_on``. Scalar and array evaluation share :func:`factor`, a hand-written
multilinear lookup (numpy's interpolators cost more per call than the whole
scalar price); the pricers first interpolate away the axes their shape fixes
(:func:`reduce`), leaving a 1-D or 2-D lookup per row.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from capsim.errors import CapsimError


@dataclass(frozen=True)
class GridAxis:
    """One axis: knots at ``log2(x) = first + i * step`` for ``i < count``.

    ``smooth_from``: the curvature penalty only links knots from this index on,
    so the knots before it are separate regimes, not points on a trend (the
    MHA knot of the group axis, see :func:`group_feature`).
    """

    name: str
    first: float
    step: float
    count: int
    smooth_from: int = 0


@dataclass(frozen=True)
class Design:
    """Which features a correction uses and its grid."""

    kind: str  # gemm | prefill | decode
    axes: tuple[GridAxis, ...]


DESIGNS: dict[str, Design] = {
    # m 1..16384 every 2x (the tile-size switches are steps at powers of two in 16..256 tokens, which knots 4x
    # apart smeared over two octaves); n, k 64..16384 every 2x (decision 25).
    "gemm": Design("gemm", (GridAxis("log2_m", 0.0, 1.0, 15), GridAxis("log2_n", 6.0, 1.0, 9),
                            GridAxis("log2_k", 6.0, 1.0, 9))),
    # gemm plus the fill of the kernel's row band (see band_fill): 0.25, 0.5, 1.
    "gemm-banded": Design("gemm-banded", (GridAxis("log2_m", 0.0, 1.0, 15), GridAxis("log2_n", 6.0, 1.0, 9),
                                          GridAxis("log2_k", 6.0, 1.0, 9), GridAxis("log2_fill", -2.0, 1.0, 3))),
    # q 1..16384 every 2x (128-row tiles: steps at powers of two); (sequence, head) pairs 1..16384 every 4x;
    # group: MHA on a knot of its own (0.5, see group_feature), then query heads per KV head 2, 8, 32.
    "prefill": Design("prefill", (GridAxis("log2_q", 0.0, 1.0, 15), GridAxis("log2_seq_heads", 0.0, 2.0, 8),
                                  GridAxis("log2_group", -1.0, 2.0, 4, smooth_from=1))),
    # prefill plus the head size 64, 128, 256 (192 interpolated) for tables with several head sizes.
    "prefill-dh": Design("prefill-dh", (GridAxis("log2_q", 0.0, 1.0, 15), GridAxis("log2_seq_heads", 0.0, 2.0, 8),
                                        GridAxis("log2_group", -1.0, 2.0, 4, smooth_from=1),
                                        GridAxis("log2_head_dim", 6.0, 1.0, 3))),
    # u 1..16384 every 4x; query heads per KV head 1, 4, 16; head size 64, 128, 256.
    "decode": Design("decode", (GridAxis("log2_units", 0.0, 2.0, 8), GridAxis("log2_group", 0.0, 2.0, 3),
                                GridAxis("log2_head_dim", 6.0, 1.0, 3))),
}
"""The grid of each correction kind (resolution by the data's size ranges, see the module docstring)."""

KIND_OF_FORM: dict[str, str] = {"gemm-v1": "gemm", "attention-prefill-v2": "prefill", "attention-decode-v2": "decode"}
"""The correction kind each physical family can carry."""

LAMBDAS = (1e-4, 1e-3, 0.01, 0.1, 1.0, 10.0)
"""Curvature penalties tried by the inner split of the training rows."""

RIDGE = 1e-3
"""Pull of every grid value towards 0 (no correction): only decides cells no row reaches."""


# ------------------------------------------------------------------------ features


def features(kind: str, x: Mapping[str, Any]):
    """The raw (not log) features of ``kind`` from a curve's named inputs (floats or arrays)."""
    if kind == "gemm":
        return (x["m"], x["n"], x["k"])
    if kind == "gemm-banded":
        return (x["m"], x["n"], x["k"], x["fill"])
    if kind in ("prefill", "prefill-dh"):
        from hwmodels.calibration.attention_curves import prefill_shape

        kv_read = x["kv_read"]
        kv_read = np.maximum(kv_read, x["tokens"]) if not isinstance(kv_read, float | int) else max(kv_read, x["tokens"])
        q, _, n = prefill_shape(x["tokens"], x["work"], kv_read)
        base = (q, n * x["heads"], group_feature(x["heads"], x["kv_heads"]))
        return (*base, x["head_dim"]) if kind == "prefill-dh" else base
    if kind == "decode":
        return (x["seqs"] * x["kv_heads"], group_feature(x["heads"], x["kv_heads"]), x["head_dim"])
    raise CapsimError(f"unknown correction kind {kind!r}", where="calibration profile",
                      fix="one of " + ", ".join(DESIGNS))


def band_fill(bands: Sequence[Sequence[float]], m, k):
    """The fill of the last row band of a GEMM: ``m / (ceil(m / band) * band)``, in (0, 1].

    Why: a kernel that computes rows in bands (a tile times a cluster of CTAs
    along ``m``) runs a partly filled last band; on vLLM's Hopper fp8 CUTLASS
    kernel such a band is measurably SLOWER than a full one (257 rows take
    longer than 512), which no padding term can express. ``bands`` rows are
    ``(m_min, m_max, k_min, band)``; the first row whose ``m_min <= m <= m_max``
    and ``k >= k_min`` gives the band (``fit.GEMM_ROW_BANDS``). ``m`` may be
    fractional (the engine's tokens per expert); it is rounded up to a row.
    """
    if isinstance(m, float | int) and isinstance(k, float | int):  # the pricers' hot path: no numpy
        rows = max(math.ceil(m), 1)
        for m_min, m_max, k_min, width in bands:
            if m_min <= rows <= m_max and k >= k_min:
                return rows / (math.ceil(rows / width) * width)
        return 1.0
    shape = np.broadcast(np.asarray(m), np.asarray(k)).shape
    mm = np.maximum(np.ceil(np.broadcast_to(np.asarray(m, dtype=float), shape)), 1.0)
    kk = np.broadcast_to(np.asarray(k, dtype=float), shape)
    band = np.zeros(shape)
    for m_min, m_max, k_min, width in reversed([tuple(map(float, b)) for b in bands]):
        band = np.where((mm >= m_min) & (mm <= m_max) & (kk >= k_min), width, band)
    band = np.where(band > 0.0, band, mm)  # no band applies: a full one
    return mm / (np.ceil(mm / band) * band)


MHA_GROUP = 0.5
"""The group feature of multi-head attention (every query head has its own KV head): below 1, see :func:`group_feature`."""


def group_feature(heads, kv_heads):
    """Query heads per KV head, except MHA, which maps to :data:`MHA_GROUP` (0.5).

    Why: MHA is a regime of its own, not the end of the grouped-query trend:
    FlashAttention packs a group's query heads into one tile only when there
    is a group (decode's head swap in FlashAttention-2, ``pack_gqa`` in
    FlashAttention-3), and vLLM's A100 build does not split the KV of MHA
    decode at all. A group axis whose first knot sits at 0.5 with the next at
    2 gives MHA its own grid value, never interpolated with a group of 2
    (``smooth_from`` keeps the curvature penalty off that knot). Grids whose
    group axis starts at 1 (profiles before this) clamp 0.5 to their first
    knot, which is what they did with 1: they price exactly as before.
    """
    if isinstance(heads, float | int) and isinstance(kv_heads, float | int):
        return MHA_GROUP if heads == kv_heads else heads / kv_heads
    h, hkv = np.asarray(heads, dtype=float), np.asarray(kv_heads, dtype=float)
    return np.where(h == hkv, MHA_GROUP, h / hkv)


STORED_KINDS: dict[str, tuple[str, ...]] = {
    "gemm-v1": ("gemm", "gemm-banded"),
    "attention-prefill-v2": ("prefill", "prefill-dh"),
    "attention-decode-v2": ("decode-lines",),
}
"""The ``kind`` a stored correction of each curve form may carry (the first is assumed when it has none)."""


def grid_problem(corr: Any, form: str) -> str | None:
    """What is wrong with a stored correction of a ``form`` curve, or None when it can be evaluated.

    Why: a profile is an input (a user may hand-edit one or point a device at their own); a grid whose
    axes do not match the features it is read with, or whose values do not fill its axes, would
    otherwise fail deep inside the lookup with an index or zip error.
    """
    if not isinstance(corr, Mapping):
        return "must be a mapping with kind, axes and log_factor"
    kinds = STORED_KINDS.get(form, ())
    kind = corr.get("kind", kinds[0] if kinds else None)
    if kind not in kinds:
        return f"kind {kind!r} is not one a {form} curve can carry (one of {', '.join(kinds) or 'none'})"
    axes = corr.get("axes")
    if not isinstance(axes, list) or not all(_is_axis(a) for a in axes):
        return "axes must be a list of [name, first, step, count] rows with count >= 2"
    # The features it is read with: a GEMM grid gets the band fill as a fourth exactly when it stores row bands
    # (see curves._gemm_predict); decode's two grids share the decode design's axes.
    read_as = ("gemm-banded" if corr.get("row_bands") else "gemm") if form == "gemm-v1" else kind
    want = len(DESIGNS["decode" if read_as == "decode-lines" else read_as].axes)
    if len(axes) != want:
        return f"a {kind} grid read with these inputs needs {want} axes, not {len(axes)}"
    counts = tuple(int(a[3]) for a in axes)
    for name in ("log_factor", "log_slope_factor"):
        if name == "log_slope_factor" and name not in corr:
            continue
        try:
            shape = np.asarray(corr.get(name), dtype=float).shape
        except (TypeError, ValueError):
            shape = None
        if shape != counts:
            return f"{name} must be a grid of {' x '.join(map(str, counts))} numbers (one per knot of the axes)"
    return None


def _is_axis(a: Any) -> bool:
    return (isinstance(a, list | tuple) and len(a) == 4 and all(isinstance(v, int | float) for v in a[1:])
            and a[3] >= 2)


# ---------------------------------------------------------------------- evaluation


def _axes(corr: Mapping[str, Any]) -> list[tuple[float, float, int]]:
    return [(float(a[1]), float(a[2]), int(a[3])) for a in corr["axes"]]


def _flat(corr: Mapping[str, Any]) -> list[float]:
    cached = corr.get("_flat")
    if cached is None:
        cached = np.asarray(corr["log_factor"], dtype=float).ravel().tolist()
    return cached


def _strides(axes: Sequence[tuple[float, float, int]]) -> list[int]:
    out, s = [], 1
    for _, _, count in reversed(axes):
        out.append(s)
        s *= count
    out.reverse()
    return out


def prepare(corr: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A copy of a profile's correction with its grid flattened once (for the pricers' hot path)."""
    if not corr:
        return None
    out = dict(corr)
    out["_flat"] = _flat(corr)
    out["_axes"] = _axes(corr)
    out["_strides"] = _strides(out["_axes"])
    return out


def reduce(corr: Mapping[str, Any] | None, fixed: Mapping[int, float]) -> dict[str, Any] | None:
    """The correction with the axes in ``fixed`` (index -> feature value) interpolated away, prepared.

    A pricer whose shape fixes some features (a GEMM's ``n`` and ``k``, a model's head
    configuration) reads a smaller grid per call. Exact up to rounding: multilinear
    interpolation is separable, so interpolating one axis first changes nothing.
    """
    if not corr:
        return None
    axes = _axes(corr)
    out: dict[str, Any] = {k: v for k, v in corr.items() if not k.startswith("_")}
    for name in ("log_factor", "log_slope_factor"):
        if name not in corr:
            continue
        grid = np.asarray(corr[name], dtype=float)
        for d in sorted(fixed, reverse=True):
            i, f = _position(float(fixed[d]), *axes[d])
            grid = (1.0 - f) * np.take(grid, i, axis=d) + f * np.take(grid, i + 1, axis=d)
        out[name] = grid.tolist()
    out["axes"] = [a for d, a in enumerate(corr["axes"]) if d not in fixed]
    return prepare(out)


def _position(x: float, first: float, step: float, count: int) -> tuple[int, float]:
    t = (math.log2(x) - first) / step if x > 0.0 else 0.0
    if t <= 0.0:
        return 0, 0.0
    top = count - 1
    if t >= top:
        return top - 1, 1.0
    i = int(t)
    return i, t - i


def log_factor(corr: Mapping[str, Any], feats: Sequence[float]) -> float:
    """``g(features)`` for one shape: multilinear over the grid, clamped at its edges."""
    axes = corr.get("_axes") or _axes(corr)
    values = _flat(corr)
    if len(axes) == 1:  # the pricers' common case (see :func:`reduce`)
        i, f = _position(float(feats[0]), *axes[0])
        return (1.0 - f) * values[i] + f * values[i + 1]
    if len(axes) == 2:
        i, f = _position(float(feats[0]), *axes[0])
        j, e = _position(float(feats[1]), *axes[1])
        n = axes[1][2]
        a, b = i * n + j, (i + 1) * n + j
        return ((1.0 - f) * ((1.0 - e) * values[a] + e * values[a + 1])
                + f * ((1.0 - e) * values[b] + e * values[b + 1]))
    strides = corr.get("_strides") or _strides(axes)
    terms = [(0, 1.0)]
    for x, axis, stride in zip(feats, axes, strides, strict=True):
        i, f = _position(float(x), *axis)
        lo = i * stride
        terms = [(o + lo, w * (1.0 - f)) for o, w in terms] + [(o + lo + stride, w * f) for o, w in terms]
    total = 0.0
    for o, w in terms:
        total += w * values[o]
    return total


def weights(axes: Sequence[tuple[float, float, int]], feats: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(offsets, weights)``, each (rows, 2^d): the grid cells every row reads and their weights."""
    rows = len(np.atleast_1d(feats[0]))
    offs = np.zeros((rows, 1 << len(axes)), dtype=int)
    wts = np.ones((rows, 1 << len(axes)))
    strides = _strides(axes)
    for d, (x, (first, step, count), st) in enumerate(zip(feats, axes, strides, strict=True)):
        x = np.asarray(x, dtype=float)
        with np.errstate(divide="ignore"):
            t = np.where(x > 0.0, (np.log2(np.where(x > 0.0, x, 1.0)) - first) / step, 0.0)
        t = np.clip(t, 0.0, count - 1)
        i = np.minimum(np.floor(t), count - 2).astype(int)
        f = t - i
        for corner in range(1 << len(axes)):
            if corner >> d & 1:
                wts[:, corner] *= f
                offs[:, corner] += (i + 1) * st
            else:
                wts[:, corner] *= 1.0 - f
                offs[:, corner] += i * st
    return offs, wts


def log_factor_many(corr: Mapping[str, Any], feats: Sequence[np.ndarray]) -> np.ndarray:
    """:func:`log_factor` of arrays of shapes."""
    offs, wts = weights(corr.get("_axes") or _axes(corr), feats)
    values = np.asarray(_flat(corr))
    return (wts * values[offs]).sum(axis=1)


def _any_array(feats: Sequence[Any]) -> bool:
    """Whether any feature is an array (a loop, not ``any`` over a generator: the scalar pricers ask per shape)."""
    for v in feats:
        if isinstance(v, np.ndarray):
            return True
    return False


def factor(corr: Mapping[str, Any] | None, feats) -> Any:
    """``exp(g)`` for floats (one shape) or arrays; 1 when there is no correction."""
    if not corr:
        return 1.0
    if not _any_array(feats):
        return math.exp(log_factor(corr, feats))
    shape = np.broadcast(*[np.asarray(v) for v in feats]).shape
    arrs = [np.broadcast_to(np.asarray(v, dtype=float), shape).ravel() for v in feats]
    return np.exp(log_factor_many(corr, arrs)).reshape(shape)


# ----------------------------------------------------------------------------- fit


def _penalty(counts: Sequence[int], smooth_from: Sequence[int] | None = None) -> np.ndarray:
    """Second differences along every axis of a grid of ``counts`` (row-major), one row per triple.

    Along axis ``d`` only triples whose first knot is at or after ``smooth_from[d]``.
    """
    size = int(np.prod(counts))
    index = np.arange(size).reshape(counts)
    starts = list(smooth_from) if smooth_from is not None else [0] * len(counts)
    rows = []
    for d, c in enumerate(counts):
        if c < 3:
            continue
        a = np.moveaxis(index, d, 0)
        for i in range(1 + starts[d], c - 1):
            for lo, mid, hi in zip(a[i - 1].ravel(), a[i].ravel(), a[i + 1].ravel(), strict=True):
                r = np.zeros(size)
                r[lo], r[mid], r[hi] = 1.0, -2.0, 1.0
                rows.append(r)
    return np.array(rows) if rows else np.zeros((0, size))


def _solve(offs: np.ndarray, wts: np.ndarray, resid: np.ndarray, size: int, pen: np.ndarray, lam: float) -> np.ndarray:
    """The penalised least-squares grid, by its normal equations.

    Why not ``lstsq`` on the stacked rows: each row touches only the 2^d knots around
    it, so ``A^T A`` is sparse and the ridge makes the system positive definite; a
    dense SVD of the stacked matrix costs minutes for a 15 x 9 x 9 x 3 grid, the
    sparse normal equations well under a second, for the same minimiser.
    """
    from scipy import sparse
    from scipy.sparse.linalg import spsolve

    n = len(resid)
    a = sparse.csr_matrix((wts.ravel(), (np.repeat(np.arange(n), offs.shape[1]), offs.ravel())), shape=(n, size))
    lhs = (a.T @ a) / n + sparse.identity(size) * (RIDGE / size)
    if len(pen):
        p = sparse.csr_matrix(pen)
        lhs = lhs + (p.T @ p) * (lam / len(pen))
    return np.asarray(spsolve(lhs.tocsc(), a.T @ resid / n), dtype=float)


def inner_split(groups: np.ndarray) -> np.ndarray:
    """0/1 per row: alternating over the sorted distinct shape groups (an inner split of the training rows)."""
    uniq, inv = np.unique(groups, return_inverse=True)
    return (np.arange(len(uniq)) % 2)[inv]


def pick_penalty(lambdas, groups: np.ndarray, inner_error) -> float:
    """The curvature penalty with the smallest error on an inner split of the training rows.

    ``inner_error(lam, train_mask, test_mask)`` fits on one half of the shape
    groups and scores the other; both ways round are summed. With one candidate,
    or groups that cannot be split, the middle candidate stands.
    """
    split = inner_split(groups)
    if len(lambdas) < 2 or not 0 < split.sum() < len(split):
        return lambdas[len(lambdas) // 2]
    scores = [sum(inner_error(lam, split == side, split != side) for side in (0, 1)) for lam in lambdas]
    return lambdas[int(np.argmin(scores))]


def fit(kind: str, feats: Sequence[np.ndarray], resid: np.ndarray, groups: np.ndarray,
        lambdas: Sequence[float] = LAMBDAS) -> tuple[dict[str, Any], float]:
    """Fit a ``kind`` grid to log residuals ``resid``; returns ``(correction params, chosen lambda)``.

    ``groups`` (one label per row) defines the inner split that picks the
    curvature penalty: fit on one half of the groups, score the other, both
    ways; the penalty with the smallest inner held-out squared log error wins,
    and the grid is refitted on all rows with it.
    """
    design = DESIGNS[kind]
    axes = [(a.first, a.step, a.count) for a in design.axes]
    counts = [a.count for a in design.axes]
    size = int(np.prod(counts))
    ok = np.isfinite(resid)
    feats = [np.asarray(f, dtype=float)[ok] for f in feats]
    resid, groups = resid[ok], np.asarray(groups)[ok]
    offs, wts = weights(axes, feats)
    pen = _penalty(counts, [a.smooth_from for a in design.axes])
    def inner_error(lam, tr, te):
        v = _solve(offs[tr], wts[tr], resid[tr], size, pen, lam)
        return float(np.sum(((wts[te] * v[offs[te]]).sum(axis=1) - resid[te]) ** 2))

    best_lam = pick_penalty(lambdas, groups, inner_error)
    v = _solve(offs, wts, resid, size, pen, best_lam)
    grid = np.round(v.reshape(counts), 4)
    corr = {
        "kind": kind,
        "axes": [[a.name, a.first, a.step, a.count] for a in design.axes],
        "lambda": best_lam,
        "log_factor": grid.tolist(),
    }
    return corr, best_lam


# ------------------------------------------------------------- decode: two factors


def _design_matrix(offs: np.ndarray, wts: np.ndarray, size: int) -> np.ndarray:
    n = len(offs)
    a = np.zeros((n, size))
    np.add.at(a, (np.repeat(np.arange(n), offs.shape[1]), offs.ravel()), wts.ravel())
    return a


def _solve_two(a: np.ndarray, parts: Sequence[np.ndarray], log_t: np.ndarray, pen: np.ndarray, lam: float,
               start: np.ndarray) -> np.ndarray:
    """Grid values ``(va, vb)`` minimising the penalised squared log error of ``A (F + max(flat, base + S B/A))``."""
    from scipy.optimize import least_squares

    fixed, flat, base, stream = parts
    n, size = a.shape
    sn = 1.0 / math.sqrt(n)
    reg = [pen * math.sqrt(lam / max(len(pen), 1)), np.eye(size) * math.sqrt(RIDGE / size)]
    reg_m = np.vstack(reg)

    def split(v):
        return v[:size], v[size:]

    def resid(v):
        va, vb = split(v)
        fa, fb = np.exp(a @ va), np.exp(a @ vb)
        pred = fa * fixed + np.maximum(fa * flat, fa * base + fb * stream)
        return np.concatenate([(np.log(pred) - log_t) * sn, reg_m @ va, reg_m @ vb])

    def jac(v):
        va, vb = split(v)
        fa, fb = np.exp(a @ va), np.exp(a @ vb)
        lined = fa * base + fb * stream
        on_line = lined >= fa * flat
        pred = fa * fixed + np.where(on_line, lined, fa * flat)
        da = (fa * fixed + np.where(on_line, fa * base, fa * flat)) / pred * sn
        db = np.where(on_line, fb * stream, 0.0) / pred * sn
        top = np.hstack([a * da[:, None], a * db[:, None]])
        zeros = np.zeros_like(reg_m)
        return np.vstack([top, np.hstack([reg_m, zeros]), np.hstack([zeros, reg_m])])

    return least_squares(resid, start, jac=jac, method="trf", max_nfev=200).x


def fit_decode(feats: Sequence[np.ndarray], parts: Sequence[np.ndarray], log_t: np.ndarray, groups: np.ndarray,
               lambdas: Sequence[float] = LAMBDAS) -> tuple[dict[str, Any], float]:
    """Two batch-only grids for decode: ``log_factor`` scales the fixed, flat and base terms, ``log_slope_factor``
    the per-context-token slope, so a step stays ``fixed + max(flat, base + slope C)`` with coefficients that
    depend on the batch (and head configuration) only.

    ``parts`` are the physical step's ``(fixed, flat, base, slope * C)`` per row; the penalty is chosen by the
    inner split as in :func:`fit`.
    """
    design = DESIGNS["decode"]
    axes = [(g.first, g.step, g.count) for g in design.axes]
    counts = [g.count for g in design.axes]
    size = int(np.prod(counts))
    ok = np.isfinite(log_t) & np.all([np.isfinite(p) for p in parts], axis=0)
    feats = [np.asarray(f, dtype=float)[ok] for f in feats]
    parts = [np.asarray(p, dtype=float)[ok] for p in parts]
    log_t, groups = log_t[ok], np.asarray(groups)[ok]
    a = _design_matrix(*weights(axes, feats), size)
    pen = _penalty(counts, [a.smooth_from for a in design.axes])
    start = np.zeros(2 * size)
    def inner_error(lam, tr, te):
        v = _solve_two(a[tr], [p[tr] for p in parts], log_t[tr], pen, lam, start)
        fa, fb = np.exp(a[te] @ v[:size]), np.exp(a[te] @ v[size:])
        fixed, flat, base, stream = (p[te] for p in parts)
        pred = fa * fixed + np.maximum(fa * flat, fa * base + fb * stream)
        return float(np.sum((np.log(pred) - log_t[te]) ** 2))

    best_lam = pick_penalty(lambdas, groups, inner_error)
    v = _solve_two(a, parts, log_t, pen, best_lam, start)
    corr = {
        "kind": "decode-lines",
        "axes": [[g.name, g.first, g.step, g.count] for g in design.axes],
        "lambda": best_lam,
        "log_factor": np.round(v[:size].reshape(counts), 4).tolist(),
        "log_slope_factor": np.round(v[size:].reshape(counts), 4).tolist(),
    }
    return corr, best_lam


def slope_factor(corr: Mapping[str, Any] | None, feats) -> Any:
    """``exp`` of the slope grid of a ``decode-lines`` correction (1 without one)."""
    if not corr:
        return 1.0
    if "log_slope_factor" not in corr:
        return factor(corr, feats)  # one factor for the whole step
    return factor(slope_view(corr), feats)


def slope_view(corr: Mapping[str, Any]) -> dict[str, Any]:
    """The slope grid of a ``decode-lines`` correction as a one-grid correction (cached in ``corr``)."""
    view = corr.get("_slope")
    if view is None:
        view = {"axes": corr["axes"], "log_factor": corr["log_slope_factor"]}
        view = prepare(view)
        if isinstance(corr, dict) and "_flat" in corr:  # a prepared copy (never a profile's own params)
            corr["_slope"] = view
    return view
