"""``capsim run --out``: results of different configurations never overwrite each other, and never mix with an
earlier run's files."""

from __future__ import annotations

from pathlib import Path

SMALL = """\
name: small
model: llama-3.1-8b
deployment: {device: h100-sxm}
workload: {qps: 4, prompt: {dist: fixed, value: 256}, output: {dist: fixed, value: 16}}
simulation: {num_requests: 12}
"""


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


def test_an_interrupted_write_leaves_the_earlier_complete_results_and_no_partial_file(cli, tmp_path, monkeypatch):
    import pandas as pd

    path = tmp_path / "small.yaml"
    path.write_text(SMALL)
    out = tmp_path / "out"
    assert cli("run", path, "--out", out, "--no-plots").exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == {"requests.csv", "iterations.csv", "summary.json"}

    real_to_csv = pd.DataFrame.to_csv

    def interrupted_to_csv(self, target, *args, **kwargs):
        if str(target).endswith("iterations.csv"):
            Path(target).write_text("replica,start_s\n0,")  # half a file, then Ctrl-C
            raise KeyboardInterrupt
        return real_to_csv(self, target, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", interrupted_to_csv)
    result = cli("run", path, "--out", out, "--no-plots", "--set", "workload.qps=8")
    assert result.exit_code == 130, result.output
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after == before  # nothing truncated, nothing half-replaced, no staging folder left behind


def test_rerunning_into_a_used_folder_leaves_no_file_of_the_earlier_run(cli, tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text(SMALL)
    out = tmp_path / "out"
    assert cli("run", path, "--out", out).exit_code == 0
    assert (out / "throughput.png").is_file()
    assert cli("run", path, "--out", out, "--no-plots").exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["iterations.csv", "requests.csv", "summary.json"]


def test_switching_between_one_and_several_configurations_clears_or_names_the_earlier_results(cli, tmp_path):
    single = tmp_path / "small.yaml"
    single.write_text(SMALL)
    several = tmp_path / "runs.yaml"
    several.write_text(SMALL + "runs:\n  - {name: slow}\n  - {name: fast, set: {workload.qps: 8}}\n")
    out = tmp_path / "out"
    assert cli("run", single, "--out", out, "--no-plots").exit_code == 0
    assert cli("run", several, "--out", out, "--no-plots").exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["comparison.csv", "fast", "slow"]  # the single run's files went

    result = cli("run", single, "--out", out, "--no-plots")
    assert result.exit_code == 0, result.output
    assert not (out / "comparison.csv").exists()
    flat = flat_stderr(result)
    assert "holds results of an earlier run in fast/, slow/" in flat and "not part of this run" in flat
