"""The whole calibration path on this machine's CPU: measure -> fit -> validate -> price.

Two tiny inline models stand in for the 7B/8B and 70B classes (hidden 512 and
6144) so the sweep takes seconds; the CLI commands run on its CSV exactly as
they would on a GPU's, and the fitted CPU profile then prices an inline device.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from hwmodels.calibration.measure import run_sweep
from hwmodels.calibration.profile import load_profile
from hwmodels.calibration.schema import read_measurements, write_measurements
from simulator.cli import app
from simulator.models import model_from_dict

BASE = dict(num_layers=2, vocab_size=1000, mlp="gated", max_context=4096, norm="rmsnorm")
SMALL = model_from_dict(dict(name="tiny-a", hidden_size=512, num_heads=4, num_kv_heads=2, ffn_size=1024, **BASE))
LARGE = model_from_dict(dict(name="tiny-b", hidden_size=6144, num_heads=48, num_kv_heads=8, ffn_size=2048, **BASE))


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    df = run_sweep("cpu", quick=True, backend="numpy", models=[(SMALL, 1), (LARGE, 8)],
                   tokens=(1, 2, 4, 8, 16, 32, 64), min_total_s=0.002)
    return write_measurements(df, tmp_path_factory.mktemp("cal") / "cpu.csv")


def test_measure_writes_a_valid_schema_table(measured):
    df = read_measurements(measured)
    assert set(df["op_class"]) >= {"gemm", "attention_prefill", "attention_decode", "elementwise", "memcpy"}
    assert (df["device"] == "cpu").all() and (df["dtype"] == "fp32").all()
    assert (df["repeats"] >= 3).all() and df["versions"].str.startswith("numpy").all()
    # Model-shaped rows carry the model's hidden size, which decides their held-out fold.
    assert set(df.loc[df["op_class"] == "gemm", "hidden"]) == {512, 6144}


def test_fit_and_validate_run_end_to_end_on_the_cpu(measured, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["calibrate", "fit", "-m", str(measured), "--out-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    profile = load_profile(tmp_path / "cpu.yaml")
    assert profile.doc["peaks"]["basis"].startswith("measured maximum")
    gemm = profile.curve("gemm", "fp32")
    assert gemm is not None and gemm.meta["rows"] == 56 and "heldout" in gemm.meta

    res = runner.invoke(app, ["calibrate", "validate", "-m", str(measured), "--json", "--no-plots"])
    assert res.exit_code == 0, res.output
    table = json.loads(res.stdout[res.stdout.index("{"):])
    row = table["cpu"]["gemm fp32"]
    for model in ("calibrated", "datasheet"):
        assert set(row[model]) == {"median_ape", "p90_ape", "max_ape", "n"}
    assert row["calibrated_all"]["n"] == 56  # every GEMM row predicted by the fit on the other fold
    assert row["datasheet"]["n"] == 0  # the CPU has no datasheet entry to compare with


def test_cpu_profile_prices_an_inline_device(measured, tmp_path):
    from simulator.config.schema import DeploymentConfig, Scenario
    from simulator.costmodel import BatchShape
    from simulator.system import build_system

    runner = CliRunner()
    assert runner.invoke(app, ["calibrate", "fit", "-m", str(measured), "--out-dir", str(tmp_path),
                               "--no-heldout"]).exit_code == 0
    cpu = {
        "name": "laptop-cpu", "vendor": "any", "peak_tflops": {"fp32": 0.2}, "memory_gib": 16,
        "memory_bandwidth_gbs": 20, "sram_mib": 8, "interconnect": {"nvlink_gbs": 0, "pcie_gbs": 16,
                                                                    "link_latency_us": 10},
        "tdp_w": 65, "idle_w": 10, "price_usd_per_hour": 0.1, "calibration_profile": str(tmp_path / "cpu.yaml"),
    }
    model = dict(name="tiny-a", hidden_size=512, num_heads=4, num_kv_heads=2, ffn_size=1024, **BASE)
    dep = dict(device=cpu, weight_dtype="fp32", kv_dtype="fp32", activation_dtype="fp32", activation_reserve_gib=0)
    cal = build_system(Scenario(model=model, deployment=DeploymentConfig(**dep)))
    ref = build_system(Scenario(model=model, deployment=DeploymentConfig(**dep, calibration="datasheet")))
    shape = BatchShape(prefill_chunks=((64, 0, True),))
    assert cal.roofline.profile is not None
    t_cal, t_ref = cal.cost_model().iteration(shape).time_s, ref.cost_model().iteration(shape).time_s
    assert t_cal > 0 and t_cal != t_ref


def test_fit_and_validation_report_progress_per_dataset(measured):
    """`calibrate fit` and `validate --refit` show a bar (terminal) or a line every few seconds (logs) from these."""
    from hwmodels.calibration.fit import build_profile
    from hwmodels.calibration.validate import cross_validate

    df = read_measurements(measured)
    for run in (lambda cb: cross_validate(df, cross_source=False, progress=cb),
                lambda cb: build_profile(df, "cpu", progress=cb)):
        calls: list[tuple[int, int, str]] = []
        run(lambda done, total, what, calls=calls: calls.append((done, total, what)))
        total = calls[0][1]
        assert total > 3 and all(t == total for _, t, _ in calls)
        assert [d for d, _, _ in calls] == list(range(total + 1))  # one tick per dataset, then the closing one
        assert calls[-1][2] == "done" and calls[0][2].startswith(("cpu", "gemm", "attention", "elementwise", "memcpy"))
