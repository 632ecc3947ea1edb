"""A remote KV store behind a network link: load a prefix's KV instead of recomputing it (CacheGen, LMCache).

Why a store of its own beside each replica's prefix cache: a replica's HBM cache holds only what that replica
computed and has not evicted, while a shared store (LMCache's remote backend, Mooncake Store) keeps the KV of
every prefix block any replica ever computed. A request that misses locally may still find the next blocks of its
prompt there; fetching them costs link time (and, with CacheGen's compressed bitstream, a decode pass on the
GPU), recomputing them costs prefill compute. capsim decides per request, at admission, with the same cost model
that prices the prefill:

* ``load_s(r)`` = link latency + ``r x KV bytes per token / compression_ratio`` / link bandwidth + (when
  ``decode_gbps`` > 0) the decoder's time for the ``r x KV bytes per token`` it restores;
* ``recompute_s(h, r)`` = price of the lone prefill chunk after a local hit of ``h`` tokens, minus the price of
  the same chunk with ``h + r`` tokens cached (the marginal prefill cost of those ``r`` tokens);
* load when ``load_s < recompute_s``, else recompute. A loaded request's chunk is priced with ``cached = h + r``
  and the iteration that runs it waits for the load (LMCache's synchronous retrieve before the forward pass in
  vLLM; no overlap with compute is assumed), so the replica's timeline carries ``compute + loads``.

Not modelled: the store's own bandwidth limits and contention between replicas on it (each replica's link is
its own); writes to the store (assumed asynchronous, off the critical path); lossy compression's accuracy.

The same store and loader also model a replica's own host-memory tier (prefix caching's ``host_tier``,
AttentionStore): one :class:`RemoteStore` per replica holding the units its HBM cache evicted, and a loader whose
link is the replica's PCIe link to host DRAM (no compression, no decode).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from simulator.costmodel.features import prefill_attention_work, prefill_kv_read


class RemoteStore:
    """Unit ids of prefix blocks some replica computed, with when (hittable strictly after); optional LRU capacity."""

    def __init__(self, capacity_units: int | None = None):
        self.capacity = capacity_units
        self._ready: OrderedDict[int, float] = OrderedDict()

    def put(self, unit_id: int, now: float) -> None:
        ready = self._ready
        if unit_id in ready:
            ready.move_to_end(unit_id)
            return
        ready[unit_id] = now
        if self.capacity is not None and len(ready) > self.capacity:
            ready.popitem(last=False)

    def holds(self, unit_id: int, now: float) -> bool:
        at = self._ready.get(unit_id)
        if at is None or at >= now:
            return False
        self._ready.move_to_end(unit_id)
        return True

    def has(self, unit_id: int, now: float) -> bool:
        """Whether :meth:`holds` would say yes, without counting as a use (a router's look does not refresh it)."""
        at = self._ready.get(unit_id)
        return at is not None and at < now

    def __len__(self) -> int:
        return len(self._ready)


class PendingWaits:
    """Seconds each admitted request's next iteration must wait for (a load, a copy), kept until that iteration.

    Why a class of its own: remote and host loads (:class:`ContextLoader`) and reused-chunk copies
    (:class:`simulator.prefix_cache.ChunkReuse`) all leave a wait at admission that the replica's ``load`` hook
    collects when the request's chunk runs, and drop it if the request is preempted first.
    """

    def __init__(self) -> None:
        self._pending: dict[int, float] = {}

    def wait(self, rid: int, seconds: float) -> None:
        """Add ``seconds`` to what ``rid``'s next iteration waits for."""
        self._pending[rid] = self._pending.get(rid, 0.0) + seconds

    def cancel(self, rid: int) -> None:
        """``rid`` left the batch (preempted) before the chunk that waits ran: nothing to wait for."""
        self._pending.pop(rid, None)

    def __call__(self, prefill) -> float:
        """The replica's ``load`` hook: seconds the iteration waits for its chunks' pending waits (in turn)."""
        pending = self._pending
        if not pending:
            return 0.0
        took = 0.0
        for c in prefill:
            took += pending.pop(c.rid, 0.0)
        return took


class ContextLoader(PendingWaits):
    """Prices and decides each request's remote load; records per-request outcomes for the summary.

    ``price(tokens, cached)`` is the time of a lone prefill chunk (the replica's cost model). ``store`` is the
    shared store; None when each replica has its own (the host tier: the block manager holds it).
    """

    def __init__(
        self,
        n_requests: int,
        store: RemoteStore | None,
        kv_bytes_per_token: float,
        link_bandwidth: float,
        link_latency_s: float,
        compression_ratio: float,
        decode_bytes_per_s: float,
        price: Callable[[int, int], float],
    ):
        self.store = store
        self.kv_bytes_per_token = kv_bytes_per_token
        self.bandwidth = link_bandwidth
        self.latency = link_latency_s
        self.compression = compression_ratio
        self.decode_rate = decode_bytes_per_s
        self.price = price
        self.found_tokens = np.zeros(n_requests, dtype=np.int64)  # beyond the local hit, at first admission
        self.loaded_tokens = np.zeros(n_requests, dtype=np.int64)  # of those, loaded (first admission)
        self.loaded_bytes = np.zeros(n_requests, dtype=np.float64)  # on the wire, every admission
        self.load_s = np.zeros(n_requests, dtype=np.float64)  # waited for, every admission
        super().__init__()

    def load_time(self, tokens: int) -> tuple[float, float]:
        """(seconds, bytes on the wire) to fetch ``tokens`` of KV and restore it on the GPU."""
        raw = tokens * self.kv_bytes_per_token
        wire = raw / self.compression
        took = self.latency + wire / self.bandwidth
        if self.decode_rate > 0:
            took += raw / self.decode_rate
        return took, wire

    def recompute_time(self, target: int, hit: int, tokens: int) -> float:
        """Marginal prefill price of ``tokens`` tokens after a ``hit``-token hit, for a ``target``-token prefill."""
        return self.price(target - hit, hit) - self.price(target - hit - tokens, hit + tokens)

    def decide(self, rid: int, target: int, hit: int, tokens: int, first: bool) -> bool:
        """Whether ``rid`` loads ``tokens`` found remotely (True) or recomputes them; a load's time is kept for
        the iteration that runs ``rid``'s chunk. ``first``: ``rid``'s first admission, whose outcome the
        request table reports (as its ``cached_tokens``); bytes on the wire add up over every admission."""
        load, wire = self.load_time(tokens)
        if first:
            self.found_tokens[rid] = tokens
        if load >= self.recompute_time(target, hit, tokens):
            return False
        self.wait(rid, load)
        self.loaded_bytes[rid] += wire
        self.load_s[rid] += load
        if first:
            self.loaded_tokens[rid] = tokens
        return True



def lone_prefill_price(cost) -> Callable[[int, int], float]:
    """Seconds of an iteration that prefills ``tokens`` new tokens after ``cached`` ones, alone."""

    window = getattr(cost, "prefill_window", None)

    def price(tokens: int, cached: int) -> float:
        if tokens <= 0:
            return 0.0
        if window is not None:  # a sliding-window model
            return cost.iteration_from_totals(
                tokens, 1, window.work(tokens, cached), window.kv_read(tokens, cached), 0, 0).time_s
        return cost.iteration_from_totals(
            tokens, 1, prefill_attention_work(tokens, cached), prefill_kv_read(tokens, cached), 0, 0
        ).time_s

    return price


__all__ = ["ContextLoader", "RemoteStore", "lone_prefill_price"]
