"""Fitted curve families: achieved efficiency as a function of problem size.

Why curves and not constants: a kernel reaches a fraction of the datasheet peak
that depends on its shape -- a GEMM of 1 token against a 4096x4096 weight
streams its weights at ~60 % of HBM bandwidth, one of 4096 tokens computes at
~80 % of the tensor-core peak, and both pay a fixed few microseconds (kernel
start-up and tail). Each family below keeps the roofline's structure
``time = overhead + combine(FLOPs / (peak * eta_c), bytes / (bandwidth * eta_m))``
and makes the efficiencies smooth saturating functions of the sizes that
govern them (tiles to spread over the SMs, bytes to keep in flight):

    s(x; x0, a) = 1 / (1 + (x0 / x)^a)      -> 0 for x << x0, -> 1 for x >> x0

Families (``form`` in a profile):

* ``gemm-v1``: ``eta_c = c_max s(m) s(n) s(k)``, ``eta_m = m_max s(bytes)``,
  ``t = t0 + (Tc^q + Tm^q)^(1/q)``, the compute side counting ``m`` partly padded
  to whole 128-token tiles (weight ``tile``) -- a soft maximum (``q`` fitted) because
  real kernels overlap loads and math imperfectly near the ridge point.
* ``attention-prefill-v1``: ``eta_c = c_max[head_dim] s(L) s(u)`` with ``L`` the
  mean keys per query (``work / tokens``) and ``u = heads * tokens`` the parallel
  work (times ``mha_factor`` without grouped-query heads, whose kernels cannot
  share a KV tile between query heads); plus ``kappa`` seconds per token-head
  (tile set-up); soft maximum.
* ``attention-decode-v1``: ``t = t0 + kappa_u u + kappa_h b h + max(Tc, Ts, Tm)`` with
  ``u = batch * kv_heads`` the parallel units (split-KV blocks), ``eta_m =
  m_max s(u)`` (times ``mha_factor`` when every query head has its own KV head),
  and ``Ts`` a serial path for such heads (``tau`` per context token per wave of
  ``u_sat`` units: the A100 tables' kernel walks a whole context per block there).
  A plain maximum and efficiencies that do not depend on the context keep a run
  of decode steps (context growing by one token per sequence) affine in the
  context, so the engine can still price it in closed form.
* ``attention-prefill-v2`` / ``attention-decode-v2`` (the shipped forms): the
  FlashAttention kernels' scheduling -- split-KV, waves over the SM count, tile
  padding, grouped-query packing -- in :mod:`hwmodels.calibration.attention_curves`.
  The ``-v1`` forms above still load and price older profiles.
* ``memory-v1`` (elementwise ops, copies): ``t = t0 + bytes / (W m_max s(bytes))``.
* ``alpha-beta-v1`` (collectives, host copies): ``t = min_i (alpha_i + bytes / beta_i)``
  over three (latency, bandwidth) pairs -- NCCL itself models every
  (algorithm, protocol) pair as latency + size / bandwidth and runs the fastest
  (NCCL ``src/graph/tuning.cc``), so small messages follow a low-latency /
  low-bandwidth line (LL) and large ones a high-bandwidth line (Simple).
* ``alpha-beta-v2`` (point-to-point send/recv): the same pairs, each joined by a
  soft maximum of fitted order ``q`` instead of a sum, because the transfer is
  pipelined in chunks and hides the start-up latency (see :func:`pipelined`).
  Only send/recv uses it: its tables hold ~500 sizes per fold, while the
  aiconfigurator collectives have ~10 per fold and group size, too few to pin
  a seventh parameter.

The ``gemm-v1`` and ``attention-*-v2`` fits add a residual surface to these
forms, ``params["correction"]`` (:mod:`hwmodels.calibration.correction`): the
physical time times ``exp(g)`` of a few log sizes, fitted on the same training
rows, for the kernel-configuration switches the forms do not model.

Every function works on numpy arrays (the fit) and on Python floats (the cost
model's per-shape pricing), so there is one implementation of each formula.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from capsim.errors import CapsimError

Params = Mapping[str, float]


def sat(x, x0: float, a: float):
    """Saturating factor ``1 / (1 + (x0/x)^a)`` (0 at x -> 0, 1/2 at x0, -> 1)."""
    return 1.0 / (1.0 + (x0 / x) ** a)


def _softmax(tc, tm, q: float):
    """``(tc^q + tm^q)^(1/q)``: equals max(tc, tm) as q -> inf, their sum at q = 1."""
    return (tc**q + tm**q) ** (1.0 / q)


def _maximum(a, b):
    if isinstance(a, float) and isinstance(b, float):
        return a if a >= b else b
    return np.maximum(a, b)


# ----------------------------------------------------------------------------- GEMM


GEMM_TILE_M = 128
"""Token-tile size of the tile-padding term: CUTLASS / cuBLAS Hopper and Ampere kernels compute
whole 128-row tiles once m is large (smaller tiles below; the blend weight ``tile`` absorbs that)."""


GEMM_TILE_N = 256
"""Output-column tile of the wave term: 128 x 256 tiles (``docs/calibration-decisions.md``, 18)."""


def _ceil(x):
    return float(math.ceil(x)) if isinstance(x, float | int) else np.ceil(x)


def wave_efficiency(m, n, sms: float):
    """Fraction of the SMs' tile slots that the output tiles fill: ``tiles / (ceil(tiles / sms) * sms)``.

    Why: a GEMM's output tiles run in waves over the SMs; a grid that leaves
    the last wave part-empty runs that wave at a fraction of the full rate
    (cuBLAS on the A100). Libraries that balance the last wave (split-K,
    stream-K, persistent schedulers) do not pay it, so ``gemm-v1`` blends it in
    with a fitted weight ``wave``.
    """
    tiles = _ceil(m / GEMM_TILE_M) * _ceil(n / GEMM_TILE_N)
    return tiles / (_ceil(tiles / sms) * sms)


def gemm_terms(p: Params, m, n, k, nbytes):
    """``(fixed_s, eta_c, eta_m, q)`` of a GEMM of shape (m, n, k) moving ``nbytes``.

    The tile padding is folded into ``eta_c``: computing ``m_pad`` rows for ``m``
    useful ones is an efficiency of ``m / m_pad``.
    """
    w = p.get("tile", 0.0)
    m_pad = (1.0 - w) * m + w * _ceil(m / GEMM_TILE_M) * GEMM_TILE_M
    eta_c = p["c_max"] * sat(m, p["m0"], p["am"]) * sat(n, p["n0"], p["an"]) * sat(k, p["k0"], p["ak"]) * (m / m_pad)
    wave = p.get("wave", 0.0)
    if wave:  # profiles before the wave term have none
        eta_c = eta_c * ((1.0 - wave) + wave * wave_efficiency(m, n, p.get("sms", 1.0)))
    eta_m = p["m_max"] * sat(nbytes, p["b0"], p["ab"])
    return p["t0_s"], eta_c, eta_m, p["q"]


def gemm_time(p: Params, m, n, k, act_bytes, weight_bytes, peak: float, bandwidth: float):
    """Seconds of ``C[m,n] = A[m,k] B[k,n]`` under a ``gemm-v1`` curve.

    The compute side counts ``m`` padded up to whole tiles, blended by the fitted
    weight ``tile`` (0 = no padding, 1 = every tile full-cost): 129 tokens cost
    almost as much as 256 on a kernel that uses 128-row tiles.
    """
    flops = 2.0 * m * n * k
    nbytes = (m * k + m * n) * act_bytes + n * k * weight_bytes
    fixed, eta_c, eta_m, q = gemm_terms(p, m, n, k, nbytes)
    return fixed + combine(flops / (peak * eta_c), nbytes / (bandwidth * eta_m), q)


def combine(tc, tm, q: float):
    """Compute and memory time joined: soft maximum of order ``q`` (plain maximum when q is inf)."""
    if q == math.inf:
        return _maximum(tc, tm)
    return _softmax(tc, tm, q)


# ----------------------------------------------------------------------- attention


def head_dim_efficiency(table: Mapping[int, float] | Mapping[str, float], head_dim: float) -> float:
    """Peak fraction for ``head_dim`` from a per-head-size table (nearest size in log2; ties go up)."""
    best, best_d = None, math.inf
    for key, value in table.items():
        d = abs(math.log2(float(key)) - math.log2(float(head_dim)))
        if d < best_d - 1e-12 or (abs(d - best_d) <= 1e-12 and best is not None and float(key) > best[0]):
            best, best_d = (float(key), float(value)), d
    if best is None:
        raise CapsimError("attention curve has an empty c_max_by_head_dim table", where="calibration profile")
    return best[1]


def _c_by_dh(p: Params, head_dim):
    table = p["c_max_by_head_dim"]
    if isinstance(head_dim, float | int):
        return head_dim_efficiency(table, head_dim)
    return np.array([head_dim_efficiency(table, d) for d in np.asarray(head_dim, dtype=float)])


def prefill_terms(p: Params, tokens, work, heads, kv_heads, head_dim):
    """``(fixed_s, eta_c, eta_m, q)`` of causal prefill attention with these aggregate features."""
    mean_keys = work / tokens
    units = heads * tokens
    eta_c = _c_by_dh(p, head_dim) * sat(mean_keys, p["L0"], p["aL"]) * sat(units, p["u0"], p["au"])
    eta_c = eta_c * _mha(p, heads, kv_heads)
    return p["t0_s"] + p["kappa_s"] * units, eta_c, p["m_max"], p["q"]


def prefill_attention_time(
    p: Params, tokens, work, kv_read, heads, kv_heads, head_dim, act_bytes, kv_bytes, peak: float, bandwidth: float
):
    """Seconds of causal prefill attention under an ``attention-prefill-v1`` curve (aggregate features)."""
    flops = 4.0 * heads * head_dim * work
    nbytes = kv_read * 2.0 * kv_heads * head_dim * kv_bytes + tokens * (
        2.0 * heads * head_dim * act_bytes + 2.0 * kv_heads * head_dim * kv_bytes
    )
    fixed, eta_c, eta_m, q = prefill_terms(p, tokens, work, heads, kv_heads, head_dim)
    return fixed + combine(flops / (peak * eta_c), nbytes / (bandwidth * eta_m), q)


def _mha(p: Params, heads, kv_heads):
    """``mha_factor`` where every query head has its own KV head (no grouped-query packing), else 1."""
    mha = p.get("mha_factor", 1.0)
    if isinstance(heads, float | int) and isinstance(kv_heads, float | int):
        return mha if heads == kv_heads else 1.0
    return np.where(np.asarray(heads) == np.asarray(kv_heads), mha, 1.0)


def _decode_memory_efficiency(p: Params, seqs, heads, kv_heads):
    units = seqs * kv_heads
    return p["m_max"] * sat(units, p["u0"], p["au"]) * _mha(p, heads, kv_heads)


def decode_terms(p: Params, seqs, heads, kv_heads):
    """``(fixed_s, eta_c, eta_m, serial_s)`` of decode attention over ``seqs`` sequences.

    None of them depends on the context length, so for a fixed batch the time is
    ``fixed + max(F(C) / (P eta_c), C serial, B(C) / (W eta_m))`` with F and B
    affine in the summed context C: lines, whose maximum the engine prices in
    closed form. ``serial`` (seconds per context token of the batch) is the
    kernel path without split-KV that some engines take when every query head
    has its own KV head: each (sequence, head) block walks its context alone,
    ``tau`` per token, in ``max(1, units / u_sat)`` waves.
    """
    units = seqs * kv_heads
    fixed = p["t0_s"] + p["kappa_u_s"] * units + p["kappa_h_s"] * seqs * heads
    tau = p.get("tau_mha_s", 0.0)
    if tau:
        waves = units / p["u_sat"]
        waves = _maximum(waves, 1.0) if isinstance(waves, float) else np.maximum(waves, 1.0)
        serial = tau * waves / seqs * _is_mha(heads, kv_heads)
    else:
        serial = 0.0
    return fixed, p["c_max"], _decode_memory_efficiency(p, seqs, heads, kv_heads), serial


def _is_mha(heads, kv_heads):
    if isinstance(heads, float | int) and isinstance(kv_heads, float | int):
        return 1.0 if heads == kv_heads else 0.0
    return (np.asarray(heads) == np.asarray(kv_heads)).astype(float)


def decode_attention_time(
    p: Params, seqs, context, heads, kv_heads, head_dim, act_bytes, kv_bytes, peak: float, bandwidth: float
):
    """Seconds of decode attention (``context`` = summed context of the ``seqs`` sequences)."""
    flops = 4.0 * heads * head_dim * context
    nbytes = context * 2.0 * kv_heads * head_dim * kv_bytes + seqs * (
        2.0 * heads * head_dim * act_bytes + 2.0 * kv_heads * head_dim * kv_bytes
    )
    fixed, eta_c, eta_m, serial = decode_terms(p, seqs, heads, kv_heads)
    return fixed + _maximum(_maximum(flops / (peak * eta_c), serial * context), nbytes / (bandwidth * eta_m))


# ------------------------------------------------------------------ memory, links


def memory_terms(p: Params, nbytes):
    """``(fixed_s, eta_c, eta_m, inf)`` of a bandwidth-bound kernel (its arithmetic is at peak)."""
    return p["t0_s"], 1.0, p["m_max"] * sat(nbytes, p["b0"], p["ab"]), math.inf


def memory_time(p: Params, nbytes, bandwidth: float):
    """Seconds of a bandwidth-bound kernel (elementwise op, device copy) under ``memory-v1``."""
    fixed, _, eta_m, _ = memory_terms(p, nbytes)
    return fixed + nbytes / (bandwidth * eta_m)


ALPHA_BETA_PAIRS = 3


def alpha_beta_time(p: Params, nbytes):
    """``min_i join(alpha_i, bytes / beta_i)`` over the pairs present in ``p``.

    ``alpha-beta-v1`` (no ``q`` in ``p``) joins by a sum, ``alpha + bytes / beta``;
    ``alpha-beta-v2`` by the soft maximum of order ``q`` (see :func:`pipelined`),
    which is the sum again at ``q = 1``.
    """
    q = p.get("q", 1.0)
    best = None
    for i in range(1, ALPHA_BETA_PAIRS + 1):
        a = p.get(f"alpha{i}_s")
        if a is None:
            continue
        wire = nbytes / p[f"beta{i}_Bps"]
        t = a + wire if q == 1.0 else pipelined(a, wire, q)
        best = t if best is None else (min(best, t) if isinstance(t, float) else np.minimum(best, t))
    return best


def pipelined(alpha, wire, q: float):
    """Latency ``alpha`` overlapped with a transfer taking ``wire`` seconds: ``(alpha^q + wire^q)^(1/q)``.

    Why not ``alpha + wire``: NCCL moves a message as a pipeline of chunks
    (``NCCL_P2P_CHUNKSIZE`` / ``NCCL_BUFFSIZE`` slices, several in flight), so the
    start-up latency of later chunks hides behind the transfer of earlier ones.
    vidur's DGX-A100 send/recv shows it: flat at ~17 us from 100 kB to 1 MB,
    then ``bytes / 250 GB/s`` with no visible latency beyond 16 MB -- a convex
    corner that no minimum of ``alpha + bytes / beta`` lines (a concave
    function of the size) can follow. ``q`` is fitted: 1 is no overlap, large is
    perfect overlap.
    """
    if isinstance(alpha, float) and isinstance(wire, float):
        return (alpha**q + wire**q) ** (1.0 / q)
    return _softmax(alpha, wire, q)


# ------------------------------------------------------------------------- families


@dataclass(frozen=True)
class ParamSpec:
    """One fitted parameter: initial value, bounds, and whether it is fitted in log space."""

    name: str
    init: float
    lo: float
    hi: float
    log: bool = False


@dataclass(frozen=True)
class Family:
    """A curve family: its parameters and a vectorised predictor over named inputs.

    ``predict(params, inputs, peak, bandwidth)`` takes the dict built by
    :func:`hwmodels.calibration.fit.curve_inputs`; ``table_params`` lists
    parameters that are tables keyed by a shape value (head_dim).
    """

    form: str
    params: tuple[ParamSpec, ...]
    predict: Callable[..., np.ndarray]
    table_params: tuple[str, ...] = ()
    extra_starts: tuple[Mapping[str, float], ...] = ()  # other initial values tried by the fit
    device_facts: tuple[str, ...] = ()  # not fitted: copied from the device catalog (see fit.device_facts)
    # (parameter, fact, floor): fitted only where the fact exceeds the floor, else held at 0 -- a term the kernel
    # or device does not have (a merge kernel FlashAttention-3 lacks; waves on a one-"SM" CPU) is not fitted.
    gated_by: tuple[tuple[str, str, float], ...] = ()
    added_later: tuple[str, ...] = ()  # terms newer than some profiles: a profile without the parameter has it at 0

    def vector_to_params(self, vec: Sequence[float], table_keys: Sequence[float] = (),
                         held: Mapping[str, float] | None = None) -> dict:
        """Named parameters from the optimiser's vector; ``held`` ones take no slot in it."""
        held = held or {}
        out: dict = {}
        i = 0
        for spec in self.params:
            if spec.name in held:
                out[spec.name] = float(held[spec.name])
                continue
            out[spec.name] = float(math.exp(vec[i])) if spec.log else float(vec[i])
            i += 1
        for name in self.table_params:
            out[name] = {int(k): float(vec[i + j]) for j, k in enumerate(table_keys)}
            i += len(table_keys)
        return out


def _corrected(p, kind: str, x, t):
    """``t`` times the fitted residual surface of ``p`` (when it has one; see :mod:`hwmodels.calibration.correction`)."""
    corr = p.get("correction")
    if not corr:
        return t
    from hwmodels.calibration import correction

    return t * correction.factor(corr, correction.features(kind, x))


def _gemm_predict(p, x, peak, bandwidth):
    t = gemm_time(p, x["m"], x["n"], x["k"], x["act_bytes"], x["weight_bytes"], peak, bandwidth)
    corr = p.get("correction")
    if corr and corr.get("row_bands"):  # a kernel computing rows in bands: the fill is a fourth feature
        from hwmodels.calibration.correction import band_fill

        return _corrected(p, "gemm-banded", {**x, "fill": band_fill(corr["row_bands"], x["m"], x["k"])}, t)
    return _corrected(p, "gemm", x, t)


def _prefill_predict(p, x, peak, bandwidth):
    return prefill_attention_time(
        p, x["tokens"], x["work"], x["kv_read"], x["heads"], x["kv_heads"], x["head_dim"],
        x["act_bytes"], x["kv_bytes"], peak, bandwidth,
    )


def _decode_predict(p, x, peak, bandwidth):
    return decode_attention_time(
        p, x["seqs"], x["context"], x["heads"], x["kv_heads"], x["head_dim"],
        x["act_bytes"], x["kv_bytes"], peak, bandwidth,
    )


def _decode_v2_predict(p, x, peak, bandwidth):
    t = _attention_v2().decode_v2_time(
        p, x["seqs"], x["context"], x["heads"], x["kv_heads"], x["head_dim"],
        x["act_bytes"], x["kv_bytes"], peak, bandwidth, x.get("l2_warm", 0.0),
    )
    return t  # its correction (two batch-only factors) is applied inside decode_v2_time


def _prefill_v2_predict(p, x, peak, bandwidth):
    t = _attention_v2().prefill_v2_time(
        p, x["tokens"], x["work"], x["kv_read"], x["heads"], x["kv_heads"], x["head_dim"],
        x["act_bytes"], x["kv_bytes"], peak, bandwidth,
    )
    corr = p.get("correction")
    # A table with several head sizes fits a surface with a head-size axis (kind prefill-dh).
    return _corrected(p, corr.get("kind", "prefill") if corr else "prefill", x, t)


def _attention_v2():
    """The ``-v2`` attention module (imported on use: it builds on this module's helpers)."""
    from hwmodels.calibration import attention_curves

    return attention_curves


def _memory_predict(p, x, peak, bandwidth):
    return memory_time(p, x["nbytes"], bandwidth)


def _alpha_beta_predict(p, x, peak, bandwidth):
    return alpha_beta_time(p, x["nbytes"])


FAMILIES: dict[str, Family] = {
    "gemm-v1": Family(
        "gemm-v1",
        (
            ParamSpec("t0_s", 3e-6, 0.0, 1e-3),
            ParamSpec("c_max", 0.9, 0.05, 1.0),
            ParamSpec("m0", 64.0, 1e-3, 1e7, log=True),
            ParamSpec("am", 1.0, 0.2, 4.0),
            ParamSpec("n0", 256.0, 1e-3, 1e7, log=True),
            ParamSpec("an", 1.0, 0.2, 4.0),
            ParamSpec("k0", 256.0, 1e-3, 1e7, log=True),
            ParamSpec("ak", 1.0, 0.2, 4.0),
            ParamSpec("m_max", 0.9, 0.05, 1.0),
            ParamSpec("b0", 1e6, 1.0, 1e13, log=True),
            ParamSpec("ab", 1.0, 0.2, 4.0),
            ParamSpec("q", 4.0, 1.0, 30.0),
            ParamSpec("tile", 0.2, 0.0, 1.0),
            ParamSpec("wave", 0.3, 0.0, 1.0),
        ),
        _gemm_predict,
        device_facts=("sms",),
        gated_by=(("wave", "sms", 1.0),),
        added_later=("wave",),
    ),
    "attention-prefill-v1": Family(
        "attention-prefill-v1",
        (
            ParamSpec("t0_s", 5e-6, 0.0, 1e-3),
            ParamSpec("kappa_s", 1e-10, 0.0, 1e-6),
            ParamSpec("L0", 512.0, 1e-3, 1e8, log=True),
            ParamSpec("aL", 1.0, 0.2, 4.0),
            ParamSpec("u0", 1e4, 1e-3, 1e12, log=True),
            ParamSpec("au", 1.0, 0.2, 4.0),
            ParamSpec("m_max", 0.6, 0.02, 1.0),
            ParamSpec("q", 3.0, 1.0, 30.0),
            ParamSpec("mha_factor", 1.0, 0.05, 3.0),
        ),
        _prefill_predict,
        table_params=("c_max_by_head_dim",),
    ),
    "attention-decode-v1": Family(
        "attention-decode-v1",
        (
            ParamSpec("t0_s", 8e-6, 0.0, 1e-3),
            ParamSpec("kappa_u_s", 3e-8, 0.0, 1e-5),
            ParamSpec("kappa_h_s", 1e-9, 0.0, 1e-5),
            ParamSpec("m_max", 0.85, 0.02, 1.0),
            ParamSpec("u0", 64.0, 1e-3, 1e8, log=True),
            ParamSpec("au", 1.0, 0.2, 4.0),
            ParamSpec("mha_factor", 1.0, 0.05, 3.0),
            ParamSpec("c_max", 0.5, 0.01, 1.0),
            ParamSpec("tau_mha_s", 2e-8, 0.0, 1e-5),
            ParamSpec("u_sat", 100.0, 1.0, 1e6, log=True),
        ),
        _decode_predict,
        # The plain maximum makes the cost surface kinked; start from a few parallelism scales.
        extra_starts=({"u0": 4.0, "au": 1.0}, {"u0": 512.0, "au": 1.0}),
    ),
    "attention-prefill-v2": Family(
        "attention-prefill-v2",
        (
            ParamSpec("t0_s", 5e-6, 0.0, 1e-3),
            ParamSpec("kappa_s", 1e-10, 0.0, 1e-6),
            ParamSpec("kappa_u_s", 3e-8, 0.0, 1e-5),
            ParamSpec("L0", 128.0, 1e-3, 1e8, log=True),
            ParamSpec("aL", 1.0, 0.2, 4.0),
            ParamSpec("u0", 100.0, 1e-3, 1e12, log=True),
            ParamSpec("au", 1.0, 0.2, 4.0),
            ParamSpec("m_max", 0.6, 0.02, 1.0),
            ParamSpec("q", 3.0, 1.0, 30.0),
            ParamSpec("mha_factor", 1.0, 0.05, 3.0),
            ParamSpec("tile", 0.3, 0.0, 1.0),
            ParamSpec("pack", 0.5, 0.0, 1.0),
            ParamSpec("t_cw_s", 5e-6, 0.0, 1e-4),
            ParamSpec("t_cw_iter_s", 5e-7, 0.0, 1e-4),
        ),
        _prefill_v2_predict,
        table_params=("c_max_by_head_dim",),
        device_facts=("sms", "cache_write"),
        # The KV-cache write inside the measured call (kernel fact): held at 0 where a table has none.
        gated_by=(("t_cw_s", "cache_write", 0.0), ("t_cw_iter_s", "cache_write", 0.0)),
    ),
    "attention-decode-v2": Family(
        "attention-decode-v2",
        (
            ParamSpec("t0_s", 8e-6, 0.0, 1e-3),
            ParamSpec("t_split_s", 4e-6, 0.0, 1e-3),
            ParamSpec("kappa_m_s", 1e-7, 0.0, 1e-5),
            ParamSpec("kappa_h_s", 1e-9, 0.0, 1e-5),
            ParamSpec("kappa_u_s", 3e-8, 0.0, 1e-5),
            ParamSpec("kappa_s_s", 1e-8, 0.0, 1e-5),
            ParamSpec("m_max", 0.8, 0.02, 1.0),
            ParamSpec("u0", 2.0, 1e-3, 1e8, log=True),
            ParamSpec("au", 1.0, 0.2, 4.0),
            ParamSpec("c_max", 0.5, 0.01, 1.0),
            ParamSpec("tau_s", 3e-9, 0.0, 1e-5),
            ParamSpec("tau_mha_s", 2e-8, 0.0, 1e-5),
            ParamSpec("l2_gain", 1.5, 1.0, 10.0),
            ParamSpec("t_swap_s", 4e-6, 0.0, 1e-4),
        ),
        _decode_v2_predict,
        extra_starts=({"l2_gain": 1.0, "tau_mha_s": 0.0}, {"kappa_s_s": 0.0, "tau_s": 2e-8}),
        device_facts=("sms", "l2_bytes", "ctas_per_sm", "kv_block_cap", "q_tile_rows", "serial_merge", "swap_copy"),
        gated_by=(("kappa_m_s", "serial_merge", 0.0), ("t_swap_s", "swap_copy", 0.0)),
    ),
    "memory-v1": Family(
        "memory-v1",
        (
            ParamSpec("t0_s", 3e-6, 0.0, 1e-2),
            ParamSpec("m_max", 0.8, 0.01, 1.0),
            ParamSpec("b0", 1e5, 1.0, 1e12, log=True),
            ParamSpec("ab", 1.0, 0.2, 4.0),
        ),
        _memory_predict,
    ),
    "alpha-beta-v1": Family(
        "alpha-beta-v1",
        (
            ParamSpec("alpha1_s", 5e-6, 0.0, 1.0),
            ParamSpec("beta1_Bps", 2e10, 1e3, 1e14, log=True),
            ParamSpec("alpha2_s", 1e-5, 0.0, 1.0),
            ParamSpec("beta2_Bps", 1e11, 1e3, 1e14, log=True),
            ParamSpec("alpha3_s", 3e-5, 0.0, 1.0),
            ParamSpec("beta3_Bps", 3e11, 1e3, 1e14, log=True),
        ),
        _alpha_beta_predict,
    ),
    # v1 plus the pipelining order ``q``; its starts include q = 1 (v1 itself), so a fit can only improve on v1.
    "alpha-beta-v2": Family(
        "alpha-beta-v2",
        (
            ParamSpec("alpha1_s", 5e-6, 0.0, 1.0),
            ParamSpec("beta1_Bps", 2e10, 1e3, 1e14, log=True),
            ParamSpec("alpha2_s", 1e-5, 0.0, 1.0),
            ParamSpec("beta2_Bps", 1e11, 1e3, 1e14, log=True),
            ParamSpec("alpha3_s", 3e-5, 0.0, 1.0),
            ParamSpec("beta3_Bps", 3e11, 1e3, 1e14, log=True),
            ParamSpec("q", 1.0, 1.0, 30.0),
        ),
        _alpha_beta_predict,
    ),
}
"""Every curve family by ``form`` id."""

FORM_FOR_OP_CLASS: Mapping[str, str] = {
    "gemm": "gemm-v1",
    "attention_prefill": "attention-prefill-v2",
    "attention_decode": "attention-decode-v2",
    "elementwise": "memory-v1",
    "memcpy": "memory-v1",
    "host_copy": "alpha-beta-v1",
    "all_reduce": "alpha-beta-v1",
    "all_gather": "alpha-beta-v1",
    "reduce_scatter": "alpha-beta-v1",
    "all_to_all": "alpha-beta-v1",
    "send_recv": "alpha-beta-v2",
}
"""The family fitted to each op class."""


def family(form: str) -> Family:
    try:
        return FAMILIES[form]
    except KeyError:
        raise CapsimError(
            f"unknown curve form {form!r}",
            where="calibration profile",
            fix=f"use one of {', '.join(FAMILIES)} (re-run `capsim calibrate fit`)",
        ) from None
