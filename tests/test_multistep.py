"""Multi-step scheduling of the ``vllm`` scheduler (vLLM 0.6 ``--num-scheduler-steps``).

Hand-checkable cases on two requests: a long decode A and a short request B arriving while A decodes alone.
With ``k`` steps per scheduler call, B's prefill is admitted only at a window boundary of A's decode (a
multiple of ``k`` decode iterations after A's window opened), not after the iteration in flight; a sequence
finishing inside a window stays in the batch (computed, holding KV) until the window ends.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from capsim.errors import CapsimError
from simulator.config.schema import Scenario
from simulator.engine import simulate
from simulator.prepare import prepare
from traces import RequestStream


def _scenario(k: int | None, **extra) -> Scenario:
    sched = {"name": "vllm"} if k is None else {"name": "vllm", "num_scheduler_steps": k}
    return Scenario.model_validate(
        {
            **extra,
            "seed": 1,
            "model": "llama-2-7b",
            "deployment": {"device": "a100-80gb-sxm"},
            "scheduler": sched,
            "router": {"name": "round-robin"},
            "workload": {
                "arrival": "poisson",
                "qps": 1,
                "prompt": {"dist": "fixed", "value": 100},
                "output": {"dist": "fixed", "value": 10},
            },
            "simulation": {"num_requests": 2},
        }
    )


# A: 100-token prompt, 200 output tokens, at t=0. B: 100-token prompt, 5 output tokens, at 0.3 s (A decodes alone).
STREAM = RequestStream(np.array([0.0, 0.3]), np.array([100, 100]), np.array([200, 5]), source="test")


def _run(k: int | None, preload: bool = True):
    return simulate(_scenario(k), stream=STREAM, preload_arrivals=preload).result


@pytest.mark.parametrize("preload", [True, False])
def test_arrival_waits_for_the_window_boundary(preload: bool) -> None:
    one = _run(1, preload)
    it1 = one.iterations
    # k=1: A's decode run is cut after the iteration in flight when B arrives.
    in_flight = int(it1["num_iterations"].iloc[1])
    assert it1["decode_seqs"].iloc[1] == 1 and it1["prefill_seqs"].iloc[2] == 1
    assert it1["start_s"].iloc[1] + (in_flight - 1) * it1["duration_first_s"].iloc[1] < 0.3 <= it1["end_s"].iloc[1]
    for k in (4, 10, 32):
        out = _run(k, preload)
        it = out.iterations
        steps = int(it["num_iterations"].iloc[1])
        # A's window opened at its first decode: B's prefill starts after the first multiple of k at or after
        # the iteration in flight when it arrived.
        assert steps == math.ceil(in_flight / k) * k
        assert it["prefill_seqs"].iloc[2] == 1
        assert out.requests["schedule_s"].iloc[1] == pytest.approx(it["end_s"].iloc[1], abs=1e-12)
        assert out.requests["schedule_s"].iloc[1] >= one.requests["schedule_s"].iloc[1]
        if steps > in_flight:
            assert out.requests["first_token_s"].iloc[1] > one.requests["first_token_s"].iloc[1]


def test_default_is_one_step_per_scheduler_call() -> None:
    a, b = _run(None), _run(1)
    assert a.requests.equals(b.requests)
    assert a.iterations.equals(b.iterations)


def test_finished_sequence_stays_in_the_batch_until_its_window_ends() -> None:
    out = _run(10)
    it, req = out.iterations, out.requests
    # After B's prefill both decode: B needs 4 more tokens, so it finishes 4 iterations into a 10-step window...
    assert list(it["num_iterations"].iloc[3:5]) == [4, 6]
    assert list(it["decode_seqs"].iloc[3:6]) == [2, 2, 1]
    # ... and its tokens are stamped per step (its finish is the end of its 4th step, not the window's end),
    assert req["finish_s"].iloc[1] == pytest.approx(it["end_s"].iloc[3], abs=1e-12)
    # while it is still computed (a batch of two) to the end of the window; then A decodes alone.
    assert it["start_s"].iloc[5] == pytest.approx(it["end_s"].iloc[4], abs=1e-12)
    assert np.array_equal(out.requests["first_token_s"].notna(), [True, True])


@pytest.mark.parametrize("bad", [0, -1, True, "4"])
def test_bad_step_counts_are_refused(bad) -> None:
    with pytest.raises(CapsimError) as err:
        simulate(_scenario(bad), stream=STREAM)
    assert err.value.where == "scheduler.num_scheduler_steps"


def test_multi_token_steps_are_refused_with_multi_step_windows() -> None:
    spec = [{"name": "speculative-decoding", "drafter": "ngram"}]
    simulate(_scenario(1, techniques=spec), stream=STREAM)  # one step per call: fine
    with pytest.raises(CapsimError) as err:
        simulate(_scenario(4, techniques=spec), stream=STREAM)
    assert err.value.where == "scheduler.num_scheduler_steps"
    # `capsim validate` (prepare, no replica built) refuses it too, not only the run.
    with pytest.raises(CapsimError) as err:
        prepare(_scenario(4, techniques=spec))
    assert err.value.where == "scheduler.num_scheduler_steps"


def test_fastswitch_refuses_multi_step_windows() -> None:
    sc = _scenario(1).model_dump(mode="json")
    sc["scheduler"] = {"name": "fastswitch", "num_scheduler_steps": 4}
    with pytest.raises(CapsimError) as err:
        simulate(Scenario.model_validate(sc), stream=STREAM)
    assert err.value.where == "scheduler.num_scheduler_steps"
