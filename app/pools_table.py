"""Per-pool results of multi-pool runs (``pools:`` + ``serving:``): the summary's ``pool.<name>.<key>`` keys as one
table, a row per (configuration, pool).

Why a table of its own: a disaggregated deployment's headline numbers mix a prefill pool and a decode pool; which
one is busy, full or idle is the question, and the flat summary spells it as dozens of dotted keys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

PREFIX = "pool."


def pool_frame(summaries: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per configuration and pool with that pool's keys as columns (raw values); empty when no summary has
    per-pool keys (single-pool runs)."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for i, s in enumerate(summaries):
        config = str(s.get("name", f"#{i + 1}"))
        for key, value in s.items():
            if not key.startswith(PREFIX) or "." not in key[len(PREFIX):]:
                continue
            pool, metric = key[len(PREFIX):].rsplit(".", 1)
            rows.setdefault((config, pool), {"configuration": config, "pool": pool})[metric] = value
    return pd.DataFrame(list(rows.values()))
