"""One-shot commands start without the heavy modules they do not use (issue 19: `estimate` and `validate`
spent most of their start-up importing pandas, which only reading a trace or writing results needs)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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


def test_estimate_does_not_import_pandas(tmp_path):
    modules = _modules_after(["estimate", "--model", "llama-3.1-8b", "--device", "h100-sxm"])
    assert "simulator.estimate" in modules  # the command ran
    assert "pandas" not in modules and "pyarrow" not in modules


def test_validate_of_a_synthetic_workload_does_not_import_pandas(tmp_path):
    scenario = tmp_path / "synthetic.yaml"
    scenario.write_text(
        "name: synthetic\nmodel: llama-3.1-8b\ndeployment: {device: h100-sxm}\n"
        "workload: {arrival: poisson, qps: 4, prompt: {dist: fixed, value: 512}, output: {dist: fixed, value: 64}}\n"
        "simulation: {num_requests: 50}\n"
    )
    modules = _modules_after(["validate", str(scenario)])
    assert "simulator.engine" in modules  # validate prepared the system and its workload
    assert "pandas" not in modules


def test_the_lazy_stand_in_loads_pandas_on_first_use():
    code = (
        "import sys; from traces.loaders.common import pd; assert 'pandas' not in sys.modules; "
        "frame = pd.DataFrame({'a': [1]}); assert 'pandas' in sys.modules; print(len(frame))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
