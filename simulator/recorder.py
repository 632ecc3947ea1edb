"""Column-wise logs of iterations and token gaps, cheap to append in the hot loop.

Why ``array.array`` columns: a million-request simulation produces millions of
iteration runs; a list of tuples of Python floats would take gigabytes, while
typed arrays take eight bytes a value and turn into numpy without copying
element by element.
"""

from __future__ import annotations

from array import array

import numpy as np

from capsim.lazy import lazy_module
from simulator.metrics.result import TokenGaps

pd = lazy_module("pandas")  # imported on first use (the iteration frame), not when a system is prepared

ITERATION_COLUMNS = (
    ("replica", "l"),
    ("start_s", "d"),
    ("end_s", "d"),
    ("num_iterations", "l"),
    ("prefill_tokens", "l"),
    ("prefill_seqs", "l"),
    ("decode_seqs", "l"),
    ("context_tokens", "q"),
    ("duration_first_s", "d"),
    ("duration_last_s", "d"),
    ("kv_blocks_used", "l"),
    ("kv_blocks_total", "l"),
    ("flops", "d"),
    ("bytes", "d"),
)


class Recorder:
    """Appends iteration runs and token-gap runs for one simulation."""

    def __init__(self) -> None:
        self._cols = {name: array(code) for name, code in ITERATION_COLUMNS}
        self._append = [self._cols[name].append for name, _ in ITERATION_COLUMNS]
        self.gap_first = array("d")
        self.gap_step = array("d")
        self.gap_count = array("q")
        self.gap_weight = array("q")

    def iteration(self, replica, start, end, iterations, prefill_tokens, prefill_seqs, decode_seqs, context,
                  first, last, kv_used, kv_total, flops, nbytes) -> None:
        """One run of identical-composition iterations, in :data:`ITERATION_COLUMNS` order."""
        a = self._append
        a[0](replica)
        a[1](start)
        a[2](end)
        a[3](iterations)
        a[4](prefill_tokens)
        a[5](prefill_seqs)
        a[6](decode_seqs)
        a[7](context)
        a[8](first)
        a[9](last)
        a[10](kv_used)
        a[11](kv_total)
        a[12](flops)
        a[13](nbytes)

    def gap_run(self, first: float, step: float, count: int, weight: int) -> None:
        """``count`` gaps ``first, first+step, ...``, each seen by ``weight`` sequences."""
        self.gap_first.append(first)
        self.gap_step.append(step)
        self.gap_count.append(count)
        self.gap_weight.append(weight)

    def gap_values(self, values: np.ndarray, weight: int = 1) -> None:
        """Individual gaps, grouped by equal value (sequences that stalled together share one)."""
        uniq, counts = np.unique(values, return_counts=True)
        for v, c in zip(uniq.tolist(), counts.tolist(), strict=True):
            self.gap_run(v, 0.0, 1, c * weight)

    def iterations_frame(self) -> pd.DataFrame:
        """The iteration log as a DataFrame that shares the typed arrays' memory (no copy)."""
        columns = {name: _view(col) for name, col in self._cols.items()}
        df = pd.DataFrame(columns, copy=False)
        df["busy_s"] = df["end_s"] - df["start_s"]
        return df

    def token_gaps(self) -> TokenGaps:
        return TokenGaps(
            first=_view(self.gap_first),
            step=_view(self.gap_step),
            count=_view(self.gap_count),
            weight=_view(self.gap_weight),
            single_values=np.zeros(0),
        )


def _view(column: array) -> np.ndarray:
    """A numpy view of a typed array (8-byte codes map to float64/int64 without copying)."""
    if not len(column):
        return np.zeros(0, dtype=np.float64 if column.typecode == "d" else np.int64)
    return np.frombuffer(column, dtype=np.float64 if column.typecode == "d" else np.int64)
