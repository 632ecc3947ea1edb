"""Intra-GPU partitioning: a prefill worker and a decode worker on the same GPUs, splitting their SMs and sharing
one copy of the weights and one KV cache (semi-PD, Hong et al. 2025; Nexus, Shi et al. 2025).

Why not two pools: disaggregation across GPUs pays a KV transfer per request and keeps two weight copies;
partitioning keeps both phases on every GPU, each with its own batch and scheduler, so neither stalls the other
(no prefill in the decode batch), with no transfer. What it pays instead is speed: each phase gets a share of
the SMs, and both draw on the same HBM.

How capsim prices a worker with SM share ``s`` (the rest of the cost model is unchanged):

* **Compute** scales with the SMs: peak FLOP/s x ``s``.
* **Memory bandwidth** does not: a fraction ``bandwidth_saturation`` of the SMs already keeps enough loads in
  flight to saturate HBM, so a worker alone attains ``B x min(1, s / bandwidth_saturation)`` -- the concave,
  diminishing-returns curve of latency against SMs that Nexus describes. ``bandwidth_saturation`` is an input,
  not a derived figure: measure it (a bandwidth-bound kernel on a growing share of SMs) for your GPU.
* **Contention.** When both workers are busy and their attainable bandwidths add up to more than ``B``, they
  share it in that proportion; a worker whose partner is idle draws what its SMs can alone. The switch happens
  at iteration boundaries: when a worker starts or stops working, its partner's run in flight ends at its next
  boundary and is re-priced (:class:`Contention`).
* **Memory.** One copy of the weights; the KV cache is what is left after the weights and *both* workers'
  activation reserves, shared block by block (a request's KV never moves: the hand-off is free).

The split is static (``prefill_share``); semi-PD's SLO-aware dynamic re-split is not modelled yet.
"""

from __future__ import annotations

from dataclasses import replace

from pydantic import Field

from capsim.errors import CapsimError, DoesNotFitError
from simulator.memory_plan import GIB
from simulator.pools.systems import SERVING_SYSTEMS, PoolView, ServingParams, ServingSystem
from simulator.system import System


class PartitionParams(ServingParams):
    prefill_share: float = Field(
        0.5, gt=0, lt=1, allow_inf_nan=False,
        description="Fraction of each GPU's SMs given to the prefill worker; the decode worker gets the rest.",
    )
    bandwidth_saturation: float = Field(
        0.5, gt=0, le=1, allow_inf_nan=False,
        description="Fraction of the SMs at which a memory-bound kernel reaches the full HBM bandwidth (an input: "
        "measure it for your GPU; 0.5 is a placeholder, not a published figure).",
    )


@SERVING_SYSTEMS.register("semi-pd", aliases=("intra-gpu", "sm-partition", "nexus"))
class SemiPD(ServingSystem):
    """Prefill and decode workers side by side on the same GPUs, SMs split between them, one weight copy and one
    KV cache shared (semi-PD, Nexus): no prefill stalls the decode batch, and no KV moves."""

    Params = PartitionParams
    roles = ("prefill", "decode")
    required = ("prefill", "decode")
    colocated = True
    summary = "prefill and decode workers share each GPU: SM split, one weight copy, one KV cache, no transfer"
    sources = (
        "Hong et al., semi-PD: Towards Efficient LLM Serving via Phase-Wise Disaggregated Computation and Unified "
        "Storage, arXiv 2504.19867, 2025",
        "Shi et al., Nexus: Proactive Intra-GPU Disaggregation of Prefill and Decode in LLM Serving, arXiv "
        "2507.06608, 2025",
    )

    def entry(self, rid: int) -> PoolView:
        return self.by_role["prefill"][0]

    def after_prefill(self, rid: int, source: PoolView) -> PoolView | None:
        return self.by_role["decode"][0]


def attainable_shares(params: PartitionParams, *, both_busy: bool = True) -> tuple[float, float, float, float]:
    """(compute, bandwidth) shares of the prefill and the decode worker: ``(cp, bp, cd, bd)``; with
    ``both_busy`` the two share the HBM, otherwise each gets what its SMs can draw alone."""
    sp = params.prefill_share
    sd = 1.0 - sp
    ap = min(1.0, sp / params.bandwidth_saturation)
    ad = min(1.0, sd / params.bandwidth_saturation)
    total = ap + ad
    if both_busy and total > 1.0:  # they share the HBM in proportion to what each could draw alone
        ap, ad = ap / total, ad / total
    return sp, ap, sd, ad


class Contention:
    """Switches each worker's pricing between "alone" and "sharing the HBM" as its partner on the same GPUs
    starts and stops working (each worker is told through ``Replica.on_busy``). A worker whose pricing changes
    is poked, so a decode run in flight ends at its next iteration boundary and is re-priced from there."""

    def __init__(self, pairs, alone: dict[str, object], shared: dict[str, object]):
        self.partner = {}
        self.role = {}
        for prefill, decode in pairs:
            self.partner[id(prefill)], self.partner[id(decode)] = decode, prefill
            self.role[id(prefill)], self.role[id(decode)] = "prefill", "decode"
            for worker in (prefill, decode):
                worker.on_busy = self.changed
                worker.cost = alone[self.role[id(worker)]]
        self.alone, self.shared = alone, shared

    def changed(self, worker, busy: bool) -> None:
        partner = self.partner[id(worker)]
        table = self.shared if busy else self.alone
        cost = table[self.role[id(partner)]]
        if partner.cost is not cost:
            partner.cost = cost
            if partner._busy:
                partner.poke()


def partitioned(system: System, compute: float, bandwidth: float) -> System:
    """``system`` with its GPU's peak FLOP/s and HBM bandwidth scaled to one worker's shares."""
    roof = system.roofline
    return replace(system, roofline=replace(roof, peak_flops=roof.peak_flops * compute,
                                            memory_bandwidth=roof.memory_bandwidth * bandwidth,
                                            compute_share=compute, bandwidth_share=bandwidth))


def shared_kv_blocks(prefill: System, decode: System) -> int:
    """KV blocks per engine of a GPU group running both workers: memory less one weight copy and both reserves."""
    for field in ("device", "tp", "pp", "block_size", "kv_dtype", "weight_dtype", "num_replicas"):
        a = getattr(prefill.deployment, field) if field != "device" else prefill.device.name
        b = getattr(decode.deployment, field) if field != "device" else decode.device.name
        if a != b:
            raise CapsimError(
                f"the prefill and decode workers of semi-pd share GPUs, so their {field} must match "
                f"(prefill {a!r}, decode {b!r})",
                where=f"pools.*.{field}", fix=f"give both pools the same {field}",
            )
    mem_p, mem_d = prefill.memory, decode.memory
    kv_bytes = mem_d.usable_bytes - mem_d.weights_bytes - mem_d.reserve_bytes - mem_p.reserve_bytes
    blocks = int(kv_bytes // (mem_d.kv_bytes_per_token * mem_d.block_size)) if kv_bytes > 0 else 0
    if blocks < 1:
        raise DoesNotFitError(
            f"{decode.model.name} on {decode.device.name}: one weight copy ({mem_d.weights_bytes / GIB:.1f} GiB) "
            f"and both workers' activation reserves ({(mem_p.reserve_bytes + mem_d.reserve_bytes) / GIB:.1f} GiB) "
            "leave no room for the KV cache",
            where="pools", fix="raise tp or memory_utilization, or lower the workers' token budgets",
        )
    return blocks // decode.deployment.pp
