"""Attention in a memory tier that computes (HBM-PIM, a computational storage drive): roofline hand checks that
decode attention placed there is bound by the tier's internal bandwidth (not the external one a GPU would read it
at), that prefill stays on the GPU because the tier's compute would make it slower, that the benefit over
streaming the same KV from an SSD grows with the context, bad inputs, and a full simulation."""

from __future__ import annotations

from dataclasses import replace

import pytest

from capsim.errors import CapsimError
from hwmodels.device import device_from_dict
from simulator.config.schema import Scenario
from simulator.costmodel import features as F
from simulator.costmodel.features import BatchShape
from simulator.costmodel.iteration import IterationCostModel
from simulator.costmodel.pricers import PRICERS, PricingContext
from simulator.engine import simulate
from simulator.system import build_system
from tests.test_engine_invariants import check_invariants

# Eight HBM-PIM cubes beside the GPU (Kwon et al., ISSCC 2021: 6 GB and 1.2 TFLOPS per cube, 4x the external
# bandwidth; 307.2 GB/s external per HBM2 cube at 2.4 Gb/s x 1024 pins). The link to the GPU is an assumption.
PIM = {
    "name": "pim",
    "kind": "hbm",
    "capacity_gib": 48,
    "bandwidth_gbs": 2457.6,
    "internal_bandwidth_gbs": 9830.4,
    "compute_tflops": 9.6,
    "latency_us": 1,
}
# A computational SSD (figures assumed for the test: flash channels at 4x the drive's link).
CSD = {
    "name": "csd",
    "kind": "flash",
    "capacity_gib": 3840,
    "bandwidth_gbs": 6.5,
    "internal_bandwidth_gbs": 26,
    "compute_tflops": 1,
    "latency_us": 80,
}
NVME = {"name": "nvme", "kind": "nvme", "capacity_gib": 3840, "bandwidth_gbs": 7, "latency_us": 80}
DEVICE = {
    "base": "h100-sxm",
    "memory_tiers": [PIM, CSD, NVME],
    "tier_links": [
        {"name": "pim-link", "kind": "nvlink", "between": ["hbm", "pim"], "bandwidth_gbs": 450, "latency_us": 1},
        {"name": "csd-p2p", "kind": "p2p", "between": ["hbm", "csd"], "bandwidth_gbs": 6.5, "latency_us": 80},
        {"name": "nvme-pcie", "kind": "pcie", "between": ["hbm", "nvme"], "bandwidth_gbs": 6.5, "latency_us": 80},
    ],
}
IN_PIM = {"name": "attention-in-memory", "tier": "pim"}
IN_CSD = {"name": "attention-in-memory", "tier": "csd", "kv_gib": 1000}
SSD_OFFLOAD = {
    "name": "sparse-attention",
    "density": 1.0,
    "summary_vectors": 0,
    "kv_location": "nvme",
    "host_kv_gib": 1000,
}


def scenario(techniques=(), *, device=None, model="llama-3.1-8b", prompt=1000, output=10, qps=1.0, requests=None):
    workload = {
        "arrival": "poisson",
        "qps": qps,
        "prompt": {"dist": "fixed", "value": prompt},
        "output": {"dist": "fixed", "value": output},
    }
    doc = {
        "model": model,
        "deployment": {"device": device or DEVICE},
        "workload": workload,
        "techniques": list(techniques),
    }
    if requests is not None:
        doc["simulation"] = {"num_requests": requests}
    return Scenario.model_validate(doc)


def system(techniques=(), **kw):
    return build_system(scenario(techniques, **kw))


def decode_s(sys_, batch: int, context: int) -> float:
    cost = IterationCostModel(sys_.table, sys_.roofline, sys_.overheads)
    return cost.iteration(BatchShape(decode_seqs=batch, decode_context=batch * context)).time_s


def row(sys_, op_class: str):
    return next(op for op in sys_.table.layer_ops if op.op_class == op_class)


def row_s(sys_, op, shape: BatchShape) -> float:
    t = sys_.table
    pricer = PRICERS.for_row(op, PricingContext(sys_.roofline, t.attention, t.links, t.processors))
    x = features(shape)
    return pricer.price(x, float(op.flops @ x), float(op.bytes @ x)).time_s


def features(shape: BatchShape):
    return list(shape.features())


SHAPE = BatchShape(decode_seqs=16, decode_context=16 * 32_000)


def test_csd_attention_step_is_bound_by_flash_internal_bandwidth_by_hand():
    """Llama-3.1-8B (GQA: 4 FLOPs per KV byte) on the CSD: far below its ridge of 0.7 TFLOP/s / 20.8 GB/s."""
    sys_ = system([IN_CSD])
    op = row(sys_, "attention_decode")
    assert op.placement == "csd"
    x = features(SHAPE)
    nbytes, flops = float(op.bytes @ x), float(op.flops @ x)
    eff_m, eff_c = sys_.roofline.memory_efficiency, sys_.roofline.compute_efficiency
    by_hand = nbytes / (26e9 * eff_m) + 80e-6
    assert row_s(sys_, op, SHAPE) == pytest.approx(by_hand, rel=1e-9)
    assert flops / (1e12 * eff_c) < nbytes / (26e9 * eff_m)
    assert by_hand < nbytes / (6.5e9 * eff_m) / 3  # the drive's external bandwidth would take 4x as long


def pim_device(**tier):
    return {**DEVICE, "memory_tiers": [{**PIM, **tier}, CSD, NVME]}


def test_pim_attention_reads_at_the_internal_bandwidth_not_the_external_one_by_hand():
    """Llama-2-7B (multi-head: 1 FLOP per KV byte at bf16). Aquabolt-XL is balanced for that: 1.2 TFLOP/s against
    4 x 307.2 GB/s per cube. At capsim's uncalibrated efficiencies (compute 0.7, memory 0.8) the compute side
    binds by ~17 %; with a PIM of half the internal bandwidth the same row is bound by that bandwidth."""
    sys_ = system([IN_PIM], model="llama-2-7b")
    op = row(sys_, "attention_decode")
    x = features(SHAPE)
    nbytes, flops = float(op.bytes @ x), float(op.flops @ x)
    assert flops / nbytes == pytest.approx(1.0, rel=0.01)
    eff_m, eff_c = sys_.roofline.memory_efficiency, sys_.roofline.compute_efficiency
    t = row_s(sys_, op, SHAPE)
    assert t == pytest.approx(max(flops / (9.6e12 * eff_c), nbytes / (9830.4e9 * eff_m)) + 1e-6, rel=1e-9)
    assert t < nbytes / (2457.6e9 * eff_m) / 3  # what reading the stacks' external bandwidth would take
    # The external bandwidth does not enter; the internal one does.
    wide = system([IN_PIM], model="llama-2-7b", device=pim_device(bandwidth_gbs=24576))
    assert row_s(wide, row(wide, "attention_decode"), SHAPE) == t
    half = system([IN_PIM], model="llama-2-7b", device=pim_device(internal_bandwidth_gbs=4915.2))
    assert row_s(half, row(half, "attention_decode"), SHAPE) == pytest.approx(nbytes / (4915.2e9 * eff_m) + 1e-6)


def test_gqa_decode_attention_is_compute_bound_on_pim_by_hand():
    """Llama-3.1-8B shares each KV head among 4 query heads: 4 FLOPs per KV byte, above the PIM ridge of
    6.72 TFLOP/s / 7.86 TB/s = 0.85 FLOP/B, so the PIM units' compute, not their bandwidth, binds."""
    sys_ = system([IN_PIM])
    op = row(sys_, "attention_decode")
    x = features(BatchShape(decode_seqs=16, decode_context=16 * 32_000))
    flops = float(op.flops @ x)
    by_hand = flops / (PIM["compute_tflops"] * 1e12 * sys_.roofline.compute_efficiency) + 1e-6
    assert row_s(sys_, op, BatchShape(decode_seqs=16, decode_context=16 * 32_000)) == pytest.approx(by_hand, rel=1e-9)


def test_the_attention_io_row_carries_query_output_and_new_kv_over_the_tier_link():
    sys_ = system([IN_PIM])
    io = next(op for op in sys_.table.layer_ops if op.name == "attention_io")
    g = sys_.table.attention
    assert io.placement == "pim-link" and io.op_class == "transfer"
    per_seq = 2 * g.heads * g.head_dim * 2 + 2 * g.kv_heads * g.head_dim * g.kv_bytes
    assert io.bytes[F.DECODE_SEQS] == pytest.approx(per_seq)
    assert io.bytes[F.DECODE_CONTEXT] == 0  # the context never crosses the link


def test_prefill_stays_on_the_gpu_because_the_tier_would_be_slower():
    sys_ = system([IN_PIM])
    pre = row(sys_, "attention_prefill")
    assert pre.placement == "device"
    shape = BatchShape(prefill_chunks=((32_000, 0, True),))
    on_gpu = row_s(sys_, pre, shape)
    on_pim = row_s(sys_, replace(pre, placement="pim", op_class="attention_decode"), shape)
    assert on_pim > 10 * on_gpu  # compute-bound: 9.6 TFLOP/s of PIM against ~1000 of the GPU
    # A whole prefill iteration costs what it costs without the technique, plus the KV written out over the link.
    base = system()
    cost = IterationCostModel(sys_.table, sys_.roofline, sys_.overheads).iteration(shape).time_s
    cost0 = IterationCostModel(base.table, base.roofline, base.overheads).iteration(shape).time_s
    kv_out = 32 * 32_000 * 2 * 8 * 128 * 2 / 450e9 + 32 * 1e-6
    assert cost == pytest.approx(cost0 + kv_out, rel=1e-6)


def test_pim_decode_beats_the_gpu_reading_its_own_hbm_at_long_context():
    gpu, pim = system(model="llama-2-7b"), system([IN_PIM], model="llama-2-7b")
    assert decode_s(pim, 32, 32_000) < decode_s(gpu, 32, 32_000)


def test_csd_attention_beats_ssd_offload_and_the_gain_grows_with_context():
    csd, ssd = system([IN_CSD]), system([SSD_OFFLOAD])
    gains = [decode_s(ssd, 8, c) / decode_s(csd, 8, c) for c in (2_000, 8_000, 32_000, 128_000)]
    assert all(g > 1 for g in gains)
    assert gains == sorted(gains) and gains[-1] > gains[0] * 1.05
    # ... towards the ratio of the bandwidths the context is read at: 26 GB/s x 0.8 in the drive, 6.5 GB/s over PCIe.
    assert gains[-1] == pytest.approx(26 * 0.8 / 6.5, rel=0.02)


def test_kv_lives_in_the_tier():
    plan = system([IN_CSD]).memory
    plan0 = system().memory
    assert plan.kv_capacity_tokens > 10 * plan0.kv_capacity_tokens


def test_a_tier_without_compute_is_refused():
    with pytest.raises(CapsimError) as err:
        system([{"name": "attention-in-memory", "tier": "nvme"}])
    assert "declares no compute" in str(err.value)


def test_compute_without_internal_bandwidth_is_refused():
    bad = {**DEVICE, "memory_tiers": [{**PIM, "internal_bandwidth_gbs": None}]}
    with pytest.raises((CapsimError, ValueError)):
        device_from_dict(bad)


def test_a_simulation_with_csd_attention_keeps_the_invariants():
    sc = scenario([IN_CSD], prompt=8000, output=16, qps=2.0, requests=20)
    check_invariants(simulate(sc))


# ------------------------------------------------------------------ catalog entries: AttAcc and SmartSSD
def test_attacc_catalog_entry_follows_its_artifact_config():
    """a100-hbm3-attacc: the AttAcc artifact's A100a (3,352 GB/s) with 5 HBM3 stacks x 16 GiB x 670.4 GB/s per GPU,
    9x internal bandwidth (bank-level PIM under the power constraint), 1 FLOP/B of compute, NVLink3 halved."""
    from hwmodels.device import get_device

    dev = get_device("attacc")
    tier = dev.tier("attacc", where="test")
    assert dev.memory_bandwidth_gbs == pytest.approx(5 * 670.4)
    assert tier.capacity_gib == 5 * 16 and tier.bandwidth_gbs == pytest.approx(5 * 670.4)
    assert tier.internal_bandwidth_gbs == pytest.approx(9 * 5 * 670.4)
    assert tier.compute_tflops * 1e12 == pytest.approx(tier.internal_bandwidth_gbs * 1e9 * 1.0)  # opb = 1
    link = dev.transfer_link(dev.main_tier, "attacc", where="test")
    assert link.kind == "nvlink" and link.bandwidth == 600e9 / 2


def test_attacc_decode_attention_reads_at_the_internal_bandwidth_by_hand():
    """Llama-2-7B (multi-head, 1 FLOP per KV byte) on the AttAcc tier. The artifact balances the PIM units at
    1 FLOP/B; at capsim's uncalibrated efficiencies (0.7 compute, 0.8 memory) the ridge is 0.875 FLOP/B, so the
    compute side binds by 1 / 0.875 - 1 = 14 %. Either way the row is priced by the tier's own roofline, nine
    times faster than reading the same KV at the stacks' external 3,352 GB/s would allow."""
    sys_ = system([{"name": "attention-in-memory", "tier": "attacc"}], model="llama-2-7b", device="attacc")
    op = row(sys_, "attention_decode")
    assert op.placement == "attacc"
    x = features(SHAPE)
    nbytes, flops = float(op.bytes @ x), float(op.flops @ x)
    eff_m, eff_c = sys_.roofline.memory_efficiency, sys_.roofline.compute_efficiency
    compute, memory = flops / (30.168e12 * eff_c), nbytes / (30168e9 * eff_m)
    t = row_s(sys_, op, SHAPE)
    assert t == pytest.approx(max(compute, memory), rel=1e-9)  # no latency given
    assert compute / memory == pytest.approx(1 / 0.875, rel=0.01)
    external = nbytes / (3352e9 * eff_m)
    assert t < external / 7.5
    # Decode at a long context: faster than the same GPU reading the KV from its own HBM.
    gpu = system(model="llama-2-7b", device="attacc")
    assert decode_s(sys_, 32, 8_000) < decode_s(gpu, 32, 8_000)


def test_smartssd_attention_is_bound_by_its_flash_path_and_gains_little_over_offload_by_hand():
    """a6000-smartssd: the FPGA reads the flash through the drive's own PCIe Gen3 x4 (3.94 GB/s), no faster than the
    GPU reads it over the same link. The decode-attention row is bound by that path (GQA: 4 FLOP/B needs 18 GFLOP/s
    of the assumed 200), and streaming the same KV to the GPU over a link of the same bandwidth is no slower: the
    in-storage gain needs internal bandwidth above the link's (the csd_attention example's drive)."""
    smart = {"name": "attention-in-memory", "tier": "csd", "kv_gib": 1000}
    sys_ = system([smart], device="smartssd")
    op = row(sys_, "attention_decode")
    x = features(SHAPE)
    nbytes, flops = float(op.bytes @ x), float(op.flops @ x)
    eff_m, eff_c = sys_.roofline.memory_efficiency, sys_.roofline.compute_efficiency
    by_hand = nbytes / (3.94e9 * eff_m) + 80e-6
    assert row_s(sys_, op, SHAPE) == pytest.approx(by_hand, rel=1e-9)
    assert flops / (0.2e12 * eff_c) < 0.15 * (nbytes / (3.94e9 * eff_m))
    # The same drive as a plain SSD (KV streamed over the 3.94 GB/s link, FlexGen-style) is no slower: capsim prices
    # a link transfer at its full bandwidth and a tier's internal reads at the 0.8 memory efficiency, so at long
    # context the offload takes 0.8 of the in-storage time. No in-storage gain without internal bandwidth to spare.
    plain_ssd = {
        "base": "a6000",
        "memory_tiers": [
            {"name": "nvme", "kind": "nvme", "capacity_gib": 3576, "bandwidth_gbs": 3.94, "latency_us": 80}
        ],
        "tier_links": [
            {"name": "nvme-pcie", "kind": "pcie", "between": ["gddr", "nvme"], "bandwidth_gbs": 3.94, "latency_us": 80}
        ],
    }
    ssd = system([SSD_OFFLOAD], device=plain_ssd)
    for context in (8_000, 32_000):
        ratio = decode_s(ssd, 8, context) / decode_s(sys_, 8, context)
        assert ratio == pytest.approx(0.8, rel=0.02)


def test_attacc_holds_more_kv_and_decodes_faster_than_two_dgxs():
    """OPT-175B (GPT-175B's shape, multi-head), TP 8, 2,048 tokens of context: with its AttAccs a DGX keeps the KV in
    8 x 80 GiB of PIM stacks instead of what its HBM leaves beside the weights, and at the largest batch each fits
    it decodes more tokens per second than two DGXs (the same memory capacity, AttAcc's comparison)."""
    opt = {"model": "opt-175b", "device": "attacc"}

    def build(techniques):
        doc = scenario(techniques, **opt).model_dump(exclude_unset=True)
        doc["deployment"] = {**doc["deployment"], "tp": 8}
        return build_system(Scenario.model_validate(doc))

    dgx, acc = build([]), build([{"name": "attention-in-memory", "tier": "attacc"}])
    g = acc.table.attention
    assert g.kv_heads == 96 // 8  # each GPU's shard of the heads
    kv_token = 96 * 2 * g.kv_heads * g.head_dim * 2  # one GPU's KV per token: all layers, keys and values, fp16
    assert acc.memory.kv_capacity_tokens == pytest.approx(80 * 2**30 / kv_token, rel=0.001)  # its own AttAcc
    assert acc.memory.kv_capacity_tokens > 2 * dgx.memory.kv_capacity_tokens

    def tokens_per_s(sys_):
        batch = min(512, sys_.memory.kv_capacity_tokens // 2048)
        return batch / decode_s(sys_, batch, 2048)

    assert tokens_per_s(acc) > 2 * tokens_per_s(dgx)
