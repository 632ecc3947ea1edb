"""Paged KV-cache accounting (vLLM's PagedAttention block manager, SOSP 2023).

KV memory is handed out in blocks of ``block_size`` tokens. A sequence holding
``n`` tokens of KV occupies ``ceil(n / block_size)`` blocks, so internal
fragmentation is at most ``block_size - 1`` tokens per sequence. Schedulers
that reserve memory up front (Orca reserves the maximum sequence length,
request-level batching the padded batch) set a per-sequence reservation; a
sequence then occupies ``ceil(max(n, reserved) / block_size)`` blocks.

Only block *counts* are tracked: which physical block holds which token does
not change any cost the simulator models.
"""

from __future__ import annotations

import math

import numpy as np

from simulator.requests import RequestTable


def blocks_for(tokens, block_size: int):
    """Blocks that ``tokens`` tokens occupy (works on scalars and arrays)."""
    return -(-tokens // block_size)


class BlockManager:
    """Block budget of one replica."""

    def __init__(self, total_blocks: int, block_size: int, table: RequestTable):
        self.total_blocks = int(total_blocks)
        self.block_size = int(block_size)
        self.used_blocks = 0
        self.peak_used_blocks = 0
        self._t = table
        self._reservations = False  # becomes True once any sequence reserves KV up front
        # Most tokens a sequence stores during one decode step: 1, or 1 + the slots a speculative step
        # writes and rolls back (set by the engine from the step model), so schedulers' checks hold.
        self.step_tokens = 1
        bs = self.block_size
        self._shift = bs.bit_length() - 1 if bs & (bs - 1) == 0 else None

    @property
    def free_blocks(self) -> int:
        return self.total_blocks - self.used_blocks

    def held_by(self, rid: int) -> int:
        t = self._t
        return int(blocks_for(max(int(t.kv_tokens[rid]), int(t.kv_reserved[rid])), self.block_size))

    def blocks_to_admit(self, rid: int, tokens: int, hit: bool = True) -> int:
        """Blocks a waiting sequence ``rid`` (holding none) needs for its ``tokens``-token (re)prefill; ``hit``:
        whether its admission will :meth:`attach` a cached prefix (False: KV swapped back in holds every block
        itself)."""
        return -(-tokens // self.block_size)

    def hit(self, rid: int) -> tuple[int, int]:
        """What :meth:`attach` would give waiting ``rid`` now, without doing it: (tokens of its (re)prefill already
        in KV, blocks the attach adds to the used ones). A chunked-prefill scheduler sizes the first chunk and its
        admission check with it. Plain paged KV caches nothing: (0, 0)."""
        return 0, 0

    def attach(self, rid: int, room: int | None = None) -> int:
        """Called when waiting ``rid`` is admitted: tokens of its prompt already in KV, now counted as stored
        (a prefix cache's hit, see :mod:`simulator.prefix_cache`). ``room``: blocks the attach may take beyond
        :meth:`hit`'s (a remote load's; None: whatever is free). Plain paged KV caches nothing: 0."""
        return 0

    def blocks_to_grow(self, rid: int, new_kv_tokens: int) -> int:
        """Extra blocks ``rid`` needs to hold ``new_kv_tokens`` tokens."""
        t = self._t
        if not self._reservations:  # nothing reserved anywhere: ceil(new / bs) - ceil(held / bs), one read
            bs = self.block_size
            return int(-(-new_kv_tokens // bs)) + (-int(t.kv_tokens[rid]) // bs)
        after = blocks_for(max(new_kv_tokens, int(t.kv_reserved[rid])), self.block_size)
        return int(after) - self.held_by(rid)

    def reserve(self, rid: int, tokens: int) -> None:
        """Reserve ``tokens`` of KV for ``rid`` up front (caller checked the budget)."""
        before = self.held_by(rid)
        self._reservations = True
        self._t.kv_reserved[rid] = tokens
        self._add(self.held_by(rid) - before)

    def grow(self, rid: int, new_kv_tokens: int) -> None:
        """Set ``rid``'s stored KV to ``new_kv_tokens`` and account the blocks."""
        t = self._t
        if self._reservations:
            before = self.held_by(rid)
            t.kv_tokens[rid] = new_kv_tokens
            self._add(self.held_by(rid) - before)
            return
        bs = self.block_size  # no reservations: a sequence holds exactly ceil(kv / bs) blocks
        old = int(t.kv_tokens[rid])
        t.kv_tokens[rid] = new_kv_tokens
        self._add(-(-new_kv_tokens // bs) + (-old // bs))

    def release(self, rid: int) -> None:
        """Free everything ``rid`` holds (finish or preemption)."""
        t = self._t
        if self._reservations:
            self.used_blocks -= self.held_by(rid)
            t.kv_reserved[rid] = 0
        else:
            self.used_blocks -= -(-int(t.kv_tokens[rid]) // self.block_size)
        t.kv_tokens[rid] = 0

    def unpin(self, blocks: int) -> None:
        """Free ``blocks`` that :meth:`detach` kept for a KV transfer."""
        self.used_blocks -= blocks

    def detach(self, rid: int) -> int:
        """Stop tracking ``rid`` here while keeping its blocks in use (its KV is being sent to another pool);
        returns the blocks kept, for :meth:`unpin` once the transfer is done."""
        held = self.held_by(rid)
        self.release(rid)
        self._add(held)
        return held

    def _add(self, blocks: int) -> None:
        self.used_blocks += blocks
        if self.used_blocks > self.peak_used_blocks:
            self.peak_used_blocks = self.used_blocks

    def open_blocks(self, blocks: int) -> None:
        """Count ``blocks`` taken outside this manager's own calls: opened by sequences whose tokens the caller
        advanced itself (a replica's run bookkeeping counts full blocks element by element instead of asking
        :meth:`grow_all`), or held for KV that is still arriving (a migration's target)."""
        self._add(blocks)

    @property
    def reserves_any(self) -> bool:
        """Whether any sequence reserved KV up front: then held blocks follow reservations, not token counts."""
        return self._reservations

    @property
    def blocks_by_shift(self) -> bool:
        """Whether the block size is a power of two (block counts by bit shifts and masks)."""
        return self._shift is not None

    # ---------------------------------------------------------------- runs
    def growth_after(self, ids: np.ndarray, steps: int) -> int:
        """Blocks the sequences ``ids`` need in addition after each stores ``steps`` more tokens."""
        t, bs = self._t, self.block_size
        if self.step_tokens != 1:
            steps = steps * self.step_tokens
        kv = t.kv_tokens[ids]
        if not self._reservations:
            if steps == 1 and self._shift is not None:
                # One token more opens a block exactly where a sequence's blocks are full (kv >= 0): one mask
                # and a count instead of two ceiling divisions (a chunked-prefill scheduler asks every step);
                # a few sequences (a mixed iteration's usual decodes) count in Python, cheaper than three calls.
                mask = bs - 1
                if len(kv) <= 4:
                    return sum(1 for v in kv.tolist() if not v & mask)
                return int(np.count_nonzero((kv & mask) == 0))
            return int((blocks_for(kv + steps, bs) - blocks_for(kv, bs)).sum())
        res = t.kv_reserved[ids]
        now = blocks_for(np.maximum(kv, res), bs)
        later = blocks_for(np.maximum(kv + steps, res), bs)
        return int((later - now).sum())

    def growth_fits(self, ids: np.ndarray, steps: int, free: int) -> bool:
        """Whether ``growth_after(ids, steps) <= free``, answered without gathering the KV where even the worst
        case fits: ``steps`` more tokens open at most ``ceil(steps / block_size)`` blocks per sequence (the ceiling
        of a sum is at most the sum of the ceilings, reservations or not). A chunked-prefill scheduler asks this at
        nearly every plan. A subclass that counts blocks its own way (its own ``growth_after``) always counts."""
        if type(self).growth_after is BlockManager.growth_after and len(ids) * -(
                -(steps * self.step_tokens) // self.block_size) <= free:
            return True
        return self.growth_after(ids, steps) <= free

    def max_steps(self, ids: np.ndarray, limit: int) -> int:
        """Largest ``k <= limit`` such that ``k`` more tokens per sequence fit in the free blocks."""
        free = self.free_blocks
        # Fast path: even the worst case (every sequence opens a block at once
        # and again every block_size steps) fits.
        if len(ids) * (1 + (limit - 1) // self.block_size + 1) <= free:
            return limit
        if self.growth_after(ids, limit) <= free:
            return limit
        lo, hi = 0, limit  # growth(lo) fits, growth(hi) does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.growth_after(ids, mid) <= free:
                lo = mid
            else:
                hi = mid
        return lo

    def growth_to(self, ids: np.ndarray, tokens: np.ndarray) -> int:
        """Blocks the sequences ``ids`` need in addition to hold ``tokens`` tokens each (a step model's
        peak: kept tokens plus the slots a speculative step writes and rolls back)."""
        t, bs = self._t, self.block_size
        held = np.maximum(t.kv_tokens[ids], t.kv_reserved[ids]) if self._reservations else t.kv_tokens[ids]
        after = np.maximum(tokens, held)
        return int((blocks_for(after, bs) - blocks_for(held, bs)).sum())

    def grow_each(self, ids: np.ndarray, tokens: np.ndarray) -> None:
        """Each sequence in ``ids`` stores its own number of ``tokens`` more (a multi-token step)."""
        t, bs = self._t, self.block_size
        kv = t.kv_tokens[ids]
        new = kv + tokens
        if self._reservations:
            res = t.kv_reserved[ids]
            added = int((blocks_for(np.maximum(new, res), bs) - blocks_for(np.maximum(kv, res), bs)).sum())
        else:
            added = int((blocks_for(new, bs) - blocks_for(kv, bs)).sum())
        self._add(added)
        t.kv_tokens[ids] = new

    def grow_all(self, ids: np.ndarray, steps: int, kv: np.ndarray | None = None, kv_list: list | None = None) -> None:
        """Every sequence in ``ids`` stores ``steps`` more tokens (a decode run).

        ``kv`` may pass ``kv_tokens[ids]`` when the caller already gathered it,
        and ``kv_list`` the same values as a Python list for a small batch.
        """
        t = self._t
        if kv is None:
            kv = t.kv_tokens[ids]
        new = kv + steps
        sh = self._shift
        if self._reservations:
            res = t.kv_reserved[ids]
            growth = blocks_for(np.maximum(new, res), self.block_size) - blocks_for(np.maximum(kv, res), self.block_size)
            added = int(growth.sum())
        elif sh is not None and steps == 1:
            # One token each (a mixed iteration's decodes): a block opens where the blocks are full (kv >= 0).
            added = int(np.count_nonzero((kv & (self.block_size - 1)) == 0))
        elif sh is not None and kv_list is not None:
            # Small batch: a Python loop over a short list beats five numpy calls (~0.5 us each).
            # Running sequences hold >= 1 token, so ceil(n/bs) = (n-1)//bs + 1.
            s1 = steps - 1
            added = sum(((k + s1) >> sh) - ((k - 1) >> sh) for k in kv_list)
        elif sh is not None:
            # A power-of-two block size turns the division into a shift (integer division was the
            # largest cost of this hot-loop step).
            added = int((((new - 1) >> sh) - ((kv - 1) >> sh)).sum())
        else:
            bs = self.block_size
            added = int(((new - 1) // bs - (kv - 1) // bs).sum())
        self._add(added)
        t.kv_tokens[ids] = new


# ---------------------------------------------------------------- retention (eviction, compression)
#: "No cap": larger than any context, small enough that arithmetic on it cannot overflow int64.
NO_CAP = 1 << 50


class Retention:
    """How many of a sequence's tokens its KV cache keeps: ``r_i(n)`` for ``n`` logical tokens.

    Why one formula: eviction and compression methods differ in *which* tokens they keep, which costs
    nothing the simulator models; what they change is how many tokens' KV each sequence stores and
    attends. Per request ``i``, from ``after_i`` tokens on (its prompt: the policy acts once prefill is
    done), ``r_i(n) = full * n + (1 - full) * min(n - drop_i, cap_i)``, and ``r_i(n) = n`` before:

    * a one-off compression of the prompt to a budget (SnapKV): ``drop_i = prompt_i - budget_i``, no cap;
    * a cache capped at a budget during decoding (H2O; StreamingLLM's sinks + window): ``cap_i = budget_i``;
    * ``full`` the fraction of the KV (heads) exempt from either (DuoAttention's retrieval heads).

    ``t.kv_tokens`` stays the *logical* count (prefill progress, recompute and finishing are unchanged);
    the block manager and the decode step see ``r_i``. The same tokens are stored and attended.
    """

    def __init__(self, after: np.ndarray, drop: np.ndarray, cap: np.ndarray, full: float = 0.0):
        self.after = np.asarray(after, dtype=np.int64)
        self.drop = np.asarray(drop, dtype=np.int64)
        self.cap = np.asarray(cap, dtype=np.int64)
        self.full = float(full)
        # Python lists for one-sequence questions (admission, growth of one prefill): list indexing and int
        # arithmetic beat numpy's scalar path several times over.
        self._after, self._drop, self._cap = self.after.tolist(), self.drop.tolist(), self.cap.tolist()

    def retained_one(self, rid: int, logical: int) -> float:
        """Tokens kept by sequence ``rid`` holding ``logical`` tokens."""
        if logical < self._after[rid]:
            return logical
        kept = min(logical - self._drop[rid], self._cap[rid])
        return self.full * logical + (1.0 - self.full) * kept if self.full else kept

    def retained(self, ids, logical):
        """Tokens kept by sequences ``ids`` (array or one id) holding ``logical`` tokens."""
        logical = np.asarray(logical)
        kept = np.minimum(logical - self.drop[ids], self.cap[ids])
        if self.full:
            kept = self.full * logical + (1.0 - self.full) * kept
        return np.where(logical >= self.after[ids], kept, logical)

    def decode_segment(self, ids: np.ndarray, kv: np.ndarray) -> tuple[float, np.ndarray, int]:
        """For a decode run of ``ids`` whose logical KV is ``kv``: the attended context summed over the run's
        first step, each sequence's growth per token, and how many one-token steps keep those growths (at
        least 1; a sequence reaching its cap stops growing). The run is affine over those steps."""
        n0 = kv + 1
        r0 = self.retained(ids, n0)
        m0 = n0 - self.drop[ids]
        cap = self.cap[ids]
        below = m0 < cap
        slope = np.where(below, 1.0, self.full)
        until = int(np.minimum.reduce(cap[below] - m0[below] + 1)) if below.any() else NO_CAP
        return float(np.add.reduce(r0)), slope, max(until, 1)


class RetainingBlockManager(BlockManager):
    """A block manager whose sequences hold ``ceil(r_i(n) / block_size)`` blocks (see :class:`Retention`).

    A subclass, so that the default manager keeps its hot paths (shifts, Python loops over small batches)
    untouched; every count here goes through ``r_i`` and is vectorised.
    """

    def __init__(self, total_blocks: int, block_size: int, table: RequestTable, retention: Retention):
        super().__init__(total_blocks, block_size, table)
        self.retention = retention

    def _blocks(self, ids, logical):
        kept = self.retention.retained(ids, logical)
        if self.retention.full:  # fractional kept tokens (some heads keep everything)
            return np.ceil(kept / self.block_size).astype(np.int64)
        return -(-kept // self.block_size)

    def _blocks_one(self, rid: int, logical: int) -> int:
        return math.ceil(self.retention.retained_one(rid, logical) / self.block_size)

    def _logical(self, ids, kv):
        return np.maximum(kv, self._t.kv_reserved[ids]) if self._reservations else kv

    def held_by(self, rid: int) -> int:
        t = self._t
        return self._blocks_one(rid, max(int(t.kv_tokens[rid]), int(t.kv_reserved[rid])))

    def blocks_to_admit(self, rid: int, tokens: int, hit: bool = True) -> int:
        return self._blocks_one(rid, tokens)

    def blocks_to_grow(self, rid: int, new_kv_tokens: int) -> int:
        after = self._blocks_one(rid, max(int(new_kv_tokens), int(self._t.kv_reserved[rid])))
        return after - self.held_by(rid)

    def grow(self, rid: int, new_kv_tokens: int) -> None:
        before = self.held_by(rid)
        self._t.kv_tokens[rid] = new_kv_tokens
        self._add(self.held_by(rid) - before)

    def release(self, rid: int) -> None:
        self.used_blocks -= self.held_by(rid)
        self._t.kv_reserved[rid] = 0
        self._t.kv_tokens[rid] = 0

    def _growth(self, ids: np.ndarray, new: np.ndarray) -> int:
        kv = self._t.kv_tokens[ids]
        return int((self._blocks(ids, self._logical(ids, new)) - self._blocks(ids, self._logical(ids, kv))).sum())

    def growth_after(self, ids: np.ndarray, steps: int) -> int:
        return self._growth(ids, self._t.kv_tokens[ids] + steps * self.step_tokens)

    def growth_to(self, ids: np.ndarray, tokens: np.ndarray) -> int:
        held = self._logical(ids, self._t.kv_tokens[ids])
        return self._growth(ids, np.maximum(tokens, held))

    def grow_each(self, ids: np.ndarray, tokens: np.ndarray) -> None:
        new = self._t.kv_tokens[ids] + tokens
        self._add(self._growth(ids, new))
        self._t.kv_tokens[ids] = new

    def grow_all(self, ids: np.ndarray, steps: int, kv: np.ndarray | None = None, kv_list: list | None = None) -> None:
        new = self._t.kv_tokens[ids] + steps
        self._add(self._growth(ids, new))
        self._t.kv_tokens[ids] = new
