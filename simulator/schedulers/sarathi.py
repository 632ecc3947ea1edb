"""Chunked prefill with decode-first batching (Agrawal et al., "Taming
Throughput-Latency Tradeoff in LLM Inference with Sarathi-Serve", OSDI 2024;
the default policy of vLLM v1).

Every iteration has a token budget. Running decodes are scheduled first (one
token each); the rest of the budget goes to prompt chunks -- first of requests
already part-way through their prefill, then of newly admitted ones -- so a
long prompt never stalls the decodes for more than one budget's worth of work.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from capsim.types import Count
from simulator.kvcache import blocks_for
from simulator.schedulers.base import EMPTY_IDS, SCHEDULERS, Plan, PrefillChunk, Scheduler
from simulator.schedulers.preemption import PreemptionParams


class SarathiParams(PreemptionParams):
    max_num_seqs: Count = Field(256, gt=0, description="Most sequences in the batch.")
    chunk_size: Count = Field(
        512, gt=0, description="Token budget per iteration (decode tokens + prefill chunk tokens)."
    )
    watermark: float = Field(0.01, ge=0, lt=1, description="Fraction of KV blocks kept free when admitting.")

    def max_batch_tokens(self) -> int:
        return self.chunk_size

    def max_batch_seqs(self) -> int:
        return self.max_num_seqs


@SCHEDULERS.register("sarathi", aliases=("chunked-prefill", "sarathi-serve", "vllm-v1"))
class SarathiScheduler(Scheduler):
    """Decode-first, budgeted iterations with chunked prefills."""

    Params = SarathiParams
    mixed_batches = True

    def __init__(self, params, state):
        super().__init__(params, state)
        self.prefilling: dict[int, int] = {}  # rid -> prefill target tokens

    def on_preempted(self, rid: int) -> None:
        self.prefilling.pop(rid, None)

    def plan(self) -> Plan | None:
        st, p = self.state, self.params
        t, blocks, bs = st.table, st.blocks, st.blocks.block_size
        prefilling = self.prefilling
        if not prefilling and not st.waiting and st.running:
            # Decodes only, nothing to admit (between arrivals, most plans): the decode run below, without the
            # budget bookkeeping, where their next token fits (else the general path preempts).
            ids = st.running_ids()
            if blocks.growth_fits(ids, 1, blocks.free_blocks):
                return Plan((), ids, repeat=True)
        decoding = [r for r in st.running if r not in prefilling] if prefilling else list(st.running)
        # Decodes need one new token of KV each; preempt until that fits. ``decode_growth``: the blocks the
        # decodes will take at the end of this iteration; prefill chunks must leave them free.
        ids, decode_growth = EMPTY_IDS, 0
        while decoding:
            ids = self._ids(decoding) if prefilling else st.running_ids()  # the latter: cached until it changes
            decode_growth = blocks.growth_after(ids, 1)
            if decode_growth <= blocks.free_blocks:
                break
            self.preempt_one()
            decoding = [r for r in st.running if r not in prefilling]
            ids, decode_growth = EMPTY_IDS, 0
        budget = p.chunk_size - len(decoding)
        chunks: list[PrefillChunk] = []
        for rid, target in list(self.prefilling.items()):
            if budget <= 0:
                break
            chunk = self._chunk(rid, target, budget, decode_growth)
            if chunk is None:
                break
            chunks.append(chunk)
            budget -= chunk.tokens
        watermark = int(p.watermark * blocks.total_blocks)
        while budget > 0 and st.waiting and len(st.running) < p.max_num_seqs:
            rid = st.waiting[0]
            held = self.swapped_tokens(rid) if st.swap is not None else 0  # KV waiting in host swap space
            # A prefix-cache hit: the chunks start after the cached tokens, and the blocks the hit takes (cached
            # units revived from the free-able ones, reused chunks' copies) count against the free blocks like the
            # first chunk's (0, 0 without a cache).
            cached, taken = blocks.hit(rid) if not held else (0, 0)
            q = min(t.prefill_target(rid) - held - cached, budget)
            first = int(blocks_for(held + cached + q, bs)) - (int(blocks_for(cached, bs)) if cached else 0)
            spare = blocks.free_blocks - decode_growth - taken - first
            if spare < watermark:
                break
            st.waiting.popleft()
            if held:  # its blocks come back from the host; the prefill continues where it stopped
                st.swap.swap_in(rid, st.now)
                blocks.grow(rid, held)
            else:  # a remote store's load may add units, only in blocks this iteration leaves spare
                blocks.attach(rid, spare - watermark)
            if np.isnan(t.schedule_s[rid]):  # first admission (not a re-admission after preemption)
                t.schedule_s[rid] = st.now
            st.running.append(rid)
            st.changed()
            self.prefilling[rid] = t.prefill_target(rid)
            chunk = self._chunk(rid, self.prefilling[rid], budget, decode_growth)
            if chunk is None:  # cannot happen (the check above counted the hit and the first chunk); be safe
                break
            chunks.append(chunk)
            budget -= chunk.tokens
        if chunks:
            plan = Plan(tuple(chunks), ids)
            if budget == 0 and len(chunks) == 1 and not chunks[0].completes:
                self._plan_run(plan, chunks[0], p.chunk_size - len(decoding))
            return plan
        if decoding:
            return Plan((), ids, repeat=True)
        if self.prefilling:
            # Partial prefills hold all the memory and none can continue: free the newest and retry.
            self.preempt_one()
            return self.plan()
        return None

    def _plan_run(self, plan: Plan, chunk: PrefillChunk, budget: int) -> None:
        """Tell the replica which iterations would be planned as ``plan`` again (``Plan.chunk_repeats``,
        ``Plan.chunk_final``): ``chunk`` is an ongoing prefill's and takes the whole ``budget``.

        Why the scheduler says so: while the decodes stay the same (none finishes) and their KV and the chunks
        fit, :meth:`plan` returns the same decodes and the next ``budget`` tokens of that prefill each time
        (no request can be admitted: the chunk leaves no budget), so the replica can run those iterations
        without asking. The prefill must be the first one in ``prefilling`` (it gets the budget first). The
        chunk that completes it may leave budget for an admission, so it joins the run only where no other
        prefill is in progress, and the replica adds it only if nothing waits by then.
        """
        if next(iter(self.prefilling)) != chunk.rid:
            return
        left = self.prefilling[chunk.rid] - chunk.cached - chunk.tokens  # prompt tokens after this chunk
        repeats = (left - 1) // budget
        plan.chunk_repeats = repeats
        if len(self.prefilling) == 1:
            plan.chunk_final = left - repeats * budget

    def take_chunk(self, rid: int, tokens: int) -> PrefillChunk:
        """The next ``tokens`` of ``rid``'s prefill, as :meth:`_chunk` takes them (the run checked the blocks)."""
        st = self.state
        done = int(st.table.kv_tokens[rid])
        st.blocks.grow(rid, done + tokens)
        completes = done + tokens == self.prefilling[rid]
        if completes:
            del self.prefilling[rid]
        return PrefillChunk(rid, tokens, done, completes, tokens)

    def _chunk(self, rid: int, target: int, budget: int, reserved_blocks: int) -> PrefillChunk | None:
        """The next chunk of ``rid``'s prefill, or None if its KV does not fit beside ``reserved_blocks``."""
        st = self.state
        done = int(st.table.kv_tokens[rid])
        q = min(target - done, budget)
        if st.blocks.blocks_to_grow(rid, done + q) > st.blocks.free_blocks - reserved_blocks:
            return None
        st.blocks.grow(rid, done + q)
        completes = done + q == target
        if completes:
            del self.prefilling[rid]
        return PrefillChunk(rid, q, done, completes, q)

    @staticmethod
    def _ids(rids: list[int]) -> np.ndarray:
        return np.fromiter(rids, dtype=np.int64, count=len(rids))
