"""Queueing sanity: the engine against closed-form queueing theory and known orderings."""

from __future__ import annotations

from simulator.config.schema import Scenario
from simulator.costmodel.features import BatchShape
from simulator.engine import simulate
from simulator.system import build_system


def _scenario(**over) -> Scenario:
    base = {
        "seed": 11,
        "model": "llama-2-7b",
        "deployment": {"device": "a100-80gb-sxm"},
        "scheduler": {"name": "vllm", "max_num_seqs": 128, "max_num_batched_tokens": 4096},
        "workload": {"arrival": "poisson", "qps": 2.0,
                     "prompt": {"dist": "fixed", "value": 512}, "output": {"dist": "fixed", "value": 64}},
        "simulation": {"num_requests": 3000},
    }
    for key, value in over.items():
        section, _, field = key.partition("__")
        if field:
            base[section] = {**base[section], field: value}
        else:
            base[section] = value
    return Scenario.model_validate(base)


def test_single_server_fixed_service_matches_md1_mean_wait():
    """Static batching with batch size 1 is a FIFO single server with a deterministic service
    time S (one prefill + output-1 decode steps), so Poisson arrivals give an M/D/1 queue:
    mean wait = rho * S / (2 (1 - rho))."""
    probe = _scenario(scheduler={"name": "static", "batch_size": 1})
    system = build_system(probe)
    cost = system.cost_model()
    prompt, output = 512, 64
    service = cost.iteration(BatchShape(prefill_chunks=((prompt, 0, True),))).time_s
    service += cost.decode_run(1, prompt + 1, output - 1).total
    rho = 0.6
    qps = rho / service
    sc = _scenario(scheduler={"name": "static", "batch_size": 1}, workload__qps=qps,
                   simulation={"num_requests": 40_000})
    out = simulate(sc)
    req = out.result.requests
    wait = (req["schedule_s"] - req["arrival_s"]).mean()
    expected = rho * service / (2 * (1 - rho))
    assert abs(wait - expected) / expected < 0.05, (wait, expected)
    # Service really is deterministic: every request spends the same time from schedule to finish.
    busy = req["finish_s"] - req["schedule_s"]
    assert busy.max() - busy.min() < 1e-9


def test_latency_grows_with_load():
    means = []
    for qps in (1.0, 4.0, 12.0):
        out = simulate(_scenario(workload__qps=qps))
        req = out.result.requests
        means.append(((req["finish_s"] - req["arrival_s"]).mean(), (req["first_token_s"] - req["arrival_s"]).mean()))
    e2e = [m[0] for m in means]
    ttft = [m[1] for m in means]
    assert e2e[0] < e2e[1] < e2e[2]
    assert ttft[0] < ttft[2]


def test_static_batching_is_worse_than_continuous_batching_on_the_same_load():
    common = {"workload__qps": 6.0,
              "workload__output": {"dist": "uniform", "low": 16, "high": 256}}
    cont = simulate(_scenario(**common)).result.requests
    static = simulate(_scenario(scheduler={"name": "static", "batch_size": 16}, **common)).result.requests
    e2e = lambda r: (r["finish_s"] - r["arrival_s"]).mean()  # noqa: E731
    ttft = lambda r: (r["first_token_s"] - r["arrival_s"]).mean()  # noqa: E731
    assert e2e(static) > 1.5 * e2e(cont)
    assert ttft(static) > ttft(cont)


def test_throughput_matches_offered_load_when_stable_and_saturates_when_not():
    """Below capacity every request is served at the offered rate; far above it, the finish rate
    is capped by the replica and queueing delay dominates."""
    stable = simulate(_scenario(workload__qps=8.0)).result.requests
    span = stable["finish_s"].max() - stable["arrival_s"].min()
    assert abs(len(stable) / span - 8.0) / 8.0 < 0.05
    overloaded = simulate(_scenario(workload__qps=200.0, simulation={"num_requests": 3000})).result.requests
    served = len(overloaded) / (overloaded["finish_s"].max() - overloaded["arrival_s"].min())
    assert served < 0.5 * 200.0
    queue = (overloaded["schedule_s"] - overloaded["arrival_s"]).mean()
    service = (overloaded["finish_s"] - overloaded["schedule_s"]).mean()
    assert queue > service


def test_more_replicas_lower_latency_under_load():
    one = simulate(_scenario(workload__qps=14.0)).result.requests
    two = simulate(_scenario(workload__qps=14.0, deployment={"device": "a100-80gb-sxm", "num_replicas": 2})).result.requests
    assert (two["finish_s"] - two["arrival_s"]).mean() < (one["finish_s"] - one["arrival_s"]).mean()
