"""Importers: published GPU kernel measurements converted into the calibration schema.

Each reader takes the shared data folder (``--data-dir``, ``$CAPSIM_SHARED_DATA``
or ``../shared/data``) and returns a schema table plus human-readable notes on
what it read or skipped. Units are converted here, once: every source's own
units are named in its module docstring.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from hwmodels.calibration.importers.aiconfigurator import import_aiconfigurator
from hwmodels.calibration.importers.common import data_dir_available, resolve_data_dir
from hwmodels.calibration.importers.vidur import import_vidur
from hwmodels.calibration.schema import check_frame, make_frame

IMPORTERS = {"aiconfigurator": import_aiconfigurator, "vidur": import_vidur}
"""Source name -> reader(data_dir) -> (table, notes)."""


def import_all(data_dir: str | Path | None = None, sources: tuple[str, ...] = tuple(IMPORTERS)) -> tuple[pd.DataFrame, list[str]]:
    """Read every known source under the shared data folder into one validated table."""
    root = resolve_data_dir(data_dir)
    frames, notes = [], []
    for name in sources:
        df, n = IMPORTERS[name](root)
        frames.append(df)
        notes.extend(n)
    table = make_frame(pd.concat(frames, ignore_index=True)) if frames else make_frame([])
    return check_frame(table, where=f"import from {root}"), notes


__all__ = ["IMPORTERS", "data_dir_available", "import_aiconfigurator", "import_all", "import_vidur", "resolve_data_dir"]
