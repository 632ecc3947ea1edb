"""A model replica: a SimPy process that runs one batch iteration after another.

The loop is the one of docs/architecture.md -- ``batch = scheduler.plan(); t = cost(batch);
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

from simulator.costmodel.features import PrefillWindow, prefill_attention_work, prefill_kv_read
from simulator.costmodel.iteration import DecodeRun, IterationCostModel
from simulator.kvcache import BlockManager, Retention
from simulator.recorder import Recorder
from simulator.requests import RequestTable
from simulator.schedulers.base import Plan, Scheduler
from simulator.schedulers.preemption import SwapSpace
from simulator.techniques.step import BoundStep

ONE_TOKEN_LOOP = 4
"""Decode batches up to this size advance by one token element by element (:meth:`Replica._advance_one`): a
numpy call on a tiny array costs ~0.5-1 us, a read or write of one element ~0.1 us."""

SMALL_BATCH = 32
"""Batches up to this size do their reductions (sum, min, max, count) in Python on a ``tolist()``:
one numpy reduction costs ~0.7 us of call overhead, a Python ``min`` over a few floats ~0.1 us
(measured on this project's benchmark machine); larger batches use numpy."""


class ReplicaState:
    """What a scheduler may look at and change: queues, KV blocks, request progress."""

    def __init__(self, env: simpy.Environment, table: RequestTable, blocks: BlockManager, max_context: int):
        self.env = env
        self.table = table
        self.blocks = blocks
        self.max_context = max_context
        self.waiting: deque[int] = deque()
        self.running: list[int] = []
        self._running_ids: np.ndarray | None = None
        # Host swap space of preemption by swap (simulator/schedulers/preemption.py); None: recompute.
        self.swap: SwapSpace | None = None

    def changed(self) -> None:
        """Schedulers call this after changing ``running`` (invalidates the cached id array)."""
        self._running_ids = None

    def running_ids(self) -> np.ndarray:
        """``running`` as an int64 array, rebuilt only after the batch changed."""
        ids = self._running_ids
        if ids is None:
            ids = self._running_ids = np.fromiter(self.running, dtype=np.int64, count=len(self.running))
        return ids

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
        step: BoundStep | None = None,
        kv: Retention | None = None,
        swap: SwapSpace | None = None,
    ):
        self.env = env
        # A technique's decode-step model (several tokens per step); None keeps the one-token path.
        self.step = step
        # A technique's KV retention (eviction, compression): decode steps attend only the retained tokens.
        # None: every token is kept and attended.
        self.kv = kv
        self.warmup_s = warmup_s
        self.index = index
        self.table = table
        self.blocks = blocks
        self.cost = cost
        self.state = ReplicaState(env, table, blocks, max_context)
        self.state.swap = self._swap = swap
        self.scheduler = make_scheduler(self.state)
        self.scheduler.check_step_model(step)
        self.recorder = recorder
        self.on_finish = on_finish
        self.outstanding = 0  # routed here and not finished (router load signal)
        self._wake: simpy.Event | None = None
        self._pre_ids: list[int] = []
        self._pre_times: list[float] = []
        self._pre_next = 0
        self._run: tuple[DecodeRun, float, simpy.Timeout, Plan] | None = None  # interruptible run in flight
        self._cut: DecodeRun | None = None  # that run, shortened by an arrival
        # Multi-pool deployments only (simulator.pools): where requests go when their prefill is done, and
        # requests whose KV arrived from another pool, joining the batch at the next iteration boundary.
        self.handoff: Callable[[list[int], float, float], None] | None = None
        # Multimodal requests (simulator/encoder.py): seconds the vision encoder adds to an iteration that
        # starts prefilling requests with images; None: text only, or images encoded elsewhere.
        self.encode: Callable[[tuple], float] | None = None
        # Context loading from a remote KV store (simulator/remote_kv.py): seconds an iteration waits for the
        # KV its chunks load before it runs; None: no remote store.
        self.load: Callable[[tuple], float] | None = None
        self._ready: list[int] = []
        # Requests leaving for another replica (live migration): handled at the next iteration boundary.
        self._departing: list[tuple[int, Callable[[bool], None]]] = []
        # A replica that receives KV from another pool grants blocks while it runs: it must leave free the
        # blocks its iteration or decode run in flight will still claim (``pending_blocks``).
        self.receiving = False
        self._pending: tuple[np.ndarray, int] | int = 0  # (ids, steps) of the run in flight, or its blocks
        # Told when the replica starts working after being idle (True) and when it runs out of work (False):
        # workers sharing a GPU (SM partitioning) price their iterations by whether the other is busy.
        self.on_busy: Callable[[Replica, bool], None] | None = None
        self._busy = False
        self.stall_until = 0.0  # set by whoever pauses the replica (an SM re-partition)
        # Chunk runs (``_chunk_run``): set by an engine where nothing outside a replica's loop acts on it between
        # iterations (no pools, no gate wrapping the scheduler).
        self.chunk_runs = False
        self.stops = False  # whether the simulation stops at a set time (possibly in the middle of a run)
        self.process = env.process(self._loop())

    # ------------------------------------------------------------------ input
    def preload(self, rids: np.ndarray, arrivals: np.ndarray) -> None:
        """Hand this replica its whole arrival schedule in advance.

        Possible when the router's choice does not depend on replica state
        (round-robin, random) and arrivals are open-loop. The replica then
        pulls requests into its queue as simulated time passes and ends each
        decode run at the first iteration boundary after the next arrival, so
        no arrival event or interrupt is needed -- the same iteration-boundary
        semantics as :meth:`submit`, at a fraction of the cost.
        """
        self._pre_ids = rids.tolist()
        self._pre_times = arrivals.tolist()
        self._pre_next = 0
        self.table.replica[rids] = self.index

    def _pull_arrivals(self, now: float) -> None:
        times, i, n = self._pre_times, self._pre_next, len(self._pre_times)
        if i < n and times[i] <= now:
            ids, waiting = self._pre_ids, self.state.waiting
            while i < n and times[i] <= now:
                waiting.append(ids[i])
                i += 1
            self.outstanding += i - self._pre_next
            self._pre_next = i

    def _next_arrival(self) -> float | None:
        return self._pre_times[self._pre_next] if self._pre_next < len(self._pre_times) else None

    def submit(self, rid: int) -> None:
        """Accept request ``rid`` now; wake or interrupt the loop so it can be scheduled."""
        self.state.waiting.append(rid)
        self.outstanding += 1
        self.table.replica[rid] = self.index
        if self._wake is not None:
            wake, self._wake = self._wake, None
            wake.succeed()
        elif self._run is not None and self._cut is None:
            self._cut_run_short()

    def _cut_run_short(self) -> None:
        """End the decode run in flight at the boundary of the iteration now running.

        Equivalent to interrupting the process and having it wait for the rest
        of that iteration, but without SimPy's interrupt machinery (an extra
        event and an exception thrown into the generator per arrival, ~15 % of a
        load-dependent router's run time): the process's pending wake-up moves
        from the run's end to that boundary. This uses two attributes SimPy's
        own ``Interruption`` relies on (``Process._target``, ``Process._resume``;
        stable since SimPy 3); the router property tests exercise it.
        """
        run, start, wake, plan = self._run
        now = self.env.now
        done = run.iterations_ending_by(now - start)
        if plan.window > 1:  # multi-step scheduling: the scheduler runs again only at a window boundary
            done = _window_boundary(done, plan)
        if done >= run.iterations:
            return  # the arrival came during the last iteration: the run ends there anyway
        cut = run.prefix(done)
        proc = self.process
        wake.callbacks.remove(proc._resume)
        early = self.env.timeout(max(start + cut.total - now, 0.0))
        early.callbacks.append(proc._resume)
        proc._target = early
        self._cut = cut

    @property
    def pending_blocks(self) -> int:
        """Blocks the iteration or decode run in flight will still claim (receiving replicas only; worked out
        when first asked, since most runs end before anyone asks)."""
        pending = self._pending
        if pending.__class__ is tuple:
            ids, steps = pending
            pending = self._pending = self.blocks.growth_after(ids, steps)
        return pending

    def receive(self, rid: int) -> None:
        """``rid``'s KV has arrived from another pool (already counted in ``outstanding``, its blocks already
        held here): it joins the running batch at the next iteration boundary, without a prefill."""
        self._ready.append(rid)
        self.poke()

    def poke(self) -> None:
        """Something this replica waits for changed (KV arrived, blocks freed): plan again at the next boundary."""
        if self._wake is not None:
            wake, self._wake = self._wake, None
            wake.succeed()
        elif self._run is not None and self._cut is None:
            self._cut_run_short()

    def depart(self, rid: int, then: Callable[[bool], None]) -> None:
        """At the next iteration boundary, call ``then(still_running)``: whether ``rid`` is still in the batch
        (the caller then detaches it) or finished, was preempted or left meanwhile."""
        self._departing.append((rid, then))
        self.poke()

    def _take_departures(self) -> None:
        leaving, self._departing = self._departing, []
        running = self.state.running
        for rid, then in leaving:
            then(rid in running)

    def _take_ready(self) -> None:
        running = self.state.running
        running.extend(self._ready)
        self._ready.clear()
        self.state.changed()

    # ------------------------------------------------------------------- loop
    def _loop(self):
        env = self.env
        scheduler = self.scheduler
        while True:
            self._pull_arrivals(env.now)
            if self._ready:
                self._take_ready()
            if self._departing:
                self._take_departures()
            if self.stall_until > env.now:  # paused (re-partitioning the GPU): nothing runs until then
                yield env.timeout(self.stall_until - env.now)
                continue
            plan = scheduler.plan()
            if plan is None:
                if self.stall_until > env.now:  # the scheduler paused the replica (a model switch): wait it out
                    continue
                if self.on_busy is not None and self._busy:
                    self._busy = False
                    self.on_busy(self, False)
                nxt = self._next_arrival()
                if nxt is not None:
                    yield env.timeout(nxt - env.now)
                else:
                    self._wake = env.event()
                    yield self._wake
                continue
            if self.on_busy is not None and not self._busy:
                self._busy = True
                self.on_busy(self, True)
            if (plan.chunk_repeats or plan.chunk_final) and self._chunk_run_ok():
                yield from self._chunk_run(plan)
            elif not (plan.repeat and not plan.prefill):
                yield from self._iteration(plan)
            elif self.step is None:
                yield from self._decode_run(plan)
            else:
                yield from self._step_run(plan)

    def _iteration(self, plan: Plan):
        """One iteration with prefill chunks and, for mixed batching, decodes (one step of a step model,
        if the scenario has one: the step model then prices the iteration)."""
        t, step = self.table, self.step
        if self._swap is not None and self._swap.stall_until > self.env.now:
            yield from self._await_swaps()
        start = self.env.now
        ids = plan.decode_ids
        n_dec = len(ids)
        kv = None
        if not n_dec:
            ctx = 0
        elif self.kv is None:
            kv = t.kv_tokens[ids]  # unchanged until the decodes advance (only plan() moves KV)
            ctx = (sum(kv.tolist()) if n_dec <= ONE_TOKEN_LOOP else int(np.add.reduce(kv))) + n_dec
        else:
            ctx = round(float(self.kv.retained(ids, t.kv_tokens[ids] + 1).sum()))
        ptok, logits, work, kv_read = _prefill_totals(plan.prefill, self.cost.prefill_window)
        if step is None:
            cost = self.cost.iteration_from_totals(ptok, logits + n_dec, work, kv_read, n_dec, ctx)
        else:
            sp = step.plan(ids) if n_dec else None
            cost = step.iteration(sp, ptok, logits + n_dec, work, kv_read, n_dec, ctx)
        if self.receiving and n_dec:
            self._pending = (ids, 1)
        took = cost.time_s
        if self.encode is not None and plan.prefill:
            took += self.encode(plan.prefill)  # the vision encoder runs first, on these GPUs
        if self.load is not None and plan.prefill:
            took += self.load(plan.prefill)  # a synchronous retrieve: the forward pass waits for the KV
        yield self.env.timeout(took)
        self._pending = 0
        end = self.env.now
        if n_dec:
            one = DecodeRun(1, took, 0.0, True)
            if step is None and kv is not None and n_dec <= ONE_TOKEN_LOOP and self._one_token_loop:
                self._advance_one(ids, kv, took, end, start)
            elif step is None:
                self._advance_decodes(ids, one, end, start, kv)
            else:
                got = np.minimum(step.commit(ids, sp, 1), t.output[ids] - t.generated[ids])
                self.blocks.grow_each(ids, got)
                self._advance_live(ids, one, end, start, got)
        finished = self._complete_prefills(plan.prefill, end)
        self.recorder.iteration(
            self.index, start, end, 1, ptok, len(plan.prefill), n_dec, ctx, took, took,
            self.blocks.used_blocks, self.blocks.total_blocks, cost.flops, cost.bytes,
        )
        if self.handoff is not None:
            self._hand_off(plan.prefill, end, start)
        if n_dec:
            finished.extend(self._finished_among(ids))
        if finished:
            self._finish(np.asarray(finished, dtype=np.int64), end)

    def _chunk_run_ok(self) -> bool:
        """Whether this replica may run a scheduler's repeated chunk iterations without a plan each: only on the
        plain path (no step model, retention, swap, encoder, remote loads, hand-offs, receivers, GPU sharing;
        the default block manager; a cost model that prices by shape alone), where nothing but the shape
        decides an iteration and nothing outside the loop acts on the replica between iterations."""
        return (
            self.chunk_runs and self.step is None and self.kv is None and self._swap is None
            and self.encode is None and self.load is None and self.handoff is None and not self.receiving
            and self.on_busy is None and type(self.blocks) is BlockManager and type(self.cost) is IterationCostModel
        )

    def _chunk_run(self, plan: Plan):
        """``plan`` and the iterations the scheduler said it would plan after it, without asking it each time.

        Those are ``plan.chunk_repeats`` more chunks of the same size of the same prompt beside the same
        decodes, then, if ``plan.chunk_final`` and no request waits by then, the chunk that completes the
        prompt. Each iteration still waits on its own SimPy timeout, created at the same moment as on the
        plain path, so every event, boundary time and recorded row comes in the same order; what goes is the
        scheduler's plan, the loop's checks and the per-iteration setup of :meth:`_iteration`, whose steps each
        iteration repeats on the same numbers (the chunk's blocks, the decodes' KV and tokens, the price, the
        row). The run ends early where a decode finishes (that changes the budget) and is not taken where the
        KV blocks of the whole run might not fit (the scheduler would preempt or stall the chunk). Arrivals
        meanwhile wait in the queue, as they would: every repeated chunk takes the whole token budget, so none
        could be admitted (the final chunk may leave budget: it joins only if nothing waits).
        """
        t, blocks = self.table, self.blocks
        ids = plan.decode_ids
        n_dec = len(ids)
        (chunk,) = plan.prefill
        k = 1 + plan.chunk_repeats
        final = plan.chunk_final
        if n_dec:
            if n_dec <= ONE_TOKEN_LOOP:  # a few decodes: element reads beat three numpy calls
                out, gen = t.output, t.generated
                limit = min([int(out[r] - gen[r]) for r in ids.tolist()])
            else:
                limit = int(np.minimum.reduce(t.output[ids] - t.generated[ids]))
            if limit <= k:  # a decode finishes within the repeats: the run stops there
                k, final = limit, 0
        rid, q, done = chunk.rid, chunk.tokens, chunk.cached + chunk.tokens  # the first chunk is already held
        steps = k + (1 if final else 0)
        if steps > 1:
            spare = blocks.free_blocks - blocks.blocks_to_grow(rid, done + (k - 1) * q + final)
            if spare < 0 or (n_dec and not blocks.growth_fits(ids, steps, spare)):
                k, final, steps = 1, 0, 1
        if steps == 1:
            yield from self._iteration(plan)
            return
        env, rec, index, total = self.env, self.recorder, self.index, blocks.total_blocks
        # The first iteration as the plain path runs it (its decodes' last tokens may differ); after it, every
        # decode got its last token at the previous boundary.
        start = env.now
        kv = t.kv_tokens[ids] if n_dec else None
        if not n_dec:
            ctx = 0
        else:
            ctx = (sum(kv.tolist()) if n_dec <= ONE_TOKEN_LOOP else int(np.add.reduce(kv))) + n_dec
        c = self._chunk_cost(q, done - q, n_dec, ctx)
        yield env.timeout(c.time_s)
        end = env.now
        if n_dec:
            if n_dec <= ONE_TOKEN_LOOP and self._one_token_loop:
                self._advance_one(ids, kv, c.time_s, end, start)
            else:
                self._advance_decodes(ids, DecodeRun(1, c.time_s, 0.0, True), end, start, kv)
        rec.iteration(index, start, end, 1, q, 1, n_dec, ctx, c.time_s, c.time_s, blocks.used_blocks, total,
                      c.flops, c.bytes)
        if k > 1:
            if n_dec and (n_dec > SMALL_BATCH or blocks.reserves_any or self.stops or (
                    self.warmup_s > 0 and bool((t.arrival_s[ids] < self.warmup_s).any()))):
                yield from self._chunk_steps(ids, rid, q, done, k - 1)  # the general bookkeeping, step by step
            else:
                yield from self._chunk_repeats(ids, rid, q, done, k - 1)
        if n_dec:
            self._finish_decodes(ids, env.now)
        if final and not self.state.waiting and not self._arrival_due(env.now):
            yield from self._iteration(Plan((self.scheduler.take_chunk(rid, final),), ids))

    def _arrival_due(self, now: float) -> bool:
        """Whether a preloaded arrival is due (the loop would queue it before planning)."""
        nxt = self._next_arrival()
        return nxt is not None and nxt <= now

    def _chunk_repeats(self, ids, rid: int, q: int, done: int, k: int):
        """``k`` repeated chunks of a chunk run beside a small decode batch (or none) that got its last token at
        the run's previous boundary: the decodes' KV counts in a list, their table entries written once at the
        end (nothing reads them meanwhile: the scheduler is not asked, routers read only loads; a simulation
        that stops at a set time might stop mid-run, so it takes :meth:`_chunk_steps`); blocks count as they go."""
        env, t, blocks, rec, index = self.env, self.table, self.blocks, self.recorder, self.index
        take, total, bs = self.scheduler.take_chunk, blocks.total_blocks, blocks.block_size
        n_dec = len(ids)
        kv_list = t.kv_tokens[ids].tolist() if n_dec else []
        longest = 0.0
        for _ in range(k):
            take(rid, q)  # what plan() would do: the next chunk of the same prompt
            start = env.now
            ctx = sum(kv_list) + n_dec
            c = self._chunk_cost(q, done, n_dec, ctx)
            done += q
            took = c.time_s
            yield env.timeout(took)
            end = env.now
            if n_dec:
                gap = (start + took) - start  # from the last token (the previous boundary) to this one
                rec.gap_run(gap, 0.0, 1, n_dec)
                if gap > longest:
                    longest = gap
                opened = 0
                for v in kv_list:
                    if v % bs == 0:  # a block opens where the sequence's blocks are full
                        opened += 1
                blocks.open_blocks(opened)
                kv_list = [v + 1 for v in kv_list]
            rec.iteration(index, start, end, 1, q, 1, n_dec, ctx, took, took, blocks.used_blocks, total,
                          c.flops, c.bytes)
        if n_dec:
            t.kv_tokens[ids] = kv_list
            t.max_tbt_s[ids] = np.maximum(t.max_tbt_s[ids], longest)
            t.generated[ids] += k
            t.last_token_s[ids] = end

    def _chunk_steps(self, ids, rid: int, q: int, done: int, k: int):
        """``k`` repeated chunks of a chunk run with :meth:`_iteration`'s bookkeeping (any batch)."""
        env, t, blocks, rec = self.env, self.table, self.blocks, self.recorder
        n_dec = len(ids)
        for _ in range(k):
            self.scheduler.take_chunk(rid, q)
            start = env.now
            kv = t.kv_tokens[ids]
            ctx = int(np.add.reduce(kv)) + n_dec
            c = self._chunk_cost(q, done, n_dec, ctx)
            done += q
            yield env.timeout(c.time_s)
            end = env.now
            self._advance_decodes(ids, DecodeRun(1, c.time_s, 0.0, True), end, start, kv)
            rec.iteration(self.index, start, end, 1, q, 1, n_dec, ctx, c.time_s, c.time_s, blocks.used_blocks,
                          blocks.total_blocks, c.flops, c.bytes)

    def _finish_decodes(self, ids: np.ndarray, end: float) -> None:
        finished = self._finished_among(ids)
        if len(finished):
            self._finish(np.asarray(finished, dtype=np.int64), end)

    def _finished_among(self, ids: np.ndarray) -> list[int]:
        """The sequences of ``ids`` that have all their tokens, in batch order."""
        t = self.table
        if len(ids) <= ONE_TOKEN_LOOP:
            gen, out = t.generated, t.output
            return [r for r in ids.tolist() if gen[r] == out[r]]
        return ids[t.generated[ids] == t.output[ids]].tolist()

    def _chunk_cost(self, q: int, cached: int, n_dec: int, ctx: int):
        """The price of an iteration of one ``q``-token chunk (not completing its prompt) after ``cached``
        tokens beside ``n_dec`` decodes of summed context ``ctx`` (the totals :func:`_prefill_totals` gives)."""
        win = self.cost.prefill_window
        if win is None:
            work, kv_read = 0.0 + prefill_attention_work(q, cached), prefill_kv_read(q, cached)
        else:
            work, kv_read = 0.0 + win.work(q, cached), 0.0 + win.kv_read(q, cached)
        return self.cost.iteration_from_totals(q, n_dec, work, kv_read, n_dec, ctx)

    def _hand_off(self, prefill, end: float, start: float) -> None:
        """Requests whose prefill just completed leave this replica's batch for another pool; their KV stays
        here until it has been sent (the hand-off releases it)."""
        t = self.table
        done = [c.rid for c in prefill if c.completes and t.generated[c.rid] < t.output[c.rid]]
        if done:
            self.scheduler.detach(done)
            self.outstanding -= len(done)
            self.handoff(done, end, start)

    def _complete_prefills(self, prefill, end: float) -> list[int]:
        """Chunks that finish a (re)prefill emit their request's next token at ``end``; returns the requests
        that thereby finished."""
        t = self.table
        finished: list[int] = []
        for c in prefill:
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
        return finished

    def _decode_run(self, plan: Plan):
        """Repeat the decode batch until a sequence finishes, memory runs out or a request arrives."""
        env, t = self.env, self.table
        ids = plan.decode_ids
        while True:
            if self.scheduler.pads_finished:
                live = ids[t.generated[ids] < t.output[ids]]
            else:
                live = ids
            remaining = t.output[live] - t.generated[live]
            n = len(ids)
            kv = t.kv_tokens[ids]
            if n <= SMALL_BATCH:
                kv_list = kv.tolist()
                limit = min(remaining.tolist())
                ctx0 = sum(kv_list) + n
            else:
                kv_list = None
                limit = int(np.minimum.reduce(remaining))
                ctx0 = int(np.add.reduce(kv)) + n
            steps = self.blocks.max_steps(ids, limit)
            if steps:
                if plan.cap and steps > plan.cap:  # the window ends first (finished sequences leave there)
                    steps = plan.cap
                break
            # No block for even one more token. As vLLM's scheduler does within one step, preempt
            # the newest sequences until the rest can each store a token, and decode those now:
            # re-planning first would re-admit the victim (prefill-first) into the blocks just freed,
            # and the batch could cycle prefill -> preempt without ever decoding.
            ids = self._drop_newest(ids)
            if not len(ids):
                return
        growth = None
        if self.kv is not None:  # the attended context grows only where a sequence is below its cap
            attended, slope, until = self.kv.decode_segment(ids, kv)
            ctx0, growth, steps = round(attended), float(np.add.reduce(slope)), min(steps, until)
        if self._swap is not None and self._swap.stall_until > env.now:
            yield from self._await_swaps()
        start = env.now
        if self.receiving:
            self._pending = (ids, steps)
        run = yield from self._wait_run(self.cost.decode_run(n, ctx0, steps, growth), plan)
        self._pending = 0
        end = env.now
        self.blocks.grow_all(ids, run.iterations, kv, kv_list)
        self._advance_live(live, run, end, start)
        flops, nbytes = self.cost.decode_work(n, ctx0, run.iterations, growth)
        self.recorder.iteration(
            self.index, start, end, run.iterations, 0, 0, n, ctx0, run.first, run.last,
            self.blocks.used_blocks, self.blocks.total_blocks, flops, nbytes,
        )
        if plan.window > 1:
            self.scheduler.decoded(run.iterations)
        if run.iterations == limit:
            self._finish(live[remaining == limit], end)

    def _await_swaps(self):
        """Wait for the KV copies the next iteration depends on (preemption by swap)."""
        yield self.env.timeout(self._swap.stall_until - self.env.now)

    def _drop_newest(self, ids: np.ndarray) -> np.ndarray:
        """Preempt the newest sequence (the scheduler's victim) and return the batch without it."""
        victim = self.scheduler.preempt_one()
        if victim is None:
            raise RuntimeError("decode cannot grow and nothing can be preempted")
        return ids[ids != victim]

    def _wait_run(self, run: DecodeRun, plan: Plan):
        """Wait for ``run`` (a generator: ``run = yield from ...``) and return the part of it that happened.

        An interruptible run stops at the first iteration boundary at or after the next preloaded arrival,
        or at the boundary where a submitted request interrupts it (see :meth:`_cut_run_short`).
        """
        env = self.env
        start = env.now
        nxt = self._next_arrival()
        if nxt is not None and plan.interruptible and run.iterations > 1:
            upto = run.iterations_ending_by(nxt - start)
            if plan.window > 1:  # multi-step scheduling: the arrival waits for the window's end
                upto = _window_boundary(upto, plan)
            if upto < run.iterations:
                run = run.prefix(upto)
        if plan.until_s is not None and run.iterations > 1:  # the scheduler's time slice ends the run
            upto = run.iterations_ending_by(plan.until_s - start)
            if upto < run.iterations:
                run = run.prefix(max(upto, 1))
        if run.iterations > 1 and plan.interruptible:
            wake = env.timeout(run.total)
            self._run = (run, start, wake, plan)
            yield wake
            self._run = None
            if self._cut is not None:  # an arrival ended the run early (see _cut_run_short)
                run, self._cut = self._cut, None
        else:
            yield env.timeout(run.total)
        return run

    @property
    def _one_token_loop(self) -> bool:
        """Whether :meth:`_advance_one` may stand in for :meth:`_advance_decodes` of one iteration here: no padded
        finished sequences, no warm-up split, and the default block manager counting by shifts, unreserved."""
        b = self.blocks
        return (not self.scheduler.pads_finished and self.warmup_s <= 0 and type(b) is BlockManager
                and b.blocks_by_shift and not b.reserves_any)

    def _advance_one(self, ids: np.ndarray, kv: np.ndarray, took: float, end: float, start: float) -> None:
        """:meth:`_advance_decodes` of one iteration of ``took`` seconds for a few decodes (``kv``: their KV tokens
        before it), element by element: the same block count, table writes and recorded gaps, without the dozen
        numpy calls on one- or two-element arrays that a mixed iteration's small decode batch otherwise pays
        (chunked prefill at moderate load: a median of one decode beside each chunk)."""
        t, rec, blocks = self.table, self.recorder, self.blocks
        rids = ids.tolist()
        kv_tok, last_tok, max_tbt, generated = t.kv_tokens, t.last_token_s, t.max_tbt_s, t.generated
        mask = blocks.block_size - 1
        kv_list = kv.tolist()
        opened = 0
        for v in kv_list:  # a block opens where the sequence's blocks are full (grow_all, one step)
            if not v & mask:
                opened += 1
        blocks.open_blocks(opened)
        last = [last_tok[r] for r in rids]
        boundary = start + took
        newest, oldest = max(last), min(last)
        lo, hi = boundary - newest, boundary - oldest  # as _advance_tokens records them
        n = len(rids)
        if lo == hi:
            rec.gap_run(lo, 0.0, 1, n)
        else:
            n_new, n_old = last.count(newest), last.count(oldest)
            if n_new + n_old == n:
                rec.gap_run(lo, 0.0, 1, n_new)
                rec.gap_run(hi, 0.0, 1, n_old)
            else:
                rec.gap_values(boundary - np.array(last))
        for r, v, prev in zip(rids, kv_list, last, strict=True):
            kv_tok[r] = v + 1
            gap = boundary - prev
            if gap > max_tbt[r]:  # np.maximum of the two (neither is NaN: the decode has a last token)
                max_tbt[r] = gap
            generated[r] += 1
            last_tok[r] = end

    def _advance_decodes(self, ids, run: DecodeRun, end, start, kv: np.ndarray | None = None):
        """The decode iterations of ``run`` of ``ids`` ended at ``end``: tokens, gaps and KV (``kv``: their
        KV tokens before, if the caller gathered them)."""
        t = self.table
        live = ids[t.generated[ids] < t.output[ids]] if self.scheduler.pads_finished else ids
        self.blocks.grow_all(ids, run.iterations, kv)
        self._advance_live(live, run, end, start)

    def _advance_live(self, live, run: DecodeRun, end, start, got: np.ndarray | None = None):
        """Tokens and gaps of the still-generating sequences ``live`` after ``run``.

        ``got`` holds each sequence's tokens when a step yields more than one (a step model); by
        default every sequence gets one token per iteration.
        """
        if self.warmup_s > 0 and len(live):
            # Gaps of warm-up requests stay out of the TBT statistics (they carry no request id).
            early = self.table.arrival_s[live] < self.warmup_s
            if early.any():
                self._advance_tokens(live[early], run, end, start, record=False,
                                     got=None if got is None else got[early])
                live = live[~early]
                got = None if got is None else got[~early]
        if len(live):
            self._advance_tokens(live, run, end, start, record=True, got=got)

    def _advance_tokens(self, live, run: DecodeRun, end, start, record, got: np.ndarray | None = None):
        """Emit ``run.iterations`` tokens to each sequence in ``live``; record their gaps if ``record``.

        A sequence's first gap in the run is from its last token to the end of
        the run's first iteration; usually every sequence shares one last-token
        time (or two: decodes stalled by a prefill, and the sequence that
        prefill produced), so the gaps are recorded as weighted runs.
        """
        t, rec = self.table, self.recorder
        steps = run.iterations
        boundary = start + run.first
        last = t.last_token_s[live]
        n = len(live)
        if n <= SMALL_BATCH:
            last_list = last.tolist()
            newest, oldest = max(last_list), min(last_list)
        else:
            last_list = None
            newest, oldest = float(np.maximum.reduce(last)), float(np.minimum.reduce(last))
        lo, hi = boundary - newest, boundary - oldest  # smallest and largest first gap
        if record:
            if lo == hi:  # the usual case: every sequence got its last token at the same boundary
                rec.gap_run(lo, 0.0, 1, n)
            else:
                n_new = last_list.count(newest) if last_list is not None else int(np.count_nonzero(last == newest))
                n_old = last_list.count(oldest) if last_list is not None else int(np.count_nonzero(last == oldest))
                if n_new + n_old == n:  # e.g. stalled decodes + a new prefill
                    rec.gap_run(lo, 0.0, 1, n_new)
                    rec.gap_run(hi, 0.0, 1, n_old)
                else:
                    rec.gap_values(boundary - last)
        if steps > 1:
            if record:
                if run.affine:
                    rec.gap_run(run.first + run.step, run.step, steps - 1, n)
                elif run.pieces is not None:
                    for count, first, step in run.tail_pieces():
                        rec.gap_run(first, step, count, n)
                else:
                    _record_piecewise(rec, run.durations[1:], n)
            if run.affine:
                inner_max = max(run.first + run.step, run.last)
            elif run.pieces is not None:
                inner_max = max(max(f, f + st * (c - 1)) for c, f, st in run.tail_pieces())
            else:
                inner_max = float(run.durations[1:].max())
            if inner_max >= hi:
                t.max_tbt_s[live] = np.maximum(t.max_tbt_s[live], inner_max)
            else:
                t.max_tbt_s[live] = np.maximum(t.max_tbt_s[live], np.maximum(boundary - last, inner_max))
        else:
            t.max_tbt_s[live] = np.maximum(t.max_tbt_s[live], boundary - last)
        if got is None:
            t.generated[live] += steps
        else:
            # Several tokens per step: each step's first token carries the step's gap (recorded above);
            # the rest of a step's tokens arrive with it, a gap of zero each (one gap per token).
            t.generated[live] += got
            extra = int(got.sum()) - steps * n
            if record and extra > 0:
                rec.gap_run(0.0, 0.0, extra, 1)
        t.last_token_s[live] = end

    # ------------------------------------------------------- multi-token steps
    def _step_run(self, plan: Plan):
        """A decode run under a step model: each step yields each sequence a (fractional on average)
        number of tokens. Same structure as :meth:`_decode_run` -- price the steps until the first
        sequence finishes, memory runs out or a request arrives, in one call, and wait once."""
        env, t, step = self.env, self.table, self.step
        ids = plan.decode_ids
        while True:
            n = len(ids)
            sp = step.plan(ids)
            remaining = t.output[ids] - t.generated[ids]
            to_finish = step.steps_to_reach(ids, sp, remaining)
            limit = int(np.minimum.reduce(to_finish))
            kv = t.kv_tokens[ids]
            steps = self._steps_that_fit(ids, sp, kv, remaining, limit)
            if steps:
                break
            ids = self._drop_newest(ids)
            if not len(ids):
                return
        if self.kv is None:
            ctx0 = int(np.add.reduce(kv)) + n
            growth = float(np.add.reduce(sp.tokens_per_step))
        else:  # retained context: growth where below the cap, the run cut where a sequence may reach it
            attended, slope, until = self.kv.decode_segment(ids, kv)
            ctx0 = round(attended)
            growth = float(np.add.reduce(slope * sp.tokens_per_step))
            steps = min(steps, max(1, int(until // float(np.maximum.reduce(sp.tokens_per_step)))))
        if self._swap is not None and self._swap.stall_until > env.now:
            yield from self._await_swaps()
        start = env.now
        run = yield from self._wait_run(step.run(sp, n, ctx0, steps, growth), plan)
        end = env.now
        got = np.minimum(step.commit(ids, sp, run.iterations), remaining)
        self.blocks.grow_each(ids, got)
        self._advance_live(ids, run, end, start, got)
        flops, nbytes = step.work(sp, n, ctx0, run.iterations, growth)
        self.recorder.iteration(
            self.index, start, end, run.iterations, 0, 0, n, ctx0, run.first, run.last,
            self.blocks.used_blocks, self.blocks.total_blocks, flops, nbytes,
        )
        if run.iterations == limit:  # the sequences needing exactly `limit` steps got their last token
            self._finish(ids[to_finish == limit], end)

    def _steps_that_fit(self, ids, sp, kv, remaining, limit: int) -> int:
        """Most steps (<= ``limit``) whose kept tokens plus one step's rolled-back lookahead fit in the
        free KV blocks (bisection: the need grows with the steps)."""
        step, blocks = self.step, self.blocks
        # Fast path (the common case): even if every sequence stored all its remaining tokens plus the
        # lookahead, opening blocks at once, the free blocks would do.
        bs = blocks.block_size
        worst = len(ids) * ((int(np.maximum.reduce(remaining)) + sp.lookahead) // bs + 2)
        if worst <= blocks.free_blocks:
            return limit

        def fits(k: int) -> bool:
            kept = np.minimum(step.tokens_after(ids, sp, k), remaining)
            return blocks.growth_to(ids, kv + kept + sp.lookahead) <= blocks.free_blocks

        if fits(limit):
            return limit
        lo, hi = 0, limit
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if fits(mid):
                lo = mid
            else:
                hi = mid
        return lo

    def _finish(self, finished: np.ndarray, now: float) -> None:
        t = self.table
        t.finish_s[finished] = now
        t.finished_count += len(finished)
        self.outstanding -= len(finished)
        self.scheduler.retire(finished)
        if self.on_finish is not None:
            self.on_finish(finished, now)


def _window_boundary(done: int, plan: Plan) -> int:
    """The first window boundary of a multi-step decode run at or after ``done`` iterations into it."""
    first = plan.window_left
    if done <= first:
        return first
    w = plan.window
    return first + -(-(done - first) // w) * w


def _prefill_totals(prefill, window: PrefillWindow | None = None) -> tuple[int, int, float, int]:
    """(tokens, sequences producing logits, causal attention work, KV tokens read) of an iteration's chunks
    (with a sliding-window model's ``window``: the layer-averaged pairs and KV its layers attend)."""
    if window is not None:
        return _windowed_prefill_totals(prefill, window)
    ptok = logits = kv_read = 0
    work = 0.0
    for c in prefill:
        q = c.cost_tokens
        ptok += q
        kv_read += prefill_kv_read(q, c.cached)
        work += prefill_attention_work(q, c.cached)
        logits += c.completes
    return ptok, logits, work, kv_read


def _windowed_prefill_totals(prefill, window: PrefillWindow) -> tuple[int, int, float, float]:
    """:func:`_prefill_totals` of a sliding-window model (kept apart so the full-attention loop stays as it was)."""
    ptok = logits = 0
    work = kv_read = 0.0
    for c in prefill:
        q = c.cost_tokens
        ptok += q
        kv_read += window.kv_read(q, c.cached)
        work += window.work(q, c.cached)
        logits += c.completes
    return ptok, logits, work, kv_read


def _record_piecewise(rec, durations: np.ndarray, weight: int) -> None:
    """Record a run's gaps as its affine pieces (one weighted run each), not one entry per iteration.

    A non-affine run is usually a few affine pieces: the attention kernel's split
    count or the roofline regime changes a few times within it. A piece continues
    while the step between consecutive durations stays the same (to 1e-9 of the
    largest duration, far below any latency a user reads).
    """
    m = len(durations)
    if m <= 2:
        for v in durations.tolist():
            rec.gap_run(v, 0.0, 1, weight)
        return
    steps = np.diff(durations)
    tol = 1e-9 * float(np.abs(durations).max())
    breaks = (np.flatnonzero(np.abs(np.diff(steps)) > tol) + 1).tolist()  # steps[b] != steps[b - 1]
    values = durations.tolist()
    i, nb, b_at = 0, len(breaks), 0
    while i < m:
        if i == m - 1:
            rec.gap_run(values[i], 0.0, 1, weight)
            break
        while b_at < nb and breaks[b_at] <= i:
            b_at += 1
        last = breaks[b_at] if b_at < nb else m - 1  # the piece is values[i..last], step steps[i]
        rec.gap_run(values[i], float(steps[i]), last - i + 1, weight)
        i = last + 1
