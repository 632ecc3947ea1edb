"""The ``capsim`` command line: success paths, and every bad input ends in exit 2 with a clear message."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_helpers import assert_user_error

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "scenarios" / "quickstart.yaml"

SMALL = """\
name: small
model: llama-3.1-8b
deployment: {device: h100-sxm}
workload: {qps: 4, prompt: {dist: fixed, value: 256}, output: {dist: fixed, value: 16}}
simulation: {num_requests: 30}
"""


def test_validate_quickstart(cli):
    result = cli("validate", QUICKSTART)
    assert result.exit_code == 0, result.output
    assert "ok quickstart" in result.stdout and "llama-3.1-8b" in result.stdout


def test_malformed_yaml(cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: llama-3.1-8b\ndeployment:\n  tp: 1\n    pp: 2\n")
    assert_user_error(cli("validate", bad), "malformed YAML", "line 4")


def test_unknown_model_suggests_closest(cli):
    assert_user_error(
        cli("validate", QUICKSTART, "--set", "model=llama-3.1-8c"), "model:", "did you mean 'llama-3.1-8b'"
    )


def test_unknown_device(cli):
    assert_user_error(
        cli("validate", QUICKSTART, "--set", "deployment.device=h1000"),
        "deployment.device",
        "unknown device 'h1000'",
        "capsim list devices",
    )


def test_unknown_field(cli):
    assert_user_error(cli("validate", QUICKSTART, "--set", "deployment.tpp=2"), "deployment.tpp", "did you mean 'tp'")


def test_negative_qps(cli):
    assert_user_error(cli("validate", QUICKSTART, "--set", "workload.qps=-3"), "workload.qps", "greater than 0", "-3")


def test_model_that_does_not_fit(cli):
    flat = assert_user_error(
        cli(
            "validate",
            QUICKSTART,
            "--set",
            "model=llama-2-70b",
            "--set",
            "deployment.device=a100",
            "--set",
            "deployment.tp=1",
        ),
        "does not fit",
        "short by",
        "deployment.tp",
    )
    assert "memory" in flat


def test_trace_with_missing_column(cli, tmp_path):
    trace = tmp_path / "trace.csv"
    trace.write_text("arrival_s,prompt_tokens\n0.0,100\n0.5,200\n")
    scenario = tmp_path / "s.yaml"
    scenario.write_text(SMALL)
    assert_user_error(
        cli("run", scenario, "--set", f"workload.trace.path={trace}", "--no-plots"),
        "trace.csv",
        "output",
        "prompt_tokens",
        "workload.trace.columns",
    )


def test_trace_with_negative_token_count(cli, tmp_path):
    trace = tmp_path / "trace.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n0.0,100,10\n0.5,-20,10\n1.0,30,10\n")
    scenario = tmp_path / "s.yaml"
    scenario.write_text(SMALL)
    assert_user_error(cli("run", scenario, "--set", f"workload.trace.path={trace}"), "row 2", "negative")


def test_unknown_list_kind(cli):
    flat = assert_user_error(cli("list", "modells"), "unknown list kind 'modells'", "did you mean 'models'")
    assert "list list" not in flat


@pytest.mark.parametrize(
    ("kind", "ids"),
    [
        ("models", ["llama-3.1-8b", "llama-2-70b", "mixtral-8x7b", "falcon-180b"]),
        ("devices", ["h100-sxm", "a100-80gb-sxm", "mi300x", "a100-40gb-sxm"]),
        ("schedulers", ["vllm", "sarathi", "orca", "static"]),
        ("routers", ["round-robin", "random", "least-outstanding"]),
        ("traces", ["sharegpt-lengths", "azure-conv-2023"]),
    ],
)
def test_list(cli, kind, ids):
    result = cli("list", kind)
    assert result.exit_code == 0, result.output
    for name in ids:
        assert name in result.stdout, name  # ids are never truncated, even at 80 columns


def test_run_writes_outputs(cli, tmp_path):
    out = tmp_path / "out"
    result = cli(
        "run", QUICKSTART, "--set", "simulation.num_requests=50", "--set", "simulation.warmup_s=0", "--out", out
    )
    assert result.exit_code == 0, result.output
    for name in (
        "requests.csv",
        "iterations.csv",
        "summary.json",
        "latency_cdfs.png",
        "batch_and_kv.png",
        "throughput.png",
    ):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["completed"] == 50
    assert len((out / "requests.csv").read_text().strip().splitlines()) == 51  # header + 50 requests
    assert "quickstart" in result.stdout


def test_run_json_is_strict_json(cli):
    # With the quickstart's 10 s warm-up, 50 requests are all warm-up: NaN statistics must print as null.
    result = cli("run", QUICKSTART, "--set", "simulation.num_requests=50", "--json", "--no-plots")
    assert result.exit_code == 0, result.output

    def refuse(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    doc = json.loads(result.stdout, parse_constant=refuse)
    assert doc["name"] == "quickstart"
    assert doc["ttft_p50_s"] is None
    assert "warmup_s" in " ".join(result.stderr.split())  # and stderr says why nothing was measured


def test_runs_list_prints_one_comparison_table(cli, tmp_path):
    scenario = tmp_path / "cmp.yaml"
    scenario.write_text(SMALL + "runs:\n  - name: one-gpu\n  - name: two-gpus\n    set: {deployment.tp: 2}\n")
    result = cli("run", scenario, "--no-plots")
    assert result.exit_code == 0, result.output
    assert "one-gpu" in result.stdout and "two-gpus" in result.stdout
    assert result.stdout.count("cmp.yaml") == 1  # one table, titled by the file


def test_real_process_exit_codes(tmp_path):
    """The installed entry point behaves the same outside CliRunner."""
    ok = subprocess.run([sys.executable, "-m", "capsim", "validate", str(QUICKSTART)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    res = subprocess.run([sys.executable, "-m", "capsim", "validate", str(bad)], capture_output=True, text=True)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr + res.stdout
    assert "malformed YAML" in res.stderr and res.stdout == ""


def test_validate_reads_the_trace_and_finds_unservable_requests(cli, tmp_path):
    """validate builds the workload too, so a bad trace or an impossible request fails before any run."""
    trace = tmp_path / "trace.csv"
    trace.write_text("arrival_s,prompt_tokens\n0.0,100\n")
    scenario = tmp_path / "s.yaml"
    scenario.write_text(SMALL)
    assert_user_error(cli("validate", scenario, "--set", f"workload.trace.path={trace}"), "trace.csv", "output")
    # A 9,000-token prompt cannot fit Llama-3-8B's 8,192-token context.
    long = tmp_path / "long.csv"
    long.write_text("arrival_s,prompt_tokens,output_tokens\n0.0,100,10\n0.5,9000,10\n")
    assert_user_error(
        cli("validate", scenario, "--set", "model=llama-3-8b", "--set", "simulation.num_requests=null",
            "--set", f"workload={{arrival: trace, trace: {{path: '{long}'}}}}"),
        "1 of 2 requests can never be served",
        "simulation.oversized",
    )


def test_relative_trace_path_is_relative_to_the_scenario_file(cli, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "t.csv").write_text("arrival_s,prompt_tokens,output_tokens\n0.0,100,10\n0.5,50,5\n")
    scenario = tmp_path / "s.yaml"
    scenario.write_text(
        "model: llama-3.1-8b\n"
        "workload: {arrival: trace, trace: {path: data/t.csv}}\n"
        "simulation: {num_requests: null}\n"
    )
    result = cli("validate", scenario)
    assert result.exit_code == 0, result.output
    assert "2 requests" in " ".join(result.output.split())


def test_error_messages_keep_square_brackets(cli):
    """Messages are printed verbatim: rich must not eat '[...]' as markup (e.g. 'pip install capsim[app]')."""
    flat = assert_user_error(cli("list", "mod[els]"))
    assert "mod[els]" in flat


@pytest.mark.parametrize("path", sorted(Path("scenarios").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_scenario_file_validates(cli, path):
    """Scenario, sweep and plan files alike: the examples the README points at must stay valid."""
    result = cli("validate", path)
    assert result.exit_code == 0, result.output
    assert "ok " in result.output


def test_run_points_sweep_and_plan_files_at_their_commands(cli):
    assert_user_error(cli("run", "scenarios/plan_example.yaml"), "capsim plan")
    assert_user_error(cli("run", "scenarios/sweep_example.yaml"), "capsim sweep")


def test_run_stopped_by_max_time_says_how_many_requests_were_cut(cli, tmp_path):
    """Requests arriving after simulation.max_time_s are not measured (not counted as misses), and the run says so."""
    path = tmp_path / "small.yaml"
    path.write_text(SMALL)
    result = cli("run", path, "--set", "simulation.max_time_s=3", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["not_arrived"] > 0
    assert summary["num_requests"] + summary["not_arrived"] == 30
    assert summary["slo_attainment"] > 0.5  # the cut requests used to count as unfinished misses
    flat = " ".join(result.stderr.split())
    assert f"before {summary['not_arrived']} of the workload's requests arrived" in flat


def test_progress_prints_periodic_lines_when_not_a_terminal():
    """In logs and CI (stderr not a terminal) long work prints a line every few seconds instead of nothing."""
    import io

    from rich.console import Console

    from simulator.progress import Progress

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=False)
    with Progress("sweep", 3, console=console, every_s=0.0) as p:
        p.advance()
        p.update(description="sweep (cached)", completed=3)
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("sweep: 1/3") and lines[1].startswith("sweep (cached): 3/3")
    quiet = io.StringIO()
    with Progress("one run", 1, console=Console(file=quiet, force_terminal=False), every_s=60.0) as p:
        p.advance()
    assert quiet.getvalue() == ""  # short work stays silent


def test_progress_heartbeat_keeps_a_log_alive_during_one_long_step():
    """One long simulation advances no counter; in a log its line still repeats every few seconds."""
    import io
    import time

    from rich.console import Console

    from simulator.progress import Progress

    buf = io.StringIO()
    with Progress("simulating big-trace", 1, console=Console(file=buf, force_terminal=False), every_s=0.1):
        time.sleep(0.45)
    lines = buf.getvalue().splitlines()
    assert len(lines) >= 3, lines
    assert all(line.startswith("simulating big-trace: 0/1") for line in lines)
