"""A block-level prefix cache per replica: automatic prefix caching (vLLM) / radix-tree reuse (SGLang).

Why a block-manager subclass: a prefix hit changes two things the rest of the simulator already understands --
how many KV blocks a sequence holds privately, and how many of its prompt tokens are already in KV when its
prefill starts (``PrefillChunk.cached``, which the cost model prices: attention reads the cached tokens, no
other operator touches them). Keeping the cache inside the block manager means every scheduler gets it through
the one call they all make on admission (:meth:`simulator.kvcache.BlockManager.attach`), with no branch in the
engine, and the default manager keeps its hot paths untouched.

Semantics (vLLM v1 ``KVCacheManager`` with automatic prefix caching; SGLang's radix cache behaves the same at
block granularity):

* The sharing unit is one prefix block id of the request stream (Mooncake's ``hash_ids``: 512 tokens; a
  synthetic pattern's ``block_tokens``), a whole number of KV blocks. Equal ids mean equal tokens *and* equal
  prefix, so a lookup walks a prompt's ids from the first and stops at the first one not cached (longest
  prefix). Only blocks wholly inside the prompt are cached, and a hit leaves at least one prompt token to
  compute (the last token's logits are needed), as vLLM does.
* A unit becomes cached when a prefill computes it: it is registered when the scheduler plans the chunk that
  writes it, and can be hit only by lookups at a later simulated time (after that iteration ended). A unit that
  another request registered first stays private to its second writer (vLLM does not merge such duplicates).
* Reference counts: a running sequence references the cached units of its prefix (hits and the ones it
  registered). Referenced units count once in ``used_blocks``, however many sequences share them. When the
  last reference goes (finish or preemption) the unit stays resident but becomes *free-able*: it counts as
  free to the schedulers, and is evicted least-recently-released first (deepest block of a prefix first, as
  vLLM frees a request's blocks in reverse order) when an allocation needs the room. Capacity is shared:
  ``used_blocks`` (private blocks + referenced units) plus the free-able resident units never exceed
  ``total_blocks``.

* Generated tokens (``cache_generated``, vLLM's behaviour): when a sequence is released, the whole units of its
  KV past its prompt (its answer, and for a re-prefilled sequence its earlier answer) stay resident as free-able
  cached units, deepest first in the eviction order, so the next turn of a conversation -- whose prompt extends
  this turn's prompt *and* answer -- can hit them. A unit id the stream gives no identity for (past the ids it
  carries) gets a fresh one that nothing else shares. Off: only prompt units are cached (a later turn reuses the
  earlier prompts, not the answers), a lower bound of vLLM's hit rate on the same stream.

Sharing starts only at whole units, which also makes the hit rate a lower bound of vLLM's.

Host-memory tier (``host_tier``; AttentionStore, LMCache CPU offload): with it on, each block manager keeps a
:class:`simulator.remote_kv.RemoteStore` of its own, and every unit its eviction throws out of HBM is written there.
At admission the units after the HBM hit that this store holds are loaded back like a remote store's (the index's
host :class:`~simulator.remote_kv.ContextLoader` decides and prices), before the shared remote store is tried.

Non-prefix chunk reuse (``reuse``; CacheBlend, Cache-Craft, KVShare): a unit id may carry a position-independent
chunk-block identity (``traces.sharing.chunk_block``: a RAG corpus chunk's block). At admission, after the prefix
hit, every later prompt unit whose chunk block some resident unit of this replica holds (computed, hittable) is
*reused*: its KV is copied from the cached one and ``recompute_fraction`` of its tokens (rounded up, per request)
are recomputed to restore the cross-attention to the text before it. The prefill then computes the tokens that
are neither hit nor reused-and-kept; the reused-and-kept ones are counted with the cached ones (attention reads
them; no other operator touches them), and the copy -- reading and writing their KV in HBM -- delays the
iteration that runs the request's first chunk. A reused unit is the request's own copy (private blocks, not
shared): its KV differs from the source's.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np

from capsim.errors import CapsimError
from simulator.kvcache import NO_CAP, BlockManager, blocks_for
from simulator.remote_kv import ContextLoader, PendingWaits, RemoteStore
from simulator.requests import RequestTable
from traces.sharing import chunk_block


class PrefixIndex:
    """One simulation's prefix identities and hit record, shared by every replica's cache.

    ``ids[rid]`` lists the ids of ``rid``'s blocks that can be cached: those wholly inside its prompt, or with
    ``cache_generated`` inside its prompt and answer; ``cached_tokens[rid]`` is the hit of its first admission
    (-1: never admitted).
    """

    def __init__(
        self,
        table: RequestTable,
        hashes: Sequence[np.ndarray],
        unit_tokens: int,
        clock: Callable[[], float],
        shared_attention: bool = False,
        cache_generated: bool = False,
        reuse: ChunkReuse | None = None,
    ):
        self.unit = int(unit_tokens)
        self.shared_attention = shared_attention
        self.cache_generated = cache_generated
        self.reuse = reuse
        prompts = table.prompt.tolist()
        if cache_generated:
            # Every whole unit a sequence's KV can hold at release (prompt + answer - 1 tokens: the last token is
            # never written), ids the stream lacks made fresh (negative: stream ids are >= 0, so never shared).
            self.ids = []
            fresh = -1
            for h, p, o in zip(hashes, prompts, table.output.tolist(), strict=True):
                want = (p + o - 1) // self.unit
                got = np.asarray(h)[:want].tolist()
                if len(got) < want:
                    extra = want - len(got)
                    got.extend(range(fresh, fresh - extra, -1))
                    fresh -= extra
                self.ids.append(got)
        else:
            self.ids: list[list[int]] = [
                np.asarray(h)[: p // self.unit].tolist() for h, p in zip(hashes, prompts, strict=True)
            ]
        self.cached_tokens = np.full(table.n, -1, dtype=np.int64)
        self.clock = clock
        # A remote KV store every replica writes to and may load from (simulator.remote_kv); None: HBM only.
        self.remote: ContextLoader | None = None
        # A host-memory tier per replica (AttentionStore): the loader that prices and records loads over the
        # replica's host link, and each replica's store capacity in units (None: unbounded). None: no host tier.
        self.host: ContextLoader | None = None
        self.host_units: int | None = None
        # Non-prefix chunk reuse: reused tokens at each request's first admission (-1: never admitted).
        self.reused_tokens = np.full(table.n, -1, dtype=np.int64) if reuse is not None else None

    @property
    def load(self) -> Callable[[tuple], float] | None:
        """The replica's load hook: seconds an iteration waits for its chunks' host and remote loads and chunk
        copies."""
        hooks = [h for h in (self.host, self.remote, self.reuse) if h is not None]
        if len(hooks) <= 1:
            return hooks[0] if hooks else None
        return lambda prefill: sum(h(prefill) for h in hooks)

    def block_manager(self, total_blocks: int, block_size: int, table: RequestTable) -> PrefixCachingBlockManager:
        return PrefixCachingBlockManager(total_blocks, block_size, table, self)

    def attention(self, blocks: PrefixCachingBlockManager) -> SharedPrefixAttention | None:
        """The decode-attention view of one engine (Hydragen), or None when shared-prefix attention is off."""
        return SharedPrefixAttention(blocks) if self.shared_attention else None


class ChunkReuse(PendingWaits):
    """Non-prefix chunk reuse's parameters and the copies each admission leaves for its iteration to wait for."""

    def __init__(self, recompute_fraction: float, copy_s_per_token: float):
        super().__init__()
        self.fraction = float(recompute_fraction)
        self.copy_s_per_token = float(copy_s_per_token)

    def recomputed(self, reused_tokens: int) -> int:
        """Tokens of ``reused_tokens`` reused ones a request recomputes (rounded up)."""
        return math.ceil(self.fraction * reused_tokens - 1e-9)

    def copy(self, rid: int, tokens: int) -> None:
        self.wait(rid, tokens * self.copy_s_per_token)


class PrefixCachingBlockManager(BlockManager):
    """Paged KV with a prefix cache of whole units (see the module docstring for the semantics).

    A sequence's private blocks are ``ceil(max(kv, reserved) / block_size) - units_referenced * unit_blocks``:
    the units it references are a whole number of blocks inside its stored tokens, so every growth the base
    class computes as a difference of ``ceil`` terms (decode runs, multi-token steps) stays exact.
    """

    def __init__(self, total_blocks: int, block_size: int, table: RequestTable, index: PrefixIndex):
        super().__init__(total_blocks, block_size, table)
        if index.unit % self.block_size:
            raise CapsimError(
                f"prefix blocks of {index.unit} tokens are not a whole number of {self.block_size}-token KV blocks",
                where="deployment.block_size",
                fix="choose a block_size that divides the prefix block (16 or 32 for Mooncake's 512-token ids, "
                "or set workload.sharing.block_tokens to a multiple of it)",
            )
        self.index = index
        self.unit = index.unit
        self.unit_blocks = index.unit // self.block_size
        self._refs: dict[int, int] = {}  # resident unit id -> sequences referencing it
        self._ready: dict[int, float] = {}  # resident unit id -> when its KV was planned (hittable after)
        self._lru: OrderedDict[int, None] = OrderedDict()  # unreferenced resident units, next victim first
        self._held: dict[int, list[int]] = {}  # rid -> unit ids it references
        self._next: dict[int, int] = {}  # rid -> index of its next prompt unit to register
        self.evicted_units = 0
        self._detaching = False
        # Chunk-block identity -> resident unit ids carrying it (kept only with chunk reuse on).
        self._chunks: dict[int, set[int]] | None = {} if index.reuse is not None else None
        self.peak_resident_blocks = 0  # most blocks ever holding KV, free-able cached units included
        # This replica's host-memory tier: units evicted from HBM, loadable back over the host link (None: off).
        self.host: RemoteStore | None = RemoteStore(index.host_units) if index.host is not None else None

    # ------------------------------------------------------------------ cache
    @property
    def cached_free_blocks(self) -> int:
        """Blocks holding cached units no running sequence references (free-able, still hittable)."""
        return len(self._lru) * self.unit_blocks

    @property
    def resident_blocks(self) -> int:
        """Blocks physically holding KV: ``used_blocks`` plus the free-able cached units (<= ``total_blocks``)."""
        return self.used_blocks + self.cached_free_blocks

    def references(self, unit_id: int) -> int:
        """Sequences referencing ``unit_id`` (0 when free-able or not resident)."""
        return self._refs.get(unit_id, 0)

    def _match(self, rid: int, tokens: int) -> list[int]:
        """Ids of the longest cached prefix of ``rid`` usable by a ``tokens``-token (re)prefill."""
        ids = self.index.ids[rid]
        limit = min(len(ids), (tokens - 1) // self.unit)
        if not limit:
            return []
        now, ready = self.index.clock(), self._ready
        hits: list[int] = []
        for j in range(limit):
            at = ready.get(ids[j])
            if at is None or at >= now:
                break
            hits.append(ids[j])
        return hits

    def match_tokens(self, rid: int) -> int:
        """Prompt tokens of ``rid`` this replica's cache holds now (a cache-aware router's signal); with a host
        tier, the units after the HBM hit that this replica's host memory holds count too (AttentionStore keeps a
        conversation's KV on the server that ran its last turn, so the next turn belongs there)."""
        prompt = int(self._t.prompt[rid])
        hits = len(self._match(rid, prompt))
        host = self.host
        if host is not None:
            ids, now = self.index.ids[rid], self.index.clock()
            for j in range(hits, min(len(ids), (prompt - 1) // self.unit)):
                if ids[j] in self._refs or not host.has(ids[j], now):
                    break
                hits += 1
        return hits * self.unit

    def hit(self, rid: int) -> tuple[int, int]:
        """(Tokens the local hit :meth:`attach` would give now -- cached units, and reused chunks' kept tokens --,
        blocks it adds to the used ones: free-able units it revives and the kept tokens' private blocks)."""
        t = self._t
        target = int(t.prompt[rid] + t.generated[rid])
        hits = self._match(rid, target)
        refs = self._refs
        revived = sum(1 for h in hits if refs[h] == 0) * self.unit_blocks
        cached = len(hits) * self.unit
        if self._chunks is None:
            return cached, revived
        kept = self._reusable(rid, len(hits), target)[1]
        return cached + kept, revived + -(-kept // self.block_size)

    def attach(self, rid: int, room: int | None = None) -> int:
        """Reference the longest cached prefix of waiting ``rid`` and count it as stored KV; returns its tokens.

        Reviving a free-able unit moves its blocks from free to used: the caller must have counted them (vLLM's
        :meth:`blocks_to_admit`, a chunked scheduler's :meth:`hit`). Units loaded from a remote store are new
        blocks, taken only within ``room`` (None: the free blocks)."""
        t = self._t
        hits = self._match(rid, int(t.prompt[rid] + t.generated[rid]))
        before = self.held_by(rid)  # 0, or an up-front reservation
        refs, lru, ub = self._refs, self._lru, self.unit_blocks
        for h in hits:
            r = refs[h]
            if r == 0:  # free-able -> referenced: same resident blocks, now in use
                del lru[h]
                self.used_blocks += ub
            refs[h] = r + 1
        loaded = 0
        if self.host is not None:  # this replica's host memory first: its link is the replica's own
            loaded = self._load_remote(rid, hits, room, self.index.host, self.host)
        if self.index.remote is not None:
            loaded += self._load_remote(rid, hits, room, self.index.remote, self.index.remote.store, loaded)
        self._held[rid] = hits
        self._next[rid] = len(hits)
        cached = len(hits) * self.unit
        if self.index.cached_tokens[rid] < 0:
            self.index.cached_tokens[rid] = cached
        if self._chunks is not None:
            cached += self._reuse(rid, len(hits))
        t.kv_tokens[rid] = cached
        self._add(self.held_by(rid) - before + loaded * ub)
        return cached

    def _load_remote(
        self, rid: int, hits: list[int], room: int | None, loader: ContextLoader, store: RemoteStore, taken: int = 0
    ) -> int:
        """Extend ``hits`` with the next prompt units ``store`` holds, when loading them through ``loader`` beats
        recomputing them (and their blocks fit in ``room`` beside the running KV and the ``taken`` units an
        earlier tier just loaded); returns how many were loaded. Loaded units become resident and referenced
        here, as if this replica had computed them."""
        t = self._t
        target = int(t.prompt[rid] + t.generated[rid])
        ids = self.index.ids[rid]
        limit = min(len(ids), (target - 1) // self.unit)
        free = self.total_blocks - self.used_blocks  # free-able units may be evicted
        room = (free if room is None else min(free, room)) // self.unit_blocks - taken
        now, refs = self.index.clock(), self._refs
        found: list[int] = []
        for j in range(len(hits), limit):
            h = ids[j]
            if h in refs or len(found) >= room or not store.holds(h, now):
                break  # resident here but not hittable yet, out of room, or not stored
            found.append(h)
        if not found:
            return 0
        hit = len(hits) * self.unit
        first = self.index.cached_tokens[rid] < 0
        if not loader.decide(rid, target, hit, len(found) * self.unit, first):
            return 0
        ready = self._ready
        for h in found:
            refs[h] = 1
            ready[h] = now
            if self._chunks is not None:
                self._resident(h)
        hits.extend(found)
        return len(found)

    def _reusable(self, rid: int, start: int, target: int) -> tuple[int, int]:
        """(Tokens of ``rid``'s prompt units from ``start`` on whose chunk block is cached here, of those the ones
        kept -- not recomputed)."""
        ids = self.index.ids[rid]
        limit = min(len(ids), (target - 1) // self.unit)
        chunks, ready, now = self._chunks, self._ready, self.index.clock()
        units = 0
        for j in range(start, limit):
            holders = chunks.get(chunk_block(ids[j]))
            if holders and any(ready[u] < now for u in holders):
                units += 1
        reused = units * self.unit
        return reused, reused - self.index.reuse.recomputed(reused)

    def _reuse(self, rid: int, start: int) -> int:
        """Reuse ``rid``'s cached chunk blocks after its prefix hit; returns the tokens kept (not recomputed)."""
        t, reuse = self._t, self.index.reuse
        reused, kept = self._reusable(rid, start, int(t.prompt[rid] + t.generated[rid]))
        if self.index.reused_tokens[rid] < 0:
            self.index.reused_tokens[rid] = reused
        if kept:
            reuse.copy(rid, kept)
        return kept

    def _resident(self, unit_id: int) -> None:
        """``unit_id`` now holds KV here: its chunk block (if any) can be reused."""
        c = chunk_block(unit_id)
        if c:
            self._chunks.setdefault(c, set()).add(unit_id)

    def _register(self, rid: int, new_kv_tokens: int) -> int:
        """Units of ``rid``'s prompt that its stored KV now covers become cached (referenced by it); returns
        how many (their blocks move from ``rid``'s private count to the referenced units')."""
        ids = self.index.ids[rid]
        start = self._next.get(rid, 0)
        upto = min(len(ids), new_kv_tokens // self.unit)
        if upto <= start:
            return 0
        held = self._held.setdefault(rid, [])
        refs, ready, now = self._refs, self._ready, self.index.clock()
        store = self.index.remote.store if self.index.remote is not None else None
        added = 0
        for j in range(start, upto):
            h = ids[j]
            if store is not None:
                store.put(h, now)  # every computed prompt block is written to the shared store
            if h not in refs:  # a unit another request registered first stays private to this one
                refs[h] = 1
                ready[h] = now
                held.append(h)
                added += 1
                if self._chunks is not None:
                    self._resident(h)
        self._next[rid] = upto
        return added

    def _keep_generated(self, rid: int) -> None:
        """Whole units of ``rid``'s KV past the ones it registered (its answer) become free-able cached units, deepest
        first in line for eviction (vLLM frees a finished request's blocks into its cache in reverse). Their blocks
        were ``rid``'s private ones, just subtracted from ``used_blocks``: resident blocks do not change. A unit
        already resident (cached by another sequence) is a duplicate and is freed."""
        ids = self.index.ids[rid]
        upto = min(len(ids), int(self._t.kv_tokens[rid]) // self.unit)
        start = self._next.get(rid, 0)
        if upto <= start:
            return
        refs, ready, lru, now = self._refs, self._ready, self._lru, self.index.clock()
        store = self.index.remote.store if self.index.remote is not None else None
        for j in range(upto - 1, start - 1, -1):
            h = ids[j]
            if store is not None:
                store.put(h, now)
            if h not in refs:
                refs[h] = 0
                ready[h] = now
                lru[h] = None
                if self._chunks is not None:
                    self._resident(h)

    def detach(self, rid: int) -> int:
        # The KV leaves for another pool, its blocks kept until sent: nothing of it becomes cached here.
        self._detaching = True
        try:
            return super().detach(rid)
        finally:
            self._detaching = False

    def _evict(self, units: int) -> None:
        lru, refs, ready = self._lru, self._refs, self._ready
        units = min(units, len(lru))
        chunks, host = self._chunks, self.host
        now = self.index.clock() if host is not None else 0.0
        for _ in range(units):
            h, _none = lru.popitem(last=False)
            if host is not None:  # written back to host memory (asynchronously: off the critical path)
                host.put(h, now)
            del refs[h], ready[h]
            if chunks is not None and chunk_block(h):
                holders = chunks[chunk_block(h)]
                holders.discard(h)
                if not holders:
                    del chunks[chunk_block(h)]
        self.evicted_units += units

    # --------------------------------------------------------- block manager
    def held_by(self, rid: int) -> int:
        t = self._t
        held = self._held.get(rid)
        private = int(blocks_for(max(int(t.kv_tokens[rid]), int(t.kv_reserved[rid])), self.block_size))
        return private - len(held) * self.unit_blocks if held else private

    def blocks_to_admit(self, rid: int, tokens: int, hit: bool = True) -> int:
        if not hit:  # swapped back in: the sequence's blocks return as its own, whatever is cached here
            return -(-tokens // self.block_size)
        hits = self._match(rid, tokens)
        revive = sum(1 for h in hits if self._refs[h] == 0)  # free-able units a hit takes back into use
        return -(-tokens // self.block_size) + (revive - len(hits)) * self.unit_blocks

    def blocks_to_grow(self, rid: int, new_kv_tokens: int) -> int:
        t, bs = self._t, self.block_size
        res = int(t.kv_reserved[rid])
        return int(blocks_for(max(new_kv_tokens, res), bs)) - int(blocks_for(max(int(t.kv_tokens[rid]), res), bs))

    def grow(self, rid: int, new_kv_tokens: int) -> None:
        before = self.held_by(rid)
        self._t.kv_tokens[rid] = new_kv_tokens
        registered = self._register(rid, new_kv_tokens)
        self._add(self.held_by(rid) - before + registered * self.unit_blocks)

    def release(self, rid: int) -> None:
        self.used_blocks -= self.held_by(rid)
        if self.index.cache_generated and not self._detaching:
            self._keep_generated(rid)
        held = self._held.pop(rid, None)
        if held:
            refs, lru, ub = self._refs, self._lru, self.unit_blocks
            for h in reversed(held):  # a prefix's deepest unit is the first to go
                r = refs[h] - 1
                refs[h] = r
                if r == 0:
                    self.used_blocks -= ub
                    lru[h] = None
        self._next.pop(rid, None)
        if self.index.remote is not None:
            self.index.remote.cancel(rid)
        if self.index.host is not None:
            self.index.host.cancel(rid)
        if self.index.reuse is not None:
            self.index.reuse.cancel(rid)
        self._t.kv_reserved[rid] = 0
        self._t.kv_tokens[rid] = 0

    def _add(self, blocks: int) -> None:
        used = self.used_blocks + blocks
        self.used_blocks = used
        if blocks > 0:
            resident = used + len(self._lru) * self.unit_blocks
            over = resident - self.total_blocks
            if over > 0:  # make room by evicting free-able cached units, least recently released first
                self._evict(-(-over // self.unit_blocks))
                resident = used + len(self._lru) * self.unit_blocks
            if resident > self.peak_resident_blocks:
                self.peak_resident_blocks = resident
        if used > self.peak_used_blocks:
            self.peak_used_blocks = used


class SharedPrefixAttention:
    """Decode attention that reads a prefix shared by several sequences of the batch once per step (Hydragen).

    Why the replica's attended-context hook: the decode step's cost is priced on the tokens of KV it reads,
    summed over the batch. Hydragen splits attention into the shared prefix -- computed once for all the
    sequences that share it, as one matrix-matrix product over its KV -- and each sequence's own suffix, the
    two partial results combined by their softmax denominators. So a cached unit referenced by ``c`` sequences
    of the batch is read once instead of ``c`` times: the batch attends ``sum(context) - unit * sum(c - 1)``
    tokens of KV. Each sequence's own tokens still grow by one per step. The FLOPs of the shared part are
    priced on the same reduced count (capsim's decode-attention rows scale FLOPs and bytes with one context
    feature); decode attention is memory-bound, so the bytes are what sets its time.

    Same interface as :class:`simulator.kvcache.Retention` where the replica reads it (``retained``,
    ``decode_segment``); blocks are not affected (sharing them is the prefix cache's job).
    """

    def __init__(self, blocks: PrefixCachingBlockManager):
        self.blocks = blocks

    def saved(self, ids) -> int:
        """Tokens of KV a step of batch ``ids`` does not read again: each unit once per extra sequence using it."""
        held = self.blocks._held
        seen: dict[int, int] = {}
        for rid in np.atleast_1d(ids).tolist():
            for h in held.get(rid, ()):
                seen[h] = seen.get(h, 0) + 1
        return sum(c - 1 for c in seen.values()) * self.blocks.unit

    def retained(self, ids, logical):
        """Attended tokens per sequence: the savings spread evenly over the batch (only the sum is priced)."""
        logical = np.asarray(logical, dtype=np.float64)
        n = logical.size
        return logical - (self.saved(ids) / n if n else 0.0)

    def decode_segment(self, ids: np.ndarray, kv: np.ndarray) -> tuple[float, np.ndarray, int]:
        """A decode run of ``ids``: attended context of its first step, each sequence's growth per token (1), and
        no cut (the shared units do not change while the batch does not)."""
        return float(np.add.reduce(kv + 1)) - self.saved(ids), np.ones(len(ids)), NO_CAP


__all__ = ["ChunkReuse", "PrefixCachingBlockManager", "PrefixIndex", "SharedPrefixAttention"]
