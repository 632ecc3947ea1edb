"""Host CPUs as devices and Duplex-style Op/B placement (issue 17): the catalog's CPU peaks follow cores x units x
clock and their DDR bandwidth channels x rate; a CPU drafts for speculative decoding and runs decode attention
over KV in host DRAM, bound by the DDR bandwidth; the Op/B policy sends a row to the logic-die PIM exactly below
the computed threshold, where the PIM's internal bandwidth bounds it; PIM helps decode attention and small-batch
MoE but not a compute-bound prefill; bad input is named by field. docs/devices/cpu-and-duplex.md."""

from __future__ import annotations

import numpy as np
import pytest

from capsim.errors import CapsimError
from hwmodels.device import get_device
from simulator.config.schema import Scenario
from simulator.costmodel import features as F
from simulator.costmodel.features import BatchShape
from simulator.costmodel.iteration import IterationCostModel
from simulator.costmodel.pricers import PRICERS, PricingContext
from simulator.engine import simulate
from simulator.system import build_system
from simulator.techniques.duplex import OP_B_PLACEMENT, OpBProcessor, experts_threshold_tokens
from tests.test_engine_invariants import check_invariants

# An H200 with a logic-die PIM in its HBM stacks: 4x the external bandwidth over extra TSVs and 100 TFLOP/s on the
# logic die. ILLUSTRATIVE figures (Duplex gives no table we could cite), the same as scenarios/examples/duplex_moe.yaml.
LOGIC_PIM = {
    "name": "logic-pim",
    "kind": "hbm",
    "internal_bandwidth_gbs": 19200,
    "compute_tflops": 100,
    "latency_us": 1,
}
H200_PIM = {"base": "h200", "memory_tiers": [LOGIC_PIM]}
DUPLEX = {"name": "duplex", "tier": "logic-pim"}
CPU_ATTENTION = {"name": "attention-offload", "device": "xeon-8480", "count": 1, "link": "pcie"}


def scenario(
    techniques=(), *, model="mixtral-8x7b", device=None, prompt=1000, output=10, qps=1.0, n=None, scheduler=None
):
    doc = {
        "seed": 5,
        "model": model,
        "deployment": {"device": device or H200_PIM, "engine": "none"},  # hand checks of the kernels alone
        "workload": {
            "arrival": "poisson",
            "qps": qps,
            "prompt": {"dist": "fixed", "value": prompt},
            "output": {"dist": "fixed", "value": output},
        },
        "techniques": list(techniques),
    }
    if n is not None:
        doc["simulation"] = {"num_requests": n}
    if scheduler is not None:
        doc["scheduler"] = scheduler
    return Scenario.model_validate(doc)


def system(techniques=(), **kw):
    return build_system(scenario(techniques, **kw))


def step_s(sys_, shape: BatchShape) -> float:
    return IterationCostModel(sys_.table, sys_.roofline, sys_.overheads).iteration(shape).time_s


def pricer(sys_, op):
    t = sys_.table
    return PRICERS.for_row(op, PricingContext(sys_.roofline, t.attention, t.links, t.processors))


def row(sys_, predicate):
    return next(op for op in sys_.table.layer_ops if predicate(op))


def is_attention(op):
    return op.op_class == "attention_decode"


def is_experts(op):
    return op.op_class == "gemm" and op.bytes[F.EXPERTS_HIT] != 0


def decode(batch: int, context: int = 2000) -> BatchShape:
    return BatchShape(decode_seqs=batch, decode_context=batch * context)


# ------------------------------------------------------------------ CPU catalog entries
def test_cpu_peaks_follow_cores_units_and_clock_and_bandwidth_channels_and_rate():
    xeon, epyc = get_device("xeon-8480"), get_device("epyc-9654")
    # Sapphire Rapids AMX: 1,024 bf16 / 2,048 int8 operations per cycle per core, 56 cores at 2.0 GHz base.
    assert xeon.peak_tflops["bf16"] == pytest.approx(56 * 2.0e9 * 1024 / 1e12, rel=1e-3)
    assert xeon.peak_tflops["int8"] == pytest.approx(2 * xeon.peak_tflops["bf16"], rel=1e-3)
    # Zen 4: two 256-bit FMA pipes (32 fp32 FLOP per cycle), bf16 dot products twice that, 96 cores at 2.4 GHz.
    assert epyc.peak_tflops["fp32"] == pytest.approx(96 * 2.4e9 * 32 / 1e12, rel=1e-2)
    assert epyc.peak_tflops["bf16"] == pytest.approx(96 * 2.4e9 * 64 / 1e12, rel=1e-2)
    assert xeon.memory_bandwidth_gbs == pytest.approx(8 * 4800e6 * 8 / 1e9)  # 8 channels of DDR5-4800
    assert epyc.memory_bandwidth_gbs == pytest.approx(12 * 4800e6 * 8 / 1e9)  # 12 channels
    for cpu in (xeon, epyc):
        assert cpu.memory_kind == "ddr" and cpu.main_tier == "ddr" and cpu.interconnect.nvlink_gbs == 0
    assert get_device("xeon-platinum-8480+").name == "xeon-8480"


def test_a_catalog_cpu_drafts_for_speculative_decoding_and_is_paid_for():
    """Drafting on the host CPU (Dovetail, TriForce's offload setting): the draft model's weights and KV leave the
    GPU, its rounds cost the CPU's DDR reads, and the CPU's amortised price joins the replica's."""
    draft = {"name": "speculative-decoding", "drafter": "model", "draft_model": "llama-3.2-1b", "k": 4}
    same = system([draft], model="llama-3.1-8b", device="h100-sxm")
    cpu = system([{**draft, "draft_device": "xeon-8480"}], model="llama-3.1-8b", device="h100-sxm")
    assert cpu.memory.kv_capacity_tokens > same.memory.kv_capacity_tokens
    assert [(d.name, d.count) for d in cpu.extra_devices] == [("xeon-8480", 1)]
    assert cpu.cost_per_hour_usd == pytest.approx(same.cost_per_hour_usd + get_device("xeon-8480").price_usd_per_hour)
    shape = same.step.chain_max
    on_cpu = cpu.step.drafter.round_run(shape, 4, 4000, 1, 4.0).first
    on_gpu = same.step.drafter.round_run(shape, 4, 4000, 1, 4.0).first
    assert on_cpu > 5 * on_gpu  # 307 GB/s of DDR against 3.35 TB/s of HBM for the draft's weight reads


def test_a_cpu_serving_alone_decodes_at_its_ddr_bandwidth_by_hand():
    """Llama-2-7B on one Xeon socket as the main device (CPU-only inference): a batch-1 decode step reads the
    13.48 GB of weights at 0.8 x 307.2 GB/s, 54.8 ms (~18 tokens/s), plus the per-row launches and KV reads."""
    cpu = system(model="llama-2-7b", device="xeon-8480")
    weights = cpu.memory.weights_bytes
    t = step_s(cpu, decode(1, 500))
    assert weights / (307.2e9 * 0.8) < t < 1.05 * weights / (307.2e9 * 0.8)


# ------------------------------------------------------------------ attention on the CPU, KV in host DRAM
@pytest.mark.parametrize("cpu", ["xeon-8480", "epyc-9654"])
def test_cpu_attention_is_bound_by_ddr_bandwidth_by_hand(cpu):
    """Llama-3.1-8B on an H100, decode attention on one CPU socket over KV in its DDR5: per layer the row reads
    2 x 8 KV heads x 128 x 2 B per context token (4 FLOP per byte, far under either CPU's ridge), so its time is
    the bytes over the DDR bandwidth x the memory efficiency plus one launch."""
    sys_ = system([{**CPU_ATTENTION, "device": cpu}], model="llama-3.1-8b", device="h100-sxm")
    dev = get_device(cpu)
    op = row(sys_, is_attention)
    assert op.placement == "attention-pool" and op.bytes[F.DECODE_CONTEXT] == 2 * 8 * 128 * 2
    shape = decode(32, 8000)
    x = shape.features()
    flops, nbytes = float(op.flops @ x), float(op.bytes @ x)
    eff = dev.efficiency
    ddr = nbytes / (dev.memory_bandwidth * eff.memory)
    assert flops / (dev.peak_flops("bf16") * eff.compute) < ddr / 5  # bandwidth-bound with room to spare
    priced = pricer(sys_, op).price(list(x), flops, nbytes).time_s
    assert priced == pytest.approx(ddr + eff.launch_overhead_us * 1e-6, rel=1e-12)
    # 32 sequences x 8,000 tokens x 4,096 B of KV per layer (1.05 GB) plus each sequence's query and output
    # (2 x 32 x 128 x 2 B) and new key and value (4,096 B), at 0.8 x 307.2 GB/s: 4.27 ms per layer (Xeon).
    if cpu == "xeon-8480":
        by_hand = (32 * 8000 * 4096 + 32 * (2 * 32 * 128 * 2 + 4096)) / (307.2e9 * 0.8) + 3e-6
        assert priced == pytest.approx(by_hand, rel=1e-9)


def test_cpu_attention_takes_the_kv_to_host_dram_and_frees_hbm():
    """KV capacity comes from the socket's 512 GiB (one 64 GB RDIMM per channel), not from the H100's HBM left
    after the weights: many more tokens fit, so many more long sequences can run together."""
    plain = system(model="llama-3.1-8b", device="h100-sxm")
    cpu = system([CPU_ATTENTION], model="llama-3.1-8b", device="h100-sxm")
    per_token = 32 * 2 * 8 * 128 * 2
    assert cpu.memory.kv_capacity_tokens == pytest.approx(512 * 2**30 / per_token, rel=0.01)
    assert cpu.memory.kv_capacity_tokens > 5 * plain.memory.kv_capacity_tokens


def test_cpu_attention_serves_long_prompts_with_larger_batches():
    """At 32k-token prompts the H100 alone holds a handful of sequences; with the KV in host DRAM the batch grows
    (emergent from the memory plan and the scheduler, not set)."""
    sched = {"name": "vllm", "max_num_seqs": 256, "max_num_batched_tokens": 32768}
    kw = dict(model="llama-3.1-8b", device="h100-sxm", prompt=32000, output=64, qps=8.0, n=40, scheduler=sched)
    plain = simulate(scenario(**kw))
    cpu = simulate(scenario([CPU_ATTENTION], **kw))
    check_invariants(cpu)
    biggest = [out.result.iterations["decode_seqs"].max() for out in (plain, cpu)]
    assert biggest[1] > 2 * biggest[0]


# ------------------------------------------------------------------ Duplex: Op/B placement
def test_the_threshold_is_the_roofline_crossover():
    sys_ = system([DUPLEX])
    proc = next(p for p in sys_.table.processors if isinstance(p, OpBProcessor))
    h200 = get_device("h200")
    assert proc.op_b_max == pytest.approx(100e12 * 0.7 / (h200.memory_bandwidth * 0.8), rel=1e-12)
    # Just below it the PIM's compute side beats the xPU's memory side; just above, it does not.
    for op_b, pim_wins in ((proc.op_b_max * 0.99, True), (proc.op_b_max * 1.01, False)):
        pim = max(op_b / proc.effective_flops, 1 / proc.effective_bandwidth)
        xpu = max(op_b / sys_.roofline.effective_flops, 1 / sys_.roofline.effective_bandwidth)
        assert (pim < xpu) == pim_wins


def test_decode_attention_on_the_pim_is_bound_by_its_internal_bandwidth_by_hand():
    """Mixtral (GQA, 32 query heads over 8 KV heads): 4 FLOP per KV byte, under the PIM's ridge of
    70 TFLOP/s / 15.36 TB/s = 4.56, so the row reads at the TSVs' 19.2 TB/s x 0.8 -- not the HBM's 4.8 TB/s."""
    sys_ = system([DUPLEX])
    op = row(sys_, is_attention)
    assert op.placement == OP_B_PLACEMENT
    x = decode(64, 4000).features(8, 2)
    flops, nbytes = float(op.flops @ x), float(op.bytes @ x)
    assert op.flops[F.DECODE_CONTEXT] / op.bytes[F.DECODE_CONTEXT] == pytest.approx(4.0)
    t = pricer(sys_, op).price(list(x), flops, nbytes).time_s
    assert t == pytest.approx(nbytes / (19200e9 * 0.8) + 1e-6, rel=1e-12)
    assert flops / (100e12 * 0.7) < nbytes / (19200e9 * 0.8)
    assert t < nbytes / (4800e9 * 0.8) / 3  # the HBM's external bandwidth would take four times as long


def test_expert_placement_flips_at_the_computed_threshold():
    """The experts' Op/B grows with the tokens of the iteration (more tokens share each expert's weights): at the
    computed flip point ``n*`` the row is priced by the PIM's roofline, one token more by the xPU's own pricer."""
    sys_ = system([DUPLEX])
    plain = system()
    op, plain_op = row(sys_, is_experts), row(plain, is_experts)
    proc = next(p for p in sys_.table.processors if isinstance(p, OpBProcessor))
    n_star = experts_threshold_tokens(sys_.table, proc.op_b_max)
    assert n_star is not None and 8 < n_star < 512
    for n, on_pim in ((n_star, True), (n_star + 1, False)):
        x = decode(n).features(8, 2)  # Mixtral: 8 experts, top-2
        flops, nbytes = float(op.flops @ x), float(op.bytes @ x)
        assert (flops / nbytes <= proc.op_b_max) == on_pim  # the Op/B by hand
        t = pricer(sys_, op).price(list(x), flops, nbytes).time_s
        xpu = pricer(plain, plain_op).price(list(x), flops, nbytes).time_s
        pim = max(flops / proc.effective_flops, nbytes / proc.effective_bandwidth) + 1e-6 * op.launches
        assert t == pytest.approx(pim if on_pim else xpu, rel=1e-12)
        if on_pim:
            assert t < xpu
    # Vectorised pricing agrees with the scalar path on both sides of the flip.
    X = np.array([decode(n).features(8, 2) for n in (1, n_star, n_star + 1, 4 * n_star)])
    many = pricer(sys_, op).price_many(X, X @ op.flops, X @ op.bytes)
    scalar = [pricer(sys_, op).price(list(x), float(op.flops @ x), float(op.bytes @ x)).time_s for x in X]
    assert many == pytest.approx(scalar, rel=1e-12)


def test_op_b_max_moves_the_attention_back_to_the_xpu():
    """A threshold under attention's 4 FLOP/B leaves it on the xPU: priced exactly as without the technique."""
    low = system([{**DUPLEX, "op_b_max": 3.0, "rows": ["attention"]}])
    plain = system()
    shape = decode(32, 4000)
    assert step_s(low, shape) == step_s(plain, shape)
    high = system([{**DUPLEX, "op_b_max": 5.0, "rows": ["attention"]}])
    assert step_s(high, shape) < step_s(plain, shape)


def test_pim_helps_decode_attention_and_small_batch_moe_but_not_prefill():
    plain, dup = system(), system([DUPLEX])
    only_attention = system([{**DUPLEX, "rows": ["attention"]}])
    proc = next(p for p in dup.table.processors if isinstance(p, OpBProcessor))
    n_star = experts_threshold_tokens(dup.table, proc.op_b_max)
    # Small decode batches: the experts run on the PIM too, which beats attention alone on it.
    for batch in (1, 8, n_star):
        assert step_s(dup, decode(batch)) < step_s(only_attention, decode(batch)) < step_s(plain, decode(batch))
    # Large decode batches: the experts' Op/B is past the threshold; only the attention gains.
    big = decode(4 * n_star)
    assert step_s(dup, big) == pytest.approx(step_s(only_attention, big), rel=1e-12)
    assert step_s(dup, big) < step_s(plain, big)
    # A prefill: its tokens push the experts to the xPU and prefill attention is not a candidate -- unchanged.
    for tokens in (512, 4096):
        prefill = BatchShape(prefill_chunks=((tokens, 0, True),))
        assert step_s(dup, prefill) == step_s(plain, prefill)


def test_duplex_runs_end_to_end_and_keeps_the_memory_plan():
    sc = scenario([DUPLEX], n=30, qps=4.0, output=32)
    out = simulate(sc)
    check_invariants(out)
    plain = simulate(scenario(n=30, qps=4.0, output=32))
    # KV and weights stay in the HBM the logic die reads: the memory plan is the plain one.
    assert out.system.memory.kv_capacity_tokens == plain.system.memory.kv_capacity_tokens
    # Every decode step is cheaper, so the last request finishes earlier.
    assert out.result.requests["finish_s"].max() < plain.result.requests["finish_s"].max()


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "params, device, model, field",
    [
        ({"tier": "hbm"}, None, "mixtral-8x7b", "tier"),  # the device memory computes nothing
        ({"tier": "nowhere"}, None, "mixtral-8x7b", "tier"),
        (
            {"tier": "slow"},
            {"base": "h200", "memory_tiers": [{**LOGIC_PIM, "name": "slow", "internal_bandwidth_gbs": 4000}]},
            "mixtral-8x7b",
            "tier",
        ),  # reads no faster than the HBM: never chosen
        ({"tier": "logic-pim", "rows": ["experts"]}, None, "llama-3.1-8b", "rows"),  # a dense model has no experts
        ({"tier": "logic-pim", "op_b_max": 0}, None, "mixtral-8x7b", "op_b_max"),
        ({"tier": "logic-pim", "rows": ["mlp"]}, None, "mixtral-8x7b", "rows"),
    ],
)
def test_bad_input_is_named_by_field(params, device, model, field):
    with pytest.raises(CapsimError) as exc:
        system([{"name": "duplex", **params}], model=model, device=device)
    assert exc.value.where.startswith("techniques[0]") and f".{field}" in exc.value.where


# ------------------------------------------------------------------ Duplex co-processing
COPROCESS = {**DUPLEX, "coprocess": True}
FREE_BANKS = {**COPROCESS, "bank_contention": False}


def lanes_by_hand(shape: BatchShape) -> tuple[float, float, float]:
    """Per layer: the xPU lane (rows left on the xPU, priced by the plain system's own pricers), the PIM lane
    (rows on the logic die, by its roofline: max(F / (100 TFLOP/s x 0.7), B / (19.2 TB/s x 0.8)) + 1 us per
    launch) and
    the layer's bytes over the banks' 19.2 TB/s x 0.8."""
    plain, dup = system(), system([DUPLEX])
    proc = next(p for p in dup.table.processors if isinstance(p, OpBProcessor))
    x = shape.features(8, 2)
    xpu = pim = nbytes = 0.0
    for op in plain.table.layer_ops:
        f, b = float(op.flops @ x), float(op.bytes @ x)
        nbytes += b
        low_op_b = f <= proc.op_b_max * b
        if (is_attention(op) or is_experts(op)) and low_op_b and (f or b):
            pim += max(f / (100e12 * 0.7), b / (19200e9 * 0.8)) + 1e-6 * op.launches
        else:
            xpu += pricer(plain, op).price(list(x), f, b).time_s
    return xpu, pim, nbytes / (19200e9 * 0.8)


@pytest.mark.parametrize(
    "shape",
    [decode(8), decode(64, 4000), decode(4 * 73), decode(128, 32000)],
    ids=["8x2k-pim-lane", "64x4k-pim-lane", "292x2k-xpu-lane", "128x32k-banks"],
)
def test_coprocessing_takes_the_longer_lane_of_each_layer_by_hand(shape):
    """Sequential: iteration rows + 32 x (xPU lane + PIM lane). Co-processing: 32 x max(xPU lane, PIM lane), and with
    bank contention at least the layer's bytes over the DRAM dies' internal bandwidth."""
    seq, free, banked = system([DUPLEX]), system([FREE_BANKS]), system([COPROCESS])
    xpu, pim, banks = lanes_by_hand(shape)
    s = step_s(seq, shape)
    rest = s - 32 * (xpu + pim)  # embedding and LM head, once per iteration
    assert 0 < rest < 0.1 * s
    assert step_s(free, shape) == pytest.approx(rest + 32 * max(xpu, pim), rel=1e-9)
    assert step_s(banked, shape) == pytest.approx(rest + 32 * max(xpu, pim, banks), rel=1e-9)
    assert step_s(free, shape) <= step_s(banked, shape) < s
    if shape.decode_context == 128 * 32000:  # both lanes busy: the banks' total bandwidth is what binds
        assert banks > max(xpu, pim) and step_s(banked, shape) > 1.1 * step_s(free, shape)


def test_coprocessing_overlaps_a_prefill_with_the_decodes_attention():
    """A mixed batch: the prefill's attention and GEMMs on the xPU, the decodes' attention on the PIM at once."""
    seq, co = system([DUPLEX]), system([COPROCESS])
    mixed = BatchShape(prefill_chunks=((1024, 0, True),), decode_seqs=64, decode_context=64 * 4000)
    xpu, pim, banks = lanes_by_hand(mixed)
    assert pim > 0 and xpu > max(pim, banks)  # the prefill's work on the xPU is the longer lane
    # The whole PIM lane (the decodes' attention; 1,088 tokens put the experts on the xPU) hides under it.
    assert step_s(seq, mixed) - step_s(co, mixed) == pytest.approx(32 * pim, rel=1e-9)
    # A prefill alone has nothing on the PIM (its experts' Op/B is past the threshold): co-processing changes nothing.
    prefill = BatchShape(prefill_chunks=((2048, 0, True),))
    assert step_s(co, prefill) == pytest.approx(step_s(seq, prefill), rel=1e-12)


def test_coprocessing_is_off_by_default_and_runs_end_to_end():
    seq = system([DUPLEX])
    assert not any(op.overlap for op in seq.table.layer_ops)
    co = system([COPROCESS])
    assert all(op.overlap == "duplex" for op in co.table.layer_ops)
    out = simulate(scenario([COPROCESS], n=30, qps=4.0, output=32))
    check_invariants(out)
    base = simulate(scenario([DUPLEX], n=30, qps=4.0, output=32))
    assert out.result.requests["finish_s"].max() < base.result.requests["finish_s"].max()


def test_a_threshold_under_attention_keeps_it_in_the_xpu_lane():
    """op_b_max 3 (< attention's 4 FLOP/B), attention only: nothing runs on the PIM, so co-processing is the
    plain price (every row in the xPU lane)."""
    low = system([{**COPROCESS, "op_b_max": 3.0, "rows": ["attention"]}])
    assert step_s(low, decode(32, 4000)) == pytest.approx(step_s(system(), decode(32, 4000)), rel=1e-12)
