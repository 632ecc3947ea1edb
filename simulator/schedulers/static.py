"""Request-level (static) batching, as in HuggingFace ``generate`` with a batch.

When the replica is idle it takes up to ``batch_size`` waiting requests, pads
their prompts to the longest one, and decodes until the longest output is
done; finished sequences stay in the batch as padding and new arrivals wait
for the whole batch to finish. KV for the padded batch is reserved up front.
This is the baseline continuous batching was invented to beat (Orca, OSDI
2022, Sec. 2).
"""

from __future__ import annotations

from pydantic import Field

from capsim.types import Count
from simulator.kvcache import blocks_for
from simulator.schedulers.base import EMPTY_IDS, SCHEDULERS, Plan, PrefillChunk, Scheduler, SchedulerParams


class StaticParams(SchedulerParams):
    batch_size: Count = Field(16, gt=0, description="Requests per static batch.")
    max_prompt_hint: Count = Field(
        2048, gt=0, description="Padded prompt length to size the activation reserve for."
    )

    def max_batch_tokens(self) -> int:
        return self.batch_size * self.max_prompt_hint

    def max_batch_seqs(self) -> int:
        return self.batch_size


@SCHEDULERS.register("static", aliases=("request-level", "hf", "huggingface"))
class StaticScheduler(Scheduler):
    """Request-level batching with prompt padding and output padding."""

    Params = StaticParams
    pads_finished = True
    receives_kv = False

    def plan(self) -> Plan | None:
        st = self.state
        if st.running:
            return Plan((), self.running_ids(), repeat=True, interruptible=False)
        if not st.waiting:
            return None
        t, bs = st.table, st.blocks.block_size
        batch: list[int] = []
        longest_prompt = longest_output = 0
        for rid in st.waiting:
            if len(batch) == self.params.batch_size:
                break
            lp = max(longest_prompt, int(t.prompt[rid] + t.generated[rid]))
            lo = max(longest_output, int(t.output[rid]))
            if (len(batch) + 1) * int(blocks_for(lp + lo, bs)) > st.blocks.total_blocks:
                break
            batch.append(rid)
            longest_prompt, longest_output = lp, lo
        chunks = []
        for rid in batch:
            st.waiting.popleft()
            st.blocks.reserve(rid, longest_prompt + longest_output)
            c = self.admit(rid, st.now)
            chunks.append(PrefillChunk(rid, c.tokens, c.cached, True, longest_prompt - c.cached))
        return Plan(tuple(chunks), EMPTY_IDS)
