"""The cost model with calibrated profiles: shipped profiles load and are used by default,
curves change prices in the expected direction, and the engine's contracts still hold
(decode runs equal step-by-step pricing, affine flags are honest, breakdowns add up)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import yaml

from capsim.errors import CapsimError, UnknownNameError
from hwmodels.calibration.curves import family
from hwmodels.calibration.profile import PROFILE_FORMAT, load_profile, shipped_profile, shipped_profile_names
from hwmodels.device import get_device
from simulator.config.schema import DeploymentConfig, Scenario
from simulator.costmodel import BatchShape
from simulator.system import build_system

SHIPPED = ("a100-80gb-sxm", "h100-sxm", "h200")


def system(model="llama-3.1-8b", device="h100-sxm", tp=1, **deployment):
    """A system priced by its kernels alone unless the test names an engine (these tests check kernel pricing)."""
    if "engine" not in deployment and deployment.get("overheads", "none") == "none":
        deployment["engine"] = "none"
    return build_system(Scenario(model=model, deployment=DeploymentConfig(device=device, tp=tp, **deployment)))


def _inline_device(base: str, profile_path) -> dict:
    spec = get_device(base).model_dump()
    spec.update(name=f"{base}-test", aliases=(), calibration_profile=str(profile_path))
    return spec


def _write_profile(tmp_path, operators: dict, collectives: dict | None = None, bw=3.35e12, peak=989e12):
    doc = {
        "format": PROFILE_FORMAT, "device": "test", "fitted_on": "synthetic test profile",
        "peaks": {"basis": "test", "flops_per_s": {"bf16": peak}, "memory_bandwidth_Bps": bw},
        "operators": operators, "collectives": collectives or {},
    }
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


# A GEMM curve with no size effects (saturation scales far below any real shape), no fixed cost, a hard
# maximum and a compute ceiling of 0.35 of peak: half the datasheet constant of 0.7.
FLAT_GEMM = {"form": "gemm-v1", "source": "test", "params": {
    "t0_s": 0.0, "c_max": 0.35, "m0": 1e-3, "am": 1.0, "n0": 1e-3, "an": 1.0, "k0": 1e-3, "ak": 1.0,
    "m_max": 0.8, "b0": 1.0, "ab": 1.0, "q": 30.0, "tile": 0.0}}


# ------------------------------------------------------------------------- shipped


@pytest.mark.parametrize("device", SHIPPED)
def test_shipped_profiles_say_what_they_were_fitted_on(device):
    profile = shipped_profile(device)
    assert profile is not None and device in shipped_profile_names()
    for key in ("gemm", "attention_prefill", "attention_decode"):
        curve = profile.curve(key, "bf16")
        assert curve is not None, key
        assert curve.source == "aiconfigurator"
        assert "rows" in curve.meta and "files:" in curve.meta["fitted_on"]
        held = curve.meta["heldout"]
        assert held["calibrated"]["n"] > 100 and held["calibrated"]["median_ape"] is not None
    assert profile.collective("all_reduce", 2) is not None
    assert profile.doc["split"] and profile.doc["peaks"]["basis"].startswith("datasheet")


def test_profile_is_the_default_and_datasheet_switch_turns_it_off():
    assert system().roofline.profile is not None
    assert system().calibration == "profile h100-sxm"
    plain = system(calibration="datasheet")
    assert plain.roofline.profile is None and plain.calibration == "datasheet"
    # Devices without a shipped profile stay on the datasheet roofline.
    assert system(device="l40s").roofline.profile is None


def test_calibrated_gemm_curve_slows_compute_bound_prefill_by_its_efficiency(tmp_path):
    path = _write_profile(tmp_path, {"gemm": {"bf16": FLAT_GEMM}})
    dev = _inline_device("h100-sxm", path)
    shape = BatchShape(prefill_chunks=((8192, 0, True),))
    cal = {r.name: r for r in system(device=dev).cost_model().breakdown(shape)}
    ref = {r.name: r for r in system(device=dev, calibration="datasheet").cost_model().breakdown(shape)}
    # Compute-bound GEMMs: 0.35 vs 0.7 of peak, and no per-kernel launch cost in the curve.
    for name in ("qkv_proj", "o_proj", "mlp"):
        launches = 32 * (3 if name == "mlp" else 1) * 3e-6
        assert cal[name].time_s == pytest.approx(2 * (ref[name].time_s - launches), rel=1e-6)
        assert cal[name].flops == ref[name].flops  # the work is the operator table's
    # Rows without a curve in the profile keep the datasheet price.
    assert cal["attention_prefill"].time_s == pytest.approx(ref["attention_prefill"].time_s, rel=1e-12)
    assert cal["norm"].time_s == pytest.approx(ref["norm"].time_s, rel=1e-12)


def test_shipped_profile_prices_small_gemms_slower_than_their_roofline():
    """A 16-token GEMM streams weights at well under peak bandwidth: measured kernels are slower than
    bytes / bandwidth, so the calibrated price exceeds the ideal (efficiency 1) roofline."""
    spec = get_device("h100-sxm")
    sys_ = system()
    rows = {r.name: r for r in sys_.cost_model().breakdown(BatchShape(decode_seqs=16, decode_context=16 * 512))}
    ideal = rows["mlp"].bytes / spec.memory_bandwidth
    assert rows["mlp"].time_s > ideal
    assert rows["mlp"].bound == "memory"


# ------------------------------------------------------------------------ contracts


@pytest.mark.parametrize("device", ["a100-80gb-sxm", "h100-sxm"])
def test_elementwise_rows_use_their_fitted_curves(device):
    """The shipped A100 and H100 profiles carry curves for RoPE, the activation and the residual add,
    fitted on vidur's kernels. At 4,096 tokens the rotary and SiLU-and-multiply kernels reach well under
    the datasheet's 0.8 of peak bandwidth (so calibrated > datasheet) while the plain add streams at
    over 0.8 (calibrated < datasheet); none beats the hardware's peak bandwidth."""
    spec = get_device(device)
    shape = BatchShape(prefill_chunks=((4096, 0, True),))
    cal = {r.name: r for r in system("llama-2-7b", device).cost_model().breakdown(shape)}
    ref = {r.name: r for r in system("llama-2-7b", device, calibration="datasheet").cost_model().breakdown(shape)}
    for name in ("rope", "activation", "residual_add"):
        assert cal[name].bytes == ref[name].bytes  # the work is the operator table's
        assert cal[name].time_s > cal[name].bytes / (spec.memory_bandwidth_gbs * 1e9)
    assert cal["rope"].time_s > 1.2 * ref["rope"].time_s
    assert cal["activation"].time_s > 1.2 * ref["activation"].time_s
    assert cal["residual_add"].time_s < ref["residual_add"].time_s
    # The H200 profile has no elementwise curves (no H200 elementwise measurements): datasheet prices.
    h200 = {r.name: r for r in system("llama-2-7b", "h200").cost_model().breakdown(shape)}
    h200_ref = {r.name: r for r in system("llama-2-7b", "h200", calibration="datasheet").cost_model().breakdown(shape)}
    assert h200["rope"].time_s == pytest.approx(h200_ref["rope"].time_s, rel=1e-12)


@pytest.mark.parametrize(
    ("model", "device", "tp", "batch", "context0"),
    [
        ("llama-2-7b", "a100-80gb-sxm", 1, 8, 8 * 1000),  # MHA: the A100 curve's serial path
        ("llama-2-7b", "a100-80gb-sxm", 1, 1, 30000),
        ("llama-3.1-8b", "h100-sxm", 1, 64, 64 * 2000),
        ("llama-3.1-70b", "h200", 4, 16, 16 * 700),
        ("mixtral-8x7b", "h100-sxm", 2, 4, 4 * 500),
        # FlashAttention-2 (A100) caps its splits by the KV blocks: these runs cross block boundaries.
        ("llama-3.1-8b", "a100-80gb-sxm", 1, 1, 100),
        ("llama-3.1-8b", "a100-80gb-sxm", 2, 3, 3 * 230),
    ],
)
def test_calibrated_decode_run_matches_scalar_iterations(model, device, tp, batch, context0):
    cost = system(model, device, tp).cost_model()
    k = 60
    run = cost.decode_run(batch, context0, k)
    durations = run.all_durations()
    for j in (0, 1, 7, 33, k - 1):
        scalar = cost.iteration(BatchShape(decode_seqs=batch, decode_context=context0 + batch * j)).time_s
        assert durations[j] == pytest.approx(scalar, rel=1e-12, abs=0.0)
    second = np.diff(durations, 2)
    if run.affine:  # honest: affine means a straight line
        assert np.all(np.abs(second) <= 1e-12 * durations.max())
    else:
        assert (run.durations is not None) != (run.pieces is not None) and len(durations) == k
        if run.pieces is not None:  # piecewise affine: each piece a straight line, and they cover the run
            assert sum(c for c, _, _ in run.pieces) == k
    assert run.total == pytest.approx(durations.sum(), rel=1e-12)
    assert run.last == durations[-1] and run.max == pytest.approx(durations.max(), rel=1e-12)
    ends = np.cumsum(durations)
    for j in (0, 4, 28, 29, 30, k // 2, k - 1):  # halfway through iteration j + 1 (and around a split change)
        assert run.iterations_ending_by(ends[j] - durations[j] / 2.0) == j + 1
    assert run.iterations_ending_by(ends[-1] * 2.0) == k
    half = run.prefix(k // 2)
    assert half.total == pytest.approx(durations[: k // 2].sum(), rel=1e-12)


def test_a_decode_run_that_crosses_a_split_regime_steps_where_the_kernel_splits():
    """One GQA sequence on an A100: contexts of one 128-token KV block are not split; from the second block on
    FlashAttention-2 splits the context and runs its merge kernel, so the run jumps at 129 tokens."""
    cost = system("llama-3.1-8b", "a100-80gb-sxm").cost_model()
    assert cost._split_regime(1, 128) == 1 and cost._split_regime(1, 129) == 2
    run = cost.decode_run(1, 100, 60)  # contexts 100 .. 159
    assert not run.affine
    d = run.all_durations()
    jump = d[29] - d[28]  # context 128 -> 129
    assert jump > 10 * abs(d[28] - d[27]) and jump > 0.0
    within = cost.decode_run(1, 130, 20)  # contexts 130 .. 149: one regime, one line
    assert within.affine


def test_decode_runs_are_affine_within_one_regime():
    # Long contexts: decode attention stays bandwidth-bound for the whole run.
    run = system().cost_model().decode_run(32, 32 * 4000, 100)
    assert run.affine and run.step > 0


@pytest.mark.parametrize("tp", [1, 2])
def test_calibrated_breakdown_adds_up_to_the_iteration(tp):
    cost = system("llama-2-7b", "a100-80gb-sxm", tp, overheads="vidur-a100").cost_model()
    for shape in (
        BatchShape(decode_seqs=1, decode_context=128),
        BatchShape(prefill_chunks=((2048, 0, True),)),
        BatchShape(prefill_chunks=((512, 1024, False),), decode_seqs=7, decode_context=7 * 900),
    ):
        total = sum(r.time_s for r in cost.breakdown(shape))
        assert total == pytest.approx(cost.iteration(shape).time_s, rel=1e-12)


def test_tp_allreduce_uses_the_profiles_alpha_beta_fit():
    from hwmodels.calibration import curves

    sys_ = system("llama-3.1-8b", "h100-sxm", tp=2)
    fit = sys_.roofline.profile.collective("all_reduce", 2)
    shape = BatchShape(prefill_chunks=((1000, 0, True),))
    comms = [r for r in sys_.cost_model().breakdown(shape) if r.bound == "communication"]
    msg = 1000 * 4096 * 2.0  # tokens x hidden x bf16: one all-reduce's message
    expected = 32 * float(curves.alpha_beta_time(fit.params, msg))
    assert [r.name for r in comms] == ["tp_allreduce", "tp_allreduce"]
    assert comms[0].time_s == pytest.approx(expected, rel=1e-12)


# ------------------------------------------------------------------------ overheads


def test_engine_overheads_add_per_iteration_and_per_sequence_terms():
    from hwmodels.calibration.overheads import overhead_terms

    terms = overhead_terms("vidur-a100", 1)
    assert terms["per_iteration_s"] > 0 and terms["per_sequence_s"] > 0
    base = system("llama-2-7b", "a100-80gb-sxm").cost_model()
    over = system("llama-2-7b", "a100-80gb-sxm", overheads="vidur-a100").cost_model()
    for batch in (1, 32):
        shape = BatchShape(decode_seqs=batch, decode_context=batch * 300)
        extra = over.iteration(shape).time_s - base.iteration(shape).time_s
        assert extra == pytest.approx(terms["per_iteration_s"] + batch * terms["per_sequence_s"], rel=1e-9)
        run = over.decode_run(batch, batch * 300, 5)
        assert run.first == pytest.approx(over.iteration(shape).time_s, rel=1e-12)


def test_unknown_overhead_set_names_the_field():
    with pytest.raises(UnknownNameError) as info:
        system(overheads="vllm-v9")
    assert info.value.where == "deployment.overheads"


def test_inline_device_with_a_missing_profile_path_is_refused(tmp_path):
    dev = _inline_device("h100-sxm", tmp_path / "nope.yaml")
    with pytest.raises(CapsimError, match="profile not found"):
        system(device=dev)


def test_profile_with_missing_parameters_is_refused(tmp_path):
    bad = {"form": "gemm-v1", "params": {"t0_s": 1e-6}}
    with pytest.raises(CapsimError) as info:
        load_profile(_write_profile(tmp_path, {"gemm": {"bf16": bad}}))
    assert "lacks parameter" in info.value.problem and info.value.where.endswith("operators.gemm.bf16.params")


@pytest.mark.parametrize("bands", [[[1, 16, 0]], [[1, 16, 0, 0]], "16", [[1, 16, 0, "wide"]], []])
def test_profile_with_malformed_row_bands_is_refused(tmp_path, bands):
    entry = copy.deepcopy(shipped_profile("h100-sxm").doc["operators"]["gemm"]["fp8"])
    entry["params"]["correction"]["row_bands"] = bands
    with pytest.raises(CapsimError) as info:
        load_profile(_write_profile(tmp_path, {"gemm": {"fp8": entry}}))
    assert "row_bands" in info.value.problem and info.value.where.endswith("correction.row_bands")


def test_a_profile_without_a_gated_parameter_loads_and_prices_as_if_it_were_zero(tmp_path):
    """Profiles fitted before ``kappa_m_s`` existed lack it; its term is then absent, not an error."""
    from hwmodels.calibration import attention_curves

    entry = copy.deepcopy(shipped_profile("a100-80gb-sxm").doc["operators"]["attention_decode"]["bf16"])
    old = {k: v for k, v in entry["params"].items() if k != "kappa_m_s"}
    loaded = load_profile(_write_profile(tmp_path, {"attention_decode": {"bf16": {**entry, "params": old}}}))
    params = loaded.curve("attention_decode", "bf16").params
    assert "kappa_m_s" not in params
    args = (1.0, 8.0, 1.0, 128.0, 2.0, 312e12, 2.0e12)
    without = attention_curves.decode_v2_lines(params, *args, context_per_seq=4000.0)
    as_zero = attention_curves.decode_v2_lines({**params, "kappa_m_s": 0.0}, *args, context_per_seq=4000.0)
    with_it = attention_curves.decode_v2_lines(entry["params"], *args, context_per_seq=4000.0)
    assert without == as_zero and with_it[0] > without[0]


@pytest.mark.parametrize("device", ["a100-80gb-sxm", "h100-sxm", "h200"])
def test_shipped_attention_curves_are_v2_and_price_like_their_formula(device):
    from hwmodels.calibration import attention_curves as ac
    from hwmodels.calibration.pricing import DecodePricer, PrefillPricer

    prof = shipped_profile(device)
    dec, pre = prof.curve("attention_decode", "bf16"), prof.curve("attention_prefill", "bf16")
    assert (dec.form, pre.form) == ("attention-decode-v2", "attention-prefill-v2")
    peak, bw = prof.doc["peaks"]["flops_per_s"]["bf16"], prof.doc["peaks"]["memory_bandwidth_Bps"]
    h, hkv, dh, b, ctx = 32.0, 8.0, 128.0, 16.0, 16.0 * 3000.0
    kv_tok, flop_tok = 2 * hkv * dh * 2.0, 4 * h * dh
    per_seq = 2 * h * dh * 2.0 + 2 * hkv * dh * 2.0
    d = DecodePricer(dec, h, hkv, peak, bw, dh, flop_tok, kv_tok)
    priced = d.price(b, ctx, flop_tok * ctx, kv_tok * ctx + per_seq * b).time_s
    # The cost model prices with a cold L2 (l2_warm = 0): the serving case.
    assert priced == pytest.approx(ac.decode_v2_time(dec.params, b, ctx, h, hkv, dh, 2.0, 2.0, peak, bw, 0.0))
    q = 1000.0
    tokens, work, kv_read = 4 * q, 4 * q * q / 2, 4 * q
    flops = 4 * h * dh * work
    nbytes = kv_read * kv_tok + tokens * per_seq
    p = PrefillPricer(pre, h, hkv, dh, peak, bw).price(tokens, work, flops, nbytes, kv_read).time_s
    # The family's predictor: the physical formula times the fitted residual surface.
    x = {"tokens": tokens, "work": work, "kv_read": kv_read, "heads": h, "kv_heads": hkv, "head_dim": dh,
         "act_bytes": 2.0, "kv_bytes": 2.0}
    assert p == pytest.approx(float(family(pre.form).predict(pre.params, x, peak, bw)), rel=1e-12)
    physical = ac.prefill_v2_time(pre.params, tokens, work, kv_read, h, hkv, dh, 2.0, 2.0, peak, bw)
    assert p != physical  # the shipped curve carries a correction


def test_v2_decode_run_is_two_lines_in_the_context():
    # A batch whose per-CTA cost dominates at short contexts and streaming at long ones:
    # the run is affine on each side of the crossing, and matches per-step pricing across it.
    cost = system("llama-3.1-8b", "h100-sxm").cost_model()
    long = cost.decode_run(256, 256 * 4000, 50)
    assert long.affine and long.step > 0
    crossing = cost.decode_run(256, 256 * 2, 400)
    for j in (0, 100, 399):
        scalar = cost.iteration(BatchShape(decode_seqs=256, decode_context=256 * 2 + 256 * j)).time_s
        assert crossing.all_durations()[j] == pytest.approx(scalar, rel=1e-12)


@pytest.mark.parametrize("overheads", ["none", "vidur-a100"])
@pytest.mark.parametrize("device", SHIPPED)
@pytest.mark.parametrize(("model", "tp"), [("llama-3.1-8b", 1), ("llama-3.1-70b", 4), ("mixtral-8x7b", 2)])
def test_primed_lone_prefills_equal_one_at_a_time_pricing(device, model, tp, overheads):
    """The vectorised pricing of lone prefills (filled into the cache before a run) must give the
    same iteration costs as pricing each shape when the engine first meets it."""
    sysm = system(model=model, device=device, tp=tp, overheads=overheads)
    primed, lazy = sysm.cost_model(), sysm.cost_model()
    lengths = np.array([1, 7, 64, 127, 128, 129, 1000, 4096, 16000, 7, 64])
    assert primed.prime_lone_prefills(lengths) == len(set(lengths.tolist()))
    for q in lengths.tolist():
        key = (q, 1, q * (0 + q / 2.0), q, 0, 0)
        a, b = primed.iteration_from_totals(*key), lazy.iteration_from_totals(*key)
        assert a.time_s == pytest.approx(b.time_s, rel=1e-12)
        assert a.flops == pytest.approx(b.flops, rel=1e-12)
        assert a.bytes == pytest.approx(b.bytes, rel=1e-12)
    # Already-primed shapes are not priced again; datasheet pricing (cheap per shape) is not primed.
    assert primed.prime_lone_prefills(lengths) == 0
    assert system(model=model, device=device, tp=tp, calibration="datasheet").cost_model().prime_lone_prefills(
        lengths) == 0


def _bad_surfaces():
    """(operator key, dtype, edit of the shipped H100 entry's correction) of malformed residual surfaces."""
    def kind(c):
        c["kind"] = "decode-lines"

    def drop_axis(c):
        c["axes"] = c["axes"][:3]  # a prefill-dh grid read with four features

    def short_grid(c):
        c["log_factor"] = c["log_factor"][:2]

    def bad_axis(c):
        c["axes"][0] = ["log2_q", 0.0, 1.0]

    def ragged(c):
        c["log_factor"][0] = [1.0]

    return [("attention_prefill", "bf16", f) for f in (kind, drop_axis, short_grid, bad_axis, ragged)] + [
        ("gemm", "fp8", lambda c: c.pop("row_bands")),  # a banded grid without its bands
    ]


@pytest.mark.parametrize(("key", "dtype", "edit"), _bad_surfaces())
def test_profile_with_a_malformed_residual_surface_is_refused(tmp_path, key, dtype, edit):
    """A hand-edited surface whose axes, kind or grid do not fit together is refused when the profile loads,
    naming the field, instead of failing inside the lookup at pricing time."""
    entry = copy.deepcopy(shipped_profile("h100-sxm").doc["operators"][key][dtype])
    edit(entry["params"]["correction"])
    with pytest.raises(CapsimError) as info:
        load_profile(_write_profile(tmp_path, {key: {dtype: entry}}))
    assert "residual surface" in info.value.problem
    assert info.value.where.endswith(f"operators.{key}.{dtype}.params.correction")
    assert "calibrate fit" in info.value.fix


def test_shipped_profile_names_are_devices_only():
    """The engines and overheads files beside the device profiles are not device profiles (a stored-table lookup over
    every shipped profile raised on 'engines')."""
    from hwmodels.calibration.profile import shipped_profile_names
    from hwmodels.device import get_device

    names = shipped_profile_names()
    assert names and all(get_device(n) is not None for n in names), names
