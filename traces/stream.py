"""The request stream: what the traces package hands to the simulator.

Why arrays and not a list of request objects: a capacity search builds streams
of a million requests many times over, and columnar numpy arrays are built,
sliced and checked in milliseconds. The simulator turns rows into its own
``Request`` objects as they arrive.

>>> import numpy as np
>>> s = RequestStream(np.array([0.0, 0.5]), np.array([10, 20]), np.array([5, 5]), source="example")
>>> len(s), s.duration_s
(2, 0.5)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from capsim.errors import CapsimError

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class ClosedLoop:
    """A closed-loop client population instead of open-loop arrival times.

    ``concurrency`` users each keep one request in flight: when a request
    completes, its user waits ``think_time_s`` and sends the next request of
    the stream. The stream's ``arrival_s`` is then all zeros and only fixes the
    order in which requests are issued.
    """

    concurrency: int
    think_time_s: float = 0.0
    think_time_dist: str = "fixed"  # or "exponential" (mean think_time_s)
    ramp_up_s: float = 0.0  # users start evenly over this span instead of all at 0

    def __post_init__(self) -> None:
        if int(self.concurrency) != self.concurrency or self.concurrency < 1:
            raise CapsimError(
                f"closed-loop concurrency must be a whole number >= 1, got {self.concurrency!r}",
                where="workload.concurrency",
                fix="set workload.concurrency to the number of users with a request in flight",
            )
        if not np.isfinite(self.think_time_s) or self.think_time_s < 0:
            raise CapsimError(
                f"think time must be >= 0 seconds, got {self.think_time_s!r}",
                where="workload.think_time_s",
                fix="use 0 for back-to-back requests",
            )


def _frozen_array(values: object, dtype: type, name: str) -> np.ndarray:
    """Copy ``values`` into a read-only 1-D array so a frozen stream really is frozen."""
    try:
        arr = np.array(values, dtype=dtype, copy=True)
    except (TypeError, ValueError) as exc:
        raise CapsimError(
            f"{name} cannot be converted to {np.dtype(dtype).name}: {exc}", where="RequestStream"
        ) from exc
    if arr.ndim != 1:
        raise CapsimError(f"{name} must be one-dimensional, got shape {arr.shape}", where="RequestStream")
    arr.flags.writeable = False
    return arr


@dataclass(frozen=True, eq=False)
class RequestStream:
    """Arrival times and prompt/output lengths of the requests of one run.

    Invariants (checked on construction): the three arrays have equal length;
    ``arrival_s`` is finite, >= 0 and non-decreasing (all zeros in closed
    loop); both token counts are integers >= 1; ``prefix_block_hashes``, when
    present, holds one int64 array per request (Mooncake's 512-token block
    ids, used for prefix-cache hit modelling), each id covering
    ``prefix_block_tokens`` prompt tokens.
    """

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    source: str
    closed_loop: ClosedLoop | None = None
    prefix_block_hashes: tuple[np.ndarray, ...] | None = field(default=None, repr=False)
    prefix_block_tokens: int | None = None  # tokens per prefix block id (None: no ids, or not known)
    # Image tokens included in each prompt (multimodal workloads, traces/images.py); None: text only.
    image_tokens: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        arrival = _frozen_array(self.arrival_s, np.float64, "arrival_s")
        prompt = _frozen_array(self.prompt_tokens, np.int64, "prompt_tokens")
        output = _frozen_array(self.output_tokens, np.int64, "output_tokens")
        object.__setattr__(self, "arrival_s", arrival)
        object.__setattr__(self, "prompt_tokens", prompt)
        object.__setattr__(self, "output_tokens", output)
        where = f"request stream {self.source!r}"
        if not (len(arrival) == len(prompt) == len(output)):
            raise CapsimError(
                f"arrays differ in length: arrival_s {len(arrival)}, prompt_tokens {len(prompt)}, "
                f"output_tokens {len(output)}",
                where=where,
            )
        if len(arrival):
            if not np.all(np.isfinite(arrival)) or arrival.min() < 0:
                bad = int(np.flatnonzero(~np.isfinite(arrival) | (arrival < 0))[0])
                raise CapsimError(f"arrival {bad} is {arrival[bad]!r}; arrivals must be finite and >= 0", where=where)
            if np.any(np.diff(arrival) < 0):
                bad = int(np.flatnonzero(np.diff(arrival) < 0)[0]) + 1
                raise CapsimError(
                    f"arrivals are not sorted: request {bad} arrives at {arrival[bad]} s, "
                    f"before request {bad - 1} at {arrival[bad - 1]} s",
                    where=where,
                    fix="sort requests by arrival time",
                )
            for name, arr in (("prompt_tokens", prompt), ("output_tokens", output)):
                if arr.min() < 1:
                    bad = int(np.flatnonzero(arr < 1)[0])
                    raise CapsimError(f"{name}[{bad}] is {arr[bad]}; token counts must be >= 1", where=where)
        if self.closed_loop is not None and len(arrival) and np.any(arrival != 0):
            raise CapsimError("a closed-loop stream must have all arrival times 0", where=where)
        if self.prefix_block_hashes is not None:
            hashes = tuple(np.asarray(h, dtype=np.int64) for h in self.prefix_block_hashes)
            if len(hashes) != len(arrival):
                raise CapsimError(
                    f"prefix_block_hashes has {len(hashes)} entries for {len(arrival)} requests", where=where
                )
            object.__setattr__(self, "prefix_block_hashes", hashes)
        if self.image_tokens is not None:
            images = _frozen_array(self.image_tokens, np.int64, "image_tokens")
            if len(images) != len(arrival) or (len(images) and (images.min() < 0 or np.any(images > prompt))):
                raise CapsimError("image_tokens must hold, per request, 0 to prompt_tokens tokens", where=where)
            object.__setattr__(self, "image_tokens", images)

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def duration_s(self) -> float:
        """Time from the first to the last arrival (0 for closed loop or fewer than two requests)."""
        return float(self.arrival_s[-1] - self.arrival_s[0]) if len(self) > 1 else 0.0

    @property
    def mean_rate(self) -> float:
        """Mean arrival rate in requests/s, ``(n - 1) / duration``; NaN when undefined."""
        return (len(self) - 1) / self.duration_s if self.duration_s > 0 else float("nan")

    def to_frame(self) -> pd.DataFrame:
        """One row per request (``arrival_s``, ``prompt_tokens``, ``output_tokens``), for inspection and plots."""
        import pandas as pd

        return pd.DataFrame(
            {"arrival_s": self.arrival_s, "prompt_tokens": self.prompt_tokens, "output_tokens": self.output_tokens}
        )
