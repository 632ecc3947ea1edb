"""The torch backend of ``capsim calibrate measure`` on this machine's CPU, piped through fit -> validate,
and the backend choice's refusals (which need no torch).

The torch tests are skipped only when torch cannot be imported (it is an optional extra, ``pip install
'capsim[torch]'``; CI installs the local CPU wheel when the machine has it). The CUDA path cannot run
here (no GPU); its timing protocol is described in :mod:`hwmodels.calibration.measure`.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from capsim.errors import CapsimError
from hwmodels.calibration.measure import make_backend, run_sweep
from hwmodels.calibration.profile import load_profile
from hwmodels.calibration.schema import read_measurements, write_measurements
from simulator.cli import app
from simulator.models import model_from_dict

try:
    import torch
except ImportError:  # pragma: no cover - depends on the environment
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not importable (optional: pip install "
                                 "'capsim[torch]' or the local torch==2.13.0 CPU wheel)")

BASE = dict(num_layers=2, vocab_size=1000, max_context=4096, norm="rmsnorm")
SMALL = model_from_dict(dict(name="tiny-a", hidden_size=512, num_heads=4, num_kv_heads=2, ffn_size=1024,
                             mlp="gated", **BASE))
LARGE = model_from_dict(dict(name="tiny-b", hidden_size=6144, num_heads=48, num_kv_heads=8, ffn_size=2048,
                             mlp="plain", **BASE))


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    if torch is None:
        pytest.skip("torch is not importable")
    df = run_sweep("cpu", quick=True, backend="torch", models=[(SMALL, 1), (LARGE, 8)],
                   tokens=(1, 2, 4, 8, 16, 32, 64), min_total_s=0.002)
    return write_measurements(df, tmp_path_factory.mktemp("cal-torch") / "cpu.csv"), df


@needs_torch
def test_torch_cpu_backend_writes_a_schema_table_of_every_kernel(measured):
    path, raw = measured
    df = read_measurements(path)
    assert set(df["op_class"]) == {"gemm", "attention_prefill", "attention_decode", "elementwise", "memcpy"}
    assert set(df.loc[df["op_class"] == "elementwise", "op"]) == {"norm", "rope", "activation", "residual_add",
                                                                  "embedding"}
    assert df["versions"].str.startswith(f"torch {torch.__version__}").all()
    assert df["kernel"].str.startswith("torch-cpu").all() and (df["dtype"] == "fp32").all()
    assert (df["repeats"] >= 3).all() and (df["measured_s"] > 0).all() and (df["spread_s"] >= 0).all()
    assert raw.attrs["skipped"] == []  # the tiny models fit in any machine's memory
    # Rows record the bytes the cost model charges the fused kernel: RoPE reads and writes q and k
    # ((4 + 2) heads x 64 dims of tiny-a), a plain MLP's GELU reads and writes 2048 / 8 elements.
    ew = df[df["op_class"] == "elementwise"].set_index(["model", "op", "tokens"])["nbytes"]
    assert ew[("tiny-a", "rope", 16)] == 16 * 2 * (4 + 2) * 128 * 4
    assert ew[("tiny-b", "activation", 16)] == 16 * 2 * (2048 // 8) * 4
    assert ew[("tiny-a", "activation", 16)] == 16 * 3 * 1024 * 4


@needs_torch
def test_torch_measurements_fit_and_validate(measured, tmp_path):
    path, _ = measured
    runner = CliRunner()
    res = runner.invoke(app, ["calibrate", "fit", "-m", str(path), "--out-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    profile = load_profile(tmp_path / "cpu.yaml")
    gemm = profile.curve("gemm", "fp32")
    assert gemm is not None and gemm.meta["rows"] == 56
    assert profile.curve("elementwise:rope", "fp32") is not None

    res = runner.invoke(app, ["calibrate", "validate", "-m", str(path), "--json", "--no-plots"])
    assert res.exit_code == 0, res.output
    table = json.loads(res.stdout[res.stdout.index("{"):])
    assert table["cpu"]["gemm fp32"]["calibrated_all"]["n"] == 56
    assert {"attention_prefill fp32", "attention_decode fp32", "elementwise:rope fp32"} <= set(table["cpu"])


@needs_torch
def test_cases_larger_than_the_memory_budget_are_skipped_and_listed():
    df = run_sweep("cpu", quick=True, backend="torch", models=[(SMALL, 1)], tokens=(1, 2),
                   min_total_s=0.0, memory_budget=4e6)
    skipped = df.attrs["skipped"]
    assert skipped and any("attention_decode" in s for s in skipped)
    # what was timed fits: the largest GEMM here (512 x 1024 x 4 fp32 weights and activations) is under 4 MB
    assert "gemm" in set(df["op_class"])


def test_numpy_backend_is_cpu_only_and_unknown_backends_are_refused():
    with pytest.raises(CapsimError, match="CPU only"):
        make_backend("cuda", "numpy")
    with pytest.raises(CapsimError, match="unknown backend"):
        make_backend("cpu", "tensorflow")
    with pytest.raises(CapsimError, match="unknown device"):
        make_backend("tpu", "auto")


@pytest.mark.skipif(torch is None or torch.cuda.is_available(), reason="needs torch without a visible GPU")
def test_cuda_without_a_gpu_is_refused_clearly():
    with pytest.raises(CapsimError, match="no CUDA device"):
        make_backend("cuda", "torch")
    res = CliRunner().invoke(app, ["calibrate", "measure", "--device", "cuda", "--quick"])
    assert res.exit_code == 2 and "no CUDA device" in res.output
