"""Prediction intervals (issue 18 item 4): sized from stored held-out residuals, propagated by re-running."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from typer.testing import CliRunner

from capsim.errors import CapsimError
from hwmodels.calibration.engine_fit import E2E_DIR, RESIDUALS_FILE, load_rows, price_rows, residual_rows
from hwmodels.calibration.engines import TERMS, engine_terms
from simulator.cli import _run_one, app
from simulator.config.schema import Scenario
from simulator.costmodel.features import BatchShape
from simulator.costmodel.iteration import IterationCostModel
from simulator.costmodel.scaled import PhaseScale, ScaledCostModel
from simulator.intervals import rerun
from simulator.intervals.residuals import PhaseResiduals, ResidualModel, e2e_residuals, residuals_for
from simulator.system import build_system
from tests.cli_helpers import assert_user_error


def scenario(**deployment) -> Scenario:
    return Scenario.model_validate(
        {
            "name": "iv",
            "seed": 4,
            "model": "llama-3.1-8b",
            "deployment": {"device": "h100-sxm", **deployment},
            "workload": {
                "arrival": "poisson",
                "qps": 8,
                "prompt": {"dist": "fixed", "value": 512},
                "output": {"dist": "fixed", "value": 64},
            },
            "simulation": {"num_requests": 120, "intervals": {"level": 0.9, "samples": 6}},
        }
    )


def test_every_metric_interval_contains_the_point_estimate():
    summary, _ = _run_one(scenario())
    block = summary["intervals"]
    assert block["level"] == 0.9 and block["samples"] == 6
    for key in ("ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "e2e_p90_s", "output_tps", "throughput_rps"):
        lo, hi = block["metrics"][key]
        assert lo <= summary[key] <= hi, key
    # The interval is not degenerate: the kernel errors of h100-sxm move the latencies.
    lo, hi = block["metrics"]["tpot_p50_s"]
    assert hi / lo > 1.05


def test_off_by_default_nothing_changes():
    sc = scenario().model_copy(update={"simulation": scenario().simulation.model_copy(update={"intervals": None})})
    summary, _ = _run_one(sc)
    assert "intervals" not in summary
    assert type(build_system(sc).cost_model()) is IterationCostModel


def test_deterministic_for_a_seed():
    a, _ = _run_one(scenario())
    b, _ = _run_one(scenario())
    assert a["intervals"] == b["intervals"]


def test_interval_widens_with_residual_spread(monkeypatch):
    sc = scenario()
    summary, _ = _run_one(sc.model_copy(update={"simulation": sc.simulation.model_copy(update={"intervals": None})}))
    widths = []
    for spread in (0.02, 0.2):
        phase = PhaseResiduals(ape=(spread / 2, spread, spread * 2), n=10)
        model = ResidualModel(phase, phase, source=f"test spread {spread}")
        monkeypatch.setattr(rerun, "residuals_for", lambda system, model=model: model)
        block = rerun.simulate_intervals(sc, summary)
        lo, hi = block["metrics"]["e2e_p50_s"]
        widths.append(hi - lo)
    assert widths[1] > 3 * widths[0] > 0


def test_phase_residual_quantiles():
    narrow = PhaseResiduals(ape=(0.05, 0.1, 0.3))
    wide = PhaseResiduals(ape=(0.1, 0.3, 0.6))
    lo, mid, hi = narrow.quantiles([0.05, 0.5, 0.95])
    # The 90 % interval of a symmetric-sign APE line is exactly 1 / (1 +- p90).
    assert lo == pytest.approx(1 / 1.1) and hi == pytest.approx(1 / 0.9) and mid == pytest.approx(1.0)
    wlo, _, whi = wide.quantiles([0.05, 0.5, 0.95])
    assert wlo < lo and whi > hi
    emp = PhaseResiduals(ratios=(0.8, 0.9, 1.0, 1.1, 1.3), n=5)
    assert list(emp.quantiles([0.0, 1.0])) == [0.8, 1.3]
    draws = emp.sample(np.random.default_rng(1), 200)
    assert set(np.round(draws, 6)) <= {0.8, 0.9, 1.0, 1.1, 1.3}


def test_device_without_stored_residuals_says_so():
    system = build_system(scenario(device="l40s"))
    with pytest.raises(CapsimError) as exc:
        residuals_for(system)
    assert exc.value.where == "simulation.intervals"
    assert "no calibrated profile" in exc.value.problem and "stored held-out residuals" in exc.value.problem


def test_cli_run_intervals_on_an_uncalibrated_device_exits_2(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        "model: llama-3.1-8b\ndeployment: {device: l40s}\nworkload: {qps: 2}\nsimulation: {num_requests: 20}\n",
        encoding="utf-8",
    )
    result = CliRunner().invoke(app, ["run", str(path), "--intervals"])
    assert_user_error(result, "simulation.intervals", "no calibrated profile")


def test_cli_run_intervals_json_block(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        "model: llama-3.1-8b\ndeployment: {device: h100-sxm, engine: none}\nworkload: {qps: 4}\n"
        "simulation: {num_requests: 40}\n",
        encoding="utf-8",
    )
    plain = CliRunner().invoke(app, ["run", str(path), "--json"])
    assert plain.exit_code == 0 and "intervals" not in json.loads(plain.stdout)
    result = CliRunner().invoke(app, ["run", str(path), "--json", "--intervals"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["intervals"]["samples"] == 20 and "ttft_p50_s" in doc["intervals"]["metrics"]
    assert "not_covered" in doc["intervals"]  # engine none: the engine's own error is not in the interval
    assert "calibration error" in result.stderr


def test_engine_with_e2e_rows_uses_them_and_others_fall_back_to_kernel_errors():
    fitted = residuals_for(build_system(scenario(engine="tensorrt-llm-2023")))
    assert fitted.prefill.ape is None and fitted.prefill.n == 16 and fitted.not_covered is None
    inherited = residuals_for(build_system(scenario(engine="tensorrt-llm")))  # no end-to-end rows of its own
    assert inherited.prefill.ape is not None and "tensorrt-llm" in inherited.not_covered
    datasheet = residuals_for(build_system(scenario(calibration="datasheet")))
    assert datasheet.decode.ape[1] > inherited.decode.ape[1]  # the datasheet's held-out error is larger
    assert "datasheet" in datasheet.source


def test_refused_with_pools_or_speculative_step_models():
    sc = scenario()
    system = build_system(sc)
    with pytest.raises(CapsimError, match="speculative"):
        rerun.check_supported(sc, replace(system, step=object()))


def test_scaled_cost_model_scales_each_phase():
    system = build_system(scenario())
    base = system.cost_model()
    scaled = ScaledCostModel(system.cost_model(), PhaseScale(prefill=2.0, decode=0.5))
    pre = BatchShape(prefill_chunks=((256, 0, True),))
    dec = BatchShape(decode_seqs=4, decode_context=4000)
    assert scaled.iteration(pre).time_s == pytest.approx(2 * base.iteration(pre).time_s)
    assert scaled.iteration(dec).time_s == pytest.approx(0.5 * base.iteration(dec).time_s)
    assert scaled.iteration(dec).flops == base.iteration(dec).flops
    run, ref = scaled.decode_run(4, 4000, 50), base.decode_run(4, 4000, 50)
    assert run.total == pytest.approx(0.5 * ref.total)
    assert run.iterations_ending_by(0.5 * ref.total / 2) == ref.iterations_ending_by(ref.total / 2)


def test_stored_e2e_residuals_match_the_shipped_profile():
    """The stored ratios are what the shipped tensorrt-llm-2023 terms predict (regenerate with
    ``benchmarks/e2e_accuracy.py --write-residuals`` after changing the profile or the kernels)."""
    rows = load_rows()
    held = [r for r in rows if r.held_out]
    priced = price_rows(held)
    terms = {p.row.tp: {k: engine_terms("tensorrt-llm-2023", p.row.tp)[k] for k in TERMS} for p in priced}
    fresh = residual_rows("tensorrt-llm-2023", priced, terms)
    stored = e2e_residuals()["tensorrt-llm-2023"]
    assert (E2E_DIR / RESIDUALS_FILE).is_file() and len(stored) == len(fresh) == 16
    for a, b in zip(fresh, stored, strict=True):
        assert float(a["ratio"]) == pytest.approx(b["ratio"], rel=1e-3)


PLAN = """name: plan-iv
seed: 11
model: llama-3.1-8b
workload:
  arrival: poisson
  prompt: {dist: fixed, value: 512}
  output: {dist: fixed, value: 64}
slo: {ttft_s: 0.5, tpot_s: 0.05, attainment: 0.9}
simulation: {num_requests: 100}
search:
  grid:
    deployment.device: [h100-sxm, l40s]
target_rps: 20
rate_search: {rel_tol: 0.1, max_sims: 6, min_probe_s: 5}
"""


def test_plan_headroom_interval_contains_the_point_and_flags_crossing(tmp_path):
    from simulator.planner import load_plan, plan_document, run_plan

    path = tmp_path / "plan.yaml"
    path.write_text(PLAN, encoding="utf-8")
    plain_cfg, candidates = load_plan(path)
    plain = run_plan(plain_cfg, candidates, plots=False)
    assert all("interval" not in row for row in plan_document(plain)["all"])
    cfg = rerun.with_intervals(plain_cfg)
    result = run_plan(cfg, candidates, plots=False)
    by_device = {c.scenario.deployment.device: c for c in result.candidates}
    h100, l40s = by_device["h100-sxm"], by_device["l40s"]
    lo, hi = h100.interval["headroom"]
    assert lo <= result.headroom(h100) <= hi and lo < hi
    assert h100.interval["crosses_target"] == (lo * cfg.target_rps < cfg.target_rps <= hi * cfg.target_rps)
    assert "no calibrated profile" in l40s.interval.get("error", "") or l40s.pruned
    doc = plan_document(result)
    assert any("interval" in row for row in doc["all"])


def test_dashboard_shows_the_prediction_interval_apart_from_the_seed_spread():
    from app.tables import with_interval
    from simulator.metrics.table import fmt_seconds

    s = {
        "ttft_p50_s": 0.1,
        "ttft_p50_s_lo": 0.09,
        "ttft_p50_s_hi": 0.12,
        "seeds": 3,
        "intervals": {"metrics": {"ttft_p50_s": [0.08, 0.15]}},
    }
    text = with_interval(s, "ttft_p50_s", fmt_seconds)
    assert text == "100 ms (90.0 ms – 120 ms) [PI 80.0 ms – 150 ms]"
    assert with_interval({"ttft_p50_s": 0.1}, "ttft_p50_s", fmt_seconds) == "100 ms"


def test_dashboard_runner_adds_the_block_and_keys_the_slo_only_with_intervals():
    from app.runner import job_for, run_uncached

    on = scenario()
    off = on.model_copy(update={"simulation": on.simulation.model_copy(update={"intervals": None})})
    stricter = {"slo": on.slo.model_copy(update={"ttft_s": 0.2})}
    assert job_for(off).digest == job_for(off.model_copy(update=stricter)).digest  # re-scored, not re-run
    assert job_for(on).digest != job_for(on.model_copy(update=stricter)).digest
    data = run_uncached(on.model_dump_json())
    assert data.summary["intervals"]["metrics"]["ttft_p50_s"][0] <= data.summary["ttft_p50_s"]
    assert "intervals" not in run_uncached(off.model_dump_json()).summary


def test_sweep_rows_carry_intervals_only_when_on():
    from simulator.sweep.table import result_row
    from simulator.sweep.worker import simulate_point

    on = scenario()
    off = on.model_copy(update={"simulation": on.simulation.model_copy(update={"intervals": None})})
    rows = {}
    for label, sc in (("on", on), ("off", off)):
        dump = sc.model_dump(mode="json")
        rows[label] = result_row(dump, "k", "v", simulate_point(dump))
    assert rows["on"]["ttft_p50_s_lo"] <= rows["on"]["ttft_p50_s"] <= rows["on"]["ttft_p50_s_hi"]
    assert not any(k.endswith(("_lo", "_hi")) for k in rows["off"])


def test_validate_checks_that_intervals_can_be_sized(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        "model: llama-3.1-8b\ndeployment: {device: l40s}\nworkload: {qps: 2}\n"
        "simulation: {num_requests: 20, intervals: {samples: 5}}\n",
        encoding="utf-8",
    )
    assert_user_error(CliRunner().invoke(app, ["validate", str(path)]), "simulation.intervals", "no calibrated")
    path.write_text(path.read_text(encoding="utf-8").replace("l40s", "h100-sxm"), encoding="utf-8")
    assert CliRunner().invoke(app, ["validate", str(path)]).exit_code == 0


def test_vllm_and_sglang_intervals_come_from_their_serving_runs():
    """The default engine's intervals cover its own error: the held-out serving-run rows of vllm (TPOT and offline
    throughput, A100 and H100) where the device has rows; elsewhere the kernel errors, with the note."""
    vllm = residuals_for(build_system(scenario()))  # the default engine on an H100
    stored = e2e_residuals()["vllm"]
    assert vllm.not_covered is None and vllm.decode.n == len(stored) >= 6 and "vllm" in vllm.source
    assert {r["kind"] for r in stored} == {"tpot", "throughput"} and {r["device"] for r in stored} >= {"h100-sxm"}
    assert residuals_for(build_system(scenario(engine="sglang"))).decode.n == len(e2e_residuals()["sglang"])
    on_h200 = residuals_for(build_system(Scenario.model_validate({"model": "llama-3.1-8b",
                                                                 "deployment": {"device": "h200"}})))
    assert on_h200.decode.ape is not None and "vllm" in on_h200.not_covered


def test_stored_serving_rows_are_what_the_published_runs_and_their_predictions_give():
    """Every TPOT and offline-throughput measurement of vllm and sglang in serving_runs.csv has one stored row whose
    measured seconds are that measurement (ms -> s; tokens/s -> s per token) and whose ratio is measured / predicted.
    The predictions need the full simulations (``benchmarks/serving_accuracy.py --write-residuals``)."""
    from hwmodels.calibration.serving_runs import RESIDUAL_METRICS, load_runs

    expected = sorted(
        (r.engine, r.device, r.tp, RESIDUAL_METRICS[m], round(v / 1e3 if m.endswith("_ms") else 1.0 / v, 9))
        for r in load_runs() for m, v in r.measured.items() if m in RESIDUAL_METRICS
    )
    rows = [row for e in ("vllm", "sglang") for row in e2e_residuals()[e]]
    got = sorted((r["engine"], r["device"], r["tp"], r["kind"], round(float(r["measured_s"]), 9)) for r in rows)
    assert [g[:4] for g in got] == [e[:4] for e in expected]
    for g, e in zip(got, expected, strict=True):
        assert g[4] == pytest.approx(e[4], rel=1e-5)
    for r in rows:
        assert r["ratio"] == pytest.approx(float(r["measured_s"]) / float(r["predicted_s"]), rel=1e-4)
