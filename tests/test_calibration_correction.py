"""The fitted residual surface (hwmodels/calibration/correction.py): interpolation, fit, pricing paths."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.interpolate import RegularGridInterpolator

from hwmodels.calibration import correction
from hwmodels.calibration.pricing import DecodePricer, GemmPricer, PrefillPricer
from hwmodels.calibration.profile import Curve, shipped_profile


def _grid(kind: str, values: np.ndarray) -> dict:
    d = correction.DESIGNS[kind]
    return {"kind": kind, "axes": [[a.name, a.first, a.step, a.count] for a in d.axes], "log_factor": values.tolist()}


def test_lookup_matches_scipy_multilinear_interpolation_and_clamps():
    rng = np.random.default_rng(0)
    design = correction.DESIGNS["gemm"]
    counts = [a.count for a in design.axes]
    values = rng.normal(0.0, 0.2, counts)
    corr = _grid("gemm", values)
    knots = [a.first + a.step * np.arange(a.count) for a in design.axes]
    ref = RegularGridInterpolator(knots, values)
    pts = np.column_stack([rng.uniform(k[0] - 3, k[-1] + 3, 200) for k in knots])
    clamped = np.column_stack([np.clip(pts[:, i], k[0], k[-1]) for i, k in enumerate(knots)])
    expected = ref(clamped)
    raw = [2.0 ** pts[:, i] for i in range(3)]
    many = correction.log_factor_many(corr, raw)
    one = [correction.log_factor(corr, [float(r[j]) for r in raw]) for j in range(len(pts))]
    assert np.allclose(many, expected, atol=1e-12)
    assert np.allclose(one, expected, atol=1e-12)
    # At a knot the lookup returns that knot's value.
    at = [4.0, 64.0, 1024.0]
    idx = tuple(int(round((np.log2(x) - a.first) / a.step)) for x, a in zip(at, design.axes, strict=True))
    assert correction.log_factor(corr, at) == pytest.approx(values[idx], abs=1e-12)


def test_fit_recovers_a_smooth_synthetic_residual_surface():
    rng = np.random.default_rng(1)
    n = 2000
    m = 2.0 ** rng.uniform(0, 14, n)
    nn = 2.0 ** rng.integers(6, 15, n).astype(float)
    k = 2.0 ** rng.integers(6, 15, n).astype(float)

    def truth(m, nn, k):
        return 0.15 * np.sin(np.log2(m) / 4.0) - 0.05 * (np.log2(nn) - 10) / 4 + 0.03 * (np.log2(k) - 10) / 4

    resid = truth(m, nn, k) + rng.normal(0.0, 0.01, n)
    corr, lam = correction.fit("gemm", (m, nn, k), resid, nn * 1e6 + k)
    assert lam in correction.LAMBDAS
    mt, nt, kt = 2.0 ** rng.uniform(0, 14, 500), 2.0 ** rng.uniform(6, 14, 500), 2.0 ** rng.uniform(6, 14, 500)
    err = correction.log_factor_many(corr, (mt, nt, kt)) - truth(mt, nt, kt)
    assert np.sqrt(np.mean(err**2)) < 0.02  # residual sd 0.15; the grid recovers it to a few percent
    # Pure noise: the inner split picks a stiff surface that stays near zero (no invented correction).
    flat, lam_flat = correction.fit("gemm", (m, nn, k), rng.normal(0.0, 0.01, n), nn * 1e6 + k)
    assert lam_flat >= lam
    assert np.max(np.abs(flat["log_factor"])) < 0.01


def test_decode_fit_recovers_separate_fixed_and_slope_factors():
    rng = np.random.default_rng(2)
    n = 600
    seqs = 2.0 ** rng.integers(0, 11, n).astype(float)
    kvh = 2.0 ** rng.integers(0, 4, n).astype(float)
    group = 2.0 ** rng.integers(0, 4, n).astype(float)
    dh = np.full(n, 128.0)
    fixed = np.full(n, 1e-5)
    flat = 1e-8 * seqs * kvh
    base = 0.5 * flat
    stream = 1e-9 * seqs * 2.0 ** rng.uniform(4, 16, n)
    fa, fb = 1.2, 0.8
    t = fa * fixed + np.maximum(fa * flat, fa * base + fb * stream)
    corr, _ = correction.fit_decode((seqs * kvh, group, dh), (fixed, flat, base, stream), np.log(t), kvh * 10 + group,
                                     lambdas=(0.01,))
    feats = (seqs * kvh, group, dh)
    ga, gb = correction.factor(corr, feats), correction.slope_factor(corr, feats)
    assert np.median(ga) == pytest.approx(fa, rel=0.03) and np.median(gb) == pytest.approx(fb, rel=0.03)
    pred = ga * fixed + np.maximum(ga * flat, ga * base + gb * stream)
    assert np.sqrt(np.mean(np.log(pred / t) ** 2)) < 0.01


def _curve(form: str, params: dict, key: str) -> Curve:
    return Curve(key, "bf16", form, params, "test", {})


@pytest.mark.parametrize("device", ["a100-80gb-sxm", "h100-sxm", "h200"])
def test_shipped_profiles_carry_corrections_and_scalar_equals_array_pricing(device):
    prof = shipped_profile(device)
    peak, bw = prof.doc["peaks"]["flops_per_s"]["bf16"], prof.doc["peaks"]["memory_bandwidth_Bps"]
    gemm = prof.curve("gemm", "bf16")
    assert gemm.params["correction"]["kind"] == "gemm" and "fitted_on" in gemm.params["correction"]
    g = GemmPricer(gemm, [(6144.0, 4096.0, 1.0), (4096.0, 4096.0, 1.0)], peak, bw)
    m = np.array([1.0, 17.0, 129.0, 1000.0, 40000.0])
    flops = 2.0 * m * g.weight_elements
    nbytes = 2.0 * (m * 8192 + g.weight_elements)
    many = g.price_many(flops, nbytes).time_s
    one = [g.price(float(f), float(b)).time_s for f, b in zip(flops, nbytes, strict=True)]
    assert np.allclose(many, one, rtol=1e-12, atol=0.0)
    pre = prof.curve("attention_prefill", "bf16")
    # The Hopper tables measure several head sizes, so their surface has a head-size axis (decision 20).
    assert pre.params["correction"]["kind"] == ("prefill" if device == "a100-80gb-sxm" else "prefill-dh")
    a = PrefillPricer(pre, 32.0, 8.0, 128.0, peak, bw)
    q = np.array([1.0, 16.0, 200.0, 3000.0])
    work = q * q / 2
    flops = 4 * 32 * 128 * work
    nbytes = q * 4096.0
    many = a.price_many(q, work, flops, nbytes, q).time_s
    one = [a.price(*map(float, r)).time_s for r in zip(q, work, flops, nbytes, q, strict=True)]
    assert np.allclose(many, one, rtol=1e-12, atol=0.0)
    dec = prof.curve("attention_decode", "bf16")
    assert dec.params["correction"]["kind"] == "decode-lines"


def test_decode_correction_keeps_the_step_two_lines_with_batch_only_coefficients():
    prof = shipped_profile("h100-sxm")
    peak, bw = prof.doc["peaks"]["flops_per_s"]["bf16"], prof.doc["peaks"]["memory_bandwidth_Bps"]
    dec = prof.curve("attention_decode", "bf16")
    h, hkv, dh = 32.0, 8.0, 128.0
    kv_tok, flop_tok = 2 * hkv * dh * 2.0, 4 * h * dh
    d = DecodePricer(dec, h, hkv, peak, bw, dh, flop_tok, kv_tok)
    bare = DecodePricer(_curve(dec.form, {k: v for k, v in dec.params.items() if k != "correction"}, dec.key),
                        h, hkv, peak, bw, dh, flop_tok, kv_tok)
    b = 64.0
    ln, ln0 = d.lines(b, 1000.0), bare.lines(b, 1000.0)
    fixed, flat, base, slope = ln.fixed, ln.flat, ln.base, ln.slope
    f0, fl0, b0, s0 = ln0.fixed, ln0.flat, ln0.base, ln0.slope
    # One factor on the three fixed terms, another on the slope; both of the batch only.
    assert fixed / f0 == pytest.approx(flat / fl0, rel=1e-12) == pytest.approx(base / b0, rel=1e-12)
    assert slope / s0 != pytest.approx(fixed / f0, rel=1e-6)
    for c in (b * 10, b * 1000, b * 100000):
        t = d.price(b, c, flop_tok * c, kv_tok * c + 1000.0).time_s
        assert t == pytest.approx(fixed + max(flat, base + slope * c), rel=1e-12)


def test_reduced_grid_equals_the_full_lookup():
    """Pricers interpolate the axes their shape fixes once (reduce); that must not change the factor."""
    rng = np.random.default_rng(3)
    counts = [a.count for a in correction.DESIGNS["gemm"].axes]
    corr = _grid("gemm", rng.normal(0.0, 0.3, counts))
    for n, k in ((100.0, 3000.0), (32.0, 70000.0), (4096.0, 4096.0)):
        small = correction.reduce(corr, {1: n, 2: k})
        for m in (1.0, 3.0, 129.0, 5000.0, 1e6):
            assert correction.log_factor(small, [m]) == pytest.approx(
                correction.log_factor(corr, [m, n, k]), rel=1e-12, abs=1e-14)


def test_group_feature_puts_mha_on_its_own_knot():
    assert correction.group_feature(8, 8) == correction.MHA_GROUP
    assert correction.group_feature(8.0, 2.0) == 4.0
    arr = correction.group_feature(np.array([8.0, 8.0, 64.0]), np.array([8.0, 1.0, 8.0]))
    assert arr.tolist() == [correction.MHA_GROUP, 8.0, 8.0]
    # A grid whose group axis starts at 1 (the decode design, and every profile before the MHA knot) clamps
    # the MHA feature to its first knot: it prices MHA exactly as with group 1.
    rng = np.random.default_rng(3)
    d = correction.DESIGNS["decode"]
    corr = _grid("decode", rng.normal(0.0, 0.2, [a.count for a in d.axes]))
    for u in (1.0, 37.0, 4096.0):
        assert correction.log_factor(corr, [u, correction.MHA_GROUP, 128.0]) == correction.log_factor(corr, [u, 1.0, 128.0])


def test_penalty_leaves_knots_before_smooth_from_out_of_the_curvature_term():
    # A 4 x 3 grid, row-major: along axis 0 neighbouring knots are 3 apart.
    pen = correction._penalty([4, 3], smooth_from=[1, 0])
    triples = [tuple(np.flatnonzero(r).tolist()) for r in pen]
    along_axis0 = [t for t in triples if t[1] - t[0] == 3]
    assert sorted(along_axis0) == [(3, 6, 9), (4, 7, 10), (5, 8, 11)]  # knot 0 (indices 0..2) is in none
    assert len(triples) - len(along_axis0) == 4  # one triple per axis-0 knot along axis 1, untouched
    assert len(correction._penalty([4, 3])) == 2 * 3 + 4


def test_prefill_fit_keeps_mha_apart_from_small_groups(monkeypatch):
    """MHA rows 30 % slower than the physical curve, grouped-query rows exact: the MHA knot takes the 30 %
    and a group of 2 keeps none of it (on a smooth axis from group 1, a group of 2 would share it)."""
    rng = np.random.default_rng(4)
    n = 3000
    q = 2.0 ** rng.uniform(0, 14, n)
    seq_heads = 2.0 ** rng.uniform(0, 14, n)
    group = rng.choice([correction.MHA_GROUP, 2.0, 4.0, 8.0, 16.0], n)
    resid = np.where(group == correction.MHA_GROUP, np.log(1.3), 0.0) + rng.normal(0.0, 0.01, n)
    corr, _ = correction.fit("prefill", (q, seq_heads, group), resid, group)
    probe_q, probe_sh = np.full(50, 256.0), 2.0 ** np.linspace(1, 13, 50)
    mha = correction.log_factor_many(corr, (probe_q, probe_sh, np.full(50, correction.MHA_GROUP)))
    pair = correction.log_factor_many(corr, (probe_q, probe_sh, np.full(50, 2.0)))
    assert np.allclose(mha, np.log(1.3), atol=0.02)
    assert np.max(np.abs(pair)) < 0.02
    # The smooth axis from group 1 (knots 1, 4, 16) the prefill design had before: a group of 2 shares the MHA offset.
    old = correction.Design("prefill", (*correction.DESIGNS["prefill"].axes[:2], correction.GridAxis("log2_group", 0.0, 2.0, 3)))
    monkeypatch.setitem(correction.DESIGNS, "prefill", old)
    corr_old, _ = correction.fit("prefill", (q, seq_heads, np.maximum(group, 1.0)), resid, group)
    pair_old = correction.log_factor_many(corr_old, (probe_q, probe_sh, np.full(50, 2.0)))
    assert np.median(pair_old) > 0.08


def test_prefill_head_size_axis_separates_a_regime_by_head_size():
    """MHA rows 20 % slow at head size 128 and 10 % fast at 64 (grouped rows exact): the head-size surface
    (kind prefill-dh, decision 20) learns both; the three-axis surface can only average them."""
    rng = np.random.default_rng(5)
    n = 4000
    q = 2.0 ** rng.uniform(0, 14, n)
    seq_heads = 2.0 ** rng.uniform(0, 14, n)
    group = rng.choice([correction.MHA_GROUP, 2.0, 8.0], n)
    dh = rng.choice([64.0, 128.0], n)
    mha = group == correction.MHA_GROUP
    truth = np.where(mha & (dh == 128.0), np.log(1.2), 0.0) + np.where(mha & (dh == 64.0), np.log(0.9), 0.0)
    resid = truth + rng.normal(0.0, 0.01, n)
    corr, _ = correction.fit("prefill-dh", (q, seq_heads, group, dh), resid, group * 1000 + dh)
    probe = (np.full(20, 512.0), 2.0 ** np.linspace(2, 12, 20), np.full(20, correction.MHA_GROUP))
    at128 = correction.log_factor_many(corr, (*probe, np.full(20, 128.0)))
    at64 = correction.log_factor_many(corr, (*probe, np.full(20, 64.0)))
    assert np.allclose(at128, np.log(1.2), atol=0.02) and np.allclose(at64, np.log(0.9), atol=0.02)
    flat, _ = correction.fit("prefill", (q, seq_heads, group), resid, group * 1000 + dh)
    both = correction.log_factor_many(flat, probe)
    assert np.all(np.abs(both - np.log(1.2)) > 0.05) and np.all(np.abs(both - np.log(0.9)) > 0.05)


def test_pricer_reads_a_head_size_surface_like_the_fitted_curve():
    """The pricer fixes the model's group and head size once (reduce); at a head size between knots (96) it
    must price exactly what the family's predictor does with the full four-axis lookup."""
    from hwmodels.calibration.curves import family

    prof = shipped_profile("h100-sxm")
    pre = prof.curve("attention_prefill", "bf16")
    peak, bw = prof.doc["peaks"]["flops_per_s"]["bf16"], prof.doc["peaks"]["memory_bandwidth_Bps"]
    d = correction.DESIGNS["prefill-dh"]
    grid = _grid("prefill-dh", np.random.default_rng(6).normal(0.0, 0.2, [a.count for a in d.axes]))
    params = {**pre.params, "correction": grid}
    curve = _curve(pre.form, params, pre.key)
    h, hkv, dh = 24.0, 24.0, 96.0
    pricer = PrefillPricer(curve, h, hkv, dh, peak, bw)
    for q, n in ((7.0, 3.0), (300.0, 16.0), (5000.0, 1.0)):
        tokens, work, kv_read = n * q, n * q * q / 2, n * q
        flops = 4 * h * dh * work
        nbytes = kv_read * 2 * hkv * dh * 2 + tokens * (2 * h * dh * 2 + 2 * hkv * dh * 2)  # as prefill_v2_time
        x = {"tokens": tokens, "work": work, "kv_read": kv_read, "heads": h, "kv_heads": hkv, "head_dim": dh,
             "act_bytes": 2.0, "kv_bytes": 2.0}
        want = float(family(pre.form).predict(params, x, peak, bw))
        assert pricer.price(tokens, work, flops, nbytes, kv_read).time_s == pytest.approx(want, rel=1e-12)
    # The head size matters: the same shape at head size 128 reads other grid values.
    other = PrefillPricer(curve, h, hkv, 128.0, peak, bw).price(tokens, work, flops, nbytes, kv_read).time_s
    assert other != pytest.approx(pricer.price(tokens, work, flops, nbytes, kv_read).time_s, rel=1e-6)


def test_pricer_adds_the_cache_write_with_the_deployments_kv_bytes():
    """A prefill curve whose table includes vLLM's KV-cache write (decision 24): the pricer adds the write's time
    inside the residual surface, as the family's predictor does, and an fp8 cache writes half the bytes."""
    from hwmodels.calibration.attention_curves import cache_write_time
    from hwmodels.calibration.curves import family

    prof = shipped_profile("h100-sxm")
    pre = prof.curve("attention_prefill", "bf16")
    peak, bw = prof.doc["peaks"]["flops_per_s"]["bf16"], prof.doc["peaks"]["memory_bandwidth_Bps"]
    params = {**pre.params, "sms": 132.0, "cache_write": 1.0, "t_cw_s": 2e-6, "t_cw_iter_s": 1e-7}
    curve = _curve(pre.form, params, pre.key)
    h, hkv, dh, q, n = 32.0, 8.0, 128.0, 2048.0, 8.0
    tokens, work, kv_read = n * q, n * q * q / 2, n * q
    flops = 4 * h * dh * work
    nbytes = kv_read * 2 * hkv * dh * 2 + tokens * (2 * h * dh * 2 + 2 * hkv * dh * 2)
    x = {"tokens": tokens, "work": work, "kv_read": kv_read, "heads": h, "kv_heads": hkv, "head_dim": dh,
         "act_bytes": 2.0, "kv_bytes": 2.0}
    priced = PrefillPricer(curve, h, hkv, dh, peak, bw).price(tokens, work, flops, nbytes, kv_read).time_s
    assert priced == pytest.approx(float(family(pre.form).predict(params, x, peak, bw)), rel=1e-12)
    without = PrefillPricer(_curve(pre.form, {**params, "cache_write": 0.0}, pre.key), h, hkv, dh, peak, bw)
    assert priced > without.price(tokens, work, flops, nbytes, kv_read).time_s
    # With a bandwidth-bound write (64 KV heads), an fp8 cache halves the write's share.
    h = hkv = 64.0
    flops = 4 * h * dh * work
    nbytes = kv_read * 2 * hkv * dh * 2 + tokens * (2 * h * dh * 2 + 2 * hkv * dh * 2)
    t16 = PrefillPricer(curve, h, hkv, dh, peak, bw, kv_bytes=2.0).price(tokens, work, flops, nbytes, kv_read).time_s
    t8 = PrefillPricer(curve, h, hkv, dh, peak, bw, kv_bytes=1.0).price(tokens, work, flops, nbytes, kv_read).time_s
    half = cache_write_time(params, tokens, hkv, dh, 1.0, bw)
    assert half == pytest.approx(cache_write_time(params, tokens, hkv, dh, 2.0, bw) / 2)
    assert t16 > t8
