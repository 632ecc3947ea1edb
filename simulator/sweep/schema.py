"""The sweep file schema: a scenario file plus ``zip:`` (lists varied together).

A sweep file is any scenario file (``runs:``, ``grid:`` as ``capsim run``
reads them) with one more optional section, ``zip:``, mapping dotted paths to
lists of equal length; the i-th values of every list form one point. Grid
points and zip points are crossed, so ``grid: {workload.qps: [2, 4]}`` with
``zip: {deployment.device: [a100, h100], deployment.num_replicas: [2, 1]}``
gives four configurations. Paths are dotted scenario paths, so a field added
to the scenario schema tomorrow is sweepable without touching this module.

>>> SweepFile.model_validate({"zip": {"deployment.tp": [1, 2], "deployment.num_replicas": [2, 1]}}).zip
{'deployment.tp': [1, 2], 'deployment.num_replicas': [2, 1]}
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from simulator.config.schema import ScenarioFile


def check_zip(zipped: dict[str, list[Any]] | None) -> dict[str, list[Any]] | None:
    """Every zip entry is a non-empty list, all of the same length (ValueError otherwise)."""
    if zipped is None:
        return None
    lengths = {}
    for key, values in zipped.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"zip entry {key!r} must be a non-empty list of values")
        lengths[key] = len(values)
    if len(set(lengths.values())) > 1:
        sizes = ", ".join(f"{k}: {n}" for k, n in lengths.items())
        raise ValueError(f"zip lists are varied together, so they must have the same length (got {sizes})")
    return zipped


class SweepFile(ScenarioFile):
    """A scenario file with an optional ``zip:`` section (see the module docstring)."""

    zip: dict[str, list[Any]] | None = Field(
        None,
        description="Lists of equal length varied together, by dotted path, e.g. "
        "{'deployment.device': ['a100', 'h100'], 'deployment.num_replicas': [2, 1]}; crossed with grid and runs.",
    )

    @field_validator("zip")
    @classmethod
    def _zip_lists(cls, zipped):
        return check_zip(zipped)
