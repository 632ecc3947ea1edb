"""Expanding a sweep file into scenarios: runs x grid (the loader's own expansion) x zip.

Nothing here re-implements the loader: reading YAML, ``--set`` overrides,
dotted-path updates, the cartesian grid and validation all come from
:mod:`simulator.config.loader`. This module only adds zipped lists, applied to
the base scenario before the loader expands runs and grid. A zip path that a
run or the grid also sets would make the order of application matter, so it
is rejected instead of silently resolved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from capsim.errors import CapsimError
from simulator.config.loader import (
    apply_updates,
    expand,
    parse_override,
    point_label,
    read_yaml,
    set_path,
    validate_as,
)
from simulator.config.schema import Scenario
from simulator.sweep.schema import SweepFile


def zip_points(zipped: dict[str, list[Any]]) -> list[tuple[str, dict[str, Any]]]:
    """``{a.x: [1, 2], b.y: [3, 4]}`` -> ``[('x=1,y=3', {...}), ('x=2,y=4', {...})]``."""
    keys = list(zipped)
    count = len(zipped[keys[0]])
    points = []
    for i in range(count):
        values = {k: zipped[k][i] for k in keys}
        label = point_label(values)
        points.append((label, values))
    return points


def _overlaps(a: str, b: str) -> bool:
    """Whether dotted paths ``a`` and ``b`` touch the same field (equal, or one inside the other)."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def _run_paths(run: dict[str, Any]) -> list[str]:
    paths = [k for k in run if k not in ("name", "set")]
    paths += list((run.get("set") or {}).keys())
    return paths


def _check_no_overlap(data: dict[str, Any], zipped: dict[str, list[Any]], source: str) -> None:
    others: list[tuple[str, str]] = [(p, "grid") for p in (data.get("grid") or {})]
    for run in data.get("runs") or []:
        others += [(p, f"run {run.get('name')!r}") for p in _run_paths(run)]
    for zpath in zipped:
        for path, where in others:
            if _overlaps(zpath, path):
                raise CapsimError(
                    f"zip path {zpath!r} overlaps {path!r} set by the {where}",
                    where=f"{source} (zip.{zpath})",
                    fix="vary each field in one place only: move it into zip, or out of it",
                )


def expand_sweep(data: dict[str, Any], source: str) -> list[Scenario]:
    """Every configuration of a sweep file (a plain scenario file gives what ``capsim run`` would)."""
    validate_as(SweepFile, data, source)
    zipped = data.get("zip")
    base = {k: v for k, v in data.items() if k != "zip"}
    if not zipped:
        return expand(base, source)
    _check_no_overlap(base, zipped, source)
    named = bool(base.get("runs") or base.get("grid"))
    out: list[Scenario] = []
    for label, values in zip_points(zipped):
        for sc in expand(apply_updates(base, values), source):
            out.append(sc.model_copy(update={"name": f"{sc.name} {label}" if named else label}))
    return out


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> list[Scenario]:
    """Read a sweep file, apply ``--set`` overrides to its base, and expand it."""
    data = read_yaml(path)
    for text in overrides or []:
        key, value = parse_override(text)
        set_path(data, key, value)
    scenarios = expand_sweep(data, str(path))
    names = [s.name for s in scenarios]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise CapsimError(
            f"several configurations share the name(s) {', '.join(repr(d) for d in dupes[:3])}",
            where=str(path),
            fix="give runs distinct names, or avoid repeating a value in a grid or zip list",
        )
    return scenarios
