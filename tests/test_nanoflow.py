"""NanoFlow nano-batching (simulator/techniques/nanoflow.py): lanes, the shared-resource floor, the split
overhead, the network lane, and where it helps in a simulation."""

from __future__ import annotations

import numpy as np
import pytest

from capsim.errors import CapsimError
from simulator.config.schema import Scenario
from simulator.costmodel import features as F
from simulator.costmodel.features import BatchShape
from simulator.engine import simulate
from simulator.metrics.summary import summarise
from simulator.system import build_system
from simulator.techniques.nanoflow import FABRIC, GROUP
from tests.test_engine_invariants import SCHEDULERS, check_invariants, tiny_scenario

MIXED = BatchShape(prefill_chunks=((2048, 0, True),), decode_seqs=128, decode_context=128 * 1000)
LONE_DECODE = BatchShape(decode_seqs=1, decode_context=1000)


def system(techniques=None, *, tp: int = 1, calibration: str = "datasheet", device: str = "h100-sxm"):
    doc = {
        "model": "llama-3.1-8b",
        "deployment": {"device": device, "tp": tp, "calibration": calibration, "engine": "none"},  # kernels alone
        "scheduler": {"name": "vllm"},
        "workload": {
            "arrival": "poisson",
            "qps": 1,
            "prompt": {"dist": "fixed", "value": 512},
            "output": {"dist": "fixed", "value": 128},
        },
    }
    if techniques:
        doc["techniques"] = techniques
    return build_system(Scenario.model_validate(doc))


def nano(n: int, **extra) -> list[dict]:
    return [{"name": "nanoflow", "nano_batches": n, **extra}]


def test_one_nano_batch_changes_nothing():
    base = tiny_scenario("sarathi", seed=4, qps=10, n=60, replicas=1, router="round-robin", kv_tokens_budget=False)
    doc = base.model_dump()
    doc["techniques"] = nano(1)
    a, b = simulate(base), simulate(Scenario.model_validate(doc))
    assert a.result.iterations.equals(b.result.iterations)
    assert a.result.requests.equals(b.result.requests)


def test_rows_go_to_lanes_by_their_binding_resource():
    table = system(nano(2), tp=2).table
    lanes = {op.name: op.lane for op in table.layer_ops}
    assert all(op.overlap == GROUP for op in table.layer_ops)
    assert lanes["qkv_proj"] == "compute" and lanes["attention_prefill"] == "compute"
    assert lanes["attention_decode"] == "memory" and lanes["norm"] == "memory"
    assert lanes["tp_allreduce"] == "network"
    assert table.layer_comms == ()  # the all-reduces moved into the network lane
    assert table.nano_batches == 2


def test_network_row_prices_exactly_the_collectives_it_replaces():
    """Two all-reduces per layer as one transfer row: same seconds as the link model at any batch (before
    splitting), plus one latency per nano-batch after."""
    plain = system(tp=2)
    comm = plain.table.layer_comms
    row = next(op for op in system(nano(2), tp=2).table.layer_ops if op.name == "tp_allreduce")
    link = next(lk for lk in system(nano(2), tp=2).table.links if lk.name == FABRIC)
    for shape in (LONE_DECODE, MIXED):
        x = plain.cost_model().features(shape)
        expected = sum(float(c.time @ x) for c in comm)
        got = float(row.bytes @ x) / link.bandwidth + row.launches * link.latency_s
        assert got == pytest.approx(expected, rel=1e-12)


def test_a_large_mixed_batch_overlaps_and_a_lone_decode_pays_the_split():
    base = system().cost_model()
    two, four = system(nano(2, adaptive=False)).cost_model(), system(nano(4, adaptive=False)).cost_model()
    # A prefill chunk beside 128 decodes: GEMMs are compute-bound, decode attention memory-bound; overlapping
    # them beats running them one after another even after re-reading the weights per nano-batch.
    assert two.iteration(MIXED).time_s < base.iteration(MIXED).time_s
    # One decode: everything is bandwidth-bound; each nano-batch re-reads the weights, so splitting only costs.
    t1, t2, t4 = (m.iteration(LONE_DECODE).time_s for m in (base, two, four))
    assert t1 < t2 < t4
    assert t2 / t1 == pytest.approx(2.0, rel=0.15)  # the weight read dominates a lone decode step


def test_adaptive_runs_a_pass_whole_when_splitting_does_not_pay():
    base, adaptive = system().cost_model(), system(nano(2)).cost_model()
    assert adaptive.iteration(LONE_DECODE).time_s == pytest.approx(base.iteration(LONE_DECODE).time_s, rel=1e-12)
    assert adaptive.iteration(MIXED).time_s < base.iteration(MIXED).time_s
    for shape in (
        LONE_DECODE,
        MIXED,
        BatchShape(decode_seqs=64, decode_context=64 * 500),
        BatchShape(prefill_chunks=((8192, 0, True),)),
    ):
        assert adaptive.iteration(shape).time_s <= base.iteration(shape).time_s * (1 + 1e-12)


def test_the_overlapped_layer_is_never_faster_than_its_summed_resources():
    """Lanes share one GPU: a layer takes at least the summed compute time and the summed memory time of all
    its rows over all nano-batches (each nano-batch reading the weights)."""
    sys2 = system(nano(2, adaptive=False))
    cost, table, dev = sys2.cost_model(), sys2.table, sys2.roofline
    for shape in (MIXED, LONE_DECODE, BatchShape(decode_seqs=256, decode_context=256 * 1500)):
        x = cost.features(shape)
        xn = x / 2
        xn[F.ONE] = x[F.ONE]
        xn[F.EXPERTS_HIT] = x[F.EXPERTS_HIT]
        flops = 2 * sum(float(op.flops @ xn) for op in table.layer_ops) * table.num_layers
        nbytes = 2 * sum(float(op.bytes @ xn) for op in table.layer_ops) * table.num_layers
        floor = max(flops / dev.effective_flops, nbytes / dev.effective_bandwidth)
        assert cost.iteration(shape).time_s >= floor * (1 - 1e-12)


def test_a_pcie_fetch_keeps_its_own_lane_under_nanoflow():
    sparse = {"name": "sparse-attention", "density": 0.1, "kv_location": "host", "host_kv_gib": 64}
    table = system([sparse, *nano(2)]).table
    fetch = next(op for op in table.layer_ops if op.name == "kv_fetch")
    assert fetch.overlap == GROUP and fetch.lane == "pcie"


def test_bad_nano_batch_count_names_the_field():
    with pytest.raises(CapsimError) as err:
        system(nano(0))
    assert "nano_batches" in err.value.where


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_invariants_hold_with_nanoflow(scheduler):
    base = tiny_scenario(
        scheduler,
        seed=2,
        qps=15,
        n=50,
        replicas=2,
        router="least-outstanding",
        kv_tokens_budget=scheduler in ("vllm", "sarathi"),
    )
    doc = base.model_dump()
    doc["techniques"] = nano(3)
    out = simulate(Scenario.model_validate(doc))
    check_invariants(out)


def offline(techniques, scheduler: dict) -> dict:
    doc = {
        "seed": 1,
        "model": "llama-3.1-8b",
        "deployment": {"device": "h100-sxm"},
        "scheduler": scheduler,
        "workload": {
            "arrival": "offline",
            "prompt": {"dist": "uniform", "low": 256, "high": 2048},
            "output": {"dist": "uniform", "low": 64, "high": 512},
        },
        "simulation": {"num_requests": 200},
    }
    if techniques:
        doc["techniques"] = techniques
    return summarise(simulate(Scenario.model_validate(doc)).result)


def test_nano_batching_helps_mixed_batches_most():
    """Sarathi's iterations mix prefill chunks with decodes (compute beside memory): nano-batches overlap them.
    vLLM v0 runs prefill-only and decode-only iterations, whose operators mostly bind one resource, so it
    gains less."""
    sarathi = {"name": "sarathi", "max_num_seqs": 512, "chunk_size": 2048}
    vllm = {"name": "vllm", "max_num_seqs": 256, "max_num_batched_tokens": 16384}
    s0, s2 = offline(None, sarathi), offline(nano(2), sarathi)
    v0, v2 = offline(None, vllm), offline(nano(2), vllm)
    sarathi_gain, vllm_gain = s2["output_tps"] / s0["output_tps"], v2["output_tps"] / v0["output_tps"]
    assert sarathi_gain > vllm_gain > 1.0
    for s in (s0, s2, v0, v2):  # no schedule beats the hardware's bound
        assert s["output_tps"] < s["bound_output_tps"]
        assert np.isfinite(s["bound_attainment"]) and 0 < s["bound_attainment"] < 1
