"""Routers: which replica serves a new request.

Each policy is a small class registered in :data:`ROUTERS`; the engine only
calls :meth:`Router.pick`. Policies see the replicas' load signal
(``outstanding``: routed and not yet finished), never their internals.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from capsim.registry import Registry


class LoadSignal(Protocol):
    outstanding: int


class Router:
    """Base class: pick a replica index for request ``rid``.

    A router whose choices do not depend on replica state sets ``oblivious``
    and implements :meth:`assign`; the engine then hands each replica its
    arrival schedule up front (see :meth:`simulator.replica.Replica.preload`).
    """

    oblivious = False

    def __init__(self, replicas: Sequence[LoadSignal], rng: np.random.Generator):
        self.replicas = replicas
        self.rng = rng

    def pick(self, rid: int) -> int:
        raise NotImplementedError

    def assign(self, count: int) -> np.ndarray:
        """Replica index of each of ``count`` requests, in arrival order (oblivious routers only)."""
        return np.fromiter((self.pick(i) for i in range(count)), dtype=np.int64, count=count)


ROUTERS: Registry[type[Router]] = Registry("router")


@ROUTERS.register("round-robin", aliases=("rr", "roundrobin"))
class RoundRobin(Router):
    """Replicas in turn, regardless of load."""

    oblivious = True

    def __init__(self, replicas, rng):
        super().__init__(replicas, rng)
        self._next = 0

    def pick(self, rid: int) -> int:
        i = self._next
        self._next = (i + 1) % len(self.replicas)
        return i


@ROUTERS.register("random", aliases=("uniform",))
class RandomRouter(Router):
    """A uniformly random replica (seeded), drawn in blocks to keep the hot loop cheap."""

    oblivious = True

    def __init__(self, replicas, rng):
        super().__init__(replicas, rng)
        self._draws = np.zeros(0, dtype=np.int64)
        self._pos = 0

    def pick(self, rid: int) -> int:
        if self._pos >= len(self._draws):
            self._draws = self.rng.integers(0, len(self.replicas), size=4096)
            self._pos = 0
        i = int(self._draws[self._pos])
        self._pos += 1
        return i


@ROUTERS.register("least-outstanding", aliases=("least-outstanding-requests", "lor", "least-loaded"))
class LeastOutstanding(Router):
    """The replica with the fewest unfinished requests (lowest index on ties)."""

    def pick(self, rid: int) -> int:
        best, best_load = 0, None
        for i, r in enumerate(self.replicas):
            load = r.outstanding
            if best_load is None or load < best_load:
                best, best_load = i, load
        return best
