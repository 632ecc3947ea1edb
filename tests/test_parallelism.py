"""Tensor and pipeline parallelism at the level of whole simulations."""

from __future__ import annotations

from simulator.config.schema import Scenario
from simulator.engine import simulate
from simulator.metrics.summary import summarise


def _run(tp: int, pp: int, qps: float, n: int = 600):
    sc = Scenario.model_validate(
        {
            "seed": 2,
            "model": "llama-2-13b",
            "deployment": {"device": "a100-80gb-sxm", "tp": tp, "pp": pp},
            "scheduler": {"name": "vllm", "max_num_seqs": 32},
            "workload": {"qps": qps, "prompt": {"dist": "fixed", "value": 256}, "output": {"dist": "fixed", "value": 64}},
            "simulation": {"num_requests": n},
        }
    )
    out = simulate(sc)
    return out, summarise(out.result, sc.slo)


def test_pipeline_stages_multiply_saturated_throughput_and_gpu_count():
    """Far past saturation, pp in-flight batches each take the full pipeline latency while the stages
    overlap, so served throughput grows with pp (less than linearly: smaller batches per engine and
    pp - 1 activation sends per iteration)."""
    _, one = _run(1, 1, qps=500.0)
    _, two = _run(1, 2, qps=500.0)
    assert one["num_gpus"] == 1 and two["num_gpus"] == 2
    assert 1.4 < two["throughput_rps"] / one["throughput_rps"] < 2.05


def test_tensor_parallelism_lowers_decode_latency_at_light_load():
    _, one = _run(1, 1, qps=0.5, n=100)
    _, two = _run(2, 1, qps=0.5, n=100)
    assert two["tpot_p50_s"] < 0.75 * one["tpot_p50_s"]
    assert two["num_gpus"] == 2
