"""Orca iteration-level scheduling (Yu et al., "Orca: A Distributed Serving System
for Transformer-Based Generative Models", OSDI 2022).

Requests join and leave the batch at iteration granularity, and a new
request's prefill runs in the same iteration as the running decodes
(selective batching). Orca has no paged KV cache: it reserves KV for the
maximum sequence length when it admits a request, which is what limits its
batch size (the comparison vLLM's paper draws).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from capsim.types import Count
from simulator.kvcache import blocks_for
from simulator.schedulers.base import SCHEDULERS, Plan, Scheduler, SchedulerParams


class OrcaParams(SchedulerParams):
    max_batch_size: Count = Field(256, gt=0, description="Most sequences in one iteration.")
    kv_reservation: Literal["max-context", "request"] = Field(
        "max-context",
        description="KV reserved per admitted request: the model's maximum context (Orca as published) "
        "or exactly prompt + output tokens (an oracle that knows output lengths).",
    )
    max_batch_tokens_hint: Count = Field(
        8192, gt=0, description="Largest iteration (tokens) to size the activation reserve for."
    )

    def max_batch_tokens(self) -> int:
        return self.max_batch_tokens_hint

    def max_batch_seqs(self) -> int:
        return self.max_batch_size


@SCHEDULERS.register("orca", aliases=("iteration-level",))
class OrcaScheduler(Scheduler):
    """Iteration-level batching with mixed prefill/decode iterations and up-front KV reservation."""

    Params = OrcaParams
    mixed_batches = True

    def _reservation(self, rid: int) -> int:
        t = self.state.table
        exact = int(t.prompt[rid] + t.output[rid])
        if self.params.kv_reservation == "request":
            return exact
        return max(self.state.max_context, exact)

    def blocks_to_receive(self, rid: int, kv_tokens: int) -> int:
        return int(blocks_for(max(kv_tokens, self._reservation(rid)), self.state.blocks.block_size))

    def hold_received(self, rid: int, kv_tokens: int) -> None:
        """A request arriving with its KV gets the same up-front reservation as one admitted here."""
        self.state.blocks.reserve(rid, self._reservation(rid))
        super().hold_received(rid, kv_tokens)

    def plan(self) -> Plan | None:
        st, p = self.state, self.params
        decoding = self.running_ids()
        chunks = []
        bs = st.blocks.block_size
        while st.waiting and len(st.running) < p.max_batch_size:
            rid = st.waiting[0]
            reserve = self._reservation(rid)
            if st.blocks.free_blocks < int(blocks_for(reserve, bs)):
                break
            st.waiting.popleft()
            st.blocks.reserve(rid, reserve)
            chunks.append(self.admit(rid, st.now))
        if chunks:
            return Plan(tuple(chunks), decoding)
        if len(decoding):
            return Plan((), decoding, repeat=True)
        return None
