"""SGLang 0.3.0's scheduler: prefill-first continuous batching that reserves KV for the tokens still to come.

Why a scheduler of its own: SGLang does not admit a waiting request merely because its prompt fits the free KV
pool (vLLM's rule). Its ``PrefillAdder`` first sets aside, for every running request, ``new_token_ratio`` x the
tokens it may still generate (its ``max_new_tokens`` less what it has generated, each clipped at
``SGLANG_CLIP_MAX_NEW_TOKENS`` = 4096), and a new request must then fit its prompt *plus its whole clipped
``max_new_tokens``* in what is left. The ratio is the server's running estimate of how much of ``max_new_tokens``
a request really uses: 0.7 whenever the server idles, lowered by 0.001 per decode step down to a floor of
0.1 x ``--schedule-conservativeness``, and set back up to (generated + 20 x batch) / (summed ``max_new_tokens``)
of the batch that remains when a decode step finds no free KV and retracts requests. This bounds the running
batch well below what the KV pool alone allows while the ratio is high, and lets it fill the pool once the ratio
has decayed.

What SGLang 0.3.0 does, and where it was read (github.com/sgl-project/sglang, Apache-2.0; facts, no code): the
admission rule in ``python/sglang/srt/managers/policy_scheduler.py`` (``PrefillAdder.remove_running_tokens``,
``add_one_req``; the form before PR #1339 "Optimize schedule", merged 2024-09-05 after the v0.3.0 bump of PR
#1320, 2024-09-03); the ratio's start, decay, floor and idle reset in ``managers/tp_worker.py``
(``forward_step``, ``forward_decode_batch``) with the constants of ``python/sglang/global_config.py``
(``init_new_token_ratio`` 0.7, ``base_min_new_token_ratio`` 0.1, ``new_token_ratio_decay`` 0.001,
``retract_decode_steps`` 20); retraction in ``managers/schedule_batch.py`` (``retract_decode``: the requests
with the fewest generated tokens, then the longest prompts, leave first and go to the back of the queue);
``max_running_requests`` = min(KV pool tokens // 2, request slots), the slots min(max(pool / context x 512,
2048), 5120) (``tp_worker.py``, ``model_executor/model_runner.py``); ``chunked_prefill_size`` 8192,
``max_prefill_tokens`` 16384 and ``schedule_conservativeness`` 1.0 (``server_args.py``).
docs/engine-profiles.md (*SGLang 0.3.0's admission*) says what is modelled and what is not.

Known differences from the server, kept because they are small here and say so: a prefill batch takes whole
prompts up to ``chunked_prefill_size`` tokens (SGLang splits the request at the boundary and finishes it in the
next batch), and a prompt longer than it is refused as unservable instead of chunked; a decode step that finds
no free KV retracts one request at a time until the batch can take one more token (SGLang retracts until 20
steps fit); the free pool is counted in capsim's KV blocks (SGLang's pool is per token).
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from capsim.types import Count, OptionalCount
from simulator.schedulers.base import EMPTY_IDS, SCHEDULERS, Plan, Scheduler, SchedulerParams

# SGLang 0.3.0's request slots, ``model_runner.init_memory_pool``: pool tokens / context x 512, at least 2048 and
# at most 5120. The upper bound also sizes the logits buffer when max_running_requests is derived (it can be no
# more than this).
_SLOTS_PER_CONTEXT = 512
_MIN_SLOTS = 2048
_MAX_SLOTS = 5120


class SglangParams(SchedulerParams):
    max_running_requests: OptionalCount = Field(
        None,
        gt=0,
        description="Most requests running at once (SGLang --max-running-requests). Unset: SGLang 0.3.0's "
        "default, min(KV pool tokens // 2, request slots) with slots = min(max(pool tokens / model context x 512, "
        "2048), 5120).",
    )
    chunked_prefill_size: OptionalCount = Field(
        8192,
        gt=0,
        description="Most prompt tokens in one prefill batch (SGLang --chunked-prefill-size, 8192 in 0.3.0). "
        "Whole prompts only: SGLang splits the prompt at the boundary, capsim defers it to the next batch, and a "
        "prompt longer than this is unservable here. Unset: no chunk budget (max_prefill_tokens bounds a batch).",
    )
    max_prefill_tokens: Count = Field(
        16384,
        gt=0,
        description="Prompt-token budget of one prefill batch (SGLang --max-prefill-tokens); a single longer "
        "prompt still runs alone, as in SGLang.",
    )
    schedule_conservativeness: float = Field(
        1.0,
        ge=0,
        description="SGLang --schedule-conservativeness: scales the floor of the new-token ratio "
        "(base_min_new_token_ratio x this, at most 1). Larger reserves more KV for running requests.",
    )
    init_new_token_ratio: float = Field(
        0.7,
        ge=0,
        le=1,
        description="New-token ratio when the server has been idle (SGLang 0.3.0 global_config: 0.7): the share "
        "of each running request's remaining max_new_tokens kept free in KV before admitting a new one.",
    )
    base_min_new_token_ratio: float = Field(
        0.1, ge=0, le=1, description="Floor of the new-token ratio before the conservativeness factor (0.1)."
    )
    new_token_ratio_decay: float = Field(
        0.001, ge=0, le=1, description="Amount the new-token ratio falls per decode step without retraction (0.001)."
    )
    clip_max_new_tokens: Count = Field(
        4096,
        gt=0,
        description="max_new_tokens is clipped at this in the reservation (SGLANG_CLIP_MAX_NEW_TOKENS, 4096); "
        "the request still generates its full length.",
    )
    retract_decode_steps: Count = Field(
        20,
        gt=0,
        description="After a retraction the ratio becomes (generated + this x batch size) / summed max_new_tokens "
        "of the requests left (SGLang global_config.retract_decode_steps, 20).",
    )

    def max_batch_tokens(self) -> int:
        budget = self.chunked_prefill_size or self.max_prefill_tokens
        return max(budget, self.max_batch_seqs())

    def max_batch_seqs(self) -> int:
        return self.max_running_requests or _MAX_SLOTS


def default_max_running(pool_tokens: int, context: int) -> int:
    """SGLang 0.3.0's ``max_running_requests`` when unset: half the KV pool's tokens, at most the request slots."""
    slots = min(max(int(pool_tokens / context * _SLOTS_PER_CONTEXT), _MIN_SLOTS), _MAX_SLOTS)
    return max(1, min(pool_tokens // 2, slots))


@SCHEDULERS.register("sglang", aliases=("sglang-0.3",))
class SglangScheduler(Scheduler):
    """Prefill-first continuous batching that admits against KV reserved for running requests' future tokens."""

    Params = SglangParams
    lone_prefills = True

    def __init__(self, params: SglangParams, state) -> None:
        super().__init__(params, state)
        self.min_ratio = min(params.base_min_new_token_ratio * params.schedule_conservativeness, 1.0)
        # Why start at the idle value: a benchmark client (sglang.bench_serving) sends one test prompt and waits
        # for it before the run, so the server has idled -- and reset its ratio -- when the run begins.
        self.ratio = params.init_new_token_ratio
        self.max_running = params.max_running_requests or params.max_batch_seqs()
        if state is not None and params.max_running_requests is None:  # None: asked for its limits only
            pool = state.blocks.total_blocks * state.blocks.block_size
            self.max_running = default_max_running(pool, state.max_context)
        self._probe: tuple[np.ndarray, np.ndarray] | None = None  # the last decode batch and its generated counts
        self._retract_ratio: float | None = None  # set by a retraction during that decode run

    def max_prefill_tokens(self) -> int | None:
        return self.params.chunked_prefill_size

    def check_step_model(self, step: object | None) -> None:
        """Refuse a multi-token decode step (speculation): the ratio decays per decode *step*, and this scheduler
        counts steps by the tokens a run added, which several tokens per step would overcount (SGLang 0.3.0 had
        no speculative decoding to copy)."""
        if step is not None:
            from capsim.errors import CapsimError

            raise CapsimError(
                "the sglang scheduler (SGLang 0.3.0's admission) cannot be combined with a technique that yields "
                "several tokens per decode step",
                where="scheduler.name",
                fix="drop the multi-token technique, or use the vllm or sarathi scheduler",
            )

    # -- the new-token ratio ----------------------------------------------------
    def _catch_up(self) -> None:
        """Advance the ratio over the decode steps run since the last plan: one decay per step, except the step
        that retracted, which set it to the retraction's estimate instead."""
        probe, self._probe = self._probe, None
        retract, self._retract_ratio = self._retract_ratio, None
        steps = 0
        if probe is not None:
            ids, before = probe
            if len(ids):
                steps = int(np.max(self.state.table.generated[ids] - before))
        p = self.params
        if retract is not None:
            self.ratio = retract
            steps = max(steps - 1, 0)
        if steps:
            self.ratio = max(self.ratio - steps * p.new_token_ratio_decay, self.min_ratio)

    def _reserved(self, ids: np.ndarray) -> float:
        """Tokens set aside for the running requests' future decode steps at the current ratio."""
        t, clip = self.state.table, self.params.clip_max_new_tokens
        left = np.minimum(t.output[ids] - t.generated[ids], clip)
        return self.ratio * float(np.add.reduce(left))

    # -- planning ---------------------------------------------------------------
    def plan(self) -> Plan | None:
        self._catch_up()
        st, p = self.state, self.params
        waiting, running = st.waiting, st.running
        if not waiting and not running:
            self.ratio = p.init_new_token_ratio  # the server idles: SGLang resets its estimate
            return None
        if waiting and len(running) < self.max_running:
            chunks = self._admit_waiting()
            if chunks:
                return Plan(tuple(chunks), EMPTY_IDS)
        if not running:
            return None
        ids = self.running_ids()
        self._probe = (ids, st.table.generated[ids].copy())
        return Plan((), ids, repeat=True, cap=self._steps_until_admissible(ids) if waiting else 0)

    def _admit_waiting(self) -> list:
        """SGLang's ``PrefillAdder`` over the waiting queue, first come first served."""
        st, p = self.state, self.params
        t, blocks, waiting, running = st.table, st.blocks, st.waiting, st.running
        clip = p.clip_max_new_tokens
        rem_total = float(blocks.free_blocks * blocks.block_size)
        if running:
            rem_total -= self._reserved(self.running_ids())
        rem_input = p.max_prefill_tokens
        rem_chunk = p.chunked_prefill_size
        chunks = []
        while waiting and rem_total > 0 and rem_input > 0 and (rem_chunk is None or rem_chunk > 0):
            rid = waiting[0]
            prompt = t.prefill_target(rid)  # a retracted request re-prefills its prompt and what it generated
            total = prompt + min(int(t.output[rid]), clip)
            alone = not running and not chunks  # nothing else can free memory: never stall an empty server
            if total >= rem_total and not alone:
                break
            if chunks and (prompt > rem_input or (rem_chunk is not None and prompt > rem_chunk)):
                break
            if blocks.blocks_to_admit(rid, prompt) > blocks.free_blocks:
                break
            waiting.popleft()
            chunks.append(self.admit(rid, st.now))
            rem_total -= total
            rem_input -= prompt
            if rem_chunk is not None:
                rem_chunk -= prompt
            if len(running) >= self.max_running:
                break
        return chunks

    def _steps_until_admissible(self, ids: np.ndarray) -> int:
        """Decode steps after which the head of the queue would pass the admission test, if it does so before the
        first running request finishes (0: not before then -- the run ends at that finish anyway).

        Why: the reservation shrinks as the ratio decays and the running requests near their ends, so admission
        can open in the middle of a decode run; SGLang tries it before every step. The free pool is taken to fall
        by one token per running request per step (the block rounding is left to the check at the next plan).
        """
        st, p = self.state, self.params
        if len(st.running) >= self.max_running:
            return 0
        t, blocks = st.table, st.blocks
        left = (t.output[ids] - t.generated[ids]).astype(np.int64)
        horizon = int(left.min()) - 1
        if horizon < 1:
            return 0
        rid = st.waiting[0]
        need = t.prefill_target(rid) + min(int(t.output[rid]), p.clip_max_new_tokens)
        k = np.arange(1, horizon + 1)
        n = len(ids)
        free = blocks.free_blocks * blocks.block_size - k * n
        # Summed min(left - k, clip) over the batch, for every k at once: sorted lefts and their prefix sums.
        srt = np.sort(left)
        prefix = np.concatenate(([0], np.cumsum(srt)))
        cut = np.searchsorted(srt, p.clip_max_new_tokens + k, side="right")  # lefts at most clip + k
        upcoming = prefix[cut] - k * cut + (n - cut) * p.clip_max_new_tokens
        ratio = np.maximum(self.ratio - k * p.new_token_ratio_decay, self.min_ratio)
        ok = np.flatnonzero(need < free - ratio * upcoming)
        return int(k[ok[0]]) if len(ok) else 0

    # -- retraction -------------------------------------------------------------
    def preempt_one(self) -> int | None:
        """SGLang's ``retract_decode`` victim: fewest generated tokens, then the longest prompt; it loses its KV
        and joins the back of the queue (to be re-prefilled with what it generated). The ratio then becomes the
        estimate of the batch that remains."""
        st = self.state
        if not st.running:
            return None
        t = st.table
        ids = self.running_ids()
        order = np.lexsort((-t.prompt[ids], t.generated[ids]))  # last key first: fewest generated, longest prompt
        victim = int(ids[order[0]])
        st.running.remove(victim)
        st.changed()
        st.blocks.release(victim)
        t.preemptions[victim] += 1
        st.waiting.append(victim)
        self.on_preempted(victim)
        rest = self.running_ids()
        if len(rest):
            p = self.params
            generated = float(np.add.reduce(t.generated[rest]))
            budget = float(np.add.reduce(t.output[rest]))
            self._retract_ratio = min(1.0, (generated + p.retract_decode_steps * len(rest)) / budget)
        return victim
