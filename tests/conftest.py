"""Fixtures shared by the test modules."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from simulator.cli import app


@pytest.fixture
def cli():
    """``cli("run", path, "--json")``: the capsim command line, in-process (stdout and stderr kept apart)."""
    runner = CliRunner()

    def invoke(*args: str | Path):
        return runner.invoke(app, [str(a) for a in args])

    return invoke
