"""``capsim run --out``: results of different configurations never overwrite each other, and never mix with an
earlier run's files."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from simulator.cli import app

SMALL = """\
name: small
model: llama-3.1-8b
deployment: {device: h100-sxm}
workload: {qps: 4, prompt: {dist: fixed, value: 256}, output: {dist: fixed, value: 16}}
simulation: {num_requests: 12}
"""


@pytest.fixture
def cli():
    runner = CliRunner()

    def invoke(*args: str | Path):
        return runner.invoke(app, [str(a) for a in args])

    return invoke


def flat_stderr(result) -> str:
    return " ".join(result.stderr.split())


def test_run_names_that_map_to_one_folder_are_refused_before_simulating(cli, tmp_path):
    path = tmp_path / "runs.yaml"
    path.write_text(SMALL + "runs:\n  - {name: a/b}\n  - {name: a_b, set: {workload.qps: 8}}\n")
    out = tmp_path / "out"
    result = cli("run", path, "--out", out, "--no-plots")
    assert result.exit_code == 2, result.output
    flat = flat_stderr(result)
    assert "'a/b' and 'a_b' would both write their results to" in flat and "Fix: rename one" in flat
    assert not out.exists()  # refused before anything was simulated or written
    # Without --out there is no folder to share: the same file runs.
    assert cli("run", path).exit_code == 0


def test_distinct_run_names_get_distinct_folders(cli, tmp_path):
    path = tmp_path / "runs.yaml"
    path.write_text(SMALL + "runs:\n  - {name: a/b}\n  - {name: a-b, set: {workload.qps: 8}}\n")
    out = tmp_path / "out"
    result = cli("run", path, "--out", out, "--no-plots")
    assert result.exit_code == 0, result.output
    assert (out / "a_b" / "summary.json").is_file() and (out / "a-b" / "summary.json").is_file()
