"""The optimal-throughput bound in every summary (simulator/throughput_bound.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from simulator.config.schema import Scenario
from simulator.costmodel import features as F
from simulator.engine import simulate
from simulator.metrics.summary import summarise
from simulator.throughput_bound import throughput_bound, workload_features


def run(
    prompt: dict,
    output: dict,
    *,
    deployment: dict | None = None,
    scheduler: dict | None = None,
    arrival: dict | None = None,
    model: str = "llama-3.1-8b",
    n: int = 150,
) -> dict:
    doc = {
        "seed": 3,
        "model": model,
        "deployment": deployment or {"device": "h100-sxm"},
        "scheduler": scheduler or {"name": "vllm", "max_num_batched_tokens": 16384},
        "workload": {**(arrival or {"arrival": "offline"}), "prompt": prompt, "output": output},
        "simulation": {"num_requests": n},
    }
    return summarise(simulate(Scenario.model_validate(doc)).result)


def test_workload_features_sum_each_requests_work():
    x = workload_features(np.array([100, 300]), np.array([10, 30]), max_seqs=4, kv_tokens=10_000)
    assert x[F.PREFILL_TOKENS] == 400 and x[F.PREFILL_ATTN_WORK] == (100**2 + 300**2) / 2
    assert x[F.DECODE_SEQS] == 38 and x[F.LOGIT_SEQS] == 40
    assert x[F.DECODE_CONTEXT] == 9 * 100 + 9 * 10 / 2 + 29 * 300 + 29 * 30 / 2
    assert x[F.ONE] == pytest.approx(40 / 4)  # the scheduler's cap binds: 10,000 tokens hold ~47 sequences
    small_kv = workload_features(np.array([100, 300]), np.array([10, 30]), max_seqs=64, kv_tokens=1_000)
    assert small_kv[F.ONE] == pytest.approx(40 / (1_000 / (200 + 10)))  # the KV cache binds


@pytest.mark.parametrize(
    "case",
    [
        dict(prompt={"dist": "fixed", "value": 64}, output={"dist": "fixed", "value": 512}),  # decode-heavy
        dict(prompt={"dist": "fixed", "value": 8000}, output={"dist": "fixed", "value": 4}),  # prefill-heavy
        dict(
            prompt={"dist": "uniform", "low": 100, "high": 2000},
            output={"dist": "uniform", "low": 10, "high": 400},
            deployment={"device": "a100-80gb-sxm", "tp": 2, "pp": 2},
        ),
        dict(
            prompt={"dist": "uniform", "low": 100, "high": 1000},
            output={"dist": "uniform", "low": 10, "high": 200},
            model="mixtral-8x7b",
            deployment={"device": "h100-sxm", "tp": 4},
        ),
    ],
)
def test_no_run_beats_its_bound(case):
    s = run(**case)
    assert s["completed"] == s["num_requests"]
    assert 0 < s["output_tps"] < s["bound_output_tps"]
    assert s["bound_output_tps"] == min(
        s["bound_compute_output_tps"], s["bound_memory_output_tps"], s["bound_network_output_tps"]
    )
    assert 0 < s["bound_attainment"] < 1


def test_the_binding_resource_follows_the_workload():
    decode_heavy = run(
        {"dist": "fixed", "value": 64}, {"dist": "fixed", "value": 512}, scheduler={"name": "vllm", "max_num_seqs": 16}
    )
    prefill_heavy = run({"dist": "fixed", "value": 8000}, {"dist": "fixed", "value": 4})
    assert decode_heavy["bound_resource"] == "memory"  # 16 sequences share each read of the weights
    assert prefill_heavy["bound_resource"] == "compute"  # long prompts: GEMMs and attention at high intensity
    # Tensor parallelism over a PCIe-only card: the all-reduces' link binds.
    pcie = run({"dist": "fixed", "value": 2000}, {"dist": "fixed", "value": 16}, deployment={"device": "l40s", "tp": 4})
    assert pcie["bound_resource"] == "network"
    assert math.isinf(prefill_heavy["bound_network_output_tps"])  # one GPU: no collectives


def test_bound_depends_on_the_workload_not_on_the_load():
    lengths = ({"dist": "fixed", "value": 500}, {"dist": "fixed", "value": 100})
    light = run(*lengths, arrival={"arrival": "poisson", "qps": 1}, n=60)
    heavy = run(*lengths, arrival={"arrival": "poisson", "qps": 50}, n=60)
    assert light["bound_output_tps"] == pytest.approx(heavy["bound_output_tps"], rel=1e-12)
    assert light["bound_attainment"] < heavy["bound_attainment"]


def test_bound_scales_with_replicas():
    from simulator.system import build_system

    doc = {
        "model": "llama-3.1-8b",
        "deployment": {"device": "h100-sxm"},
        "scheduler": {"name": "vllm"},
        "workload": {
            "arrival": "poisson",
            "qps": 1,
            "prompt": {"dist": "fixed", "value": 512},
            "output": {"dist": "fixed", "value": 128},
        },
    }
    system = build_system(Scenario.model_validate(doc))
    p, o = np.full(10, 512), np.full(10, 128)
    kv = system.memory.kv_capacity_tokens
    one, four = throughput_bound(system, p, o, 1, kv), throughput_bound(system, p, o, 4, kv)
    assert four.output_tps == pytest.approx(4 * one.output_tps)
    assert one.resource == four.resource
