"""Attention offloading (Lamina): a hand-checked decode step (KV bytes over the attention pool's bandwidth, q/k/v/o
activations over the link, the GPU's linear rows; the longest of the three with overlap, their sum without), the KV
capacity coming from the attention devices' memory, the extra devices priced, bad input refused, and a full
simulation keeping the engine's invariants."""

from __future__ import annotations

import pytest

from capsim.errors import CapsimError, DoesNotFitError
from hwmodels.device import get_device
from simulator.config.schema import Scenario
from simulator.costmodel import features as F
from simulator.costmodel.features import BatchShape
from simulator.costmodel.iteration import IterationCostModel
from simulator.engine import simulate
from simulator.memory_plan import GIB
from simulator.system import build_system
from tests.test_engine_invariants import check_invariants, tiny_scenario

LAMINA = "attention-offload"
NIC = {"gbs": 50.0, "latency_us": 0.0}  # a 400 Gb/s NIC per GPU, no latency (hand numbers stay simple)


def scenario(techniques=(), *, device="h100-sxm", model="llama-3.1-70b", **deployment) -> Scenario:
    return Scenario.model_validate(
        {
            "model": model,
            "deployment": {"device": device, **deployment},
            "workload": {
                "arrival": "poisson",
                "qps": 1,
                "prompt": {"dist": "fixed", "value": 1000},
                "output": {"dist": "fixed", "value": 10},
            },
            "techniques": list(techniques),
        }
    )


def offload(**params):
    return {"name": LAMINA, "device": "h20", "count": 2, "link": NIC, **params}


def cost(sys_) -> IterationCostModel:
    return IterationCostModel(sys_.table, sys_.roofline, None)


def by_name(sys_, shape):
    """Breakdown rows by name (the attention and transfer rows' names are unique)."""
    return {b.name: b for b in cost(sys_).breakdown(shape)}


def lanes(batch: int, context: int):
    """(GPU layer rows, pool attention, transfers, everything else) of one decode step without overlap, and
    the step's time with and without it."""
    shape = BatchShape(decode_seqs=batch, decode_context=batch * context)
    on = build_system(scenario([offload()], tp=2))
    off = build_system(scenario([offload(overlap=False)], tp=2))
    parts = cost(off).breakdown(shape)
    layer = [b for b in parts if b.scope == "layer" and b.op_class != "communication"]
    gpu = sum(b.time_s for b in layer if b.op_class not in ("attention_decode", "transfer"))
    (attn,) = (b for b in layer if b.op_class == "attention_decode")
    (io,) = (b for b in layer if b.name == "attention_io")
    rest = sum(b.time_s for b in parts if b not in layer)
    return on, shape, gpu, attn, io, rest, cost(on).iteration(shape).time_s, cost(off).iteration(shape).time_s


@pytest.mark.parametrize(("context", "binding"), [(2000, "gpu"), (16000, "attention")])
def test_decode_step_by_hand_max_with_overlap_sum_without(context, binding):
    batch = 64
    on, shape, gpu, attn, io, rest, total_max, total_sum = lanes(batch, context)
    layers = on.model.num_layers
    h20 = get_device("h20")
    share = 2 / 2  # two H20s for two H100s: one per GPU
    # Attention on the pool: the row's bytes (the KV it reads: 2 x 4 KV heads x 128 x 2 B per context token per
    # GPU, Llama-3.1-70B at tp=2) over the H20's effective bandwidth, plus one launch on the H20.
    row = next(op for op in on.table.layer_ops if op.op_class == "attention_decode")
    assert row.placement == "attention-pool"
    assert row.bytes[F.DECODE_CONTEXT] == 2 * 4 * 128 * 2
    nbytes = float(row.bytes @ shape.features())
    bw = h20.memory_bandwidth * h20.efficiency.memory * share
    assert attn.time_s == pytest.approx(layers * (nbytes / bw + h20.efficiency.launch_overhead_us * 1e-6), rel=1e-9)
    assert "h20" in attn.source
    # Transfers: per sequence and layer, (2 x 32 query/output heads + 2 x 4 KV heads) x 128 x 2 B over 50 GB/s.
    assert io.time_s == pytest.approx(layers * batch * (2 * 32 + 2 * 4) * 128 * 2 / 50e9, rel=1e-9)
    # Without overlap the lanes add up; with it a layer costs its longest lane (the all-reduces stay outside).
    assert total_sum == pytest.approx(rest + gpu + attn.time_s + io.time_s, rel=1e-9)
    assert total_max == pytest.approx(rest + max(gpu, attn.time_s, io.time_s), rel=1e-9)
    assert total_max < total_sum
    # A batch of 64 at 2,000 tokens: the H100's weight reads bind; at 16,000 the KV reads on the H20 bind.
    assert (gpu > attn.time_s) == (binding == "gpu")
    assert io.time_s < min(gpu, attn.time_s)


def test_attention_leaves_the_gpu_and_the_pool_size_sets_its_time():
    shape = BatchShape(decode_seqs=32, decode_context=32 * 8000)
    one = by_name(build_system(scenario([offload(count=1, overlap=False)], tp=2)), shape)
    four = by_name(build_system(scenario([offload(count=4, overlap=False)], tp=2)), shape)
    plain = by_name(build_system(scenario(tp=2)), shape)
    name = next(n for n, b in plain.items() if b.op_class == "attention_decode")
    assert "h20" not in plain[name].source and "h20" in one[name].source
    # Four devices read the same KV in a quarter of the time; the launch on the H20 does not shrink.
    launches = 80 * get_device("h20").efficiency.launch_overhead_us * 1e-6
    assert (one[name].time_s - launches) / (four[name].time_s - launches) == pytest.approx(4.0, rel=1e-9)


def test_prefill_attention_stays_on_the_gpu_and_its_kv_is_written_out():
    sys_ = build_system(scenario([offload(overlap=False)], tp=2))
    prefill = next(op for op in sys_.table.layer_ops if op.op_class == "attention_prefill")
    assert prefill.placement == "device"
    parts = by_name(sys_, BatchShape(prefill_chunks=((2000, 0, True),)))
    # The prompt's keys and values: 2000 tokens x 2 x 4 KV heads x 128 x 2 B per layer per GPU over the link.
    assert parts["attention_io"].time_s == pytest.approx(80 * 2000 * 2 * 4 * 128 * 2 / 50e9, rel=1e-9)


def test_kv_capacity_comes_from_the_attention_devices_memory():
    plain = build_system(scenario(tp=4)).memory
    for count in (2, 4):
        sys_ = build_system(scenario([offload(count=count)], tp=4))
        m = sys_.memory
        h20 = get_device("h20")
        # Llama-3.1-70B: 80 layers x 2 x 2 KV heads per GPU (tp=4) x 128 x 2 B = 81,920 B per token per GPU.
        per_token = 80 * 2 * 2 * 128 * 2
        assert m.host_kv_bytes_per_token == per_token
        assert m.host_kv_bytes == pytest.approx(count * h20.memory_bytes / 4)
        assert m.kv_bytes_per_token == 0  # no KV left on the compute GPUs
        expected = int(count * h20.memory_bytes / 4 // per_token)
        assert expected - m.block_size < m.kv_capacity_tokens <= expected
        assert m.weights_bytes == plain.weights_bytes  # the weights stay on the GPUs
    # Two H20s (192 GB) hold more KV than what four H100s leave after the weights.
    assert build_system(scenario([offload(count=2)], tp=4)).memory.kv_capacity_tokens > plain.kv_capacity_tokens


def test_kv_quantization_before_offload_shrinks_the_tokens_bytes():
    sys_ = build_system(scenario([{"name": "kv-quantization", "bits": 8}, offload()], tp=2))
    assert sys_.memory.host_kv_bytes_per_token < 80 * 2 * 4 * 128 * 2


def test_extra_devices_are_priced_and_powered():
    sys_ = build_system(scenario([offload(count=3)], tp=2))
    (extra,) = sys_.extra_devices
    h20 = get_device("h20")
    assert (extra.name, extra.count, extra.price_usd_per_hour, extra.tdp_w) == (
        h20.name,
        3,
        h20.price_usd_per_hour,
        h20.tdp_w,
    )


def test_inline_device_and_links():
    small = {"base": "h20", "memory_gib": 8}
    sys_ = build_system(scenario([{"name": LAMINA, "device": small, "count": 1, "link": "nvlink"}], tp=2))
    assert sys_.memory.host_kv_bytes == pytest.approx(8 * GIB / 2)
    link = next(ln for ln in sys_.table.links if ln.name == "attention-link")
    assert (link.kind, link.bandwidth) == ("nvlink", get_device("h100-sxm").nvlink_bandwidth)
    pcie = build_system(scenario([{"name": LAMINA, "count": 1}], tp=2))
    link = next(ln for ln in pcie.table.links if ln.name == "attention-link")
    assert (link.kind, link.bandwidth) == ("pcie", get_device("h100-sxm").pcie_bandwidth)


@pytest.mark.parametrize(
    ("entry", "where"),
    [
        ({"name": LAMINA, "count": 0}, "techniques[0].count"),
        ({"name": LAMINA, "count": 1, "device": "no-such-gpu"}, "techniques[0]"),
        ({"name": LAMINA, "count": 1, "link": "carrier-pigeon"}, "techniques[0]"),
        ({"name": LAMINA, "count": 1, "link": {"gbs": -1}}, "techniques[0]"),
    ],
)
def test_bad_input_is_refused_with_the_field(entry, where):
    with pytest.raises(CapsimError) as err:
        build_system(scenario([entry], tp=2))
    assert err.value.where.startswith(where)


def test_refused_beside_techniques_that_also_place_the_kv_or_group_every_row():
    for other in (
        {"name": "sparse-attention", "density": 0.5},
        {"name": "weight-offload", "fraction": 0.5},
        {"name": "nanoflow", "nano_batches": 2},
    ):
        with pytest.raises(CapsimError, match="cannot be combined"):
            build_system(scenario([offload(), other], tp=2))


def test_too_little_attention_memory_does_not_fit():
    tiny = {"base": "h20", "memory_gib": 0.001}
    with pytest.raises(DoesNotFitError):
        build_system(scenario([{"name": LAMINA, "device": tiny, "count": 1}], tp=2))


def test_invariants_hold_and_a_small_pool_preempts():
    # llama-2-7b stores 0.5 MiB of KV per token: a 0.6 GiB attention device holds ~1,200 tokens, a handful of
    # sequences, so preemption happens and must keep every invariant.
    for scheduler in ("vllm", "sarathi", "orca"):
        base = tiny_scenario(
            scheduler, seed=3, qps=50.0, n=60, replicas=2, router="round-robin", kv_tokens_budget=False
        ).model_dump()
        base["simulation"]["oversized"] = "drop"
        pool = {"name": LAMINA, "device": {"base": "h20", "memory_gib": 0.6}, "count": 1, "link": NIC}
        out = simulate(Scenario.model_validate({**base, "techniques": [pool]}))
        check_invariants(out)
        m = out.system.memory
        peak_tokens = max(out.kv_blocks_peak) * m.block_size
        assert peak_tokens * m.host_kv_bytes_per_token <= m.host_kv_bytes
        if scheduler == "vllm":
            assert out.result.requests["preemptions"].sum() > 0
