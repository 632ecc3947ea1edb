"""Write a run's records, summary and plots to a directory.

Layout of ``out_dir``:

* ``requests.csv`` — one row per request (``SimulationResult.requests``),
* ``iterations.csv`` — one row per run of identical iterations of a replica,
* ``summary.json`` — the summary keys (and any extra keys the caller added) at top level plus ``"info"`` with the
  run's :class:`RunInfo`; strict JSON (NaN and infinities are written as ``null``, other objects as their ``str``)
  so that any JSON reader accepts it,
* ``latency_cdfs.png``, ``batch_and_kv.png``, ``throughput.png`` unless ``plots=False``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from capsim.errors import CapsimError
from simulator.metrics.result import SimulationResult


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
    written = []
    path = out_dir / "requests.csv"
    result.requests.to_csv(path, index=False)
    written.append(path)
    path = out_dir / "iterations.csv"
    result.iterations.to_csv(path, index=False)
    written.append(path)
    path = out_dir / "summary.json"
    text = json.dumps(summary_document(result, summary), indent=2, allow_nan=False, default=str)
    path.write_text(text + "\n")
    written.append(path)
    if plots:
        from simulator.metrics.plots import write_plots  # matplotlib is slow to import; only pay for it when plotting

        written.extend(write_plots(result, out_dir, summary))
    return written
