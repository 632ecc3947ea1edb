"""The loaded trace as plain numpy columns: what replay, validation and the request stream work on.

Why not a pandas frame: a scenario that replays a trace is checked by ``capsim validate``, a one-shot command,
and importing pandas alone costs about 0.3-0.4 s of CPU, more than the rest of the command. Everything the stream
builder needs from a trace is three or four columns indexed by row, so a small table of arrays does, and the
public :func:`traces.load_file` / :func:`traces.load_trace` still hand users a frame (:meth:`TraceTable.to_frame`).

>>> import numpy as np
>>> t = TraceTable({"arrival_s": np.array([0.0, 2.0]), "prompt_tokens": np.array([5, 7]),
...                 "output_tokens": np.array([1, 3])})
>>> len(t), t.columns, t.take(np.array([1]))["prompt_tokens"].tolist()
(2, ('arrival_s', 'prompt_tokens', 'output_tokens'), [7])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd


class TraceTable:
    """Equal-length numpy columns by name (``arrival_s``, ``prompt_tokens``, ``output_tokens`` and optionally
    ``prefix_block_hashes``, the columns of :data:`traces.loaders.FRAME_COLUMNS`) plus ``attrs`` (such as
    ``hash_block_tokens``), in the order a frame would hold them.

    Tables that a cache shares are made read-only (:meth:`freeze`), so a consumer that modified one in place
    would fail instead of changing the next run's trace.
    """

    __slots__ = ("_data", "attrs")

    def __init__(self, data: Mapping[str, np.ndarray], attrs: Mapping[str, Any] | None = None) -> None:
        self._data = {name: np.asarray(values) for name, values in data.items()}
        lengths = {len(values) for values in self._data.values()}
        if len(lengths) > 1:
            raise ValueError(f"trace table columns differ in length: {sorted(lengths)}")
        self.attrs: dict[str, Any] = dict(attrs or {})

    @property
    def columns(self) -> tuple[str, ...]:
        """Column names, in order."""
        return tuple(self._data)

    def __len__(self) -> int:
        return len(next(iter(self._data.values()))) if self._data else 0

    def __getitem__(self, name: str) -> np.ndarray:
        return self._data[name]

    def __contains__(self, name: object) -> bool:
        return name in self._data

    def take(self, rows: np.ndarray) -> TraceTable:
        """A new table of ``rows`` (positions, in the given order); the arrays are copies."""
        return TraceTable({name: values[rows] for name, values in self._data.items()}, self.attrs)

    def with_column(self, name: str, values: np.ndarray) -> TraceTable:
        """A new table with column ``name`` replaced (or appended); the other arrays are shared."""
        return TraceTable({**self._data, name: values}, self.attrs)

    def freeze(self) -> TraceTable:
        """Make every array read-only (for tables a cache hands out) and return the table."""
        for values in self._data.values():
            values.setflags(write=False)
        return self

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> TraceTable:
        """The table of a loader's frame: each column as its numpy array, the frame's ``attrs`` kept."""
        return cls({str(name): frame[name].to_numpy() for name in frame.columns}, frame.attrs)

    def to_frame(self) -> pd.DataFrame:
        """The pandas frame of this table (what :func:`traces.load_file` returns); imports pandas."""
        import pandas as pd  # only callers that want a frame pay for pandas

        frame = pd.DataFrame({name: np.array(values) for name, values in self._data.items()})
        frame.attrs = dict(self.attrs)
        return frame


def trace_table(
    arrival_s: np.ndarray | None, prompt_tokens: np.ndarray, output_tokens: np.ndarray, **extra: np.ndarray
) -> TraceTable:
    """The table a loader returns, as :func:`traces.loaders.common.normalised_frame` builds the frame:
    ``arrival_s=None`` marks a length-only trace (NaN arrivals)."""
    n = len(prompt_tokens)
    arrivals = np.full(n, np.nan) if arrival_s is None else np.asarray(arrival_s, dtype=np.float64)
    return TraceTable({"arrival_s": arrivals, "prompt_tokens": prompt_tokens, "output_tokens": output_tokens, **extra})
