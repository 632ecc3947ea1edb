"""Per-request state of a simulation, held column-wise.

Why columns (numpy arrays indexed by request id) instead of one object per
request: the engine updates whole batches at once -- a run of ``k`` decode
iterations adds ``k`` tokens to every running sequence with one fancy-indexed
add -- and the final records become a DataFrame without a Python loop. The
table is owned by one simulation; nothing here is global.
"""

from __future__ import annotations

import numpy as np

from capsim.lazy import lazy_module

pd = lazy_module("pandas")  # imported on first use (to_frame): `capsim estimate` never needs it


class RequestTable:
    """Inputs and progress of every request in a simulation.

    Progress invariants (tested): ``generated <= output_tokens``; while a
    sequence is running, ``kv_tokens == prompt + generated - 1`` between
    iterations (the newest token's KV is written by the next decode step);
    a request finishes exactly once, when ``generated == output_tokens``.
    """

    def __init__(self, arrival_s: np.ndarray, prompt_tokens: np.ndarray, output_tokens: np.ndarray):
        n = len(arrival_s)
        self.n = n
        self.arrival_s = np.asarray(arrival_s, dtype=float).copy()
        self.prompt = np.asarray(prompt_tokens, dtype=np.int64).copy()
        self.output = np.asarray(output_tokens, dtype=np.int64).copy()
        self.replica = np.full(n, -1, dtype=np.int64)
        self.generated = np.zeros(n, dtype=np.int64)
        self.kv_tokens = np.zeros(n, dtype=np.int64)  # tokens whose KV is stored
        self.kv_reserved = np.zeros(n, dtype=np.int64)  # tokens of KV reserved up front (Orca, static)
        self.schedule_s = np.full(n, np.nan)
        self.first_token_s = np.full(n, np.nan)
        self.finish_s = np.full(n, np.nan)
        self.last_token_s = np.full(n, np.nan)
        self.max_tbt_s = np.zeros(n)
        self.preemptions = np.zeros(n, dtype=np.int64)
        self.finished_count = 0

    def prefill_target(self, rid: int) -> int:
        """Tokens a (re)prefill must process: the prompt plus any tokens generated before a preemption."""
        return int(self.prompt[rid] + self.generated[rid])

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "request_id": np.arange(self.n),
                "replica": self.replica,
                "arrival_s": self.arrival_s,
                "prompt_tokens": self.prompt,
                "output_tokens": self.output,
                "schedule_s": self.schedule_s,
                "first_token_s": self.first_token_s,
                "finish_s": self.finish_s,
                "preemptions": self.preemptions,
                "max_tbt_s": np.where(self.generated > 1, self.max_tbt_s, np.nan),
            }
        )
