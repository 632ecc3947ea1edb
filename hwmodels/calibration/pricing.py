"""Pricing one operator with a calibrated curve, at that operator's shape.

Why separate from the curves: the cost model prices operator *rows* whose
FLOPs and bytes come from the operator table (after any technique edited them);
the curve supplies only what calibration knows -- the fixed cost and the
efficiencies at this shape. So a row costs

    fixed(shape) + combine(FLOPs / (peak * eta_c(shape)), bytes / (bandwidth * eta_m(shape)))

Plain Python floats in the hot path: the engine calls ``price`` once per new
batch shape, where numpy's per-call overhead would dominate. ``price_many``
runs the same formulas on arrays of shapes (all with work to do), so the
engine can price, in one call, shapes it knows will come (every lone prefill
of the workload's prompt lengths).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hwmodels.calibration import attention_curves, correction, curves
from hwmodels.calibration.profile import Curve


@dataclass(frozen=True)
class Priced:
    """A row's time and its compute / memory parts (for the breakdown's "bound")."""

    time_s: float
    compute_s: float
    memory_s: float


_max = curves._maximum  # max of two floats, or elementwise of arrays


def _combine(fixed: float, tc: float, tm: float, q: float) -> Priced:
    return Priced(fixed + curves.combine(tc, tm, q), tc, tm)


ZERO = Priced(0.0, 0.0, 0.0)


@dataclass(frozen=True, slots=True)
class DecodeLines:
    """A ``-v2`` decode-attention step for one batch: ``fixed + max(flat, base + slope * C)`` seconds at summed context ``C``."""

    fixed: float
    flat: float
    base: float
    slope: float


@dataclass(frozen=True, slots=True)
class DecodeTerms:
    """A ``-v1`` decode-attention step for one batch: ``fixed`` seconds, seconds per FLOP and per byte, and the
    serial seconds per context token that bound the compute side from below."""

    fixed: float
    per_flop: float
    per_byte: float
    serial: float


class GemmPricer:
    """A row of one or more GEMMs (fused QKV, gate-up + down, ...) sharing the token count ``m``.

    ``gemms`` holds ``(n, k, count)`` per kernel launched per expert; the row's
    FLOPs and bytes are split between them in proportion to their weights
    ``n * k * count`` (exact for FLOPs and weight bytes, close for activations).
    """

    def __init__(self, curve: Curve, gemms: Sequence[tuple[float, float, float]], peak: float, bandwidth: float):
        self.p = dict(curve.params)
        self.peak, self.bw = peak, bandwidth
        total = sum(n * k * c for n, k, c in gemms)
        self.gemms = [(float(n), float(k), float(c), n * k * c / total) for n, k, c in gemms]
        # The residual surface of each kernel, its (n, k) axes interpolated once: a lookup over m remains.
        corr = self.p.get("correction")
        self.corrs = [correction.reduce(corr, {1: n, 2: k}) for n, k, _, _ in self.gemms] if corr else None
        # A kernel computing rows in bands (``gemm-banded``): the band's fill is the lookup's second feature.
        self.row_bands = corr.get("row_bands") if corr else None
        self.weight_elements = total  # per expert

    def price(self, flops: float, nbytes: float, experts: float = 1.0) -> Priced:
        if flops <= 0.0 and nbytes <= 0.0:
            return ZERO
        m = flops / (2.0 * self.weight_elements * experts) if flops > 0 else 1.0
        return self._price(m, flops, nbytes, experts)

    def price_many(self, flops, nbytes, experts=1.0) -> Priced:
        """:meth:`price` of arrays of rows, every one with FLOPs or bytes to move."""
        safe = np.where(flops > 0.0, flops, 2.0 * self.weight_elements * experts)
        return self._price(safe / (2.0 * self.weight_elements * experts), flops, nbytes, experts)

    def _price(self, m, flops, nbytes, experts) -> Priced:
        total = tc = tm = 0.0
        q = self.p["q"]
        for g, (n, k, count, share) in enumerate(self.gemms):
            launches = count * experts
            f_g, b_g = flops * share, nbytes * share
            t0, eta_c, eta_m, _ = curves.gemm_terms(self.p, m, n, k, b_g / launches)
            c, mm = f_g / (self.peak * eta_c), b_g / (self.bw * eta_m)
            tc += c
            tm += mm
            # The soft maximum is homogeneous of degree 1, so combining the launches'
            # totals equals ``launches`` times combining one launch.
            t = t0 * launches + curves.combine(c, mm, q)
            if self.corrs is not None:  # the fitted residual surface, per kernel shape
                feats = (m, correction.band_fill(self.row_bands, m, k)) if self.row_bands else (m,)
                t = t * correction.factor(self.corrs[g], feats)
            total += t
        return Priced(total, tc, tm)


class PrefillPricer:
    """Causal prefill attention from the aggregate features (tokens, query-key work, KV read)."""

    def __init__(self, curve: Curve, heads: float, kv_heads: float, head_dim: float, peak: float, bandwidth: float,
                 kv_bytes: float = 2.0):
        self.p = dict(curve.params)
        self.v2 = curve.form == "attention-prefill-v2"
        self.kv_bytes = float(kv_bytes)  # per KV-cache element: the cache write's bytes (attention_curves)
        self.h, self.hkv, self.dh = float(heads), float(kv_heads), float(head_dim)
        self.peak, self.bw = peak, bandwidth
        # The residual surface with the model's group size (and head size, kind prefill-dh) interpolated once:
        # (q, sequences x heads) remain.
        corr = self.p.get("correction") if self.v2 else None
        fixed = {2: correction.group_feature(self.h, self.hkv)}
        if corr and corr.get("kind") == "prefill-dh":
            fixed[3] = self.dh
        self.corr = correction.reduce(corr, fixed) if corr else None
        # The model's heads are fixed: their efficiency factors are looked up once (a head-size table search).
        self._head_factors = attention_curves.prefill_head_factors(self.p, self.h, self.hkv, self.dh) if self.v2 else None

    def price(self, tokens: float, work: float, flops: float, nbytes: float, kv_read: float = 0.0) -> Priced:
        if tokens <= 0.0:
            return ZERO
        return self.price_many(tokens, work, flops, nbytes, kv_read)

    def price_many(self, tokens, work, flops, nbytes, kv_read=0.0) -> Priced:
        """:meth:`price` of floats or of arrays of rows, every one with tokens to prefill."""
        work = _max(work, 1e-9)
        if self.v2:
            kv_read = _max(kv_read, tokens)
            shape = attention_curves.prefill_shape(tokens, work, kv_read)  # as correction.features does
            fixed, eta_c, eta_m, scale, q = attention_curves.prefill_v2_terms(
                self.p, tokens, work, kv_read, self.h, self.hkv, self.dh, self._head_factors, shape)
            tc, tm = flops * scale / (self.peak * eta_c), nbytes / (self.bw * eta_m)
            write = attention_curves.cache_write_time(self.p, tokens, self.hkv, self.dh, self.kv_bytes, self.bw)
            # One Priced at the end (a mixed-iteration replay prices thousands of chunk positions): the same sums.
            time_s = fixed + curves.combine(tc, tm, q) + write
            if self.corr is None:
                return Priced(time_s, tc, tm + write)
            q_seq, _, seqs = shape
            g = correction.factor(self.corr, (q_seq, seqs * self.h))
            return Priced(time_s * g, tc, tm + write)
        fixed, eta_c, eta_m, q = curves.prefill_terms(self.p, tokens, work, self.h, self.hkv, self.dh)
        return _combine(fixed, flops / (self.peak * eta_c), nbytes / (self.bw * eta_m), q)


class DecodePricer:
    """Decode attention; ``terms`` / ``lines`` depend on the batch only, so runs stay affine in the context.

    ``flops_per_token`` and ``bytes_per_token`` are the operator row's coefficients of
    the summed decode context (after any technique edited them); the ``-v2`` form
    prices the context-proportional work with them and the rest of the row's bytes
    (per-sequence Q, O and new KV) as a fixed cost.
    """

    def __init__(self, curve: Curve, heads: float, kv_heads: float, peak: float, bandwidth: float,
                 head_dim: float = 128.0, flops_per_token: float = 0.0, bytes_per_token: float = 0.0):
        self.p = dict(curve.params)
        self.v2 = curve.form == "attention-decode-v2"
        self.h, self.hkv, self.dh = float(heads), float(kv_heads), float(head_dim)
        self.peak, self.bw = peak, bandwidth
        # The residual surface with the model's group size and head size interpolated once: units remain.
        corr = self.p.get("correction")
        self.corr = correction.reduce(corr, {1: correction.group_feature(self.h, self.hkv), 2: self.dh}) if self.v2 and corr else None
        self.f_tok, self.b_tok = float(flops_per_token), float(bytes_per_token)
        # Split regimes (FlashAttention-2): looked up once per (batch, KV blocks); runs ask twice per decode run.
        self._capped = bool(self.v2 and self.p.get("kv_block_cap"))
        self._block = attention_curves.kv_block_tokens(self.dh)
        self._fills = 0.8 * float(self.p.get("sms", 1.0)) * float(self.p.get("ctas_per_sm", 1.0))
        self._regimes: dict[tuple[float, int], int] = {}
        # (batch, KV blocks or None) -> the context-free terms of ``lines`` (see there).
        self._line_terms: dict[tuple[float, int | None], tuple] = {}

    def split_regime(self, seqs: float, context: float) -> int:
        """The kernel's KV split count for ``seqs`` sequences of summed ``context``, where it depends on it, else 0.

        FlashAttention-2 caps its splits by the context's KV blocks (``kv_block_cap``),
        so the two lines of a step hold for one split count only; the engine keys
        its closed-form decode runs by this. The mean context stands in for the
        kernel's ``max_seqlen_k`` (the engine knows only the sum).
        """
        if not self._capped or seqs <= 0.0:
            return 0
        if seqs * self.hkv >= self._fills:  # enough CTAs: never split, whatever the context
            return 1
        key = (seqs, math.ceil(context / (seqs * self._block)))  # the KV blocks decide the split count
        hit = self._regimes.get(key)
        if hit is None:
            hit = self._regimes[key] = attention_curves.decode_v2_splits(self.p, seqs, self.hkv, self.dh, context / seqs)
        return hit

    def lines(self, seqs: float, per_seq_bytes: float, context_per_seq: float | None = None) -> DecodeLines:
        """``-v2``: the step's two lines in the summed context ``C``.

        Priced with a cold L2 (the serving case, see :mod:`hwmodels.calibration.attention_curves`).
        ``context_per_seq`` picks the split count where the kernel caps it by the
        context (:meth:`split_regime`); without it, the long-context limit.
        """
        fixed, flat, base, slope, fa = self._terms_at(seqs, context_per_seq)
        fixed += per_seq_bytes / (self.bw * self.p["m_max"])
        return DecodeLines(float(fixed * fa) if fa is not None else float(fixed), flat, base, slope)

    def _terms_at(self, seqs: float, context_per_seq: float | None) -> tuple:
        """``lines`` but its per-sequence bytes: ``(fixed, flat, base, slope, fa)``, the last three final, ``fixed``
        still to get the bytes' time added and then to be scaled by the correction factor ``fa`` (None: none).

        The context enters only through the KV blocks that cap the split count, so these are memoised by
        (batch, blocks): a mixed iteration meets a new summed context nearly every step and reuses them.
        """
        p = self.p
        blocks = None
        if context_per_seq is not None and p.get("kv_block_cap"):  # attention_curves._blocks, scalar
            blocks = max(1, math.ceil(context_per_seq / self._block))
        key = (seqs, blocks)
        terms = self._line_terms.get(key)
        if terms is None:
            fixed, flat, base, _ = attention_curves.decode_v2_lines(
                p, seqs, self.h, self.hkv, self.dh, 2.0, self.peak, self.bw, context_per_seq=context_per_seq)
            eta_m = attention_curves.decode_v2_memory_efficiency(p, seqs, self.hkv)
            slope_cta = attention_curves.decode_v2_cta_slope(p, seqs, self.h, self.hkv, self.dh, context_per_seq)
            # The row's FLOPs count the model's query heads; a kernel that pads them to whole tiles does more.
            padded = float(attention_curves.decode_query_rows(p, self.h, self.hkv)) / self.h
            slope = max(self.f_tok * padded / (self.peak * p["c_max"]), self.b_tok / (self.bw * eta_m),
                        float(slope_cta))
            if self.corr is not None:
                # The residual surface: one factor of the batch for the fixed terms, one for the slope.
                feats = (float(seqs) * self.hkv,)
                fa, fb = correction.factor(self.corr, feats), correction.slope_factor(self.corr, feats)
                terms = (fixed, float(flat * fa), float(base * fa), slope * fb, fa)
            else:
                terms = (fixed, float(flat), float(base), slope, None)
            self._line_terms[key] = terms
        return terms

    def _v2_time(self, seqs: float, context: float, nbytes: float) -> float:
        """``-v2``: seconds of a step of ``seqs`` sequences of summed ``context`` (``seqs > 0``)."""
        kv = self.b_tok * context
        # ``lines`` inlined (a mixed iteration prices this at nearly every step), the same operations.
        fixed, flat, base, slope, fa = self._terms_at(seqs, context / seqs)
        fixed += max(nbytes - kv, 0.0) / (self.bw * self.p["m_max"])
        fixed = float(fixed * fa) if fa is not None else float(fixed)
        return fixed + max(flat, base + slope * context)

    def time_s(self, seqs: float, context: float, flops: float, nbytes: float) -> float:
        """``price(...).time_s`` without the compute and memory parts (the mixed-iteration fast path)."""
        if self.v2 and seqs > 0.0:
            return self._v2_time(seqs, context, nbytes)
        return self.price(seqs, context, flops, nbytes).time_s

    def terms(self, seqs: float) -> DecodeTerms:
        """``-v1``: the step's fixed time, time per FLOP and per byte, and serial time per context token."""
        fixed, eta_c, eta_m, serial = curves.decode_terms(self.p, seqs, self.h, self.hkv)
        return DecodeTerms(fixed, 1.0 / (self.peak * eta_c), 1.0 / (self.bw * eta_m), float(serial))

    def price(self, seqs: float, context: float, flops: float, nbytes: float) -> Priced:
        if seqs <= 0.0:
            return ZERO
        if self.v2:
            t = self._v2_time(seqs, context, nbytes)
            return Priced(t, flops / (self.peak * self.p["c_max"]), nbytes / (self.bw * self.p["m_max"]))
        t = self.terms(seqs)
        tc = max(flops * t.per_flop, t.serial * context)
        return _combine(t.fixed, tc, nbytes * t.per_byte, math.inf)


class MemoryPricer:
    """A bandwidth-bound row (norm, embedding gather)."""

    def __init__(self, curve: Curve, peak: float, bandwidth: float):
        self.p = dict(curve.params)
        self.peak, self.bw = peak, bandwidth

    def price(self, flops: float, nbytes: float, launches: float = 1.0) -> Priced:
        if nbytes <= 0.0 and flops <= 0.0:
            return ZERO
        return self.price_many(flops, nbytes, launches)

    def price_many(self, flops, nbytes, launches: float = 1.0) -> Priced:
        """:meth:`price` of floats or of arrays of rows, every one with bytes to move."""
        fixed, eta_c, eta_m, _ = curves.memory_terms(self.p, _max(nbytes / launches, 1.0))
        return _combine(fixed * launches, flops / (self.peak * eta_c), nbytes / (self.bw * eta_m), math.inf)


class CollectivePricer:
    """A collective priced by its fitted alpha-beta lines (``min_i alpha_i + bytes / beta_i``)."""

    def __init__(self, curve: Curve):
        self.p = dict(curve.params)
        self.curve = curve

    def time(self, nbytes: float) -> float:
        if nbytes <= 0.0:
            return 0.0
        return float(curves.alpha_beta_time(self.p, float(nbytes)))

    def time_many(self, nbytes):
        """:meth:`time` of an array of messages, every one non-empty."""
        return curves.alpha_beta_time(self.p, nbytes)
