"""What every batch scheduler shares.

A scheduler decides *which* work forms the next iteration of a replica; the
cost model decides what that work costs. Concrete schedulers (one module
each) only say how they pick a batch; this base class owns the mechanics they
share -- admitting a request into the KV cache, preempting by recompute,
retiring finished sequences -- as Vidur's replica-scheduler base does.

A scheduler returns a :class:`Plan`:

* one iteration with prefill chunks (and optionally decode sequences riding
  along, for mixed batching), or
* a *decode run*: the same decode batch repeated until something changes --
  a sequence finishes, memory runs out, or (when ``interruptible``) a request
  arrives. The engine prices and advances the whole run at once.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from capsim.registry import Registry

if TYPE_CHECKING:
    from simulator.replica import ReplicaState

EMPTY_IDS = np.zeros(0, dtype=np.int64)


class SchedulerParams(BaseModel):
    """Base of every scheduler's parameter model (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid")

    def max_batch_tokens(self) -> int:
        """Most tokens one iteration can process (sizes the activation reserve)."""
        return 8192

    def max_batch_seqs(self) -> int:
        """Most sequences one iteration can hold (sizes the logits buffer)."""
        return 256


@dataclass(slots=True)
class PrefillChunk:
    """``tokens`` new prompt tokens of request ``rid`` after ``cached`` already in KV.

    ``completes`` is true when the chunk finishes the (re)prefill, so the
    iteration emits the request's next token. ``cost_tokens`` is what the
    kernel actually processes (request-level batching pads prompts).
    """

    rid: int
    tokens: int
    cached: int
    completes: bool
    cost_tokens: int


@dataclass(slots=True)
class Plan:
    prefill: tuple[PrefillChunk, ...]
    decode_ids: np.ndarray
    repeat: bool = False  # a decode run: repeat until a sequence finishes or memory runs out
    interruptible: bool = True  # an arrival ends the run at the next iteration boundary
    until_s: float | None = None  # a decode run ends at the first boundary at or after this time (a time slice)
    # Iterations after this one that the scheduler would plan as this one again -- the same decodes and a chunk of
    # the same size of the same (first) prefill, none completing it, nothing else admitted -- for as long as no
    # decode finishes and the KV blocks suffice: the replica may run them in one go (``Replica._chunk_run``).
    chunk_repeats: int = 0
    # Then, tokens of the chunk that completes that prefill where it would be planned as the only chunk once
    # nothing waits (no other prefill in progress); 0: it is left to the scheduler.
    chunk_final: int = 0
    # Multi-step scheduling (vLLM ``--num-scheduler-steps``): a decode run planned by a scheduler that runs
    # ``window`` decode iterations per scheduler call. The scheduler next plans after ``window_left`` iterations
    # and every ``window`` after that, so an arrival ends the run only at one of those boundaries, never between.
    # ``cap`` > 0 ends the run after at most that many iterations (a window whose finished sequences must leave).
    window: int = 1
    window_left: int = 1
    cap: int = 0


class Scheduler:
    """Base class; subclasses implement :meth:`plan` and set ``Params``."""

    Params: ClassVar[type[SchedulerParams]] = SchedulerParams
    #: Finished sequences stay in the batch as padding until the whole batch is done.
    pads_finished: ClassVar[bool] = False
    #: Whether prefill of a waiting request may run beside decode in one iteration.
    mixed_batches: ClassVar[bool] = False
    #: Whether an iteration is often one request's whole prompt prefilled alone (prefill-only
    #: batches of whole prompts): the engine then prices that shape for every prompt length of
    #: the workload up front, in one vectorised call, instead of one at a time in the hot loop.
    lone_prefills: ClassVar[bool] = False
    #: Whether the scheduler can take a request whose KV arrives from another pool mid-run (a decode pool of a
    #: disaggregated deployment). Request-level batching cannot: its batch is fixed until every member is done.
    receives_kv: ClassVar[bool] = True
    #: Decode iterations per scheduler call (multi-step scheduling); 1: the scheduler plans every iteration.
    window_steps: int = 1

    def __init__(self, params: SchedulerParams, state: ReplicaState):
        self.params = params
        self.state = state

    # -- to implement ---------------------------------------------------------
    def plan(self) -> Plan | None:
        raise NotImplementedError

    def max_prefill_tokens(self) -> int | None:
        """Largest (re)prefill this scheduler can run in one iteration, if bounded."""
        return None

    def check_step_model(self, step: object | None) -> None:
        """Refuse a multi-token decode step (speculation) under multi-step scheduling.

        Why here: ``capsim validate`` (which builds no replica) and the replica both ask, so a scenario that
        cannot run is refused by both with the same message."""
        if step is not None and self.window_steps > 1:
            from capsim.errors import CapsimError

            raise CapsimError(
                "multi-step scheduling (num_scheduler_steps > 1) cannot be combined with a technique that "
                "yields several tokens per decode step",
                where="scheduler.num_scheduler_steps",
                fix="set num_scheduler_steps: 1, or drop the multi-token technique",
            )

    # -- shared mechanics -----------------------------------------------------
    @property
    def waiting(self) -> deque[int]:
        return self.state.waiting

    @property
    def running(self) -> list[int]:
        return self.state.running

    def running_ids(self) -> np.ndarray:
        return self.state.running_ids()

    def admit(self, rid: int, now: float) -> PrefillChunk:
        """Move ``rid`` from the waiting queue into the batch with its (re)prefill: all of it, less the prompt
        tokens the block manager already holds in KV (a prefix-cache hit, priced as cached)."""
        st = self.state
        t = st.table
        target = t.prefill_target(rid)
        if st.swap is not None and rid in st.swap.held:
            # A sequence swapped out to host memory gets its KV back and continues from it (no re-prefill).
            cached = st.swap.swap_in(rid, now)
        else:
            cached = st.blocks.attach(rid)
        st.blocks.grow(rid, target)
        if np.isnan(t.schedule_s[rid]):
            t.schedule_s[rid] = now
        st.running.append(rid)
        st.changed()
        return PrefillChunk(rid, target - cached, cached, True, target - cached)

    def preempt_one(self) -> int | None:
        """Free memory by preempting the most recently admitted sequence; return it.

        vLLM's default policy (recompute): the victim loses its KV and goes back
        to the front of the waiting queue; its generated tokens are kept and re-
        prefilled with the prompt when it is admitted again. With a swap space
        (``preemption_mode: swap``, :mod:`simulator.schedulers.preemption`) its
        blocks are copied to host memory instead, when they fit, and come back
        when it is admitted again. ``None`` when nothing is running.
        """
        st = self.state
        if not st.running:
            return None
        victim = st.running.pop()
        st.changed()
        if st.swap is not None:
            st.swap.swap_out(victim, int(st.table.kv_tokens[victim]), st.blocks.held_by(victim), st.now)
        st.blocks.release(victim)
        st.table.preemptions[victim] += 1
        st.waiting.appendleft(victim)
        self.on_preempted(victim)
        return victim

    def blocks_to_receive(self, rid: int, kv_tokens: int) -> int:
        """Blocks ``rid`` needs here to take ``kv_tokens`` of KV sent from another pool."""
        return self.state.blocks.blocks_to_admit(rid, kv_tokens)

    def hold_received(self, rid: int, kv_tokens: int) -> None:
        """Account the blocks of ``rid``'s incoming KV (before it is sent: the transfer writes into them)."""
        self.state.blocks.grow(rid, kv_tokens)
        t = self.state.table
        if np.isnan(t.schedule_s[rid]):
            t.schedule_s[rid] = self.state.now

    def detach(self, rids: list[int]) -> None:
        """``rids`` leave the batch without finishing and keep their KV blocks (handed to another pool, which
        releases the blocks once the KV has been sent)."""
        st = self.state
        gone = set(rids)
        st.running[:] = [r for r in st.running if r not in gone]
        st.changed()
        for r in rids:
            self.on_preempted(r)

    def swapped_tokens(self, rid: int) -> int:
        """KV tokens ``rid`` holds in host swap space (0 without swap or when it is not swapped out)."""
        swap = self.state.swap
        return 0 if swap is None else swap.tokens(rid)

    def on_preempted(self, rid: int) -> None:
        """Hook for schedulers that track extra per-sequence state."""

    def decoded(self, iterations: int) -> None:
        """A decode run of a plan with ``window > 1`` ran ``iterations`` iterations (multi-step schedulers
        track where their window stands; the replica calls this before it retires what finished)."""

    def take_chunk(self, rid: int, tokens: int) -> PrefillChunk:
        """The next ``tokens`` of ``rid``'s prefill, taken as :meth:`plan` would take them (its blocks, the
        scheduler's own state), for a chunk run the replica runs on the scheduler's word (``Plan.chunk_repeats``,
        ``Plan.chunk_final``); only schedulers that set those need it."""
        raise NotImplementedError(f"{type(self).__name__} plans no chunk runs")

    def retire(self, finished: np.ndarray) -> None:
        """Sequences that generated their last token leave the batch and free their KV."""
        st = self.state
        if self.pads_finished:
            if all(st.table.generated[r] >= st.table.output[r] for r in st.running):
                for r in st.running:
                    st.blocks.release(r)
                st.running.clear()
                st.changed()
            return
        gone = set(finished.tolist())
        for r in gone:
            st.blocks.release(r)
        st.running[:] = [r for r in st.running if r not in gone]
        st.changed()

    def fits_with_watermark(self, blocks_needed: int, watermark_blocks: int) -> bool:
        return self.state.blocks.free_blocks - blocks_needed >= watermark_blocks


SCHEDULERS: Registry[type[Scheduler]] = Registry("scheduler")
