"""Live migration of running requests between replicas of a pool (Llumnix, Sun et al., OSDI 2024).

Why: a router decides once, at arrival, with what it knows then; output lengths are unknown, so replicas
drift apart -- one runs out of KV blocks and queues (or preempts) while another has room. Llumnix moves
running requests between instances while they keep decoding, to balance load, to make room (de-fragment)
for a queued request, and to drain instances.

The mechanism modelled, per migration:

1. **Pick.** Every ``interval_s`` the migrator computes each replica's *freeness* -- free KV blocks, less the
   blocks its waiting queue needs, per running sequence (Llumnix's virtual-usage measure, simplified to block
   counts) -- and pairs the least free replica below ``source_freeness`` with the freest one above
   ``target_freeness``; the candidate is the source's running sequence with the fewest KV tokens (cheapest
   to move). One migration in and out per replica at a time.
2. **Live copy.** The target reserves blocks for the sequence's KV plus ``headroom_tokens``; the KV so far
   crosses the link (both replicas' NICs, as every hand-off does) while the sequence keeps decoding on the
   source.
3. **Stop and copy.** At the source's next iteration boundary the sequence leaves its batch; the tokens it
   generated during the live copy cross the link (the *downtime*: its next token waits for this); the
   source frees the blocks, the target takes the sequence into its batch. If the sequence finished, was
   preempted, or outgrew the reservation and the target has no room, the migration is abandoned and the
   reservation released.

A migrated request's KV leaves the source exactly once and arrives at the target exactly once; the
``migrations`` column counts them (``tests/test_migration.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from simulator.kvcache import blocks_for

if TYPE_CHECKING:
    from simulator.pools.engine import PoolEngine, PoolRuntime
    from simulator.replica import Replica


class MigrationConfig(BaseModel):
    """Live migration between the replicas of each pool (off unless given)."""

    model_config = ConfigDict(extra="forbid")

    interval_s: float = Field(
        0.1, gt=0, allow_inf_nan=False, description="How often the migrator looks for an imbalance, seconds."
    )
    source_freeness: float = Field(
        4.0,
        allow_inf_nan=False,
        description="A replica whose freeness (free KV blocks less its queue's needs, per running sequence) is "
        "below this sends a sequence away; negative when its queue needs more blocks than are free.",
    )
    target_freeness: float = Field(
        32.0, allow_inf_nan=False, description="A replica whose freeness is above this may receive one."
    )
    headroom_tokens: int = Field(
        64,
        ge=0,
        description="Tokens reserved on the target beyond the KV at the start of the copy, for the tokens "
        "the sequence generates while its KV is copied.",
    )
    drain: list[DrainConfig] = Field(
        default_factory=list,
        description="Replicas to drain (scale-down): from `at_s` on, each takes no new requests, its queued "
        "requests go to the other replicas, and its running requests migrate away, one at a time.",
    )


class DrainConfig(BaseModel):
    """One replica marked for scale-down at a time (Llumnix's instance draining)."""

    model_config = ConfigDict(extra="forbid")

    replica: int = Field(..., ge=0, description="Replica to drain, counted from 0 within its pool.")
    at_s: float = Field(..., ge=0, allow_inf_nan=False, description="Simulated time the drain starts, seconds.")
    pool: str | None = Field(
        None, description="The pool of that replica (by name); None: the first pool with several replicas."
    )


MigrationConfig.model_rebuild()


class Migrator:
    """The periodic migration process of one pool (a SimPy process started by the pool engine)."""

    def __init__(self, engine: PoolEngine, pool: PoolRuntime, cfg: MigrationConfig):
        self.engine = engine
        self.pool = pool
        self.cfg = cfg
        self.busy: set[int] = set()  # replica indices with a migration in or out
        n = engine.table.n
        self.count = np.zeros(n, dtype=np.int64)
        self.nbytes = np.zeros(n)
        self.downtime = np.zeros(n)
        for replica in pool.replicas:
            replica.receiving = True  # it reserves blocks for incoming KV while it runs
        # Execution priority: virtual blocks a high-priority running sequence adds to its replica's usage.
        prio = engine.pools_plan.params.priorities
        self.high = engine.priority
        self.headroom_blocks = 0
        if prio is not None and pool.replicas:
            self.headroom_blocks = int(blocks_for(prio.headroom_tokens, pool.replicas[0].blocks.block_size))
        # Draining: replicas (engine indices) marked for scale-down, when each started and emptied.
        self.draining: list[Replica] = []
        self.drains: list[tuple[int, float, float]] = []  # (replica, at_s, emptied_s or NaN)
        self.drain_moves = np.zeros(n, dtype=np.int64)  # migrations off a draining replica, per request
        self.drain_reroutes = np.zeros(n, dtype=np.int64)  # queued requests sent to another replica
        self.pending_drains: list[tuple[float, Replica]] = []

    def freeness(self, replica: Replica) -> float:
        state = replica.state
        bs = replica.blocks.block_size
        table = replica.table
        queued = sum(int(blocks_for(table.prefill_target(r), bs)) for r in state.waiting)
        free = replica.blocks.free_blocks - replica.pending_blocks - queued
        if self.headroom_blocks:
            free -= self.headroom_blocks * sum(1 for r in state.running if self.high[r])
        return free / max(len(state.running), 1)

    def drain_at(self, replica: Replica, at_s: float) -> None:
        """Mark ``replica`` for scale-down at the first migrator step at or after ``at_s`` (the migrator's own
        clock, so a drain after the last request leaves the run's end where it was)."""
        self.pending_drains.append((at_s, replica))
        self.pending_drains.sort(key=lambda d: d[0])

    def _start_drains(self) -> None:
        now = self.engine.env.now
        while self.pending_drains and self.pending_drains[0][0] <= now:
            _, replica = self.pending_drains.pop(0)
            self.draining.append(replica)
            self.engine.draining.add(replica.index)
            self.drains.append((replica.index, float(now), float("nan")))

    def run(self):
        env, table = self.engine.env, self.engine.table
        while table.finished_count < table.n:
            yield env.timeout(self.cfg.interval_s)
            self.step()

    def step(self) -> None:
        if self.pending_drains:
            self._start_drains()
        if self.draining:
            self._drain_step()
        draining = self.engine.draining
        free = [(self.freeness(r), r) for r in self.pool.replicas if r.index not in self.busy
                and r.index not in draining]
        if len(free) < 2:
            return
        low_f, source = min(free, key=lambda x: x[0])
        high_f, target = max(free, key=lambda x: x[0])
        if source is target or low_f >= self.cfg.source_freeness or high_f <= self.cfg.target_freeness:
            return
        self._start(source, target)

    def _movable(self, source: Replica) -> list[int]:
        """Running sequences of ``source`` that may move (decoding, not just arrived); normal-priority ones
        first, as Llumnix moves them to give high-priority ones headroom."""
        table = self.engine.table
        running = [r for r in source.state.running if r not in source._ready and table.generated[r] > 0]
        if self.headroom_blocks:
            normal = [r for r in running if not self.high[r]]
            return normal or running
        return running

    def _start(self, source: Replica, target: Replica) -> bool:
        """Begin moving ``source``'s cheapest movable sequence to ``target`` if the target has room."""
        table = self.engine.table
        running = self._movable(source)
        if not running:
            return False
        rid = min(running, key=lambda r: int(table.kv_tokens[r]))
        kv = int(table.kv_tokens[rid])
        reserve = int(blocks_for(kv + self.cfg.headroom_tokens, target.blocks.block_size))
        if reserve > target.blocks.free_blocks - target.pending_blocks:
            return False
        target.blocks.open_blocks(reserve)  # held for the incoming KV
        self.busy.update((source.index, target.index))
        self.engine.env.process(self.migrate(rid, source, target, kv, reserve))
        return True

    def _drain_step(self) -> None:
        """Empty the draining replicas: queued requests (no KV yet) go to the other replicas at once; one running
        sequence per draining replica starts migrating to the freest replica that is not draining."""
        engine, table = self.engine, self.engine.table
        for k, replica in enumerate(self.draining):
            state = replica.state
            swap = state.swap
            stay = []
            while state.waiting:
                rid = state.waiting.popleft()
                if table.kv_tokens[rid] > 0 or (swap is not None and swap.tokens(rid)):
                    stay.append(rid)  # holds KV here (a partial prefill or a swapped-out sequence)
                    continue
                replica.outstanding -= 1
                self.drain_reroutes[rid] += 1
                engine.enqueue(engine.route(self.pool, rid), rid)
            state.waiting.extend(stay)
            index, at_s, done = self.drains[k]
            if not (state.running or state.waiting or replica._ready) and done != done:
                self.drains[k] = (index, at_s, float(engine.env.now))
                continue
            if replica.index in self.busy:
                continue
            targets = [(self.freeness(r), r) for r in self.pool.replicas
                       if r.index not in self.busy and r.index not in engine.draining]
            for _, target in sorted(targets, key=lambda x: -x[0]):
                if self._start(replica, target):
                    break

    def migrate(self, rid: int, source: Replica, target: Replica, kv0: int, reserve: int):
        """Live copy of the KV so far, then a stop-and-copy at the source's next iteration boundary."""
        engine, env = self.engine, self.engine.env
        link = engine.pools_plan.links[(self.pool.plan.index, self.pool.plan.index)]
        with engine.nic_of(source).request() as out:
            yield out
            with engine.nic_of(target).request() as inn:
                yield inn
                yield env.timeout(link.transfer_s(engine.kept_tokens(source, rid, kv0) * engine.kv_bytes_per_token(self.pool)))
        source.depart(rid, lambda running: self._switch(rid, source, target, kv0, reserve, running, link))

    def _switch(self, rid, source, target, kv0, reserve, running: bool, link) -> None:
        """At the source's iteration boundary (synchronously, before it plans again): take the sequence out of
        its batch, or abandon the migration."""
        table = self.engine.table
        kv = int(table.kv_tokens[rid])
        need = target.scheduler.blocks_to_receive(rid, kv) if running else 0
        if not running or need > reserve + target.blocks.free_blocks - target.pending_blocks:
            target.blocks.unpin(reserve)
            self.busy.difference_update((source.index, target.index))
            target.poke()
            return
        source.scheduler.detach([rid])
        source.outstanding -= 1
        held = source.blocks.detach(rid)
        self.engine.env.process(self._stop_and_copy(rid, source, target, kv0, kv, reserve, held, link))

    def _stop_and_copy(self, rid, source, target, kv0: int, kv: int, reserve: int, held: int, link):
        engine, env, table = self.engine, self.engine.env, self.engine.table
        per_token = engine.kv_bytes_per_token(self.pool)
        # The live copy moved the tokens kept at kv0; the tokens added since (at most what is kept now) follow.
        live = engine.kept_tokens(source, rid, kv0)
        tail = min(max(kv - kv0, 0), engine.kept_tokens(source, rid, kv))
        start = env.now
        with engine.nic_of(source).request() as out:
            yield out
            with engine.nic_of(target).request() as inn:
                yield inn
                yield env.timeout(link.transfer_s(tail * per_token))
        source.blocks.unpin(held)
        target.blocks.unpin(reserve)
        target.scheduler.hold_received(rid, kv)
        target.outstanding += 1
        table.replica[rid] = target.index
        self.count[rid] += 1
        self.nbytes[rid] += (live + tail) * per_token
        if source.index in engine.draining:
            self.drain_moves[rid] += 1
        self.downtime[rid] += env.now - start
        self.busy.difference_update((source.index, target.index))
        target.receive(rid)
        source.poke()  # blocks freed: it may admit its queue now
