"""``capsim estimate``: one JSON object whose numbers hang together and match hand roofline figures."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from hwmodels.device import get_device
from simulator.cli import app
from simulator.config.schema import DeploymentConfig, Scenario
from simulator.estimate import estimate
from simulator.system import build_system

GIB = 2**30
KEYS = {"prefill_s", "tpot_s", "e2e_s", "output_tokens_per_s", "weights_gib", "kv_gib", "bound"}


def run_json(*args: str) -> dict:
    result = CliRunner().invoke(app, ["estimate", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_estimate_json_llama31_8b_h100_batch16():
    doc = run_json(
        "--model",
        "llama-3.1-8b",
        "--device",
        "h100",
        "--tp",
        "1",
        "--batch",
        "16",
        "--prompt",
        "1024",
        "--output",
        "256",
    )
    assert isinstance(doc, dict) and KEYS <= doc.keys()
    assert doc["device"] == "h100-sxm"  # the alias resolved
    out = 256
    assert doc["e2e_s"] == pytest.approx(doc["prefill_s"] + doc["tpot_s"] * (out - 1), rel=1e-9)
    assert doc["output_tokens_per_s"] == pytest.approx(16 * out / doc["e2e_s"], rel=1e-12)
    # Llama-3.1-8B has 8.03e9 parameters (model card), 2 bytes each in bf16.
    assert doc["weights_gib"] == pytest.approx(8.03e9 * 2 / GIB, rel=0.02)
    # KV of the batch at its longest: 16 x 1280 tokens x 2 L h_kv d_h b = 131072 bytes each.
    assert doc["kv_gib"] == pytest.approx(16 * 1280 * 2 * 32 * 8 * 128 * 2 / GIB, rel=1e-12)
    assert doc["bound"] in ("memory", "compute")


def test_batch1_decode_dominated_is_memory_bound():
    doc = run_json("--model", "llama-3.1-8b", "--device", "h100", "--batch", "1", "--prompt", "128", "--output", "512",
                   "--engine", "none")  # the kernels alone: the floor below is theirs
    assert doc["bound"] == "memory" and doc["decode_bound"] == "memory"
    assert doc["e2e_s"] == pytest.approx(doc["prefill_s"] + doc["tpot_s"] * 511, rel=1e-9)
    # A batch-1 step streams the weights: TPOT >= weight bytes / (bandwidth x memory efficiency).
    spec = get_device("h100-sxm")
    floor = doc["weights_gib"] * GIB / (spec.memory_bandwidth_gbs * 1e9 * spec.efficiency.memory)
    assert floor <= doc["tpot_s"] < 1.15 * floor


def test_long_prompt_batch_is_compute_bound_in_prefill():
    doc = run_json("--model", "llama-3.1-8b", "--device", "h100", "--batch", "8", "--prompt", "4096", "--output", "2")
    assert doc["prefill_bound"] == "compute"
    assert doc["bound"] == "compute"  # the prefill dominates a 2-token output


def test_estimate_function_single_output_token():
    system = build_system(Scenario(model="llama-2-7b", deployment=DeploymentConfig(device="a100-80gb-sxm")))
    est = estimate(system, batch=2, prompt=100, output=1)
    # No decode step exists: no TPOT, no decode bound or utilisation (None, not a 0 ms TPOT).
    assert est.tpot_s is None and est.first_decode_step_s is None and est.decode_bound is None
    assert est.mfu_decode is None and est.mbu_decode is None and est.decode_s == 0.0
    assert est.bound == est.prefill_bound
    assert est.e2e_s == est.prefill_s == est.ttft_s


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--batch", "0"], "batch must be at least 1"),
        (["--model", "llama-3.1-8c"], "did you mean 'llama-3.1-8b'"),
        (["--device", "a100", "--weight-dtype", "fp8"], "no fp8 peak"),
        (["--prompt", "200000"], "exceeds the context"),
        (["--model", "llama-2-70b", "--device", "a100"], "short by"),
        (["--tp", "0"], "--tp: Input should be greater than 0"),  # a pydantic error, not an internal error
        (["--pp", "-1"], "--pp:"),
        (["--tp", "3"], "--tp: tp=3 does not divide the 32 attention heads"),
        (["--weight-dtype", "fp9"], "--weight-dtype: unknown numeric format 'fp9'"),
    ],
)
def test_estimate_bad_input(args, fragment):
    result = CliRunner().invoke(app, ["estimate", *args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    assert fragment in " ".join(result.stderr.split())


def test_one_output_token_shows_no_decode_instead_of_a_zero_tpot():
    doc = run_json("--output", "1")
    assert doc["tpot_s"] is None and doc["first_decode_step_s"] is None and doc["mfu_decode"] is None
    table = CliRunner().invoke(app, ["estimate", "--output", "1"])
    assert table.exit_code == 0, table.output
    flat = " ".join(table.stdout.split())
    assert "0.00 ms" not in flat and "one output token: no decode" in flat


@pytest.mark.parametrize(
    ("args", "cause"),
    [
        (["--batch", "100000"], "prefilled together does not fit"),  # the prefill's activations leave no KV room
        (["--batch", "300", "--prompt", "2048", "--output", "2048"], "tokens of KV cache"),  # used to exit 0
    ],
)
def test_a_batch_that_does_not_fit_exits_2_and_names_the_largest_batch_that_does(args, cause):
    result = CliRunner().invoke(app, ["estimate", *args])
    assert result.exit_code == 2, result.output
    flat = " ".join(result.stderr.split())
    assert "error: --batch:" in flat and cause in flat
    largest = int(flat.split("use --batch ")[1].split()[0])
    assert 1 <= largest < int(args[1])
    prompt = args[args.index("--prompt") + 1] if "--prompt" in args else "1024"
    output = args[args.index("--output") + 1] if "--output" in args else "256"
    fits = run_json("--batch", str(largest), "--prompt", prompt, "--output", output)
    assert fits["fits"] is True  # the suggestion works ...
    again = CliRunner().invoke(app, ["estimate", "--batch", str(largest + 1), "--prompt", prompt, "--output", output])
    assert again.exit_code == 2  # ... and is the largest


def test_a_model_too_large_for_any_batch_still_suggests_more_gpus_not_a_batch():
    result = CliRunner().invoke(app, ["estimate", "--model", "llama-2-70b", "--device", "a100", "--batch", "8"])
    assert result.exit_code == 2
    flat = " ".join(result.stderr.split())
    assert "short by" in flat and "use --batch" not in flat
