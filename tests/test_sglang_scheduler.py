"""The ``sglang`` scheduler (SGLang 0.3.0's admission against KV reserved for running requests' future tokens).

Hand-checked on a replica whose KV pool is 1,000 one-token blocks, so free KV is counted in tokens exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import simpy
from pydantic import ValidationError

from capsim.errors import CapsimError
from simulator.config.schema import Scenario
from simulator.engine import simulate
from simulator.kvcache import BlockManager
from simulator.prepare import prepare
from simulator.replica import ReplicaState
from simulator.requests import RequestTable
from simulator.schedulers import SCHEDULERS
from simulator.schedulers.sglang import SglangParams, SglangScheduler, default_max_running


def _replica(prompt, output, generated, running, waiting, **params):
    """A scheduler over a 1,000-token pool: ``running`` hold prompt + generated - 1 tokens of KV."""
    n = len(prompt)
    table = RequestTable(np.zeros(n), np.array(prompt), np.array(output))
    table.generated[:] = generated
    blocks = BlockManager(1000, 1, table)
    state = ReplicaState(simpy.Environment(), table, blocks, max_context=4096)
    for r in running:
        blocks.grow(r, int(table.prompt[r] + table.generated[r] - 1))
        state.running.append(r)
    state.waiting.extend(waiting)
    state.changed()
    return SglangScheduler(SglangParams(**params), state), state


# r0 runs (prompt 100, 100 of 300 tokens generated: 199 tokens of KV, 200 still to come); r1-r3 wait.
CASE = dict(
    prompt=[100, 150, 100, 50], output=[300, 200, 100, 70], generated=[100, 0, 0, 0], running=[0], waiting=[1, 2, 3]
)


def test_admission_reserves_the_running_requests_future_tokens():
    sched, state = _replica(**CASE)
    plan = sched.plan()
    # free 801 - 0.7 x 200 reserved = 661; r1 takes 150 + 200 -> 311 left; r2 100 + 100 -> 111 left;
    # r3 needs 50 + 70 = 120 >= 111: it waits (vLLM's rule, prompts only, would take all three).
    assert [c.rid for c in plan.prefill] == [1, 2]
    assert list(state.waiting) == [3]


def test_a_decayed_ratio_admits_more():
    sched, state = _replica(**CASE)
    sched.ratio = 0.1  # the floor: 801 - 20 = 781 -> 431 -> 231, and r3's 120 fits
    assert [c.rid for c in sched.plan().prefill] == [1, 2, 3]


def test_conservativeness_raises_the_floor():
    sched, _ = _replica(**CASE, schedule_conservativeness=3.0)
    assert sched.min_ratio == pytest.approx(0.3)
    assert SglangScheduler(SglangParams(schedule_conservativeness=20.0), None).min_ratio == 1.0


def test_ratio_decays_per_decode_step_to_its_floor_and_resets_when_idle():
    sched, state = _replica(prompt=[100], output=[300], generated=[1], running=[0], waiting=[])
    plan = sched.plan()
    assert plan.repeat and list(plan.decode_ids) == [0]
    state.table.generated[0] += 5  # the run decoded five steps
    sched.plan()
    assert sched.ratio == pytest.approx(0.7 - 5 * 0.001)
    sched.ratio = 0.1005
    state.table.generated[0] += 5
    sched.plan()
    assert sched.ratio == pytest.approx(0.1)
    state.running.clear()
    state.changed()
    assert sched.plan() is None and sched.ratio == pytest.approx(0.7)


def test_retraction_takes_the_fewest_generated_then_longest_prompt_to_the_back_and_resets_the_ratio():
    sched, state = _replica(
        prompt=[100, 50, 200, 10], output=[300, 100, 100, 10], generated=[50, 10, 10, 0], running=[0, 1, 2], waiting=[3]
    )
    sched.plan()  # r3 (10 + 10 tokens) is admitted: running 0, 1, 2, 3
    state.running.remove(3)
    state.changed()
    state.blocks.release(3)
    sched.plan()  # a decode plan of r0, r1, r2
    victim = sched.preempt_one()
    assert victim == 2  # r1 and r2 have generated 10 each; r2's prompt is longer
    assert state.table.preemptions[2] == 1 and state.table.kv_tokens[2] == 0
    assert list(state.waiting) == [2]
    # The rest (r0, r1): (60 generated + 20 x 2) / (300 + 100) = 0.25, then two more decode steps of the run
    # (the step that retracted does not decay).
    state.table.generated[[0, 1]] += 3
    sched.plan()
    assert sched.ratio == pytest.approx(0.25 - 2 * 0.001)


def test_a_decode_run_stops_where_the_queue_head_becomes_admissible():
    # r0: 100 tokens of KV, 599 to come; r1 needs 300 + 200 = 500. After k steps: free 900 - k, reserved
    # (0.7 - 0.001 k)(599 - k), so the room is 480.7 + 0.299 k - 0.001 k^2: it first exceeds 500 at k = 95
    # (k = 94 gives 499.97).
    sched, state = _replica(prompt=[100, 300], output=[600, 200], generated=[1, 0], running=[0], waiting=[1])
    plan = sched.plan()
    assert not plan.prefill and plan.cap == 95
    state.table.generated[0] += 95
    state.blocks.grow(0, 100 + 95)
    assert [c.rid for c in sched.plan().prefill] == [1]


def test_max_running_requests_default_follows_sglang_0_3_0():
    # Llama 3.1 (131,072-token context) with a 400k-token pool: slots max(1562, 2048) = 2048.
    assert default_max_running(400_000, 131_072) == 2048
    assert default_max_running(3_000, 4_096) == 1_500  # half the pool binds first
    assert default_max_running(2_000_000, 32_768) == 5_120  # at most 5,120 request slots
    sched, _ = _replica(**CASE)
    assert sched.max_running == 500  # 1,000-token pool: half of it


def test_max_running_requests_caps_admission():
    sched, _ = _replica(**CASE, max_running_requests=2)
    assert [c.rid for c in sched.plan().prefill] == [1]


def test_prefill_batch_takes_whole_prompts_up_to_the_chunk_budget():
    sched, _ = _replica(
        **{**CASE, "running": [], "generated": [0, 0, 0, 0], "waiting": [0, 1, 2, 3]}, chunked_prefill_size=260
    )
    assert [c.rid for c in sched.plan().prefill] == [0, 1]  # 100 + 150; r2's 100 would pass 260
    assert sched.max_prefill_tokens() == 260


def _offline(scheduler: dict) -> Scenario:
    return Scenario.model_validate(
        {
            "seed": 3,
            "model": "llama-2-7b",
            "deployment": {"device": "a100-80gb-sxm", "memory_utilization": 0.3, "engine": "none"},
            "scheduler": scheduler,
            "workload": {
                "arrival": "closed-loop",
                "concurrency": 600,
                "prompt": {"dist": "uniform", "low": 50, "high": 400},
                "output": {"dist": "uniform", "low": 50, "high": 400},
            },
            "simulation": {"num_requests": 600, "warmup_s": 0.0},
        }
    )


def test_offline_burst_runs_smaller_batches_than_the_pool_alone_allows():
    vllm = simulate(_offline({"name": "vllm", "max_num_seqs": 4096, "max_num_batched_tokens": 16384})).result
    sg = simulate(_offline({"name": "sglang"})).result
    for res in (vllm, sg):
        assert res.requests["finish_s"].notna().all()
    assert sg.iterations["decode_seqs"].max() < vllm.iterations["decode_seqs"].max()
    assert sg.requests["preemptions"].sum() < vllm.requests["preemptions"].sum()


def test_registered_and_validated():
    assert SCHEDULERS.get("sglang") is SglangScheduler
    with pytest.raises(ValidationError):
        SglangParams(init_new_token_ratio=1.5)


def test_multi_token_decode_steps_are_refused_by_validate_and_run():
    sc = _offline({"name": "sglang"}).model_dump(mode="json")
    sc["techniques"] = [{"name": "speculative-decoding", "drafter": "ngram"}]
    scenario = Scenario.model_validate(sc)
    for call in (prepare, simulate):
        with pytest.raises(CapsimError) as err:
            call(scenario)
        assert err.value.where == "scheduler.name"
