"""FastSwitch: fairness-driven context switching (Shen et al., "FastSwitch: Optimizing Context Switching
Efficiency in Fairness-aware Large Language Model Serving", arXiv 2411.18424, 2024).

Why: a first-come, first-served batch lets long requests hold their KV slots while new ones wait; a
fairness-aware server instead re-ranks requests periodically by the service they have received and swaps the
most-served running sequences out to host memory for the least-served waiting ones. How often it can afford to
do so depends on what a context switch costs -- which is what FastSwitch optimises (block groups copied as one,
copies overlapped with compute).

How capsim models it: vLLM's scheduler (:mod:`simulator.schedulers.vllm`) plus a switch at every time slice.
Every ``time_slice_s`` of a busy replica with requests waiting, the waiting queue is ordered by attained
service (tokens generated so far: the least-attained-service discipline; first come, first served among
equals) and, while the least-served waiting request cannot be admitted (no KV blocks above the watermark, or no
batch slot) and has received at least ``switch_margin_tokens`` fewer tokens than the most-served decoding one,
that one is switched out (at most ``max_switches`` per slice). A switched-out
sequence goes through the swap machinery of :mod:`simulator.schedulers.preemption` (its blocks copied to host
memory, back when it is admitted again; recompute when the swap space is full), so ``swap_copy`` and
``swap_overlap`` price the switch: by default FastSwitch's block groups (``sequence``) and asynchronous copies.
A decode run with requests waiting ends at the slice boundary, so the switch happens on time.

The priority FastSwitch's scheduler uses is a parameter of its fairness policy; capsim's choice (tokens
generated) and the slice length are inputs, not values from the paper.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from capsim.types import Count, Flag
from simulator.schedulers.base import SCHEDULERS, Plan
from simulator.schedulers.vllm import VllmParams, VllmScheduler


class FastSwitchParams(VllmParams):
    preemption_mode: Literal["recompute", "swap"] = Field(
        "swap",
        description="What a switched-out (or preempted) sequence's KV does: 'swap' to host memory and back "
        "(FastSwitch's context switch), or 'recompute'.",
    )
    swap_overlap: Flag = Field(
        True, description="Copies run asynchronously beside compute (FastSwitch); false: the next iteration waits."
    )
    swap_copy: Literal["block", "sequence"] = Field(
        "sequence",
        description="Copy granularity: 'sequence' moves a sequence's blocks as one group per layer (FastSwitch's "
        "block groups); 'block' pays the link latency per block (vLLM v0).",
    )
    time_slice_s: float = Field(
        0.5, gt=0, allow_inf_nan=False,
        description="Seconds between fairness re-rankings of a replica's requests (an input; the paper's "
        "priority-update period depends on its fairness policy).",
    )
    switch_margin_tokens: Count = Field(
        32, ge=1,
        description="A running sequence is switched out for a waiting one only when it has generated at least "
        "this many more tokens (avoids swapping sequences of nearly equal service back and forth).",
    )
    max_switches: Count = Field(8, ge=1, description="Most sequences switched out per time slice.")
    num_scheduler_steps: Count = Field(
        1,
        ge=1,
        le=1,
        description="Multi-step scheduling (the vllm scheduler's decode windows) is not modelled beside fairness "
        "switches, which re-rank between any two iterations: 1 only.",
    )


@SCHEDULERS.register("fastswitch", aliases=("fairness", "fastswitch-fair"))
class FastSwitchScheduler(VllmScheduler):
    """vLLM's batching with fairness-driven context switches (least attained service) every time slice."""

    Params = FastSwitchParams

    def __init__(self, params: FastSwitchParams, state):
        super().__init__(params, state)
        self._next_switch = 0.0
        self.switches = 0  # sequences switched out by the fairness policy (beside memory preemptions)

    def plan(self) -> Plan | None:
        st = self.state
        if st is not None and st.waiting and st.running and st.now >= self._next_switch:
            self._switch()
            self._next_switch = st.now + self.params.time_slice_s
        plan = super().plan()
        if plan is not None and plan.repeat and st.waiting:
            plan.until_s = self._next_switch  # the run stops at the slice boundary to re-rank
        return plan

    def _switch(self) -> None:
        """Re-rank by attained service; while the least-served waiting request cannot be admitted (no blocks
        above the watermark, or no batch slot), swap the most-served decoding sequence out for it."""
        st, p = self.state, self.params
        served, blocks = st.table.generated, st.blocks
        order = sorted(st.waiting, key=lambda r: int(served[r]))  # stable: FCFS among equals
        victims = sorted((r for r in st.running if served[r] > 0), key=lambda r: -int(served[r]))
        free = blocks.free_blocks - int(p.watermark * blocks.total_blocks)
        seats = p.max_num_seqs - len(st.running)
        out: list[int] = []
        for w in order:
            need = blocks.blocks_to_admit(w, st.table.prefill_target(w))
            while (need > free or seats < 1) and victims and len(out) < p.max_switches:
                r = victims[0]
                if int(served[r]) - int(served[w]) < p.switch_margin_tokens:
                    break
                victims.pop(0)
                free += blocks.held_by(r)
                seats += 1
                out.append(r)
            if need > free or seats < 1:
                break  # the rest wait behind it, as vLLM's queue does
            free -= need
            seats -= 1
        for r in out:
            self._switch_out(r)
        if out or order != list(st.waiting):
            st.waiting.clear()
            st.waiting.extend(sorted(order + out, key=lambda r: int(served[r])))

    def _switch_out(self, rid: int) -> None:
        """Take ``rid`` out of the batch; its KV goes to the host swap space (or is dropped: recompute)."""
        st = self.state
        st.running.remove(rid)
        st.changed()
        if st.swap is not None:
            st.swap.swap_out(rid, int(st.table.kv_tokens[rid]), st.blocks.held_by(rid), st.now)
        st.blocks.release(rid)
        st.table.preemptions[rid] += 1
        self.switches += 1
        self.on_preempted(rid)
