"""One-shot commands start without the modules they do not use (issue 19: `estimate` and `validate` spent most of
their start-up importing). Each test runs the command in a fresh interpreter and looks at ``sys.modules``
afterwards, so it fails when someone adds a module-level import of a heavy package on these paths; it measures
no time (docs/performance.md, "Start-up", has the timings)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: Third-party packages that no one-shot command below needs: writing results needs pandas (and pandas pyarrow), as
#: does reading a trace file that is not plain (traces/loaders/fast.py); running a simulation SimPy; fitting scipy;
#: plots matplotlib; the dashboard streamlit; the optional backends torch and ray.
HEAVY = ("pandas", "pyarrow", "scipy", "matplotlib", "simpy", "streamlit", "torch", "ray")


def _modules_after(args: list[str]) -> set[str]:
    """The modules imported by running ``python -m simulator.cli ARGS`` in a fresh interpreter."""
    code = textwrap.dedent(
        f"""
        import runpy, sys
        sys.argv = ["capsim", *{args!r}]
        try:
            runpy.run_module("simulator.cli", run_name="__main__")
        except SystemExit as exc:
            assert not exc.code, exc.code
        print(" ".join(sorted(sys.modules)))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return set(out.stdout.strip().splitlines()[-1].split())  # the last line: the command's own output is above


def _heavy(modules: set[str]) -> list[str]:
    return sorted({m.split(".")[0] for m in modules} & set(HEAVY))


def test_estimate_imports_no_heavy_package_no_technique_and_one_scheduler():
    modules = _modules_after(["estimate", "--model", "llama-3.1-8b", "--device", "h100-sxm"])
    assert "simulator.estimate" in modules and "hwmodels.calibration.profile" in modules  # the command ran
    assert _heavy(modules) == []
    techniques = {m for m in modules if m.startswith("simulator.techniques.")}
    assert techniques <= {"simulator.techniques.base", "simulator.techniques.context", "simulator.techniques.step"}
    schedulers = {m for m in modules if m.startswith("simulator.schedulers.")}
    assert schedulers == {"simulator.schedulers.base", "simulator.schedulers.preemption", "simulator.schedulers.vllm"}
    assert "traces.loaders" not in modules and "simulator.config.loader" not in modules  # no trace, no YAML file


def test_validate_of_a_synthetic_workload_imports_no_heavy_package(tmp_path):
    scenario = tmp_path / "synthetic.yaml"
    scenario.write_text(
        "name: synthetic\nmodel: llama-3.1-8b\ndeployment: {device: h100-sxm}\n"
        "workload: {arrival: poisson, qps: 4, prompt: {dist: fixed, value: 512}, output: {dist: fixed, value: 64}}\n"
        "simulation: {num_requests: 50}\n"
    )
    modules = _modules_after(["validate", str(scenario)])
    assert "simulator.prepare" in modules and "traces.build" in modules  # validate built the system and workload
    assert _heavy(modules) == []
    assert "simulator.engine" not in modules and "simulator.replica" not in modules  # nothing is simulated


@pytest.mark.parametrize(
    "scenario,loader",
    [
        ("quickstart.yaml", "vidur"),  # the ShareGPT lengths
        ("azure_conv_replay.yaml", "azure"),  # date-time arrivals
        ("examples/prefix_caching.yaml", "mooncake"),  # JSONL with prefix block ids
    ],
)
def test_validate_of_a_shipped_trace_scenario_imports_no_heavy_package(scenario, loader):
    """Every shipped trace format that a shipped scenario replays is read without pandas."""
    modules = _modules_after(["validate", str(REPO / "scenarios" / scenario)])
    assert f"traces.loaders.{loader}" in modules and "traces.replay" in modules  # the trace was read
    assert _heavy(modules) == []


def test_validate_of_a_plain_csv_trace_of_ones_own_imports_no_heavy_package(tmp_path):
    trace = tmp_path / "mine.csv"  # no format and no mapping: the header is sniffed (format: auto) too
    trace.write_text("time,input_tokens,output_tokens\n0,100,10\n15,200,20\n25,300,30\n")
    scenario = tmp_path / "mine.yaml"
    scenario.write_text(
        "name: mine\nmodel: llama-3.1-8b\ndeployment: {device: h100-sxm, engine: none}\n"
        f"workload: {{arrival: trace, trace: {{path: '{trace}'}}}}\n"
        "simulation: {num_requests: null}\n"
    )
    modules = _modules_after(["validate", str(scenario)])
    assert "traces.loaders.generic_csv" in modules and _heavy(modules) == []


def test_help_imports_neither_numpy_nor_pydantic():
    modules = _modules_after(["--help"])
    assert "hwmodels.calibration.cli" in modules and "simulator.cli_plan" in modules  # sub-commands registered
    assert {"numpy", "pydantic", "yaml"}.isdisjoint(modules) and _heavy(modules) == []


def test_the_lazy_stand_in_loads_pandas_on_first_use():
    code = (
        "import sys; from traces.loaders.common import pd; assert 'pandas' not in sys.modules; "
        "frame = pd.DataFrame({'a': [1]}); assert 'pandas' in sys.modules; print(len(frame))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


def test_lazy_package_exports_resolve_and_unknown_names_raise_attribute_error():
    """The packages whose ``__init__`` resolves names on first use (PEP 562) still export every name."""
    code = textwrap.dedent(
        """
        import importlib
        for pkg in ("traces", "hwmodels", "simulator.config", "simulator.metrics"):
            module = importlib.import_module(pkg)
            for name in module.__all__:
                assert getattr(module, name) is not None, (pkg, name)
            try:
                module.no_such_name
            except AttributeError as exc:
                assert "no_such_name" in str(exc)
            else:
                raise AssertionError(pkg)
        from traces import build_requests, WorkloadConfig
        from traces.build import build_requests as direct
        assert build_requests is direct
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
