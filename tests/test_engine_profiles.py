"""Serving-engine profiles (deployment.engine): registry, wiring into the cost model, and the fit."""

from __future__ import annotations

import json

import pytest

from capsim.errors import CapsimError, UnknownNameError
from hwmodels.calibration.engine_fit import FIT_TERMS, ape, fit_terms, load_rows, price_rows
from hwmodels.calibration.engines import DEFAULT_ENGINE, TERMS, engine_names, engine_profiles, engine_terms
from hwmodels.device import get_device
from simulator.config.schema import DeploymentConfig, Scenario
from simulator.costmodel.features import BatchShape
from simulator.costmodel.iteration import IterationCostModel
from simulator.system import build_system
from tests.cli_helpers import assert_user_error


def system(model="llama-3.1-8b", device="h100-sxm", tp=1, **deployment):
    """A system with the engine the test names, else the kernels alone (``engine: none``, not the default)."""
    if "engine" not in deployment and deployment.get("overheads", "none") == "none":
        deployment["engine"] = "none"
    return build_system(Scenario(model=model, deployment=DeploymentConfig(device=device, tp=tp, **deployment)))


# ------------------------------------------------------------------------ registry


def test_the_issue_s_engines_are_registered_and_each_says_what_it_was_fitted_on():
    names = engine_names()
    for name in ("vllm", "vllm-eager", "tensorrt-llm", "sglang", "none", "vidur-a100"):
        assert name in names
    for name, entry in engine_profiles().items():
        assert entry.get("fitted_on"), name
        if name != "none":
            assert "held_out_error" in entry, name


def test_a_profile_without_data_inherits_its_parent_s_terms_and_overrides_only_its_own():
    trt23, trt, vllm, sglang = (engine_terms(n, 4) for n in ("tensorrt-llm-2023", "tensorrt-llm", "vllm", "sglang"))
    assert trt23["gqa_reread"] > 0 and trt["gqa_reread"] == 0.0  # XQA packs query groups
    for k in TERMS:
        if k != "gqa_reread":
            assert trt[k] == trt23[k]
        assert vllm[k] == trt[k] == sglang[k]
    eager = engine_terms("vllm-eager", 2)
    vidur = engine_terms("vidur-a100", 2)
    assert eager["per_step_s"] == vidur["per_step_s"] > 0 and eager["per_collective_s"] > 0


def test_a_tp_degree_without_its_own_entry_takes_the_nearest_and_says_so():
    assert engine_terms("vidur-a100", 8)["name"] == "vidur-a100@tp4"
    assert engine_terms("vllm-eager", 8)["name"] == "vllm-eager@tp4"
    assert engine_terms("tensorrt-llm-2023", 8)["name"] == "tensorrt-llm-2023"


def test_unknown_engine_names_the_field():
    with pytest.raises(UnknownNameError) as info:
        system(engine="vllm-v9")
    assert info.value.where == "deployment.engine"
    assert "vllm-eager" in info.value.fix


def test_overheads_is_the_older_name_of_engine():
    old = system("llama-2-7b", "a100-80gb-sxm", overheads="vidur-a100").overheads
    new = system("llama-2-7b", "a100-80gb-sxm", engine="vidur-a100").overheads
    assert old == new and old.active
    assert system("llama-2-7b", "a100-80gb-sxm", overheads="vidur-a100", engine="vidur-a100").overheads == new
    with pytest.raises(CapsimError) as info:
        system(overheads="vidur-a100", engine="vllm")
    assert info.value.where == "deployment.overheads" and "engine: vllm" in info.value.fix


# ------------------------------------------------------------------------ cost model


def test_engine_terms_add_what_they_say_to_one_iteration():
    """70B at TP2 (two all-reduces per layer): step + per sequence + per token + per layer + per collective."""
    base = system("llama-3.1-70b", tp=2).cost_model()
    sys_e = system("llama-3.1-70b", tp=2, engine="tensorrt-llm")
    eng = sys_e.cost_model()
    t = engine_terms("tensorrt-llm", 2)
    layers = base.table.num_layers
    shape = BatchShape(prefill_chunks=((300, 0, True), (200, 0, True)), decode_seqs=7, decode_context=7 * 900)
    extra = eng.iteration(shape).time_s - base.iteration(shape).time_s
    expect = (
        t["per_step_s"]
        + 9 * t["per_sequence_s"]
        + 507 * t["per_token_s"]
        + layers * t["per_layer_s"]
        + 2 * layers * t["per_collective_s"]
    )
    assert extra == pytest.approx(expect, rel=1e-9, abs=1e-12)
    assert any(r.name.startswith("engine_overhead (tensorrt-llm") for r in eng.breakdown(shape))


@pytest.mark.parametrize(
    "model,tp,device",
    [
        ("llama-3.1-70b", 4, "h100-sxm"),
        ("llama-3.1-8b", 1, "h100-sxm"),
        ("llama-2-7b", 1, "h100-sxm"),
        ("llama-3.1-8b", 1, "a100-80gb-sxm"),  # FlashAttention-2: runs cut where the split count changes
        ("llama-3.1-8b", 2, "l40s"),  # datasheet pricing
    ],
)
def test_decode_runs_stay_closed_form_with_every_engine_term(model, tp, device):
    """The KV re-read term grows with the context: a run's durations still equal step-by-step pricing."""
    cost = system(model, device, tp=tp, engine="tensorrt-llm-2023").cost_model()
    batch, ctx0, k = 24, 24 * 1500, 40
    run = cost.decode_run(batch, ctx0, k)
    durations = run.all_durations()
    for j in (0, 17, k - 1):
        step = cost.iteration(BatchShape(decode_seqs=batch, decode_context=ctx0 + batch * j)).time_s
        assert durations[j] == pytest.approx(step, rel=1e-9)


def test_kv_re_read_costs_only_grouped_query_models_and_grows_with_context():
    def extra(model, ctx):
        shape = BatchShape(decode_seqs=8, decode_context=8 * ctx)
        on = system(model, engine="tensorrt-llm-2023").cost_model().iteration(shape).time_s
        off = system(model, engine="tensorrt-llm").cost_model().iteration(shape).time_s
        return on - off

    assert extra("llama-2-7b", 4000) == pytest.approx(0.0, abs=1e-12)  # MHA: nothing to re-read
    assert extra("llama-3.1-8b", 4000) > 2 * extra("llama-3.1-8b", 1000) > 0


def test_engine_off_keeps_the_kernel_price_bit_identical():
    shape = BatchShape(decode_seqs=16, decode_context=16 * 700)
    off = system(engine="none")
    a = off.cost_model().iteration(shape).time_s
    b = IterationCostModel(off.table, off.roofline).iteration(shape).time_s  # no engine terms at all
    assert a == b


def test_an_unset_engine_is_vllm_on_a_gpu_and_the_device_s_own_default_elsewhere():
    """The default profile (issue 18): ``vllm`` where the catalog entry names none, the entry's ``serving_engine``
    where it does (CPUs, NPUs: ``none``), the older ``overheads`` field before either."""
    unset = build_system(Scenario(model="llama-3.1-8b", deployment=DeploymentConfig(device="h100-sxm")))
    assert unset.engine_name == "vllm" == DEFAULT_ENGINE
    shape = BatchShape(decode_seqs=16, decode_context=16 * 700)
    assert unset.cost_model().iteration(shape).time_s > system(engine="none").cost_model().iteration(shape).time_s
    cpu = build_system(Scenario(model="llama-3.1-8b", deployment=DeploymentConfig(device="xeon-8480")))
    assert get_device("xeon-8480").serving_engine == "none" and cpu.engine_name == "none"
    older = build_system(Scenario(model="llama-3.1-8b", deployment=DeploymentConfig(device="h100-sxm",
                                                                                   overheads="vidur-a100")))
    assert older.engine_name.startswith("vidur-a100")


def test_an_inline_device_keeps_its_base_s_default_or_names_its_own():
    spec = {"base": "xeon-8480", "name": "my-xeon"}
    assert build_system(Scenario(model="llama-3.1-8b", deployment={"device": spec})).engine_name == "none"
    own = {"base": "h100-sxm", "name": "my-h100", "serving_engine": "sglang"}
    assert build_system(Scenario(model="llama-3.1-8b", deployment={"device": own})).engine_name == "sglang"


def test_an_unknown_device_default_names_the_device_field():
    bad = {"base": "h100-sxm", "name": "my-h100", "serving_engine": "vllm-nightly"}
    with pytest.raises(CapsimError) as err:
        build_system(Scenario(model="llama-3.1-8b", deployment={"device": bad}))
    assert "serving_engine" in err.value.where and "vllm-nightly" in str(err.value)


# ------------------------------------------------------------------------ fit


@pytest.fixture(scope="module")
def priced():
    return price_rows(load_rows())


def test_the_fit_recovers_known_terms_from_synthetic_measurements(priced):
    from dataclasses import replace

    truth = {"per_step_s": 2e-4, "per_sequence_s": 3e-6, "per_token_s": 0.0, "per_layer_s": 2e-5, "gqa_reread": 0.5}
    synth = []
    for p in priced:  # each row's measurement rewritten as: kernels + the true terms, in the row's own unit
        synth.append(replace(p, row=replace(p.row, value=p.row.as_reported(p.with_terms(truth)))))
    got = fit_terms(synth, {})
    for k in FIT_TERMS:
        assert got[k] == pytest.approx(truth[k], rel=2e-3, abs=1e-9), k


def test_the_shipped_tensorrt_profile_is_the_fit_of_its_training_rows_and_reports_its_held_out_error(priced):
    entry = engine_profiles()["tensorrt-llm-2023"]
    train = [p for p in priced if not p.row.held_out]
    fixed = {
        tp: {"per_collective_s": engine_terms("tensorrt-llm-2023", tp)["per_collective_s"]}
        for tp in {p.row.tp for p in priced}
    }
    fitted = fit_terms(train, fixed)
    for k in FIT_TERMS:
        assert entry["terms"][k] == pytest.approx(fitted[k], rel=1e-3, abs=1e-12), k
    held = [p for p in priced if p.row.held_out]
    assert len(held) == 16 and len(train) == 42
    shipped = ape(
        [p.with_terms(engine_terms("tensorrt-llm-2023", p.row.tp)) for p in held], [p.row.measured_s for p in held]
    )
    kernels = ape([p.kernels_s for p in held], [p.row.measured_s for p in held])
    assert entry["held_out_error"]["with_profile"]["median_ape"] == pytest.approx(shipped["median_ape"], abs=0.15)
    assert entry["held_out_error"]["with_profile"]["p90_ape"] == pytest.approx(shipped["p90_ape"], abs=0.15)
    assert entry["held_out_error"]["kernels_only"]["median_ape"] == pytest.approx(kernels["median_ape"], abs=0.15)


# ------------------------------------------------------------------------ command line


def test_estimate_takes_an_engine_and_prices_it(cli):
    args = ("estimate", "--model", "llama-3.1-70b", "--tp", "8", "--batch", "4", "--output", "50", "--json")
    off = json.loads(cli(*args, "--engine", "none").stdout)
    assert json.loads(cli(*args).stdout)["engine"] == engine_terms("vllm", 8)["name"]  # the default on a GPU
    on = json.loads(cli(*args, "--engine", "vllm-eager").stdout)
    assert on["tpot_s"] > off["tpot_s"] and on["prefill_s"] > off["prefill_s"]
    assert off["engine"] == "none" and off["engine_prefill_s"] == 0.0
    t = engine_terms("vllm-eager", 8)
    step = t["per_step_s"] + 4 * (t["per_sequence_s"] + t["per_token_s"]) + 80 * 2 * t["per_collective_s"]
    assert on["engine"] == t["name"] == "vllm-eager@tp4"
    assert on["engine_first_decode_step_s"] == pytest.approx(step, rel=1e-6)
    assert on["first_decode_step_s"] - off["first_decode_step_s"] == pytest.approx(step, rel=1e-6)


def test_estimate_and_calibrate_engines_refuse_an_unknown_profile(cli):
    assert_user_error(cli("estimate", "--engine", "vllm9"), "--engine", "unknown engine profile")


def test_calibrate_engines_lists_every_profile_with_its_source(cli):
    result = cli("calibrate", "engines", "--tp", "8", "--json")
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert set(engine_names()) == set(rows)
    assert rows["vllm-eager"]["terms"]["name"] == "vllm-eager@tp4"
    assert "trtllm_static.csv" in rows["tensorrt-llm-2023"]["fitted_on"]
