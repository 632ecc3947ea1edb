"""Bad input files and values end in one paragraph naming the problem and the fix, with exit status 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli_helpers import assert_user_error


def trace_scenario(tmp_path: Path, trace: Path) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(f"name: x\nworkload:\n  qps: 2\n  trace: {{path: '{trace}'}}\n")
    return path


def test_a_scenario_in_another_encoding_is_a_user_error_naming_the_line(cli, tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: x\ndescription: café\n".encode("latin-1"))
    assert_user_error(cli("validate", path), f"{path} line 2", "not UTF-8 text (byte 0xe9)", "save the scenario as UTF-8")


def test_a_directory_given_as_a_scenario_says_so(cli, tmp_path):
    flat = assert_user_error(cli("run", tmp_path), "is a directory, not a scenario file")
    assert "no such file" not in flat


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_binary_trace_is_a_user_error_without_the_codec_text(cli, tmp_path, suffix):
    trace = tmp_path / f"trace{suffix}"
    trace.write_bytes(b'{"a": 1}\n' + bytes(range(128, 256)) * 4)
    flat = assert_user_error(cli("validate", trace_scenario(tmp_path, trace)), str(trace), "not UTF-8 text")
    assert "codec" not in flat


def test_a_directory_given_as_a_trace_says_so(cli, tmp_path):
    folder = tmp_path / "traces"
    folder.mkdir()
    flat = assert_user_error(cli("validate", trace_scenario(tmp_path, folder)), "is a directory, not a trace file")
    assert "not found" not in flat


@pytest.mark.parametrize("text", ["", "# just a comment\n\n"])
def test_an_empty_scenario_file_says_it_is_empty(cli, tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    flat = assert_user_error(cli("run", path), str(path), "the file is empty")
    assert "qps" in flat.split("Fix:")[1]  # says what to write, not that the default arrival lacks a rate


@pytest.mark.parametrize("value", ["-1", "0", ".inf"])
def test_a_bad_plan_target_is_blamed_on_target_rps_alone(cli, value):
    plan = Path(__file__).resolve().parents[1] / "scenarios" / "plan_example.yaml"
    flat = assert_user_error(cli("plan", plan, "--set", f"target_rps={value}"), "(target_rps)", "positive finite")
    assert "workload.qps" not in flat


def test_a_trace_out_of_time_order_is_sorted_with_a_warning_that_counts_the_rows(cli, tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n0,10,5\n2,10,5\n1,10,5\n3,10,5\n2.5,10,5\n")
    scenario = tmp_path / "s.yaml"
    scenario.write_text(f"name: x\nworkload:\n  arrival: trace\n  trace: {{path: '{trace}'}}\nsimulation: {{num_requests: null}}\n")
    result = cli("validate", scenario)
    assert result.exit_code == 0, result.output
    flat = " ".join(result.stderr.split())
    assert "warning: trace 't.csv': 2 arrival time(s) are earlier than the row before them" in flat
    assert "UserWarning" not in flat  # one warning line, not a Python source location
    in_order = tmp_path / "ordered.csv"
    in_order.write_text("arrival_s,prompt_tokens,output_tokens\n0,10,5\n1,10,5\n1,10,5\n")
    scenario.write_text(scenario.read_text().replace(str(trace), str(in_order)))
    assert "earlier than the row" not in cli("validate", scenario).stderr
