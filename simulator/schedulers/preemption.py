"""Preemption by swap: a preempted sequence's KV blocks go to host memory over PCIe instead of being dropped.

Why a second preemption mode: vLLM's default drops a victim's KV and re-prefills prompt + generated tokens
when it resumes (recompute); its v0 engine could instead copy the blocks to a host "swap space"
(``--preemption-mode swap``, ``--swap-space`` GiB per GPU) and copy them back before the sequence
resumes, with no re-prefill. Which wins depends on the context and the host link: a recompute costs a
prefill of the whole context (quadratic attention, linear GEMMs), a swap costs two transfers of its KV bytes
over PCIe (linear) plus a fixed cost per copy. FastSwitch (Shen et al., "FastSwitch: Optimizing Context Switching Efficiency in Fairness-aware Large
Language Model Serving", arXiv 2411.18424, 2024) makes swapping cheaper by
copying block groups instead of single blocks and by running the copies asynchronously beside compute.

How capsim models it (per replica, one :class:`SwapSpace`):

* **Capacity.** ``swap_space_gib`` of host memory per GPU holds ``floor(GiB / block bytes)`` blocks; a
  block's bytes per GPU are ``block_size x`` the memory plan's KV bytes per token per GPU (each GPU of the
  TP group swaps its own shard over its own PCIe link, in parallel). A victim whose blocks do not fit falls
  back to recompute (counted).
* **Transfer time** of ``n`` blocks: ``copies x latency + n x block bytes / PCIe bandwidth`` with the
  device's ``interconnect.pcie_gbs`` and ``link_latency_us`` (:class:`hwmodels.links.Link`). ``copies`` is
  ``2 x layers x n`` with ``swap_copy: block`` (vLLM v0 copies each block of each layer's K and V cache
  separately) or ``2 x layers`` with ``swap_copy: sequence`` (FastSwitch's contiguous block groups).
* **Timeline.** ``swap_overlap: false`` (vLLM v0): the iteration after a swap-out or swap-in waits for the
  copy. ``true`` (FastSwitch's asynchronous swapping): copies queue on the GPU's copy engine beside compute;
  a swap-out costs the replica nothing unless a later copy queues behind it, and the iteration that resumes
  a swapped-in sequence waits only until that sequence's copy is done.
* **Resume.** The sequence's blocks are allocated again and it continues from the token it had reached: a
  one-token step over its restored context (a sequence preempted part-way through a chunked prefill
  continues the prefill where it stopped).

Not modelled: PCIe contention with other traffic; the copy engine reading freed GPU blocks while new
tokens are written into them (the overlapped mode frees them at once); pinned-memory limits of the host.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from capsim.types import Flag
from hwmodels.links import Link
from simulator.schedulers.base import SchedulerParams

if TYPE_CHECKING:
    from simulator.system import System

GIB = 1024**3


class PreemptionParams(SchedulerParams):
    """Scheduler parameters of the preemption mode (schedulers that preempt inherit them)."""

    preemption_mode: Literal["recompute", "swap"] = Field(
        "recompute",
        description="What happens to a preempted sequence's KV: 'recompute' drops it and re-prefills prompt + "
        "generated tokens on resume (vLLM's default); 'swap' copies its blocks to host memory over PCIe and "
        "back before it resumes (vLLM --preemption-mode swap), falling back to recompute when the swap space "
        "is full.",
    )
    swap_space_gib: float = Field(
        4.0,
        ge=0,
        description="Host memory for swapped KV per GPU, GiB (vLLM --swap-space; used with preemption_mode swap).",
    )
    swap_overlap: Flag = Field(
        False,
        description="With preemption_mode swap: false blocks the next iteration for each copy (vLLM "
        "v0); true runs copies asynchronously on the copy engine beside compute, and only a resuming "
        "sequence waits for its own copy (FastSwitch).",
    )
    swap_copy: Literal["block", "sequence"] = Field(
        "block",
        description="Copy granularity with preemption_mode swap: 'block' pays the link latency per "
        "block per layer for K and V (vLLM v0); 'sequence' per layer for K and V, the blocks of a sequence "
        "moved as one contiguous group (FastSwitch's block groups).",
    )


@dataclass
class SwapStats:
    """What swapping did over a run (summed over replicas by :func:`total_stats`)."""

    swap_outs: int = 0
    swap_ins: int = 0
    bytes_out: float = 0.0
    bytes_in: float = 0.0
    fallbacks: int = 0  # victims recomputed because the swap space was full
    transfer_s: float = 0.0  # copy time, summed over copies (overlapped or not)
    peak_host_blocks: int = 0


@dataclass
class SwapSpace:
    """One replica's host swap space and copy timeline (see the module docstring)."""

    host_blocks: int
    block_bytes: float  # per GPU
    link: Link
    copies_per_block: float  # latency-paying copies per block moved (0 with sequence granularity)
    copies_per_sequence: float  # latency-paying copies per sequence moved
    overlap: bool
    held: dict[int, tuple[int, int]] = field(default_factory=dict)  # rid -> (KV tokens, blocks) on the host
    used_blocks: int = 0
    stall_until: float = 0.0  # the replica's next iteration may not start before this
    copy_free: float = 0.0  # when the copy engine finishes its queued copies (overlapped mode)
    stats: SwapStats = field(default_factory=SwapStats)

    def transfer_s(self, blocks: int) -> float:
        """Seconds to move ``blocks`` blocks one way."""
        copies = self.copies_per_sequence + self.copies_per_block * blocks
        return copies * self.link.latency_s + blocks * self.block_bytes / self.link.bandwidth

    def tokens(self, rid: int) -> int:
        """KV tokens ``rid`` holds in host memory (0 if it is not swapped out)."""
        got = self.held.get(rid)
        return 0 if got is None else got[0]

    def _copy(self, seconds: float, now: float, resume: bool) -> None:
        self.stats.transfer_s += seconds
        if not self.overlap:  # the next iteration waits for every copy
            self.stall_until = max(now, self.stall_until) + seconds
            return
        self.copy_free = max(now, self.copy_free) + seconds
        if resume:  # the sequence cannot run before its blocks are back
            self.stall_until = max(self.stall_until, self.copy_free)

    def swap_out(self, rid: int, tokens: int, blocks: int, now: float) -> bool:
        """Copy ``rid``'s ``blocks`` blocks (``tokens`` tokens) to the host if they fit; False: recompute."""
        if tokens <= 0 or self.used_blocks + blocks > self.host_blocks:
            self.stats.fallbacks += tokens > 0
            return False
        self.held[rid] = (tokens, blocks)
        self.used_blocks += blocks
        if self.used_blocks > self.stats.peak_host_blocks:
            self.stats.peak_host_blocks = self.used_blocks
        self.stats.swap_outs += 1
        self.stats.bytes_out += blocks * self.block_bytes
        self._copy(self.transfer_s(blocks), now, resume=False)
        return True

    def swap_in(self, rid: int, now: float) -> int:
        """Copy ``rid``'s blocks back (the caller allocates them on the GPU); returns its KV tokens."""
        tokens, blocks = self.held.pop(rid)
        self.used_blocks -= blocks
        self.stats.swap_ins += 1
        self.stats.bytes_in += blocks * self.block_bytes
        self._copy(self.transfer_s(blocks), now, resume=True)
        return tokens


def swap_space_for(system: System, engines_per_replica: int) -> SwapSpace | None:
    """A fresh swap space for one engine of ``system``, or None when the scheduler recomputes."""
    p = system.scheduler_params
    if getattr(p, "preemption_mode", "recompute") != "swap":
        return None
    dep, mem, dev = system.deployment, system.memory, system.device
    block_bytes = dep.block_size * mem.kv_bytes_per_token  # per GPU
    # Each pipeline stage's GPUs hold their own layers' KV and swap space; an engine (a batch in flight)
    # gets its share of the blocks, as it does of the GPU's KV blocks.
    host_blocks = int(p.swap_space_gib * GIB // block_bytes) // max(1, engines_per_replica)
    layers = -(-system.model.num_layers // dep.pp)
    per_layer_copies = 2.0 * layers  # K and V caches of every layer
    link = Link("pcie", dev.pcie_bandwidth, dev.interconnect.link_latency_us * 1e-6)
    by_block = p.swap_copy == "block"
    return SwapSpace(
        host_blocks=host_blocks,
        block_bytes=block_bytes,
        link=link,
        copies_per_block=per_layer_copies if by_block else 0.0,
        copies_per_sequence=0.0 if by_block else per_layer_copies,
        overlap=bool(p.swap_overlap),
    )


def total_stats(spaces: list[SwapSpace | None]) -> SwapStats:
    """The replicas' swap statistics added up (peak host blocks: the largest of one replica)."""
    out = SwapStats()
    for s in spaces:
        if s is None:
            continue
        st = s.stats
        out.swap_outs += st.swap_outs
        out.swap_ins += st.swap_ins
        out.bytes_out += st.bytes_out
        out.bytes_in += st.bytes_in
        out.fallbacks += st.fallbacks
        out.transfer_s += st.transfer_s
        out.peak_host_blocks = max(out.peak_host_blocks, st.peak_host_blocks)
    return out


__all__ = ["PreemptionParams", "SwapSpace", "SwapStats", "swap_space_for", "total_stats"]
