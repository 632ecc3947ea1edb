"""Write a run's records, summary and plots to a directory.

Layout of ``out_dir``:

* ``requests.csv`` — one row per request (``SimulationResult.requests``),
* ``iterations.csv`` — one row per run of identical iterations of a replica,
* ``summary.json`` — the summary keys (and any extra keys the caller added) at top level plus ``"info"`` with the
  run's :class:`RunInfo`; strict JSON (NaN and infinities are written as ``null``, other objects as their ``str``)
  so that any JSON reader accepts it,
* ``latency_cdfs.png``, ``batch_and_kv.png``, ``throughput.png`` unless ``plots=False``.

Why staged: an interrupted write (Ctrl-C, a full disk) must not leave a truncated CSV that looks like a result, and a
rerun into a used folder must not leave the earlier run's files beside the new ones. Every file is written into a
hidden staging folder inside ``out_dir`` and renamed into place only when all are complete; the earlier
``summary.json`` is removed first and the new one renamed last, so a ``summary.json`` always describes the files
beside it, and files of :data:`OUTPUT_FILES` this run did not write (say, plots after ``--no-plots``) are removed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from capsim.errors import CapsimError
from simulator.metrics.result import SimulationResult

PLOT_FILES: tuple[str, ...] = ("latency_cdfs.png", "batch_and_kv.png", "throughput.png")
#: Every file :func:`write_outputs` may put in ``out_dir``; the ones a run does not write are removed from it.
OUTPUT_FILES: tuple[str, ...] = ("requests.csv", "iterations.csv", "summary.json", *PLOT_FILES)
STAGING_PREFIX = ".capsim-partial-"


def to_json_value(value: Any) -> Any:
    """``value`` with numpy scalars made plain and NaN/±inf made ``None``, recursively (strict-JSON safe)."""
    if isinstance(value, Mapping):
        return {str(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [to_json_value(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def summary_document(result: SimulationResult, summary: Mapping[str, Any]) -> dict[str, Any]:
    """What ``summary.json`` holds: the summary keys and ``info``."""
    return to_json_value({**summary, "info": dataclasses.asdict(result.info)})


def write_outputs(
    result: SimulationResult, summary: Mapping[str, Any], out_dir: Path, *, plots: bool = True
) -> list[Path]:
    """Write the CSVs, ``summary.json`` and (optionally) the plots; returns the paths written."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CapsimError(
            f"cannot create output directory ({exc.strerror})",
            where=str(out_dir),
            fix="choose a writable --out directory",
        ) from exc
    try:
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out_dir))
    except OSError as exc:
        raise CapsimError(
            f"cannot write to the output directory ({exc.strerror})", where=str(out_dir), fix="choose a writable --out directory"
        ) from exc
    try:
        staged = [staging / "requests.csv", staging / "iterations.csv", staging / "summary.json"]
        result.requests.to_csv(staged[0], index=False)
        result.iterations.to_csv(staged[1], index=False)
        text = json.dumps(summary_document(result, summary), indent=2, allow_nan=False, default=str)
        staged[2].write_text(text + "\n")
        if plots:
            # matplotlib is slow to import; only pay for it when plotting
            from simulator.metrics.plots import write_plots

            staged.extend(write_plots(result, staging, summary))
        return _publish(staged, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_atomically(path: Path, write: Callable[[Path], Any]) -> Path:
    """``write(tmp)`` to a hidden name beside ``path``, then rename it to ``path``: never a truncated ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _publish(staged: list[Path], out_dir: Path) -> list[Path]:
    """Move complete files from the staging folder into ``out_dir``, ``summary.json`` last; clear stale outputs."""
    names = {p.name for p in staged}
    for name in ("summary.json", *(n for n in OUTPUT_FILES if n not in names)):
        (out_dir / name).unlink(missing_ok=True)  # no summary.json while the set is being replaced
    ordered = [p for p in staged if p.name != "summary.json"] + [p for p in staged if p.name == "summary.json"]
    written = []
    for path in ordered:
        target = out_dir / path.name
        os.replace(path, target)
        written.append(target)
    return written
