"""Run one scenario: workload -> router -> replicas -> records.

The SimPy environment holds three kinds of process: the arrival process (open
loop: requests at their trace or sampled times; closed loop: each client
submits its next request when the previous one finishes, after a think time),
and one :class:`~simulator.replica.Replica` loop per replica. Everything a run
mutates is created here and owned by this call, so simulations are
independent and deterministic for a seed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import simpy

from simulator.clients import ClosedLoopClients, arrived_requests
from simulator.config.schema import Scenario
from simulator.costmodel.thermal import bind_thermal
from simulator.kvcache import BlockManager, RetainingBlockManager
from simulator.metrics.result import RunInfo, SimulationResult
from simulator.metrics.thermal_power import thermal_power
from simulator.power_units import cost_settings
from simulator.prepare import Prepared, prepare  # noqa: F401  (Prepared: re-exported)
from simulator.recorder import Recorder
from simulator.replica import Replica
from simulator.requests import RequestTable
from simulator.schedulers.preemption import swap_space_for, total_stats
from simulator.system import System
from simulator.throughput_bound import throughput_bound
from traces.stream import RequestStream


@dataclass
class RunOutput:
    """A finished simulation: its records plus what was decided before it started."""

    result: SimulationResult
    system: System
    rejected: int
    workload: str
    table: RequestTable  # final per-request state, for invariant checks
    kv_blocks_used_at_end: list[int]
    kv_blocks_peak: list[int]
    pools: object = None  # a multi-pool run's PoolSet (simulator.pools.build); None for one pool
    swap_spaces: list = field(default_factory=list)  # each engine's SwapSpace (None: recompute), for checks


def simulate(
    scenario: Scenario,
    *,
    system: System | None = None,
    stream: RequestStream | None = None,
    preload_arrivals: bool = True,
    chunk_runs: bool = True,
) -> RunOutput:
    """Simulate ``scenario`` and return its records.

    ``preload_arrivals=False`` forces the event-per-arrival path even for
    oblivious routers, and ``chunk_runs=False`` one wait per chunked-prefill
    iteration (``Replica._chunk_run``); the tests use them to show both paths agree.
    """
    if scenario.pools is not None:
        from simulator.pools.engine import simulate_pools

        return simulate_pools(scenario, stream=stream)
    wall0 = time.perf_counter()
    prep = prepare(scenario, system=system, stream=stream)
    system, stream, mask = prep.system, prep.stream, prep.unservable
    engines, blocks_per_engine = prep.engines, prep.blocks_per_engine
    dep = system.deployment
    sim = scenario.simulation
    keep = ~mask
    table = RequestTable(stream.arrival_s[keep], stream.prompt_tokens[keep], stream.output_tokens[keep])

    env = simpy.Environment()
    recorder = Recorder()
    closed = stream.closed_loop
    rng = np.random.default_rng(np.random.SeedSequence(scenario.seed).spawn(2)[1])
    replicas: list[Replica] = []
    router = system.router_cls(replicas, rng)

    clients = None
    on_finish = None
    if closed is not None:
        clients = ClosedLoopClients(env, table, closed, lambda rid: replicas[router.pick(rid)].submit(rid),
                                    seed=scenario.seed)
        on_finish = clients.on_finish

    make_scheduler = lambda state: system.scheduler_cls(system.scheduler_params, state)  # noqa: E731
    cost = system.cost_model()
    if system.scheduler_cls.lone_prefills:
        cost.prime_lone_prefills(table.prompt)
    step = None
    if system.step is not None:
        # The step model's own random draws (per-request acceptance) come from a stream of their own,
        # so switching a technique on leaves the workload and the router's draws as they were.
        rng_step = np.random.default_rng(np.random.SeedSequence(scenario.seed, spawn_key=(2,)))
        step = system.step.bind(table, rng_step, cost)
    # A technique's KV retention (eviction, compression), bound to this simulation's requests.
    retention = system.kv_policy.bind(table) if system.kv_policy is not None else None
    # A technique's admission hook (prefix caching): each engine's block manager then reports cached tokens.
    prefix = None
    if system.admit is not None:
        hashes = stream.prefix_block_hashes
        kept = None if hashes is None else [h for h, k in zip(hashes, keep.tolist(), strict=True) if k]
        prefix = system.admit.bind(table, kept, stream.prefix_block_tokens, lambda: env.now)
    clock = lambda: env.now  # noqa: E731  (a throttled device's heat is kept per replica, on the sim clock)
    for i in range(engines):
        if prefix is not None:
            blocks = prefix.block_manager(blocks_per_engine, dep.block_size, table)
        elif retention is None:
            blocks = BlockManager(blocks_per_engine, dep.block_size, table)
        else:
            blocks = RetainingBlockManager(blocks_per_engine, dep.block_size, table, retention)
        if step is not None:
            blocks.step_tokens = 1 + step.max_lookahead
        replicas.append(
            Replica(env, i, table, blocks, bind_thermal(cost, system.device.thermal, clock), make_scheduler, recorder,
                    on_finish, system.model.max_context,
                    warmup_s=sim.warmup_s, step=step, kv=retention if prefix is None else prefix.attention(blocks),
                    swap=swap_space_for(system, dep.pp))
        )

    if chunk_runs and system.gate is None:  # a gate's scheduler wrapper may act between iterations
        for replica in replicas:
            replica.chunk_runs = True
            replica.stops = sim.max_time_s is not None
    if system.gate is not None:  # a technique gates which waiting requests each replica batches (CoE)
        gate = system.gate.bind(table, scenario.seed)
        for replica in replicas:
            gate.attach(replica)
    if prefix is not None and prefix.load is not None:  # remote loads, chunk copies: they delay their iteration
        for replica in replicas:
            replica.load = prefix.load
    if stream.image_tokens is not None:  # multimodal: the vision encoder runs on the replica before a prefill
        from simulator import encoder

        encoder.attach(replicas, scenario.workload.images, system, stream.image_tokens[keep])

    if closed is None and router.oblivious and preload_arrivals:
        where = router.assign(table.n)
        for i, replica in enumerate(replicas):
            mine = np.flatnonzero(where == i)
            replica.preload(mine, table.arrival_s[mine])
    elif closed is None:
        env.process(_open_loop_arrivals(env, table, replicas, router))
    else:
        clients.start()

    if sim.max_time_s is not None:
        env.run(until=sim.max_time_s)
    else:
        env.run()

    # Requests not yet arrived when max_time_s stopped the run are dropped from the records and counted.
    arrived = arrived_requests(table, clients, env.now, sim.max_time_s)
    swaps = total_stats([r.state.swap for r in replicas])
    bound = throughput_bound(system, table.prompt[:arrived], table.output[:arrived], engines,
                             blocks_per_engine * dep.block_size)
    wall = time.perf_counter() - wall0
    info = RunInfo(
        scenario_name=scenario.name,
        seed=scenario.seed,
        model=system.model.name,
        device=system.device.name,
        engine=system.engine_name,
        # Metrics see one entry per engine; with pp > 1 each engine keeps tp GPUs (one per stage
        # at a time) busy, so GPU counts, busy GPU-seconds, energy and cost stay exact.
        num_replicas=engines,
        gpus_per_replica=dep.tp,
        peak_flops_per_gpu=system.roofline.peak_flops,
        mem_bandwidth_per_gpu=system.roofline.memory_bandwidth,
        price_usd_per_gpu_hour=system.device.price_usd_per_hour,
        tdp_w=system.device.tdp_w,
        idle_w=system.device.idle_w,
        kv_capacity_tokens_per_replica=blocks_per_engine * dep.block_size,
        kv_block_size=dep.block_size,
        weights_bytes_per_gpu=system.memory.weights_bytes,
        gpu_memory_bytes=system.memory.gpu_memory_bytes,
        warmup_s=sim.warmup_s,
        # Devices techniques add per replica, spread over its pp engines like its GPUs.
        extra_usd_per_replica_hour=system.extra_usd_per_replica_hour / dep.pp,
        extra_idle_w_per_replica=sum(d.count * d.idle_w for d in system.extra_devices) / dep.pp,
        extra_tdp_w_per_replica=sum(d.count * d.tdp_w for d in system.extra_devices) / dep.pp,
        wall_time_s=wall,
        sim_end_s=float(env.now),
        not_arrived=table.n - arrived,
        swap_outs=swaps.swap_outs,
        swap_ins=swaps.swap_ins,
        swap_bytes=(swaps.bytes_out + swaps.bytes_in) * dep.tp * dep.pp,  # every GPU moves its own shard
        swap_recompute_fallbacks=swaps.fallbacks,
        swap_transfer_s=swaps.transfer_s,
        bound_compute_tps=bound.compute_tps,
        bound_memory_tps=bound.memory_tps,
        bound_network_tps=bound.network_tps,
        units=prep.units,
        capex_usd_per_gpu=prep.capex_usd_per_gpu,
        cost=cost_settings(scenario.cost),
        thermal=thermal_power(system.device.thermal),
    )
    frame = table.to_frame()
    if stream.image_tokens is not None:
        frame["image_tokens"] = stream.image_tokens[keep]
    if prefix is not None:
        frame["cached_tokens"] = prefix.cached_tokens  # prompt tokens hit at each request's first admission
        if prefix.remote is not None:  # beyond the local hit: found in the remote store, and loaded from it
            frame["remote_found_tokens"] = prefix.remote.found_tokens
            frame["remote_loaded_tokens"] = prefix.remote.loaded_tokens
            frame["remote_loaded_bytes"] = prefix.remote.loaded_bytes
        if prefix.host is not None:  # beyond the HBM hit: found in the replica's host memory, and loaded from it
            frame["host_found_tokens"] = prefix.host.found_tokens
            frame["host_loaded_tokens"] = prefix.host.loaded_tokens
            frame["host_loaded_bytes"] = prefix.host.loaded_bytes
        if prefix.reused_tokens is not None:  # non-prefix chunks reused (first admission)
            frame["reused_tokens"] = prefix.reused_tokens
    if system.gate is not None:
        gate.annotate(frame)  # each request's expert and the model switch it triggered
    if arrived < table.n:
        frame = frame.iloc[:arrived]
    result = SimulationResult(frame, recorder.iterations_frame(), recorder.token_gaps(), info)
    return RunOutput(
        result, system, int(mask.sum()), stream.source, table,
        [r.blocks.used_blocks for r in replicas], [r.blocks.peak_used_blocks for r in replicas],
        swap_spaces=[r.state.swap for r in replicas],
    )


def _open_loop_arrivals(env: simpy.Environment, table: RequestTable, replicas: list[Replica], router):
    """Submit each request at its arrival time (simultaneous arrivals share one event)."""
    arrivals = table.arrival_s.tolist()
    pick = router.pick
    timeout = env.timeout
    for rid, at in enumerate(arrivals):
        delay = at - env.now
        if delay > 0:
            yield timeout(delay)
        replicas[pick(rid)].submit(rid)
