"""vLLM continuous batching (Kwon et al., "Efficient Memory Management for Large
Language Model Serving with PagedAttention", SOSP 2023; vLLM v0 scheduler).

Prefill-first: whenever a waiting request can be admitted, the next iteration
is a prefill-only batch of as many waiting requests (first come, first served)
as fit the sequence cap, the token budget and the free KV blocks above a small
watermark; running decodes pause for that iteration. Otherwise every running
sequence decodes. KV blocks are allocated on demand; when a decode step finds
no free block the newest sequence is preempted and later recomputed (or, with
``preemption_mode: swap``, swapped to host memory and back: simulator/schedulers/preemption.py).
"""

from __future__ import annotations

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

    def max_batch_tokens(self) -> int:
        return max(self.max_num_batched_tokens, self.max_num_seqs)

    def max_batch_seqs(self) -> int:
        return self.max_num_seqs


@SCHEDULERS.register("vllm", aliases=("continuous", "vllm-v0", "paged"))
class VllmScheduler(Scheduler):
    """Prefill-first continuous batching with paged KV and recompute preemption."""

    Params = VllmParams
    lone_prefills = True

    def max_prefill_tokens(self) -> int | None:
        return self.params.max_num_batched_tokens

    def plan(self) -> Plan | None:
        st, p = self.state, self.params
        waiting, running = st.waiting, st.running
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
            return Plan((), self.running_ids(), repeat=True)
        return None
