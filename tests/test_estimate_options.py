"""``capsim estimate`` on par with ``run`` (issue 18 item 5): files, a scenario's deployment, every option, the
breakdown in ``--json``, bad input named by option, and exact prediction intervals."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from simulator.cli import app
from tests.cli_helpers import assert_user_error

TINY = (
    "name: tiny-7b-16l\nhidden_size: 4096\nffn_size: 11008\nnum_layers: 16\nnum_heads: 32\nnum_kv_heads: 32\n"
    "vocab_size: 32000\nmax_context: 4096\nmlp: gated\nnorm: rmsnorm\n"
)


def run_json(*args: str) -> dict:
    result = CliRunner().invoke(app, ["estimate", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_model_file_is_priced_like_the_catalog_model_it_halves(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY, encoding="utf-8")
    tiny = run_json("--model", str(path), "--output", "2")
    full = run_json("--model", "llama-2-7b", "--output", "2")
    assert tiny["model"] == "tiny-7b-16l"
    # Half the layers of Llama-2-7B: about half the weights and a bit over half the decode step (the LM head stays).
    assert tiny["weights_gib"] == pytest.approx(full["weights_gib"] / 2, rel=0.06)
    assert 0.45 < tiny["first_decode_step_s"] / full["first_decode_step_s"] < 0.7


def test_device_file_on_a_base_changes_what_it_overrides(tmp_path):
    path = tmp_path / "dev.yaml"
    path.write_text("base: h100-sxm\nname: h100-slow-hbm\nmemory_bandwidth_gbs: 1675\n", encoding="utf-8")
    slow = run_json("--device", str(path), "--calibration", "datasheet")
    ref = run_json("--device", "h100-sxm", "--calibration", "datasheet")
    assert slow["device"] == "h100-slow-hbm"
    # Batch-1 decode is memory-bound: half the bandwidth, close to twice the step.
    assert 1.7 < slow["tpot_s"] / ref["tpot_s"] < 2.05


def test_scenario_deployment_and_flag_override(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        "model: llama-3.1-70b\ndeployment: {device: h100-sxm, tp: 4, engine: vllm-eager, kv_dtype: fp8}\n"
        "workload: {qps: 1}\n",
        encoding="utf-8",
    )
    doc = run_json("--scenario", str(path))
    assert (doc["model"], doc["tp"], doc["engine"]) == ("llama-3.1-70b", 4, "vllm-eager")
    assert doc["engine_prefill_s"] > 0
    over = run_json("--scenario", str(path), "--tp", "8", "--engine", "none")
    assert (over["tp"], over["engine"]) == (8, "none")
    bf16 = run_json("--scenario", str(path), "--kv-dtype", "bf16")
    assert bf16["kv_gib"] == pytest.approx(2 * doc["kv_gib"])


def test_calibration_overheads_and_memory_options():
    prof, sheet = run_json(), run_json("--calibration", "datasheet")
    assert prof["pricing"] != sheet["pricing"] and prof["tpot_s"] != sheet["tpot_s"]
    vidur = run_json("--device", "a100", "--overheads", "vidur-a100")
    assert vidur["engine"].startswith("vidur-a100") and vidur["engine_prefill_s"] > 0
    low = run_json("--memory-utilization", "0.5")
    assert low["kv_capacity_tokens"] < prof["kv_capacity_tokens"]
    reserve = run_json("--activation-reserve-gib", "10")
    assert reserve["activation_reserve_gib"] == pytest.approx(10)
    fp16 = run_json("--activation-dtype", "fp16")
    assert fp16["tpot_s"] == pytest.approx(prof["tpot_s"], rel=0.05)
    fp8 = run_json("--weight-dtype", "fp8")
    assert fp8["weights_gib"] == pytest.approx(prof["weights_gib"] / 2, rel=0.05)


def test_context_prices_a_decode_step_at_that_context():
    short = run_json("--batch", "8", "--context", "1025")
    long = run_json("--batch", "8", "--context", "32000")
    assert short["decode_step_at_context_s"] == pytest.approx(short["first_decode_step_s"], rel=1e-9)
    assert long["decode_step_at_context_s"] > 1.2 * short["decode_step_at_context_s"]
    assert "decode_step_at_context" in long["breakdown"] and run_json()["context"] is None


def test_json_breakdown_has_every_term_and_sums_to_the_iteration():
    doc = run_json("--model", "llama-3.1-70b", "--tp", "4", "--engine", "vllm-eager", "--batch", "4")
    pre = doc["breakdown"]["prefill"]
    assert {"name", "op_class", "scope", "time_s", "flops", "bytes", "bound", "source"} <= pre[0].keys()
    assert sum(r["time_s"] for r in pre) == pytest.approx(doc["prefill_s"], rel=1e-9)
    first = doc["breakdown"]["first_decode_step"]
    assert sum(r["time_s"] for r in first) == pytest.approx(doc["first_decode_step_s"], rel=1e-6)
    assert any(r["op_class"] == "overhead" for r in first)  # the engine's terms are a row of their own
    assert any(r["bound"] == "communication" for r in first)  # TP all-reduces


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--model", "missing.yaml"], ("--model", "no such model file")),
        (["--device", "missing.yaml"], ("--device", "no such device file")),
        (["--scenario", "missing.yaml"], ("--scenario", "no such file")),
        (["--context", "0"], ("--context", "at least 1")),
        (["--context", "10000000"], ("--context", "exceeds the context")),
        (["--calibration", "guess"], ("--calibration",)),
        (["--memory-utilization", "1.5"], ("--memory-utilization",)),
        (["--activation-reserve-gib", "-1"], ("--activation-reserve-gib",)),
        (["--kv-dtype", "fp3"], ("--kv-dtype",)),
        (["--activation-dtype", "fp3"], ("--activation-dtype",)),
        (["--engine", "vllm-9000"], ("--engine", "unknown engine profile")),
        (["--overheads", "vidur-z"], ("--overheads",)),
        (["--device", "l40s", "--intervals"], ("--intervals", "no calibrated profile")),
    ],
)
def test_bad_input_is_named_by_option(args, fragments):
    assert_user_error(CliRunner().invoke(app, ["estimate", *args]), *fragments)


def test_bad_inline_files_are_named_by_option(tmp_path):
    dev = tmp_path / "d.yaml"
    dev.write_text("base: h100-sxm\nbogus: 1\n", encoding="utf-8")
    assert_user_error(CliRunner().invoke(app, ["estimate", "--device", str(dev)]), "--device", "bogus")
    model = tmp_path / "m.yaml"
    model.write_text("name: broken\nhidden_size: -4\n", encoding="utf-8")
    assert_user_error(CliRunner().invoke(app, ["estimate", "--model", str(model)]), "--model")


def test_estimate_intervals_are_exact_and_contain_the_point():
    doc = run_json("--model", "llama-3.1-70b", "--tp", "4", "--batch", "8", "--engine", "none", "--intervals")
    iv = doc["intervals"]
    (p_lo, p_hi), (d_lo, d_hi) = iv["multipliers"]["prefill"], iv["multipliers"]["decode"]
    assert p_lo < 1 < p_hi and d_lo < 1 < d_hi
    assert iv["metrics"]["prefill_s"] == pytest.approx([doc["prefill_s"] * p_lo, doc["prefill_s"] * p_hi])
    assert iv["metrics"]["tpot_s"] == pytest.approx([doc["tpot_s"] * d_lo, doc["tpot_s"] * d_hi])
    for key in ("ttft_s", "e2e_s", "output_tokens_per_s", "decode_s"):
        lo, hi = iv["metrics"][key]
        assert lo < doc[key] < hi, key
    assert "not_covered" in iv  # engine none: the kernels' error only, and it says so
    assert "intervals" not in run_json("--model", "llama-3.1-70b", "--tp", "4", "--batch", "8")


def test_estimate_interval_of_the_fitted_engine_is_wider_than_the_kernels_alone():
    kern = run_json("--model", "llama-3.1-70b", "--tp", "4", "--engine", "tensorrt-llm", "--intervals")["intervals"]
    e2e = run_json("--model", "llama-3.1-70b", "--tp", "4", "--engine", "tensorrt-llm-2023", "--intervals")["intervals"]
    width = lambda pair: pair[1] - pair[0]  # noqa: E731
    assert width(e2e["multipliers"]["decode"]) > width(kern["multipliers"]["decode"])
    assert "not_covered" not in e2e and "tensorrt-llm" in kern["not_covered"]  # no end-to-end rows of its own
