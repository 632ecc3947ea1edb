"""Simulate a multi-pool deployment: replicas of several pools, and KV hand-offs between them over links.

The same :class:`~simulator.replica.Replica` loop runs every replica of every pool; what is new is the path a
request takes (:mod:`simulator.pools.systems` decides it) and the hand-off:

1. A prefill replica completes a request's prefill -- the request's first token is out (TTFT ends here, as
   DistServe and Splitwise count it) -- and the request leaves its batch, its KV still held there.
2. The serving system names the pool that decodes it, and that pool's router a replica. The request joins the
   replica's *inbox*: it is granted when the receiving scheduler has the KV blocks and a batch slot free (pull,
   as DistServe's decode instances fetch KV when they have memory; until then the prefill replica's memory is the
   queue, so a congested decode pool pushes back on prefill).
3. The transfer holds the sending replica's NICs and then the receiving replica's (each a SimPy resource, so
   concurrent transfers queue behind each other) for ``latency + bytes / bandwidth``. When it ends, the sender
   frees the blocks and the request joins the receiver's batch at its next iteration boundary -- without a
   prefill: its KV is there.

Every request's KV leaves one pool and arrives in the next exactly once; ``tests/test_pools.py`` checks that,
causality per stage, link bytes and every engine invariant in every pool.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import simpy

from simulator.admission import enforce, unservable_mask
from simulator.clients import ClosedLoopClients, arrived_requests
from simulator.config.schema import Scenario
from simulator.kvcache import BlockManager, RetainingBlockManager
from simulator.metrics.result import PoolInfo, RunInfo, SimulationResult
from simulator.pools.bound import pools_bound
from simulator.pools.build import PoolPlan, PoolSet, build_pools
from simulator.pools.migration import Migrator
from simulator.pools.priority import draw_priorities, queue_ahead
from simulator.power_units import cost_settings, gpu_capex, power_units
from simulator.recorder import Recorder
from simulator.replica import Replica
from simulator.requests import RequestTable
from simulator.schedulers.preemption import swap_space_for, total_stats
from traces.build import build_requests
from traces.stream import RequestStream


@dataclass
class PoolRuntime:
    """A pool during one simulation: its replicas (engines), router and inboxes."""

    plan: PoolPlan
    replicas: list[Replica] = field(default_factory=list)
    inboxes: list[Inbox] = field(default_factory=list)
    router: object = None
    blocks_per_engine: int = 0

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def role(self) -> str:
        return self.plan.role

    def queued_per_replica(self) -> float:
        """Requests routed here and not running yet, per replica: the load signal a serving system reads."""
        waiting = sum(len(r.state.waiting) for r in self.replicas) + sum(len(b.queue) for b in self.inboxes)
        return waiting / max(len(self.replicas), 1)


@dataclass
class HandoffLog:
    """Per-request record of the hand-off (NaN / -1 where a request had none)."""

    n: int

    def __post_init__(self) -> None:
        self.source = np.full(self.n, -1, dtype=np.int64)
        self.ready_s = np.full(self.n, np.nan)
        self.start_s = np.full(self.n, np.nan)
        self.end_s = np.full(self.n, np.nan)
        self.nbytes = np.zeros(self.n)
        self.count = np.zeros(self.n, dtype=np.int64)
        self.encode_start_s = np.full(self.n, np.nan)  # EPD: the encoder pool's batch start and end
        self.encode_end_s = np.full(self.n, np.nan)
        self.embed_end_s = np.full(self.n, np.nan)  # embeddings arrived at the prefill replica
        self.embed_bytes = np.zeros(self.n)


class SharedBlockManager(BlockManager):
    """The KV cache of GPUs two workers share: free blocks leave out what the decode worker's iteration or run in
    flight will still claim, so the prefill worker cannot take them meanwhile."""

    decode_worker: Replica | None = None

    @property
    def free_blocks(self) -> int:
        pending = self.decode_worker.pending_blocks if self.decode_worker is not None else 0
        return self.total_blocks - self.used_blocks - pending


class Inbox:
    """Requests waiting to move their KV into one receiving replica, granted first come, first served."""

    def __init__(self, engine: PoolEngine, replica: Replica, pool: PoolRuntime):
        self.engine = engine
        self.replica = replica
        self.pool = pool
        params = pool.plan.system.scheduler_params
        self.max_seqs = params.max_batch_seqs()
        # The receiving scheduler's own admission watermark, when it keeps one (vLLM does).
        self.watermark = int(getattr(params, "watermark", 0.0) * replica.blocks.total_blocks)
        self.queue: deque[tuple[int, Replica, float, float]] = deque()
        self.in_flight = 0

    def offer(self, rid: int, source: Replica, ready: float, head_start: float) -> None:
        self.queue.append((rid, source, ready, head_start))
        self.try_grant()

    def try_grant(self) -> None:
        """Start the transfers that fit now: blocks free above the watermark and a batch slot."""
        replica, queue = self.replica, self.queue
        state, scheduler = replica.state, replica.scheduler
        table = replica.table
        while queue:
            rid, source, ready, head_start = queue[0]
            if len(state.running) + len(replica._ready) + self.in_flight >= self.max_seqs:
                return
            kv = int(table.kv_tokens[rid])
            need = scheduler.blocks_to_receive(rid, kv)
            free = replica.blocks.free_blocks - replica.pending_blocks
            if free - need < self.watermark and (state.running or self.in_flight):
                return
            if need > free:
                return
            queue.popleft()
            held = source.blocks.detach(rid)
            scheduler.hold_received(rid, kv)
            self.in_flight += 1
            self.engine.env.process(self.engine.transfer(rid, source, self, held, kv, ready, head_start))


class PoolEngine:
    """Builds the replicas of every pool and runs the hand-offs between them."""

    def __init__(
        self,
        scenario: Scenario,
        pools: PoolSet,
        table: RequestTable,
        env: simpy.Environment,
        recorder: Recorder,
        rng: np.random.Generator,
        on_finish,
        images: np.ndarray | None = None,
    ):
        self.env = env
        self.table = table
        self.pools_plan = pools
        self.log = HandoffLog(table.n)
        self.pools: list[PoolRuntime] = []
        self.replicas: list[Replica] = []
        self.pool_of_replica: list[int] = []
        self.nic: list[simpy.Resource] = []  # one per physical replica (its NICs), shared by its pp engines
        self._nic_of: list[int] = []
        sim = scenario.simulation
        shared = pools.shared_kv_blocks
        shared_blocks: list[BlockManager] = []  # one per engine of a GPU group both workers share
        images_cfg = scenario.workload.images
        self.images_per_request = (images // images_cfg.tokens_per_image).tolist() if images is not None else None
        self.image_tokens = images
        self.encoders: list = []  # encoder replicas (EPD), outside `replicas` (they hold no KV)
        self.encode_pool: PoolRuntime | None = None
        for plan in pools.pools:
            system = plan.system
            dep = system.deployment
            if plan.role == "encode":
                self._encode_pool(plan, scenario, recorder, rng)
                continue
            rt = PoolRuntime(plan, blocks_per_engine=shared if shared else system.memory.kv_blocks // dep.pp)
            cost = system.cost_model()
            # Workers sharing GPUs get their cost models from the split (_price_by_contention), primed there.
            if system.scheduler_cls.lone_prefills and plan.role != "decode" and not shared:
                cost.prime_lone_prefills(table.prompt)
            make_scheduler = (lambda s: lambda state: s.scheduler_cls(s.scheduler_params, state))(system)
            step, retention = _bind_techniques(system, table, scenario.seed, cost)
            first_nic = len(self.nic)
            self.nic.extend(simpy.Resource(env, capacity=1) for _ in range(dep.num_replicas))
            for k in range(dep.num_replicas * dep.pp):
                index = len(self.pool_of_replica)
                if shared and k < len(shared_blocks):  # the other worker on these GPUs: same KV cache
                    blocks = shared_blocks[k]
                else:
                    if shared:
                        blocks = SharedBlockManager(rt.blocks_per_engine, dep.block_size, table)
                    elif retention is not None:
                        blocks = RetainingBlockManager(rt.blocks_per_engine, dep.block_size, table, retention)
                    else:
                        blocks = BlockManager(rt.blocks_per_engine, dep.block_size, table)
                    if step is not None:
                        blocks.step_tokens = 1 + step.max_lookahead
                    shared_blocks.append(blocks)
                replica = Replica(
                    env,
                    index,
                    table,
                    blocks,
                    cost,
                    make_scheduler,
                    recorder,
                    None,
                    system.model.max_context,
                    warmup_s=sim.warmup_s,
                    step=step,
                    kv=retention,
                    swap=swap_space_for(system, dep.pp),
                )
                rt.replicas.append(replica)
                self.replicas.append(replica)
                self.pool_of_replica.append(plan.index)
                self._nic_of.append(first_nic + k // dep.pp)
            rt.router = system.router_cls(rt.replicas, rng)
            self.pools.append(rt)
        self.system = pools.system_cls(pools.params, self.pools)
        # Multimodal requests: a language-model replica encodes the images of a request it prefills, unless an
        # encoder pool did (the flags are shared: a request is encoded once).
        self.encoded_flags = np.zeros(table.n, dtype=bool)
        if images is not None:
            from simulator import encoder

            for rt in self.pools:
                if rt.role != "encode":
                    encoder.attach(rt.replicas, images_cfg, rt.plan.system, images, self.encoded_flags)
        for rt in self.pools:
            if rt.role in ("decode", "mixed") and not shared:
                rt.inboxes.extend(Inbox(self, replica, rt) for replica in rt.replicas)
                for replica in rt.replicas:
                    replica.receiving = True
        if shared:  # the prefill worker's admissions must leave free what the decode worker's run will claim
            for rt in self.pools:
                if rt.role == "decode":
                    for replica in rt.replicas:
                        replica.blocks.decode_worker = replica
                        replica.receiving = True
        self._inbox_of = {id(b.replica): b for rt in self.pools for b in rt.inboxes}
        # Priority classes (Llumnix): drawn once per run from their own stream; None: every request alike.
        prio = pools.params.priorities
        self.priority = draw_priorities(prio, scenario.seed, table.n) if prio is not None else None
        self._queue_first = prio is not None and prio.queue_first
        self.draining: set[int] = set()  # replicas (engine indices) marked for scale-down
        self.migrators: list[Migrator] = []
        if pools.params.migration is not None:
            for rt in self.pools:
                if len(rt.replicas) > 1 and rt.role != "encode":
                    migrator = Migrator(self, rt, pools.params.migration)
                    self.migrators.append(migrator)
                    env.process(migrator.run())
            self._schedule_drains(pools.params.migration.drain)
        for rt in self.pools:
            if rt.role == "encode":
                continue
            for replica in rt.replicas:
                replica.on_finish = self._finished_here(replica, on_finish)
                if rt.role == "prefill":
                    replica.handoff = self._handoff_from(rt, replica)
        if shared:
            self._price_by_contention(table, scenario)
        self.layers = max(p.system.model.num_layers for p in pools.pools)

    def _encode_pool(self, plan: PoolPlan, scenario: Scenario, recorder: Recorder, rng) -> None:
        """An encoder pool (EPD): encoder replicas instead of language-model replicas."""
        from simulator.encoder import ImageEncoder
        from simulator.pools.encode import EncodeWorker

        system, dep = plan.system, plan.system.deployment
        if self.images_per_request is None:
            self.images_per_request = [0] * self.table.n
        encoder = ImageEncoder(scenario.workload.images, system)
        rt = PoolRuntime(plan)
        first_nic = len(self.nic)
        self.nic.extend(simpy.Resource(self.env, capacity=1) for _ in range(dep.num_replicas))
        for k in range(dep.num_replicas):
            index = len(self.pool_of_replica)
            worker = EncodeWorker(self, index, encoder, self.images_per_request, self.pools_plan.params.max_images,
                                  recorder)
            rt.replicas.append(worker)
            self.encoders.append(worker)
            self.pool_of_replica.append(plan.index)
            self._nic_of.append(first_nic + k)
        rt.router = system.router_cls(rt.replicas, rng)
        self.pools.append(rt)
        self.encode_pool = rt

    def encoded(self, rid: int, worker, start: float) -> None:
        """``worker`` has encoded ``rid``'s images: send the embeddings to a prefill replica."""
        self.encoded_flags[rid] = True
        self.log.encode_start_s[rid] = start
        self.log.encode_end_s[rid] = self.env.now
        dest = self.system.entry(rid)
        target = dest.replicas[dest.router.pick(rid)]
        self.env.process(self._send_embeddings(rid, worker, dest, target))

    def _send_embeddings(self, rid: int, worker, dest: PoolRuntime, target: Replica):
        enc_pool = self.pools[self.pool_of_replica[worker.index]]
        link = self.pools_plan.links[(enc_pool.plan.index, dest.plan.index)]
        model = dest.plan.system.model
        nbytes = float(self.image_tokens[rid]) * model.hidden_size * _act_bytes(dest.plan.system)
        with self.nic_of(worker).request() as out:
            yield out
            with self.nic_of(target).request() as inn:
                yield inn
                yield self.env.timeout(link.transfer_s(nbytes))
        self.log.embed_bytes[rid] = nbytes
        self.log.embed_end_s[rid] = self.env.now
        target.submit(rid)

    def _price_by_contention(self, table: RequestTable, scenario: Scenario) -> None:
        """Workers sharing GPUs: each priced alone or sharing the HBM, as its partner works or idles, at its
        pair's split (moved by semi-PD's controller when ``resplit`` is set)."""
        from capsim.errors import CapsimError
        from simulator.pools.partition import Contention, CostsBySplit, Resplitter

        params = self.pools_plan.params
        by_role = {rt.role: rt for rt in self.pools}
        base = {rt.role: self.pools_plan.base_systems[rt.plan.index] for rt in self.pools}
        costs = CostsBySplit(base["prefill"], base["decode"], params, table.prompt)
        pairs = list(zip(by_role["prefill"].replicas, by_role["decode"].replicas, strict=True))
        self.contention = Contention(pairs, costs, params.prefill_share)
        for prefill, decode in pairs:  # blocks a decode worker frees may be what its prefill worker waits for
            decode.on_finish = self._then_poke(decode.on_finish, prefill)
        self.resplitter = None
        if params.resplit is not None:
            slo = scenario.slo
            if slo.ttft_s is None or slo.tpot_s is None:
                raise CapsimError(
                    "semi-pd's dynamic re-split weighs each phase's latency against its target",
                    where="serving.resplit", fix="set slo.ttft_s and slo.tpot_s, or remove serving.resplit",
                )
            self.resplitter = Resplitter(self.env, self.contention, params.resplit, slo.ttft_s, slo.tpot_s,
                                         slo.attainment, table)
            self.env.process(self.resplitter.run())

    @staticmethod
    def _then_poke(on_finish, other: Replica):
        def finished(rids: np.ndarray, now: float) -> None:
            if on_finish is not None:
                on_finish(rids, now)
            other.poke()

        return finished

    def _schedule_drains(self, drains) -> None:
        """Start a drain process per ``serving.migration.drain`` entry, after checking it names a replica of a
        pool that migrates and leaves that pool a replica to serve."""
        from capsim.errors import CapsimError

        by_name = {m.pool.name: m for m in self.migrators}
        per_pool: dict[str, set[int]] = {}
        for i, d in enumerate(drains):
            where = f"serving.migration.drain.{i}"
            if d.pool is None and not self.migrators:
                raise CapsimError("draining moves requests between a pool's replicas; no pool has several",
                                  where=where, fix="add replicas to the pool, or remove the drain")
            migrator = by_name.get(d.pool) if d.pool is not None else self.migrators[0]
            if migrator is None:
                raise CapsimError(f"no pool {d.pool!r} with several replicas migrates requests", where=f"{where}.pool",
                                  fix=f"name one of: {', '.join(by_name) or '(none)'}")
            replicas = migrator.pool.replicas
            if d.replica >= len(replicas):
                raise CapsimError(f"pool {migrator.pool.name!r} has {len(replicas)} replicas (0 to "
                                  f"{len(replicas) - 1})", where=f"{where}.replica", fix="name one of them")
            marked = per_pool.setdefault(migrator.pool.name, set())
            marked.add(d.replica)
            if len(marked) >= len(replicas):
                raise CapsimError(f"draining every replica of pool {migrator.pool.name!r} leaves none to serve",
                                  where=f"{where}.replica", fix="drain fewer replicas")
            migrator.drain_at(replicas[d.replica], d.at_s)

    # ----------------------------------------------------------------- routing
    def route(self, rt: PoolRuntime, rid: int) -> Replica:
        """The replica of ``rt`` the pool's router picks for ``rid``; a draining replica takes none, so its
        pick goes to the least loaded replica that is not draining."""
        replica = rt.replicas[rt.router.pick(rid)]
        if self.draining and replica.index in self.draining:
            replica = min((r for r in rt.replicas if r.index not in self.draining), key=lambda r: r.outstanding)
        return replica

    def enqueue(self, replica: Replica, rid: int) -> None:
        """Submit ``rid`` to ``replica``, queued ahead of normal requests when it is high-priority."""
        replica.submit(rid)
        if self._queue_first:
            queue_ahead(replica.state.waiting, self.priority)

    def submit(self, rid: int) -> None:
        """A new request enters the pool the serving system names (an encoder pool first, if it has images)."""
        enc = self.encode_pool
        if enc is not None and self.images_per_request[rid]:
            enc.replicas[enc.router.pick(rid)].submit(rid)
            return
        rt = self.system.entry(rid)
        if self.priority is None and not self.draining:
            rt.replicas[rt.router.pick(rid)].submit(rid)
            return
        self.enqueue(self.route(rt, rid), rid)

    def _finished_here(self, replica: Replica, on_finish):
        inbox = self._inbox_of.get(id(replica))

        def finished(rids: np.ndarray, now: float) -> None:
            if inbox is not None:
                inbox.try_grant()  # blocks and batch slots were just freed
            if on_finish is not None:
                on_finish(rids, now)

        return finished

    def _handoff_from(self, rt: PoolRuntime, replica: Replica):
        if self.pools_plan.shared_kv_blocks:
            return self._local_handoff_from(rt, replica)

        def handoff(rids: list[int], end: float, start: float) -> None:
            for rid in rids:
                dest = self.system.after_prefill(rid, rt)
                target = self.route(dest, rid)
                target.outstanding += 1
                self.table.replica[rid] = target.index
                self.log.source[rid] = replica.index
                self.log.ready_s[rid] = end
                self._inbox_of[id(target)].offer(rid, replica, end, end - start)

        return handoff

    def _local_handoff_from(self, rt: PoolRuntime, replica: Replica):
        """Workers sharing GPUs and a KV cache: the decode worker on the same GPUs takes the request at once."""
        k = rt.replicas.index(replica)

        def handoff(rids: list[int], end: float, start: float) -> None:
            dest = self.system.after_prefill(rids[0], rt)
            target = dest.replicas[k]
            for rid in rids:
                target.outstanding += 1
                self.table.replica[rid] = target.index
                self.log.source[rid] = replica.index
                self.log.ready_s[rid] = end
                target.receive(rid)

        return handoff

    def nic_of(self, replica: Replica) -> simpy.Resource:
        """The NICs of the physical replica that ``replica`` (an engine) belongs to."""
        return self.nic[self._nic_of[replica.index]]

    def kv_bytes_per_token(self, rt: PoolRuntime) -> float:
        """KV bytes of one token, all layers, in ``rt``'s KV format (what a transfer moves): the deployment's
        ``kv_dtype`` scaled by its techniques (a cache quantised to 4 bits moves a quarter of bf16's bytes)."""
        system = rt.plan.system
        return system.model.kv_bytes_per_token(_kv_bytes(system)) * system.kv_bytes_scale

    @staticmethod
    def kept_tokens(replica: Replica, rid: int, logical: int) -> float:
        """Tokens of ``rid``'s KV that ``replica`` stores when it holds ``logical`` tokens: all of them, or the
        ones a KV eviction technique (or the model's sliding window) retained -- what a transfer moves."""
        retention = replica.kv
        return retention.retained_one(rid, logical) if retention is not None else logical

    # ---------------------------------------------------------------- transfer
    def transfer(
        self, rid: int, source: Replica, inbox: Inbox, held: int, kv_tokens: int, ready: float, head_start: float
    ):
        """Move ``rid``'s KV from ``source`` to ``inbox.replica`` (a SimPy process)."""
        env, log = self.env, self.log
        src_pool = self.pools[self.pool_of_replica[source.index]]
        dst = inbox.replica
        link = self.pools_plan.links[(src_pool.plan.index, inbox.pool.plan.index)]
        nbytes = self.kept_tokens(source, rid, kv_tokens) * self.kv_bytes_per_token(src_pool)
        with self.nic[self._nic_of[source.index]].request() as out:
            yield out
            with self.nic[self._nic_of[dst.index]].request() as inn:
                yield inn
                start = env.now
                duration = link.transfer_s(nbytes)
                if self.pools_plan.params.layerwise:
                    # Layers sent while the prefill ran hide behind it; at least the last layer's share is left.
                    overlap = max(head_start - (start - ready), 0.0)
                    duration = max(duration / self.layers, duration - overlap)
                yield env.timeout(duration)
        source.blocks.unpin(held)
        source.poke()  # its scheduler may have been waiting for these blocks
        log.start_s[rid] = start
        log.end_s[rid] = env.now
        log.nbytes[rid] += nbytes
        log.count[rid] += 1
        inbox.in_flight -= 1
        dst.receive(rid)
        inbox.try_grant()


def _bind_techniques(system, table: RequestTable, seed: int, cost):
    """A pool's runtime technique hooks bound to this simulation, as the single-pool engine binds them: its
    decode-step model (random draws from the stream the single-pool engine uses, so a one-pool run matches it)
    and its KV retention (a technique's eviction or the model's sliding window)."""
    step = None
    if system.step is not None:
        rng_step = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2,)))
        step = system.step.bind(table, rng_step, cost)
    retention = system.kv_policy.bind(table) if system.kv_policy is not None else None
    return step, retention


def _act_bytes(system) -> float:
    from simulator.costmodel.precision import bytes_per_element

    return bytes_per_element(system.deployment.activation_dtype, field="deployment.activation_dtype")


def _kv_bytes(system) -> float:
    from simulator.costmodel.precision import bytes_per_element

    return bytes_per_element(system.deployment.kv_dtype, field="deployment.kv_dtype")


def _unservable(pools: PoolSet, stream: RequestStream) -> tuple[np.ndarray, list]:
    """Requests some pool on their path could never serve: a prefill pool must hold the prompt's KV and run its
    prefill; a decode or mixed pool the whole sequence (and a re-prefill after preemption)."""
    prompt, output = stream.prompt_tokens, stream.output_tokens
    mask = np.zeros(len(prompt), dtype=bool)
    reasons = []
    for p in pools.pools:
        if p.role == "encode":  # an encoder holds no KV: any request's images can be encoded
            continue
        system, dep = p.system, p.system.deployment
        blocks = system.memory.kv_blocks // dep.pp
        out = np.ones_like(output) if p.role == "prefill" else output
        m, r = unservable_mask(
            prompt,
            out,
            max_context=system.model.max_context,
            kv_capacity_tokens=blocks * dep.block_size,
            max_prefill_tokens=system.scheduler_cls(system.scheduler_params, None).max_prefill_tokens(),
        )
        mask |= m
        reasons.extend(r._replace(text=f"pool {p.name!r}: {r.text}") for r in r)
    return mask, reasons


@dataclass
class PoolsPrepared:
    """A multi-pool scenario resolved and checked (what ``capsim validate`` runs)."""

    pools: PoolSet
    stream: RequestStream
    unservable: np.ndarray


def prepare_pools(scenario: Scenario, *, stream: RequestStream | None = None) -> PoolsPrepared:
    pools = build_pools(scenario)
    sim = scenario.simulation
    if stream is None:
        stream = build_requests(
            scenario.workload, seed=scenario.seed, num_requests=sim.num_requests, duration_s=sim.duration_s
        )
    mask, reasons = _unservable(pools, stream)
    enforce(mask, reasons, stream.prompt_tokens, stream.output_tokens, sim.oversized)
    for plan in pools.pools:  # a TCO scenario missing a purchase price fails here, in `capsim validate` too
        gpu_capex(plan.system.device, scenario.cost)
    return PoolsPrepared(pools, stream, mask)


def simulate_pools(scenario: Scenario, *, stream: RequestStream | None = None):
    """Simulate a scenario with ``pools:``; returns the same :class:`~simulator.engine.RunOutput` as a single
    pool, with per-pool facts in ``result.info.pools`` and the hand-off columns in ``result.requests``."""
    from simulator.engine import RunOutput

    wall0 = time.perf_counter()
    prep = prepare_pools(scenario, stream=stream)
    pools, stream, mask = prep.pools, prep.stream, prep.unservable
    sim = scenario.simulation
    keep = ~mask
    table = RequestTable(stream.arrival_s[keep], stream.prompt_tokens[keep], stream.output_tokens[keep])
    env = simpy.Environment()
    recorder = Recorder()
    rng = np.random.default_rng(np.random.SeedSequence(scenario.seed).spawn(2)[1])
    closed = stream.closed_loop
    engine_ref: list[PoolEngine] = []
    clients = None
    on_finish = None
    if closed is not None:
        clients = ClosedLoopClients(env, table, closed, lambda rid: engine_ref[0].submit(rid), seed=scenario.seed)
        on_finish = clients.on_finish

    images = stream.image_tokens[keep] if stream.image_tokens is not None else None
    engine = PoolEngine(scenario, pools, table, env, recorder, rng, on_finish, images=images)
    engine_ref.append(engine)
    if closed is None:
        env.process(_arrivals(env, table, engine))
    else:
        clients.start()
    if sim.max_time_s is not None:
        env.run(until=sim.max_time_s)
    else:
        env.run()
    arrived = arrived_requests(table, clients, env.now, sim.max_time_s)
    info = _run_info(scenario, pools, engine, time.perf_counter() - wall0, float(env.now), table.n - arrived)
    frame = table.to_frame()
    log = engine.log
    frame["prefill_replica"] = log.source
    frame["kv_ready_s"] = log.ready_s
    frame["kv_transfer_start_s"] = log.start_s
    frame["kv_transfer_end_s"] = log.end_s
    frame["kv_transfer_bytes"] = log.nbytes
    frame["kv_transfers"] = log.count
    if images is not None:
        frame["image_tokens"] = images
    if engine.encoders:
        frame["encode_start_s"] = log.encode_start_s
        frame["encode_end_s"] = log.encode_end_s
        frame["embeddings_arrive_s"] = log.embed_end_s
        frame["embedding_bytes"] = log.embed_bytes
    if engine.migrators:
        frame["migrations"] = sum(m.count for m in engine.migrators)
        frame["migration_bytes"] = sum(m.nbytes for m in engine.migrators)
        frame["migration_downtime_s"] = sum(m.downtime for m in engine.migrators)
        if pools.params.migration.drain:
            frame["drain_migrations"] = sum(m.drain_moves for m in engine.migrators)
            frame["drain_reroutes"] = sum(m.drain_reroutes for m in engine.migrators)
    if engine.priority is not None:
        frame["priority"] = engine.priority.astype(np.int64)  # 1: the high-priority class
    if arrived < table.n:
        frame = frame.iloc[:arrived]
    result = SimulationResult(frame, recorder.iterations_frame(), recorder.token_gaps(), info)
    first = pools.pools[0].system
    return RunOutput(
        result,
        first,
        int(mask.sum()),
        stream.source,
        table,
        [r.blocks.used_blocks for r in engine.replicas],
        [r.blocks.peak_used_blocks for r in engine.replicas],
        pools=pools,
        swap_spaces=[r.state.swap for r in engine.replicas],
    )


def _arrivals(env: simpy.Environment, table: RequestTable, engine: PoolEngine):
    timeout = env.timeout
    for rid, at in enumerate(table.arrival_s.tolist()):
        delay = at - env.now
        if delay > 0:
            yield timeout(delay)
        engine.submit(rid)


def _run_info(
    scenario: Scenario, pools: PoolSet, engine: PoolEngine, wall: float, end: float, not_arrived: int
) -> RunInfo:
    bound = pools_bound(engine, engine.table.n - not_arrived)
    infos = []
    for rt in engine.pools:
        system, dep = rt.plan.system, rt.plan.system.deployment
        infos.append(
            PoolInfo(
                name=rt.name,
                role=rt.role,
                device=system.device.name,
                first_replica=rt.replicas[0].index,
                num_replicas=len(rt.replicas),
                gpus_per_replica=dep.tp,
                # the GPU's own peaks (a worker on a share of shared GPUs is priced on its share: gpu_share)
                peak_flops_per_gpu=system.device.peak_flops(system.compute_format),
                mem_bandwidth_per_gpu=system.device.memory_bandwidth,
                price_usd_per_gpu_hour=system.device.price_usd_per_hour,
                tdp_w=system.device.tdp_w,
                idle_w=system.device.idle_w,
                kv_capacity_tokens_per_replica=rt.blocks_per_engine * dep.block_size,
                weights_bytes_per_gpu=system.memory.weights_bytes,
                gpu_memory_bytes=system.memory.gpu_memory_bytes,
                gpu_share=pools.gpu_share(rt.plan.index),
                units=tuple(u for u in power_units(system, dep.pp, scenario.cost) if u.name.startswith("tier.")),
                capex_usd_per_gpu=gpu_capex(system.device, scenario.cost),
                bound_output_tps=bound.stages.get(rt.name, float("nan")),
            )
        )
    swap_outs = swap_ins = fallbacks = 0
    swap_bytes = swap_s = 0.0
    for rt in engine.pools:
        if rt.role == "encode":
            continue
        st = total_stats([r.state.swap for r in rt.replicas])
        dep = rt.plan.system.deployment
        swap_outs, swap_ins, fallbacks = swap_outs + st.swap_outs, swap_ins + st.swap_ins, fallbacks + st.fallbacks
        swap_bytes += (st.bytes_out + st.bytes_in) * dep.tp * dep.pp  # every GPU moves its own shard
        swap_s += st.transfer_s
    head = pools.pools[0].system
    return RunInfo(
        scenario_name=scenario.name,
        seed=scenario.seed,
        model=head.model.name,
        device="+".join(dict.fromkeys(p.device for p in infos)),
        engine="+".join(dict.fromkeys(p.plan.system.engine_name for p in engine.pools)),
        num_replicas=sum(p.num_replicas for p in infos),
        gpus_per_replica=head.deployment.tp,
        peak_flops_per_gpu=head.roofline.peak_flops,
        mem_bandwidth_per_gpu=head.roofline.memory_bandwidth,
        price_usd_per_gpu_hour=head.device.price_usd_per_hour,
        tdp_w=head.device.tdp_w,
        idle_w=head.device.idle_w,
        kv_capacity_tokens_per_replica=infos[0].kv_capacity_tokens_per_replica,
        kv_block_size=head.deployment.block_size,
        weights_bytes_per_gpu=head.memory.weights_bytes,
        gpu_memory_bytes=head.memory.gpu_memory_bytes,
        warmup_s=scenario.simulation.warmup_s,
        wall_time_s=wall,
        sim_end_s=end,
        not_arrived=not_arrived,
        pools=tuple(infos),
        resplits=tuple(engine.resplitter.history) if getattr(engine, "resplitter", None) is not None else (),
        drains=tuple(d for m in engine.migrators for d in m.drains),
        swap_outs=swap_outs,
        swap_ins=swap_ins,
        swap_bytes=swap_bytes,
        swap_recompute_fallbacks=fallbacks,
        swap_transfer_s=swap_s,
        cost=cost_settings(scenario.cost),
        bound_compute_tps=bound.total.compute_tps,
        bound_memory_tps=bound.total.memory_tps,
        bound_network_tps=bound.total.network_tps,
        bound_link_tps=bound.stages.get("link", float("inf")),
    )
