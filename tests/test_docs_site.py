"""The documentation site: the generated scenario reference is current, and the site builds strictly.

``mkdocs build --strict`` fails on a broken link, a link to a missing page, or a page left out of the
navigation, so documentation that points nowhere fails CI rather than a reader.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_scenario_reference_is_current():
    """docs/reference/scenario.md is what the schema generates now (regenerate it in the same commit)."""
    from simulator.config.reference import render

    committed = (ROOT / "docs" / "reference" / "scenario.md").read_text()
    assert committed == render(), (
        "docs/reference/scenario.md is stale: run `python -m simulator.config.reference > docs/reference/scenario.md`"
    )


def test_reference_lists_every_field_and_plugin():
    """Spot checks that could fail: nested sections, inline model/device requirements, every registered plug-in."""
    from simulator.config.reference import render
    from simulator.schedulers.base import SCHEDULERS
    from simulator.techniques.base import TECHNIQUES

    page = render()
    for needle in (
        "`num_replicas`",
        "`max_time_s`",
        "`percentiles`",
        "#### LengthConfig",
        "`num_kv_heads`",
        "`memory_bandwidth_gbs`",
        "**required**",
    ):
        assert needle in page, needle
    for name in [*SCHEDULERS.names(), *TECHNIQUES.names()]:
        assert f"### `{name}`" in page, name


def test_site_builds_strictly(tmp_path):
    if shutil.which("mkdocs") is None and not _has_module("mkdocs"):
        if os.environ.get("CI"):
            pytest.fail("mkdocs is not installed: `pip install -e '.[test]'` installs it (the docs extra)")
        pytest.skip("mkdocs not installed (pip install -e '.[docs]')")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "scenario" / "index.html").exists()


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
