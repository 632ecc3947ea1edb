"""Importers: published GPU kernel measurements converted into the calibration schema.

Each reader takes the folder of raw published tables (``--data-dir`` or
``$CAPSIM_SHARED_DATA``) and returns a schema table plus human-readable notes on
what it read or skipped. Without such a folder, :func:`load_measurements` reads the
tidy table shipped in ``hwmodels/calibration/data/`` (this module's output). Units are converted here, once: every source's own
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


SHIPPED_MEASUREMENTS = Path(__file__).resolve().parents[1] / "data" / "kernel_measurements.csv.gz"
"""The tidy table ``import_all`` builds from the raw sources, shipped so a clone can validate and refit
(sources, licences and how to rebuild it: ``hwmodels/calibration/data/SOURCES.md``)."""


def load_measurements(data_dir: str | Path | None = None) -> tuple[pd.DataFrame, list[str]]:
    """The published kernel measurements: imported from the raw sources when a folder is given (``data_dir``
    or ``$CAPSIM_SHARED_DATA``), else the shipped table the calibrated profiles were fitted on."""
    from capsim.errors import CapsimError
    from hwmodels.calibration.schema import read_measurements

    root = resolve_data_dir(data_dir)
    if root is None:
        return read_measurements(SHIPPED_MEASUREMENTS), [f"shipped measurements: {SHIPPED_MEASUREMENTS.name}"]
    if not data_dir_available(root):
        raise CapsimError(
            f"no published measurements under {root} (expected aiconfigurator/perf/ or vidur/profiling/)",
            where="--data-dir", fix="point --data-dir (or $CAPSIM_SHARED_DATA) at the raw-data folder, or leave it "
            "unset to use the shipped table")
    return import_all(root)


def import_all(data_dir: str | Path | None = None, sources: tuple[str, ...] = tuple(IMPORTERS)) -> tuple[pd.DataFrame, list[str]]:
    """Read every known source under the raw-data folder into one validated table."""
    from capsim.errors import CapsimError

    root = resolve_data_dir(data_dir)
    if root is None:
        raise CapsimError("no raw-data folder given", where="--data-dir",
                          fix="pass --data-dir (or set $CAPSIM_SHARED_DATA) to the folder holding aiconfigurator/ "
                          "and vidur/; the shipped table already holds what they give")
    frames, notes = [], []
    for name in sources:
        df, n = IMPORTERS[name](root)
        frames.append(df)
        notes.extend(n)
    table = make_frame(pd.concat(frames, ignore_index=True)) if frames else make_frame([])
    return check_frame(table, where=f"import from {root}"), notes


__all__ = ["IMPORTERS", "SHIPPED_MEASUREMENTS", "data_dir_available", "import_aiconfigurator", "import_all",
           "import_vidur", "load_measurements", "resolve_data_dir"]
