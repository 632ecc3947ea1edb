"""Shared helpers of the importers: where the data live, and strict CSV reading.

Why strict: the published tables are large and hand-converted; a truncated
file or a shifted column must stop the import with the file, row and column
named, never turn silently into NaN efficiencies.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from capsim.errors import CapsimError

ENV_VAR = "CAPSIM_SHARED_DATA"


def resolve_data_dir(option: str | Path | None = None) -> Path | None:
    """The folder of raw published measurements: ``option``, else ``$CAPSIM_SHARED_DATA``, else None (the
    shipped tidy table, ``hwmodels/calibration/data/``, stands in for it)."""
    if option:
        return Path(option)
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else None


def data_dir_available(option: str | Path | None = None) -> bool:
    """True when a raw-data folder is given and holds at least one of the importers' sources."""
    root = resolve_data_dir(option)
    return root is not None and ((root / "aiconfigurator" / "perf").is_dir() or (root / "vidur" / "profiling").is_dir())


def read_csv_strict(
    path: Path,
    *,
    required: Sequence[str],
    numeric: Sequence[str],
    label: str | None = None,
) -> pd.DataFrame:
    """Read ``path``; every column in ``required`` must exist and every ``numeric`` one must parse.

    Raises :class:`~capsim.errors.CapsimError` whose ``where`` names the file, the
    1-based data row (the header is row 0) and the column of the first problem.
    """
    where = label or str(path)
    if not path.is_file():
        raise CapsimError("file not found", where=where, fix="check --data-dir (or $CAPSIM_SHARED_DATA)")
    try:
        # Only empty cells are missing: a literal "n/a" or "NaN" in a numeric column is reported, not absorbed.
        df = pd.read_csv(path, low_memory=False, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CapsimError(f"malformed CSV: {first}", where=where, fix="restore the file from its source") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise CapsimError(
            f"missing column(s) {', '.join(map(repr, missing))}",
            where=f"{where}, header",
            fix=f"the file must have columns {', '.join(required)} (see the folder's SOURCE.md)",
        )
    for col in numeric:
        raw = df[col]
        values = pd.to_numeric(raw, errors="coerce")
        bad = values.isna() & raw.notna()
        if col in required:
            bad = bad | raw.isna()
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            value = raw.iat[i]
            raise CapsimError(
                "empty value" if pd.isna(value) else f"value {str(value)!r} is not a number",
                where=f"{where} row {i + 1}, column {col}",
                fix="fix or delete that row (units are described in the folder's SOURCE.md)",
            )
        df[col] = values
    return df


def relpath(path: Path, root: Path) -> str:
    """``path`` relative to the data root, for the ``source`` column."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
