"""A model replica: a SimPy process that runs one batch iteration after another.

The loop is the one of DESIGN.md -- ``batch = scheduler.plan(); t = cost(batch);
yield env.timeout(t); apply(batch)`` -- with one addition that makes capacity
planning fast: a *decode run*. When the scheduler says the decode batch will
repeat unchanged, the replica prices all iterations until the next sequence
finishes (or memory runs out) in one vectorised call and waits once. If a
request arrives meanwhile, the router interrupts the replica, which finishes
the iteration in flight and lets the scheduler plan again -- exactly what
happens iteration by iteration, so latencies stay exact.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import numpy as np
import simpy

from simulator.costmodel.iteration import IterationCostModel
from simulator.kvcache import BlockManager
from simulator.recorder import Recorder
from simulator.requests import RequestTable
from simulator.schedulers.base import Plan, Scheduler


class ReplicaState:
    """What a scheduler may look at and change: queues, KV blocks, request progress."""

    def __init__(self, env: simpy.Environment, table: RequestTable, blocks: BlockManager, max_context: int):
        self.env = env
        self.table = table
        self.blocks = blocks
        self.max_context = max_context
        self.waiting: deque[int] = deque()
        self.running: list[int] = []

    @property
    def now(self) -> float:
        return self.env.now


class Replica:
    """One replica (a TP x PP group of GPUs) serving the requests routed to it."""

    def __init__(
        self,
        env: simpy.Environment,
        index: int,
        table: RequestTable,
        blocks: BlockManager,
        cost: IterationCostModel,
        make_scheduler: Callable[[ReplicaState], Scheduler],
        recorder: Recorder,
        on_finish: Callable[[np.ndarray, float], None] | None,
        max_context: int,
        warmup_s: float = 0.0,
    ):
        self.env = env
        self.warmup_s = warmup_s
        self.index = index
        self.table = table
        self.blocks = blocks
        self.cost = cost
        self.state = ReplicaState(env, table, blocks, max_context)
        self.scheduler = make_scheduler(self.state)
        self.recorder = recorder
        self.on_finish = on_finish
        self.outstanding = 0  # routed here and not finished (router load signal)
        self._wake: simpy.Event | None = None
        self._in_run = False
        self._interrupt_pending = False
        self.process = env.process(self._loop())

    # ------------------------------------------------------------------ input
    def submit(self, rid: int) -> None:
        """Accept request ``rid`` now; wake or interrupt the loop so it can be scheduled."""
        self.state.waiting.append(rid)
        self.outstanding += 1
        self.table.replica[rid] = self.index
        if self._wake is not None:
            wake, self._wake = self._wake, None
            wake.succeed()
        elif self._in_run and not self._interrupt_pending:
            self._interrupt_pending = True
            self.process.interrupt()

    # ------------------------------------------------------------------- loop
    def _loop(self):
        env = self.env
        scheduler = self.scheduler
        while True:
            plan = scheduler.plan()
            if plan is None:
                self._wake = env.event()
                yield self._wake
                continue
            if plan.repeat and not plan.prefill:
                yield from self._decode_run(plan)
            else:
                yield from self._iteration(plan)

    def _iteration(self, plan: Plan):
        """One iteration with prefill chunks and, for mixed batching, decodes."""
        t = self.table
        start = self.env.now
        ids = plan.decode_ids
        n_dec = len(ids)
        ctx = int(t.kv_tokens[ids].sum()) + n_dec if n_dec else 0
        ptok = logits = kv_read = 0
        work = 0.0
        for c in plan.prefill:
            q = c.cost_tokens
            ptok += q
            kv_read += c.cached + q
            work += q * (c.cached + q / 2.0)
            logits += c.completes
        cost = self.cost.iteration_from_totals(ptok, logits + n_dec, work, kv_read, n_dec, ctx)
        yield self.env.timeout(cost.time_s)
        end = self.env.now
        finished: list[int] = []
        if n_dec:
            self._advance_decodes(ids, 1, np.array([cost.time_s]), end, start, True)
        for c in plan.prefill:
            if not c.completes:
                continue
            rid = c.rid
            if t.generated[rid] == 0:
                t.first_token_s[rid] = end
            else:  # a recompute after preemption: the gap includes the stall
                gap = end - t.last_token_s[rid]
                if t.arrival_s[rid] >= self.warmup_s:
                    self.recorder.gap_run(gap, 0.0, 1, 1)
                if gap > t.max_tbt_s[rid]:
                    t.max_tbt_s[rid] = gap
            t.generated[rid] += 1
            t.last_token_s[rid] = end
            if t.generated[rid] == t.output[rid]:
                finished.append(rid)
        self.recorder.iteration(
            self.index, start, end, 1, ptok, len(plan.prefill), n_dec, ctx, cost.time_s, cost.time_s,
            self.blocks.used_blocks, self.blocks.total_blocks, cost.flops, cost.bytes,
        )
        if n_dec:
            done = ids[t.generated[ids] == t.output[ids]]
            if len(done):
                finished.extend(done.tolist())
        if finished:
            self._finish(np.asarray(finished, dtype=np.int64), end)

    def _decode_run(self, plan: Plan):
        """Repeat the decode batch until a sequence finishes, memory runs out or a request arrives."""
        env, t = self.env, self.table
        ids = plan.decode_ids
        if self.scheduler.pads_finished:
            live = ids[t.generated[ids] < t.output[ids]]
        else:
            live = ids
        limit = int((t.output[live] - t.generated[live]).min())
        steps = self.blocks.max_steps(ids, limit)
        if steps == 0:
            # No block for even one more token: preempt and plan again.
            if not self.scheduler.preempt_one():
                raise RuntimeError("decode cannot grow and nothing can be preempted")
            return
        n = len(ids)
        ctx0 = int(t.kv_tokens[ids].sum()) + n
        run = self.cost.decode_run(n, ctx0, steps)
        start = env.now
        ends = start + np.cumsum(run.durations)
        done = steps
        if steps > 1 and plan.interruptible:
            self._in_run = True
            try:
                yield env.timeout(ends[-1] - start)
            except simpy.Interrupt:
                now = env.now
                j = min(int(np.searchsorted(ends, now, side="left")), steps - 1)
                done = j + 1
                self._in_run = False
                yield env.timeout(max(ends[j] - now, 0.0))
            self._in_run = False
            self._interrupt_pending = False
        else:
            yield env.timeout(ends[-1] - start)
        durations = run.durations[:done]
        self._advance_decodes(ids, done, durations, float(ends[done - 1]), start, run.affine, live)
        flops, nbytes = self.cost.decode_work(n, ctx0, done)
        self.recorder.iteration(
            self.index, start, float(ends[done - 1]), done, 0, 0, n, ctx0,
            float(durations[0]), float(durations[-1]),
            self.blocks.used_blocks, self.blocks.total_blocks, flops, nbytes,
        )
        finished = live[t.generated[live] == t.output[live]]
        if len(finished):
            self._finish(finished, env.now)

    def _advance_decodes(self, ids, steps, durations, end, start, affine, live=None):
        """``steps`` decode iterations of ``ids`` ended at ``end``: tokens, gaps and KV."""
        t = self.table
        if live is None:
            live = ids[t.generated[ids] < t.output[ids]] if self.scheduler.pads_finished else ids
        self.blocks.grow_all(ids, steps)
        if self.warmup_s > 0 and len(live):
            # Gaps of warm-up requests stay out of the TBT statistics (they carry no request id).
            counted = live[t.arrival_s[live] >= self.warmup_s]
            if len(counted) < len(live):
                uncounted = live[t.arrival_s[live] < self.warmup_s]
                self._advance_tokens(uncounted, steps, durations, end, start, affine, record=False)
            live = counted
        if len(live):
            self._advance_tokens(live, steps, durations, end, start, affine, record=True)

    def _advance_tokens(self, live, steps, durations, end, start, affine, record):
        """Emit ``steps`` tokens to each sequence in ``live``; record their gaps if ``record``."""
        t, rec = self.table, self.recorder
        first_gaps = start + durations[0] - t.last_token_s[live]
        if record:
            rec.gap_values(first_gaps)
        gap_max = first_gaps
        if steps > 1:
            inner = durations[1:]
            if affine:
                step = float(inner[1] - inner[0]) if steps > 2 else 0.0
                if record:
                    rec.gap_run(float(inner[0]), step, steps - 1, len(live))
                inner_max = max(float(inner[0]), float(inner[-1]))
            else:
                if record:
                    for v in inner.tolist():
                        rec.gap_run(v, 0.0, 1, len(live))
                inner_max = float(inner.max())
            gap_max = np.maximum(first_gaps, inner_max)
        t.max_tbt_s[live] = np.maximum(t.max_tbt_s[live], gap_max)
        t.generated[live] += steps
        t.last_token_s[live] = end

    def _finish(self, finished: np.ndarray, now: float) -> None:
        t = self.table
        t.finish_s[finished] = now
        t.finished_count += len(finished)
        self.outstanding -= len(finished)
        self.scheduler.retire(finished)
        if self.on_finish is not None:
            self.on_finish(finished, now)
