"""The optimal-throughput bound of a multi-pool run (see :mod:`simulator.throughput_bound` for one pool).

Why a min over stages: in a disaggregated system every request passes through each stage -- prefill on the
prefill pool, the KV hand-off over the link, decode on the decode pool -- so the system can finish requests
no faster than its slowest stage does. Each pool's bound is the single-pool bound of the work of its phase only
(:func:`~simulator.throughput_bound.workload_features` with ``phase``: a prefill pool's prompts and first
tokens, a decode pool's later tokens; a mixed pool both), in output tokens of whole requests per second; the
link's bound is the hand-offs' occupancy of the NICs (each transfer's latency + bytes / bandwidth, as the
engine charges it) spread over ``min(sending, receiving)`` replicas that can transfer at once. Per resource,
the system's bound is the least over the stages; the link counts as network.

Where a bound is not computed (NaN): a Splitwise deployment with a mixed pool (how work splits between pools
is decided at run time), and encoder pools (EPD bounds its language-model pools and the KV link only). Pools
sharing GPUs (semi-PD) are bounded as one colocated pool on the whole GPUs: no SM split can beat that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from simulator.throughput_bound import ThroughputBound, throughput_bound

if TYPE_CHECKING:
    from simulator.pools.engine import PoolEngine

PHASE_OF_ROLE = {"prefill": "prefill", "decode": "decode", "mixed": "both"}


@dataclass
class PoolsBound:
    """The system's bound per resource, and each stage's overall bound (pool name or ``link``)."""

    total: ThroughputBound
    stages: dict[str, float] = field(default_factory=dict)


NAN_BOUND = ThroughputBound(math.nan, math.nan, math.nan)


def pools_bound(engine: PoolEngine, arrived: int) -> PoolsBound:
    """The bound of serving the run's first ``arrived`` requests on ``engine``'s pools."""
    pools = engine.pools_plan
    table = engine.table
    prompt, output = table.prompt[:arrived], table.output[:arrived]
    roles = [rt.role for rt in engine.pools]
    if "mixed" in roles and len([r for r in roles if r != "encode"]) > 1:
        return PoolsBound(NAN_BOUND)  # Splitwise's mixed pool: the split between pools is dynamic
    runtimes = [rt for rt in engine.pools if rt.role != "encode"]
    if pools.shared_kv_blocks:  # semi-PD: the workers share the GPUs; bound them as one colocated pool
        rt = next(r for r in runtimes if r.role == "prefill")
        system = pools.base_systems[rt.plan.index]
        dep = system.deployment
        b = throughput_bound(system, prompt, output, dep.num_replicas * dep.pp, rt.blocks_per_engine * dep.block_size)
        return PoolsBound(b, {r.name: b.output_tps for r in runtimes})
    stages: dict[str, ThroughputBound] = {}
    for rt in runtimes:
        system, dep = rt.plan.system, rt.plan.system.deployment
        stages[rt.name] = throughput_bound(
            system, prompt, output, dep.num_replicas * dep.pp, rt.blocks_per_engine * dep.block_size,
            phase=PHASE_OF_ROLE[rt.role],
        )
    link = _link_bound(engine, arrived, float(np.sum(output)))
    total = ThroughputBound(
        min(b.compute_tps for b in stages.values()),
        min(b.memory_tps for b in stages.values()),
        min([b.network_tps for b in stages.values()] + [link]),
    )
    out = {name: b.output_tps for name, b in stages.items()}
    if math.isfinite(link):
        out["link"] = link
    return PoolsBound(total, out)


def _link_bound(engine: PoolEngine, arrived: int, total_out: float) -> float:
    """Output tokens/s the KV hand-offs allow: NIC occupancy of every transfer, over the transfers that can run
    at once (inf without hand-offs)."""
    log = engine.log
    moved = np.flatnonzero(log.count[:arrived] > 0)
    if not len(moved):
        return math.inf
    busy = 0.0
    lanes = math.inf
    for (src, dst), link in engine.pools_plan.links.items():
        if src == dst:
            continue
        sender, receiver = engine.pools_plan.pools[src], engine.pools_plan.pools[dst]
        mine = [r for r in moved if engine.pool_of_replica[int(log.source[r])] == src
                and engine.pool_of_replica[int(engine.table.replica[r])] == dst]
        if not mine:
            continue
        busy += sum(link.transfer_s(float(log.nbytes[r]) / max(int(log.count[r]), 1)) * int(log.count[r])
                    for r in mine)
        lanes = min(lanes, min(sender.system.deployment.num_replicas, receiver.system.deployment.num_replicas))
    if busy <= 0 or not math.isfinite(lanes):
        return math.inf
    return total_out * lanes / busy
