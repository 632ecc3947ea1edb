"""vLLM continuous batching (Kwon et al., "Efficient Memory Management for Large
Language Model Serving with PagedAttention", SOSP 2023; vLLM v0 scheduler).

Prefill-first: whenever a waiting request can be admitted, the next iteration
is a prefill-only batch of as many waiting requests (first come, first served)
as fit the sequence cap, the token budget and the free KV blocks above a small
watermark; running decodes pause for that iteration. Otherwise every running
sequence decodes. KV blocks are allocated on demand; when a decode step finds
no free block the newest sequence is preempted and later recomputed (or, with
``preemption_mode: swap``, swapped to host memory and back: simulator/schedulers/preemption.py).

Multi-step scheduling (vLLM 0.6's ``--num-scheduler-steps k``, ``num_scheduler_steps`` here; vLLM RFC #6854,
PR #7000): once a decode batch is scheduled it runs ``k`` decode iterations before the scheduler runs again,
so a request arriving inside that window waits for its end before its prefill is admitted; prefill
iterations stay single-step. The window's batch is fixed: a sequence that finishes inside it keeps being
computed (its extra tokens are discarded) and keeps its KV blocks until the window ends. docs/engine-profiles.md
("Multi-step scheduling") says what is modelled and what is not.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from capsim.types import Count
from simulator.schedulers.base import EMPTY_IDS, SCHEDULERS, Plan, Scheduler
from simulator.schedulers.preemption import PreemptionParams


class VllmParams(PreemptionParams):
    max_num_seqs: Count = Field(256, gt=0, description="Most sequences in one batch (vLLM --max-num-seqs).")
    max_num_batched_tokens: Count = Field(
        8192,
        gt=0,
        description="Most prompt tokens in one prefill iteration (vLLM --max-num-batched-tokens); "
        "must cover the longest prompt, since this scheduler does not chunk prefills.",
    )
    watermark: float = Field(
        0.01, ge=0, lt=1, description="Fraction of KV blocks kept free when admitting new requests."
    )

    num_scheduler_steps: Count = Field(
        1,
        gt=0,
        description="Decode iterations per scheduler call (vLLM 0.6 --num-scheduler-steps, multi-step "
        "scheduling): a scheduled decode batch runs this many iterations before the scheduler runs again, so an "
        "arriving request's prefill waits for the window to end and sequences finishing inside it are computed "
        "(and hold their KV) until it ends. Prefills stay single-step. 1: the scheduler plans every iteration.",
    )

    def max_batch_tokens(self) -> int:
        return max(self.max_num_batched_tokens, self.max_num_seqs)

    def max_batch_seqs(self) -> int:
        return self.max_num_seqs


@SCHEDULERS.register("vllm", aliases=("continuous", "vllm-v0", "paged"))
class VllmScheduler(Scheduler):
    """Prefill-first continuous batching with paged KV and recompute preemption."""

    Params = VllmParams
    lone_prefills = True

    def __init__(self, params: VllmParams, state) -> None:
        super().__init__(params, state)
        k = params.num_scheduler_steps
        self.window_steps = k
        # With windows, finished sequences stay in the batch (as padding) until their window ends.
        self.pads_finished = k > 1
        self._left = 0  # decode iterations left in the window in progress; 0: at a window boundary

    def max_prefill_tokens(self) -> int | None:
        return self.params.max_num_batched_tokens

    def decoded(self, iterations: int) -> None:
        k = self.window_steps
        self._left = ((self._left or k) - iterations) % k
        if not self._left:
            self._drop_finished()

    def retire(self, finished: np.ndarray) -> None:
        if self.window_steps == 1:
            super().retire(finished)
        elif not self._left:  # at a window boundary (or after a prefill): finished sequences leave now
            self._drop_finished()
        # else: inside a window they stay in the batch until it ends (``decoded`` drops them there)

    def _drop_finished(self) -> None:
        st = self.state
        t = st.table
        done = [r for r in st.running if t.generated[r] >= t.output[r]]
        if done:
            for r in done:
                st.blocks.release(r)
            gone = set(done)
            st.running[:] = [r for r in st.running if r not in gone]
            st.changed()

    def preempt_one(self) -> int | None:
        # Memory ran out inside a window: a finished sequence still held there gives its blocks back first
        # (it needs no recompute) -- returned as the one that left the batch, not queued again.
        if self._left:
            st = self.state
            t = st.table
            for r in reversed(st.running):
                if t.generated[r] >= t.output[r]:
                    st.running.remove(r)
                    st.blocks.release(r)
                    st.changed()
                    return r
        return super().preempt_one()

    def plan(self) -> Plan | None:
        st, p = self.state, self.params
        waiting, running = st.waiting, st.running
        k = self.window_steps
        if self._left and not running:  # the window's batch is gone (preempted): the scheduler runs now
            self._left = 0
        if k > 1 and running and self._left:
            # Inside a window the scheduler does not run: the same batch decodes on to the window's end.
            ids = self.running_ids()
            t = st.table
            held = int(np.count_nonzero(t.generated[ids] >= t.output[ids]))
            if held < len(ids):
                # Finished sequences still in the batch leave at the window's end: the run stops there.
                return Plan((), ids, repeat=True, window=k, window_left=self._left, cap=self._left if held else 0)
            # Every sequence of the window has finished: nothing is left to decode, the window is over.
            self._left = 0
            self._drop_finished()
        if waiting:
            watermark = int(p.watermark * st.blocks.total_blocks)
            chunks = []
            tokens = 0
            while waiting and len(running) < p.max_num_seqs:
                rid = waiting[0]
                need = st.table.prefill_target(rid)
                # A sequence swapped out to host memory needs no re-prefill of what it kept.
                swapped = self.swapped_tokens(rid) if st.swap is not None else 0
                work = need - swapped
                # A preempted sequence may exceed the budget; let it run alone.
                if tokens + work > p.max_num_batched_tokens and chunks:
                    break
                # Asked of the block manager: a KV retention policy may keep fewer tokens than `need`, a prefix
                # cache's hit takes cached blocks (not for KV swapped back in, which is not attached).
                if not self.fits_with_watermark(st.blocks.blocks_to_admit(rid, need, not swapped), watermark):
                    break
                waiting.popleft()
                chunks.append(self.admit(rid, st.now))
                tokens += work
            if chunks:
                return Plan(tuple(chunks), EMPTY_IDS)
        if running:
            if k > 1:
                return Plan((), self.running_ids(), repeat=True, window=k, window_left=k)
            return Plan((), self.running_ids(), repeat=True)
        return None
