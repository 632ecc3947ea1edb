"""Attention curve families that follow how FlashAttention kernels schedule their work (``-v2``).

Why a second generation: the ``-v1`` families (:mod:`hwmodels.calibration.curves`)
make efficiencies smooth functions of the problem size; their residuals on the
aiconfigurator tables (vLLM's FlashAttention-2 on the A100, FlashAttention-3 on the
H100/H200) cluster in regimes that smooth curves cannot follow, each one a
scheduling decision of the kernel:

Decode (one query token per sequence), ``b`` sequences of mean context ``c``:

* Thread blocks (CTAs). vLLM's FlashAttention packs the query heads that share a KV
  head into one tile, so a step launches ``u = b * h_kv`` units of work.
* Split-KV. When ``u`` cannot fill the GPU the kernel cuts every context into ``s``
  chunks (one CTA each) and merges them afterwards. ``s`` comes from the published
  FlashAttention heuristic (``num_splits_heuristic`` in ``flash_api.cpp``): no split
  once ``u >= 0.8 * SMs``; else the smallest ``s <= min(128, SMs)`` whose wave
  efficiency ``(u s / SMs) / ceil(u s / SMs)`` is within 85 % of the best.
  FlashAttention-2 calls it with twice the SM count (two 128-thread CTAs per SM), so
  "SMs" here and in the wave count below is SMs x ``ctas_per_sm``, and it also caps
  ``s`` at the context's KV blocks (``ceil(c / 128)`` for head size 128) and skips
  counts that leave the blocks per split unchanged (``kv_block_cap``), so a short
  context is split less and a one-block context not at all (kernel facts,
  :data:`hwmodels.calibration.fit.KERNEL_FACTS`). :func:`fa_splits` restates it. With
  the cap, ``s`` depends on the context, so a step is two lines in the summed context
  for one split count at a time: the engine keys its closed-form decode runs by the
  split count (``simulator/costmodel/iteration.py``, ``split_regime``), with the mean
  context standing in for the kernel's longest one.
* Waves. A CTA streams its chunk of ``c / s`` tokens at a rate of its own
  (``tau`` seconds per token: latency-bound, one SM's loads in flight), and the
  CTAs run in ``ceil(u s / SMs)`` waves, so the per-CTA path costs
  ``tau * (c / s) * ceil(u s / SMs)``. The FlashAttention-2 build of the A100 table
  does not split KV when every query head has its own KV head (MHA): there a CTA
  walks its whole context (``tau_mha``, ``s = 1``) -- 3 ms for one 128k-token
  sequence, where the split kernel takes 90 us.
* The three ways a step can be limited -- arithmetic, HBM bandwidth, the per-CTA
  path -- are all lines through the origin in the summed context ``C = b c``, so
  the step streams at the steepest of their slopes.
* Compute: FlashAttention-2's decode kernel computes the query heads of a KV head as
  the rows of a 64-row tile (``q_tile_rows``), so its tensor-core work is padded to
  whole tiles (:func:`decode_query_rows`).
* Fixed costs: a split step runs a second, merging kernel (``t_split``, plus
  ``kappa_m`` per split where the merge walks the splits one after another,
  ``serial_merge``: FlashAttention-2); per CTA (``kappa_u``: loading Q, the softmax epilogue, writing O)
  and per query head of a sequence (``kappa_h``). The per-CTA cost of a step with
  almost no context (``kappa_u * u``: 80 us for 2,048 sequences) is mostly hidden
  behind streaming once the contexts are long; what is not hidden is
  ``kappa_s * u``. So ``t = t0 + kappa_h b h + max(kappa_u u, kappa_s u + slope C)``.

For a fixed batch and split count that is ``constant + max(constant, line in C)``: exactly the
two lines the engine sums in closed form over a run of decode steps
(``simulator/costmodel/iteration.py``, ``decode_run``).

Benchmark condition (warm L2): the tables time a kernel replayed on the same
buffers in a CUDA graph, so a KV cache that fits in L2 (50 MB on Hopper) is read
from L2 -- 32 MB of KV takes 8 us on an H100 and 64 MB takes 24 us. ``l2_gain``
(fitted, >= 1) divides the memory time of rows whose whole KV fits in the
device's L2 (``hwmodels/devices.yaml`` ``sram_mib``). In serving, the other
layers' KV and weights evict a layer's KV between two steps, so the cost model
prices with a cold L2 (``l2_warm = 0``); the term exists so that the fit does
not bend the HBM parameters to absorb cache hits.

Prefill (causal, ``n`` sequences of ``q`` new tokens after ``c`` cached ones):

* Tiles. The kernel computes 128-query-row tiles against 128-key blocks, so a
  sequence costs whole tiles: a 16-token prompt pays for a 128 x 128 tile.
  ``tile`` blends the exact causal work with the tile-padded work (as ``gemm-v1``
  does for GEMM rows), fitted because tile shapes differ by head size.
* CTAs, each paying ``kappa_u``. FlashAttention-3 packs the query heads of a group
  into one tile for short queries (``pack_gqa``): ``n h_kv ceil(q g / 128)`` CTAs with
  ``g = h / h_kv``, so a one-token prefill costs what a decode step does;
  FlashAttention-2 launches ``n h ceil(q / 128)``. ``pack`` (fitted, 0..1) blends the two.
* Parallelism and pipeline depth: ``eta_c = c_max[head_dim] s(keys per query) s(CTAs)``
  as in ``-v1``, with the CTA count replacing tokens x heads.

The cost model only knows a prefill batch's sums (new tokens, causal work, KV
read); :func:`prefill_shape` recovers the per-sequence ``q`` and ``c`` of a batch of
equal chunks from them (exact for the measured rows and for one chunk).
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np

from hwmodels.calibration.curves import _c_by_dh, _mha, combine, sat

TILE_ROWS = 128
"""Query rows (and keys) per FlashAttention tile: 128 for head size 128 in FA2 and FA3 forward kernels."""

MAX_SPLITS = 128
"""FlashAttention's upper bound on KV splits per (sequence, KV head)."""


def _is_scalar(x) -> bool:
    return isinstance(x, float | int)


@cache
def fa_splits(units: int, sms: int, blocks: int = 0) -> int:
    """KV splits FlashAttention's heuristic picks for ``units`` CTAs on ``sms`` SMs.

    Restated from the description above: no split once the units fill 80 % of the
    SMs; else the smallest split count whose wave efficiency is within 85 % of
    the best over ``1..min(128, sms)``. With ``blocks`` (the context's KV blocks,
    FlashAttention-2's whole heuristic) the range is also capped at ``blocks`` and
    a count that leaves the blocks per split unchanged (``ceil(blocks / s) ==
    ceil(blocks / (s - 1))``) is skipped; ``blocks = 0`` is the long-context limit.
    """
    if units >= 0.8 * sms:
        return 1
    top = max(1, min(MAX_SPLITS, sms))
    if blocks:
        top = max(1, min(top, blocks))
    effs: dict[int, float] = {}
    for s in range(1, top + 1):
        if blocks and s > 1 and -(-blocks // s) == -(-blocks // (s - 1)):
            continue
        waves = units * s / sms
        effs[s] = waves / math.ceil(waves)
    best = max(effs.values())
    for s, e in effs.items():
        if e >= 0.85 * best:
            return s
    return 1


def kv_block_tokens(head_dim: float) -> int:
    """Keys per block of FlashAttention-2's split-KV kernel (``block_n`` in ``set_params_splitkv``)."""
    return 256 if head_dim <= 64 else (128 if head_dim <= 128 else 64)


def _split_waves(units, sms: float, blocks=None):
    """``(s, ceil(u s / sms))`` for scalar or array ``units`` (rounded to whole CTAs).

    ``blocks`` (scalar or array, optional): the KV blocks of each row's context,
    for the capped heuristic of :func:`fa_splits`.
    """
    if _is_scalar(units) and (blocks is None or _is_scalar(blocks)):
        u = max(1, int(round(units)))
        s = fa_splits(u, int(sms), int(blocks or 0))
        return float(s), float(math.ceil(u * s / sms))
    u = np.maximum(1, np.rint(np.asarray(units, dtype=float)).astype(int))
    nb = np.zeros_like(u) if blocks is None else np.broadcast_to(np.asarray(blocks, dtype=int), u.shape)
    u = np.broadcast_to(u, nb.shape)
    pairs, inv = np.unique(np.stack([u.ravel(), nb.ravel()], axis=1), axis=0, return_inverse=True)
    s_u = np.array([fa_splits(int(a), int(sms), int(b)) for a, b in pairs], dtype=float)
    s = s_u[inv.ravel()].reshape(u.shape)
    return s, np.ceil(u * s / sms)


def _blocks(p, context_per_seq, head_dim):
    """KV blocks per sequence when the kernel caps its splits by them (FlashAttention-2), else None."""
    if not p.get("kv_block_cap") or context_per_seq is None:
        return None
    if _is_scalar(context_per_seq) and _is_scalar(head_dim):
        return max(1, math.ceil(context_per_seq / kv_block_tokens(head_dim)))
    dh = np.asarray(head_dim, dtype=float)
    block = np.where(dh <= 64, 256, np.where(dh <= 128, 128, 64))
    return np.maximum(1, np.ceil(np.asarray(context_per_seq, dtype=float) / block)).astype(int)


def _ceil(x):
    return float(math.ceil(x)) if _is_scalar(x) else np.ceil(x)


def _floor(x):
    return float(math.floor(x)) if _is_scalar(x) else np.floor(x)


def _max(a, b):
    if _is_scalar(a) and _is_scalar(b):
        return a if a >= b else b
    return np.maximum(a, b)


def _min(a, b):
    if _is_scalar(a) and _is_scalar(b):
        return a if a <= b else b
    return np.minimum(a, b)


# ------------------------------------------------------------------------- decode


def _slots(p) -> float:
    """Thread blocks the GPU runs at once as the split heuristic counts them: SMs x ``ctas_per_sm``
    (2 for FlashAttention-2, see :data:`hwmodels.calibration.fit.CTAS_PER_SM_BY_KERNEL`; absent = 1)."""
    return float(p["sms"]) * float(p.get("ctas_per_sm", 1.0))


def decode_v2_splits(p, seqs, kv_heads, head_dim=128.0, context_per_seq=None) -> int:
    """The KV split count of a decode step (scalar): FlashAttention's heuristic, capped by the
    context's KV blocks where the kernel does that (``kv_block_cap``)."""
    s, _ = _split_waves(seqs * kv_heads, _slots(p), _blocks(p, context_per_seq, head_dim))
    return int(s)


def decode_v2_cta_slope(p, seqs, heads, kv_heads, head_dim=128.0, context_per_seq=None):
    """Seconds per summed-context token of the per-CTA path: ``tau (c / s) ceil(u s / SMs)`` over ``C = b c``."""
    sms = _slots(p)
    units = seqs * kv_heads
    splits, waves = _split_waves(units, sms, _blocks(p, context_per_seq, head_dim))
    slope = p["tau_s"] * waves / (splits * seqs)
    tau_mha = p.get("tau_mha_s", 0.0)
    if tau_mha:
        mha = (np.asarray(heads) == np.asarray(kv_heads)) if not _is_scalar(heads) else float(heads == kv_heads)
        slope = _max(slope, tau_mha * _ceil(units / sms) / seqs * mha)
    return slope


def decode_query_rows(p, heads, kv_heads):
    """Query rows a decode step's tensor cores compute per KV token and sequence.

    ``heads`` unless the kernel pads: FlashAttention-2's split-KV kernel folds the
    ``g = h / h_kv`` query heads of a KV head into its query-row axis and computes
    whole tiles of ``q_tile_rows`` (its ``kBlockM`` = 64) rows, so a group of 8 costs
    what a group of 64 does (kernel fact, :data:`hwmodels.calibration.fit.Q_TILE_ROWS_BY_KERNEL`).
    """
    rows = p.get("q_tile_rows", 0.0)
    if not rows:
        return heads
    return kv_heads * rows * _ceil(heads / kv_heads / rows)


def decode_v2_memory_efficiency(p, seqs, kv_heads):
    """HBM fraction reached with ``b * h_kv`` KV streams: fewer streams than the memory system needs stay short of it."""
    return p["m_max"] * sat(seqs * kv_heads, p["u0"], p["au"])


def decode_swap_copy(p, seqs, heads, kv_heads, head_dim, bandwidth: float, act_bytes=2.0):
    """Seconds of the query copy FlashAttention-2's varlen decode makes when it swaps groups into rows.

    ``q.reshape({b, h_kv, g, d}).transpose(1, 2).reshape({b * g, h_kv, d})`` is a view
    only for one sequence or one KV head; otherwise torch copies the query (read and
    write of ``b * h * d`` values) in a kernel of its own. Zero for kernels without the
    ``swap_copy`` fact (FlashAttention-3 packs the group inside the kernel).
    """
    if not p.get("swap_copy", 0.0):
        return 0.0
    copies = (seqs > 1) * (kv_heads > 1) * (heads > kv_heads)
    nbytes = 2.0 * seqs * heads * head_dim * act_bytes
    return copies * (p.get("t_swap_s", 0.0) + nbytes / (bandwidth * p["m_max"]))


def decode_v2_lines(p, seqs, heads, kv_heads, head_dim, kv_bytes, peak: float, bandwidth: float, l2_warm=0.0,
                    kv_total_bytes=None, context_per_seq=None):
    """``(fixed_s, flat_s, base_s, slope_s_per_token)`` of an ``attention-decode-v2`` step.

    The step takes ``fixed + max(flat, base + slope * C)`` for a summed context
    ``C``; none of the four depends on ``C`` (only the warm-L2 benchmark term
    does, through ``kv_total_bytes``, and the cost model prices with it off).
    """
    units = seqs * kv_heads
    splits, _ = _split_waves(units, _slots(p), _blocks(p, context_per_seq, head_dim))
    mem_rate = bandwidth * decode_v2_memory_efficiency(p, seqs, kv_heads)
    if p.get("l2_gain", 1.0) != 1.0 and kv_total_bytes is not None:
        fits = (kv_total_bytes <= p["l2_bytes"]) * l2_warm
        mem_rate = mem_rate * (1.0 + (p["l2_gain"] - 1.0) * fits)
    kv_per_token = 2.0 * kv_heads * head_dim * kv_bytes
    slope = _max(4.0 * decode_query_rows(p, heads, kv_heads) * head_dim / (peak * p["c_max"]), kv_per_token / mem_rate)
    slope = _max(slope, decode_v2_cta_slope(p, seqs, heads, kv_heads, head_dim, context_per_seq))
    # A split step launches a second kernel that merges the chunks' partial results.
    merge = (p.get("t_split_s", 0.0) + p.get("kappa_m_s", 0.0) * splits) * (splits > 1)
    fixed = p["t0_s"] + p["kappa_h_s"] * seqs * heads + merge + decode_swap_copy(p, seqs, heads, kv_heads, head_dim,
                                                                                   bandwidth)
    return fixed, p["kappa_u_s"] * units, p["kappa_s_s"] * units, slope


def decode_v2_parts(p, seqs, context, heads, kv_heads, head_dim, act_bytes, kv_bytes, peak: float,
                    bandwidth: float, l2_warm=0.0):
    """The physical step as ``(fixed, flat, base, stream)``: ``t = fixed + max(flat, base + stream)``, ``stream = slope C``."""
    kv_total = context * 2.0 * kv_heads * head_dim * kv_bytes
    fixed, flat, base, slope = decode_v2_lines(p, seqs, heads, kv_heads, head_dim, kv_bytes, peak, bandwidth,
                                               l2_warm, kv_total, context / seqs)
    # Per-sequence traffic (Q in, O out, the new token's K and V): tiny, and paid whatever the context.
    per_seq = seqs * (2.0 * heads * head_dim * act_bytes + 2.0 * kv_heads * head_dim * kv_bytes)
    return fixed + per_seq / (bandwidth * p["m_max"]), flat, base, slope * context


def decode_v2_time(p, seqs, context, heads, kv_heads, head_dim, act_bytes, kv_bytes, peak: float, bandwidth: float,
                   l2_warm=0.0):
    """Seconds of decode attention (``context`` = summed context of the ``seqs`` sequences).

    With a fitted ``correction`` (:mod:`hwmodels.calibration.correction`, kind
    ``decode-lines``) the fixed, flat and base terms are scaled by one factor of
    the batch and the slope by another, so the step keeps its two-line form.
    """
    fixed, flat, base, stream = decode_v2_parts(p, seqs, context, heads, kv_heads, head_dim, act_bytes, kv_bytes,
                                                peak, bandwidth, l2_warm)
    corr = p.get("correction")
    if corr:
        from hwmodels.calibration import correction

        feats = (seqs * kv_heads, correction.group_feature(heads, kv_heads), head_dim)
        fa, fb = correction.factor(corr, feats), correction.slope_factor(corr, feats)
        return fa * fixed + _max(fa * flat, fa * base + fb * stream)
    return fixed + _max(flat, base + stream)


# ------------------------------------------------------------------------ prefill


def prefill_shape(tokens, work, kv_read):
    """Per-sequence ``(q, c, n)`` of a prefill batch of equal chunks from its sums.

    ``tokens = n q``, ``kv_read = n (c + q)``, ``work = n q (c + q/2)``: so
    ``c / q = kv_read / tokens - 1`` and ``q = (work / tokens) / (c / q + 1/2)``.
    """
    r = kv_read / tokens - 1.0
    r = _max(r, 0.0)
    q = (work / tokens) / (r + 0.5)
    q = _max(q, 1.0)
    return q, r * q, tokens / q


def prefill_v2_terms(p, tokens, work, kv_read, heads, kv_heads, head_dim, head_factors=None, shape=None):
    """``(fixed_s, eta_c, eta_m, work_scale, q)`` of ``attention-prefill-v2``; ``work_scale`` >= 1 multiplies the
    FLOPs; both efficiencies carry the occupancy of the kernel's CTAs.

    ``head_factors``: :func:`prefill_head_factors` of these heads, where the caller keeps them (a pricer of one
    model's rows asks the same head size for every shape); None works them out here. ``shape``:
    :func:`prefill_shape` of these sums, where the caller needs it too (the correction surface reads it)."""
    q, c, n = prefill_shape(tokens, work, kv_read) if shape is None else shape
    m_tiles = _ceil(q / TILE_ROWS)
    # Tile-padded causal query-key pairs of one sequence: every m-tile i sees c + (i+1)*128 keys.
    padded = TILE_ROWS * (m_tiles * c + TILE_ROWS * m_tiles * (m_tiles + 1) / 2.0)
    exact = q * (c + q / 2.0)
    w = p.get("tile", 0.0)
    work_scale = (1.0 - w) + w * padded / exact
    group = heads / kv_heads
    pack = p.get("pack", 1.0)
    ctas = n * (pack * kv_heads * _ceil(q * group / TILE_ROWS) + (1.0 - pack) * heads * m_tiles)
    mean_keys = work / tokens
    occupancy = sat(ctas, p["u0"], p["au"])
    by_dh, mha = prefill_head_factors(p, heads, kv_heads, head_dim) if head_factors is None else head_factors
    eta_c = by_dh * sat(mean_keys, p["L0"], p["aL"]) * occupancy
    eta_c = eta_c * mha
    fixed = p["t0_s"] + p["kappa_s"] * heads * tokens + p["kappa_u_s"] * ctas
    # Few CTAs cannot keep enough loads in flight to stream at full bandwidth either (decision 19).
    eta_m = p["m_max"] * occupancy
    return fixed, eta_c, eta_m, work_scale, p["q"]


def prefill_head_factors(p, heads, kv_heads, head_dim):
    """The compute-efficiency factors of ``attention-prefill-v2`` that follow the heads alone: the peak fraction
    of the head size, and the multi-head factor (queries with a KV head each)."""
    return _c_by_dh(p, head_dim), _mha(p, heads, kv_heads)


SM_THREADS = 2048
"""Threads one SM holds at once on sm80 and sm90 (A100, H100, H200)."""

SM_CTAS = 32
"""Thread blocks one SM holds at once on sm80 and sm90."""

CACHE_WRITE_THREADS = 512
"""vLLM's ``reshape_and_cache_flash`` launches ``min(h_kv d, 512)`` threads per token."""


def cache_write_time(p, tokens, kv_heads, head_dim, kv_bytes, bandwidth: float):
    """Seconds of vLLM's KV-cache write before the attention kernel, where the measured call includes it.

    Why a kernel of its own: vLLM's ``reshape_and_cache_flash`` (``csrc/cache_kernels.cu``)
    runs one CTA per new token with ``min(h_kv d, 512)`` threads, each copying one key
    and one value element per loop iteration. Such CTAs are latency-bound, and the
    SM's thread and CTA limits decide how many run at once -- 16 per SM for one KV
    head of 128, 4 from four heads on -- so the write takes ``ceil(tokens / slots)``
    waves of one CTA's life (``t_cw_s``, fitted) plus ``t_cw_iter_s`` per further
    loop iteration, or its bytes (keys and values read and written) at the fitted
    stream rate, whichever is longer. Zero without the kernel fact ``cache_write``
    (``docs/calibration-decisions.md`` 24).
    """
    if not p.get("cache_write"):
        return 0.0
    width = kv_heads * head_dim
    threads = _min(width, CACHE_WRITE_THREADS)
    resident = _min(_floor(SM_THREADS / threads), SM_CTAS)
    waves = _ceil(tokens / (p["sms"] * resident))
    cta = p.get("t_cw_s", 0.0) + (_ceil(width / threads) - 1.0) * p.get("t_cw_iter_s", 0.0)
    stream = 4.0 * tokens * width * kv_bytes / (bandwidth * p["m_max"])
    return _max(waves * cta, stream)


def prefill_v2_time(p, tokens, work, kv_read, heads, kv_heads, head_dim, act_bytes, kv_bytes, peak: float,
                    bandwidth: float):
    """Seconds of causal prefill attention under ``attention-prefill-v2`` (aggregate features)."""
    flops = 4.0 * heads * head_dim * work
    nbytes = kv_read * 2.0 * kv_heads * head_dim * kv_bytes + tokens * (
        2.0 * heads * head_dim * act_bytes + 2.0 * kv_heads * head_dim * kv_bytes
    )
    fixed, eta_c, eta_m, scale, q = prefill_v2_terms(p, tokens, work, kv_read, heads, kv_heads, head_dim)
    write = cache_write_time(p, tokens, kv_heads, head_dim, kv_bytes, bandwidth)
    return fixed + write + combine(flops * scale / (peak * eta_c), nbytes / (bandwidth * eta_m), q)
