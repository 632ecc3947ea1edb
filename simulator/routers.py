"""Routers: which replica serves a new request.

Each policy is a small class registered in :data:`ROUTERS`; the engine only
calls :meth:`Router.pick`. Policies see the replicas' load signal
(``outstanding``: routed and not yet finished), never their internals.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from capsim.registry import Registry
from capsim.types import Count


class LoadSignal(Protocol):
    outstanding: int


class Router:
    """Base class: pick a replica index for request ``rid``.

    A router whose choices do not depend on replica state sets ``oblivious``
    and implements :meth:`assign`; the engine then hands each replica its
    arrival schedule up front (see :meth:`simulator.replica.Replica.preload`).
    """

    oblivious = False
    #: Parameter model of a router that takes parameters (``router: {name: ..., <params>}``); None: takes none.
    Params: ClassVar[type[BaseModel] | None] = None
    #: A technique the router needs (its signal comes from it), refused at build time without it.
    requires_technique: ClassVar[str | None] = None
    params: Any = None

    def __init__(self, replicas: Sequence[LoadSignal], rng: np.random.Generator):
        self.replicas = replicas
        self.rng = rng

    @classmethod
    def with_params(cls, params: BaseModel) -> type[Router]:
        """This router class with its validated parameters bound (what the engine instantiates)."""
        return type(cls.__name__, (cls,), {"params": params})

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


class CacheAwareParams(BaseModel):
    """Parameters of the cache-aware router."""

    model_config = ConfigDict(extra="forbid")

    max_imbalance: Count = Field(
        16, ge=0, description="Most unfinished requests the replica with the longest cached prefix may have beyond "
        "the least loaded one; above it the request goes to the least loaded replica (the load-balance guard)."
    )


@ROUTERS.register("cache-aware", aliases=("prefix-aware", "cache-affinity", "longest-prefix"))
class CacheAware(Router):
    """The replica whose prefix cache holds the longest prefix of the prompt, unless it is more than
    ``max_imbalance`` unfinished requests busier than the least loaded replica; then (and when no replica
    holds any of it) the least loaded replica, lowest index on ties. Ties in prefix length go to the less
    loaded replica. Needs the prefix-caching technique (each replica's block manager answers the lookup), as
    SGLang's cache-aware router balances cache affinity against load with thresholds of its own.
    """

    Params = CacheAwareParams
    requires_technique = "prefix-caching"

    def pick(self, rid: int) -> int:
        replicas = self.replicas
        loads = [r.outstanding for r in replicas]
        least = min(loads)
        best, best_tokens = -1, 0
        for i, r in enumerate(replicas):
            tokens = r.blocks.match_tokens(rid)
            if tokens > best_tokens or (tokens == best_tokens and tokens and loads[i] < loads[best]):
                best, best_tokens = i, tokens
        limit = self.params.max_imbalance if self.params is not None else CacheAwareParams().max_imbalance
        if best_tokens and loads[best] - least <= limit:
            return best
        return loads.index(least)
