"""Open any results folder on the page: what ``capsim run --out`` and ``capsim sweep --out`` wrote, beside the plan
folders of :mod:`app.plan_view`.

Why read folders: a run or sweep done on the command line (or a batch machine) should be readable without
simulating it again. The folder's kind is told by its files:

* ``plan.json`` -- a plan (:mod:`app.plan_view`);
* ``summary.json`` -- one ``capsim run`` configuration; sub-folders each holding one -- a ``runs:``/``grid:`` file
  run with several configurations (``comparison.csv`` gives their order);
* ``results.parquet`` / ``results.csv`` -- a sweep: one row per run, the scenario's fields and the summary keys.

Loading has no Streamlit in it (tested directly); a malformed file is a :class:`CapsimError` naming it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from capsim.errors import CapsimError

Kind = Literal["plan", "run", "sweep"]
FIX = ("give a folder written by `capsim run FILE --out DIR`, `capsim sweep FILE --out DIR` or "
       "`capsim plan FILE --out DIR`")
#: The sweep's run rate column and the columns that are not the configuration (what varies between runs).
RATE = "workload.qps"
NOT_CONFIG = {"name", "run_key", "capsim_version", "status", "error", "rejected", "workload_source", "seed", RATE}


def folder_kind(folder: str | Path) -> Kind | None:
    """What wrote ``folder`` (None: not a results folder, or missing)."""
    path = Path(folder).expanduser()
    if (path / "plan.json").is_file():
        return "plan"
    if (path / "summary.json").is_file() or any(path.glob("*/summary.json")):
        return "run"
    if (path / "results.parquet").is_file() or (path / "results.csv").is_file():
        return "sweep"
    return None


def find_results_folders(root: Path, depth: int = 3) -> list[Path]:
    """Results folders (plan, run or sweep) under ``root``, at most ``depth`` levels down, newest first."""
    if not root.is_dir():
        return []
    found: dict[Path, float] = {}
    for level in range(depth + 1):
        for name in ("plan.json", "summary.json", "results.csv"):
            for f in root.glob("/".join(["*"] * level + [name])):
                folder = f.parent
                if name == "summary.json" and folder_kind(folder.parent) == "run" and folder.parent != root:
                    folder = folder.parent  # one configuration of a several-configuration run: open the whole run
                found[folder] = max(found.get(folder, 0.0), f.stat().st_mtime)
    return sorted(found, key=lambda p: (-found[p], str(p)))


def _summary_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CapsimError(f"{path} is not valid JSON ({exc})", where=str(path), fix=FIX) from None
    if not isinstance(data, dict):
        raise CapsimError(f"{path} does not hold a summary (a JSON object)", where=str(path), fix=FIX)
    return {k: v for k, v in data.items() if k != "info"}


def load_run_folder(folder: str | Path) -> list[dict[str, Any]]:
    """The summaries of a ``capsim run --out`` folder, in the run's order."""
    path = Path(folder).expanduser()
    if (path / "summary.json").is_file():
        return [_summary_file(path / "summary.json")]
    files = sorted(path.glob("*/summary.json"))
    if not files:
        raise CapsimError(f"no summary.json in {path} or its sub-folders", where=str(path), fix=FIX)
    summaries = [_summary_file(f) for f in files]
    order = path / "comparison.csv"
    if order.is_file():
        try:
            names = [str(n) for n in pd.read_csv(order, usecols=["name"])["name"]]
        except (ValueError, pd.errors.ParserError):
            names = []
        rank = {n: i for i, n in enumerate(names)}
        summaries.sort(key=lambda s: rank.get(str(s.get("name")), len(rank)))
    return summaries


def load_sweep_folder(folder: str | Path) -> pd.DataFrame:
    """A ``capsim sweep --out`` table with a ``configuration`` column: the fields that vary between its runs other
    than the request rate (so one configuration's runs at several rates share a label)."""
    path = Path(folder).expanduser()
    try:
        frame = pd.read_parquet(path / "results.parquet") if (path / "results.parquet").is_file() \
            else pd.read_csv(path / "results.csv")
    except (OSError, ValueError, ImportError, pd.errors.ParserError) as exc:
        raise CapsimError(f"cannot read the sweep table in {path} ({exc})", where=str(path), fix=FIX) from None
    if "status" in frame.columns:
        frame = frame[frame["status"].astype(str) == "ok"].reset_index(drop=True)
    last_config = list(frame.columns).index("num_requests") if "num_requests" in frame.columns else len(frame.columns)
    config_columns = [c for c in frame.columns[:last_config] if c not in NOT_CONFIG
                      and frame[c].astype(str).nunique(dropna=False) > 1]

    def label(row: pd.Series) -> str:
        parts = [f"{c.rsplit('.', 1)[-1]}={_plain(row[c])}" for c in config_columns]
        return " ".join(parts) or str(row.get("name", "run"))

    frame.insert(0, "configuration", frame.apply(label, axis=1) if len(frame) else pd.Series(dtype=str))
    return frame


def _plain(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    return str(value)


def sweep_summaries(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The sweep's rows as summaries named by configuration (for the frontier charts)."""
    return [{**row, "name": row["configuration"]} for row in frame.to_dict("records")]


@dataclass
class SweepView:
    """What the page draws from a sweep: attainment against rate, per configuration."""

    frame: pd.DataFrame

    def attainment(self) -> pd.DataFrame:
        cols = [c for c in ("configuration", RATE, "slo_attainment", "goodput_rps", "ttft_p99_s", "tpot_p99_s",
                            "slo_met", "overloaded") if c in self.frame.columns]
        data = self.frame[cols].rename(columns={RATE: "qps"})
        if "qps" not in data.columns:
            return data.iloc[0:0]
        return data.dropna(subset=["qps", "slo_attainment"]).sort_values(["configuration", "qps"], kind="stable")
