"""Priority classes of requests in a multi-pool run (Llumnix, Sun et al., OSDI 2024, arXiv 2406.03243).

Why: an operator serves some requests (interactive, paying) ahead of others. Llumnix gives a request two
kinds of priority: *scheduling* priority -- a high-priority request is queued ahead of normal ones -- and
*execution* priority -- its instance keeps memory headroom for it, by counting a virtual usage of
``headroom_tokens`` per high-priority sequence in the load the migrator balances, so normal requests migrate
away from it (and none migrate in) and the high-priority sequences decode in a lighter batch with room to grow.

A request's class is drawn once per run from its own random stream (``high_fraction``), so switching
priorities on leaves the workload and every router's draws as they were.
"""

from __future__ import annotations

from collections import deque

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from capsim.types import Flag


class PriorityConfig(BaseModel):
    """Two priority classes of requests (Llumnix): their share, and what the high class gets."""

    model_config = ConfigDict(extra="forbid")

    high_fraction: float = Field(
        ..., ge=0, le=1, allow_inf_nan=False,
        description="Share of requests in the high-priority class, drawn per request from the run's seed.",
    )
    headroom_tokens: int = Field(
        0, ge=0,
        description="Virtual KV usage, in tokens, a high-priority running sequence adds to its replica's load "
        "(Llumnix's execution priority): the migrator then sees that replica as fuller and moves normal requests "
        "off it first. An input with no published default; 0 turns it off (docs/pools.md shows its mixed effect).",
    )
    queue_first: Flag = Field(
        True, description="Queue high-priority requests ahead of normal ones in every replica's waiting queue "
        "(Llumnix's scheduling priority).",
    )


def draw_priorities(cfg: PriorityConfig, seed: int, n: int) -> np.ndarray:
    """Per request, True for the high-priority class (a stream of its own: spawn key 3)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(3,)))
    return rng.random(n) < cfg.high_fraction


def queue_ahead(waiting: deque[int], high: np.ndarray) -> None:
    """The request just appended to ``waiting`` moves ahead of every normal-priority request (behind the
    high-priority ones already queued): first come, first served within each class."""
    if len(waiting) < 2 or not high[waiting[-1]]:
        return
    k = 0
    for rid in waiting:
        if not high[rid]:
            break
        k += 1
    if k < len(waiting) - 1:
        rid = waiting.pop()
        waiting.insert(k, rid)
