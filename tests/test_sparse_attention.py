"""Sparse attention and KV retrieval: hand-checked bytes of a sparse decode step, the effects that must
*emerge* from the cost model (a large speed-up at 128k and none to speak of at 2k; host-resident KV bound
by PCIe at high density and not at low; sparse prefill speeding long prompts only), the host memory tier,
parameter errors, and composition with speculative decoding and every scheduler."""

from __future__ import annotations

import pytest

from capsim.errors import CapsimError, DoesNotFitError
from hwmodels.device import DeviceSpec
from simulator.config.schema import Scenario
from simulator.costmodel.features import BatchShape
from simulator.costmodel.iteration import IterationCostModel
from simulator.engine import simulate
from simulator.memory_plan import GIB
from simulator.system import build_system
from tests.test_engine_invariants import SCHEDULERS, check_invariants

SPARSE = "sparse-attention"
K128 = 131072
# Llama-3.1-8B: 32 layers, 32 query heads, 8 KV heads of 128 channels; bf16 KV (2 bytes).
L, H, HKV, DH, B = 32, 32, 8, 128, 2


def system(techniques=(), *, device="h100-sxm", model="llama-3.1-8b", **deployment):
    return build_system(Scenario.model_validate({
        "model": model, "deployment": {"device": device, **deployment},
        "workload": {"arrival": "poisson", "qps": 1, "prompt": {"dist": "fixed", "value": 1000},
                     "output": {"dist": "fixed", "value": 10}},
        "techniques": list(techniques),
    }))


def cost(sys_) -> IterationCostModel:
    return IterationCostModel(sys_.table, sys_.roofline, sys_.overheads)


def step_s(techniques, context, batch=1, **kw) -> float:
    return cost(system(techniques, **kw)).iteration(BatchShape(decode_seqs=batch, decode_context=batch * context)).time_s


def rows(sys_, shape):
    return {r.name: r for r in cost(sys_).breakdown(shape)}


# ------------------------------------------------------------------ hand-checked
def test_bytes_of_a_sparse_decode_step_at_128k_by_hand():
    """Quest, density 1/16, pages of 16: per layer the attention reads 1/16 of the context's K and V
    (4096 B per token dense: 2 tensors x 8 KV heads x 128 x 2 B) and the selector reads the min and max
    key of every page (2 x 128 x 8 x 2 B per 16 tokens = 256 B per token): 1/8 of the dense read in all."""
    sparse = system([{"name": SPARSE, "density": 1 / 16, "page_size": 16}])
    dense = system()
    shape = BatchShape(decode_seqs=1, decode_context=K128)
    per_seq = 2 * H * DH * B + 2 * HKV * DH * B  # query and output, the new token's K and V
    kv_per_token = 2 * HKV * DH * B
    assert kv_per_token == 4096
    got, base = rows(sparse, shape), rows(dense, shape)
    assert base["attention_decode"].bytes == pytest.approx(L * (kv_per_token * K128 + per_seq), rel=1e-12)
    assert got["attention_decode"].bytes == pytest.approx(L * (kv_per_token * K128 / 16 + per_seq), rel=1e-12)
    assert got["kv_select"].bytes == pytest.approx(L * 256 * K128, rel=1e-12)  # 32 MiB per layer
    assert got["kv_select"].flops == pytest.approx(L * 2 * 2 * DH * H / 16 * K128, rel=1e-12)
    read = got["attention_decode"].bytes + got["kv_select"].bytes - L * per_seq
    assert read / (base["attention_decode"].bytes - L * per_seq) == pytest.approx(1 / 8, rel=1e-12)
    # The page summaries are stored: 256 B per token per layer more KV, so a little less capacity.
    assert sparse.memory.kv_bytes_per_token == pytest.approx(dense.memory.kv_bytes_per_token + L * 256)
    assert sparse.memory.kv_capacity_tokens < dense.memory.kv_capacity_tokens


def test_dense_layers_read_everything():
    sys_ = system([{"name": SPARSE, "density": 0.1, "dense_layers": 2, "summary_vectors": 0}])
    got = rows(sys_, BatchShape(decode_seqs=1, decode_context=K128))
    rho = (2 + 30 * 0.1) / 32
    assert got["attention_decode"].bytes == pytest.approx(
        L * (4096 * K128 * rho + 2 * H * DH * B + 2 * HKV * DH * B), rel=1e-12)
    assert "kv_select" not in got  # summary_vectors 0: an oracle selector with no cost


# ------------------------------------------------------------------ effects that must emerge
@pytest.mark.parametrize("batch", [1, 8])
def test_sparse_decode_speeds_128k_and_barely_2k(batch):
    tech = [{"name": SPARSE, "density": 1 / 16}]
    long = step_s([], K128, batch) / step_s(tech, K128, batch)
    short = step_s([], 2048, batch) / step_s(tech, 2048, batch)
    assert long > 1.5
    assert 0.95 < short < 1.1


def test_host_kv_is_pcie_bound_at_high_density_and_not_at_low():
    h100 = system().device
    pcie = h100.pcie_bandwidth

    def host(density):
        return [{"name": SPARSE, "density": density, "kv_location": "host", "host_kv_gib": 256}]

    # High density: the step grows with density at the PCIe rate (all 32 layers' K and V at 128k).
    slope = (step_s(host(1.0), K128) - step_s(host(0.5), K128)) / 0.5
    assert slope == pytest.approx(L * 4096 * K128 / pcie, rel=1e-3)
    assert step_s(host(1.0), K128) > 10 * step_s([], K128)
    # Low density: the fetch is a small share and the step is near the same sparsity kept in HBM.
    low = 1 / 512
    hbm = step_s([{"name": SPARSE, "density": low}], K128)
    assert step_s(host(low), K128) < 1.2 * hbm
    low_slope = (step_s(host(2 * low), K128) - step_s(host(low), K128)) / low
    assert low_slope < slope


def test_overlap_takes_the_longer_lane_not_the_sum():
    base = {"name": SPARSE, "density": 1 / 64, "kv_location": "host", "host_kv_gib": 256}
    on, off = step_s([base], K128), step_s([{**base, "overlap": False}], K128)
    assert on < off
    sys_ = system([{**base, "overlap": False}])
    r = rows(sys_, BatchShape(decode_seqs=1, decode_context=K128))
    gpu = r["attention_decode"].time_s + r["kv_select"].time_s
    fetch = r["kv_fetch"].time_s
    assert off - on == pytest.approx(min(gpu, fetch), rel=1e-9)


def test_shadowkv_values_on_host_move_half_the_bytes():
    kv = [{"name": SPARSE, "density": 1.0, "kv_location": "host", "host_kv_gib": 256}]
    values = [{"name": SPARSE, "density": 1.0, "kv_location": "host", "host_kv_gib": 256,
               "host_tensors": "values", "key_rank": 160}]
    shape = BatchShape(decode_seqs=1, decode_context=K128)
    assert rows(system(values), shape)["kv_fetch"].bytes == pytest.approx(
        rows(system(kv), shape)["kv_fetch"].bytes / 2, rel=1e-12)
    rebuild = rows(system(values), shape)["key_reconstruct"]
    assert rebuild.flops == pytest.approx(L * 2 * 160 * HKV * DH * K128, rel=1e-12)


def test_sparse_prefill_speeds_128k_not_1k():
    tech = [{"name": "sparse-prefill", "density": 0.1}]

    def prefill(techniques, n):
        return cost(system(techniques)).iteration(BatchShape(prefill_chunks=((n, 0, True),))).time_s

    assert prefill([], K128) / prefill(tech, K128) > 2.0
    assert prefill([], 1024) / prefill(tech, 1024) < 1.05


# ------------------------------------------------------------------ memory tiers
def test_host_kv_capacity_is_the_fewer_tokens_either_tier_holds():
    small = system([{"name": SPARSE, "density": 0.1, "kv_location": "host", "host_kv_gib": 8}])
    m = small.memory
    assert m.host_kv_bytes_per_token == L * 4096
    assert m.kv_capacity_tokens == (8 * GIB // (L * 4096)) // 16 * 16  # the host bounds it
    assert m.kv_capacity_tokens * m.host_kv_bytes_per_token <= m.host_kv_bytes
    assert m.kv_capacity_tokens * m.kv_bytes_per_token <= m.kv_bytes
    big = system([{"name": SPARSE, "density": 0.1, "kv_location": "host", "host_kv_gib": 4096,
                   "host_tensors": "values", "key_rank": 160}])
    m = big.memory
    assert m.kv_capacity_tokens * m.kv_bytes_per_token <= m.kv_bytes  # the GPU (key factor, summaries) bounds it
    assert m.kv_capacity_tokens < m.host_kv_bytes // m.host_kv_bytes_per_token
    assert m.kv_capacity_tokens > system().memory.kv_capacity_tokens


def test_too_little_host_memory_is_refused():
    with pytest.raises(DoesNotFitError, match="host_kv_gib"):
        system([{"name": SPARSE, "density": 0.1, "kv_location": "host", "host_kv_gib": 1e-6}])


# ------------------------------------------------------------------ parameters
@pytest.mark.parametrize("entry,field", [
    ({"density": 0.0}, "density"),
    ({"density": 1.5}, "density"),
    ({"density": 0.1, "page_size": 0}, "page_size"),
    ({"density": 0.1, "kv_location": "host"}, ""),
    ({"density": 0.1, "host_kv_gib": 8}, ""),
    ({"density": 0.1, "kv_location": "host", "host_kv_gib": 8, "host_tensors": "values"}, ""),
    ({"density": 0.1, "tokens": 5}, "tokens"),
])
def test_bad_parameters_name_the_field(entry, field):
    with pytest.raises(CapsimError) as err:
        system([{"name": SPARSE, **entry}])
    assert err.value.where == (f"techniques[0].{field}" if field else "techniques[0]")


def test_too_many_dense_layers_names_the_field():
    with pytest.raises(CapsimError) as err:
        system([{"name": SPARSE, "density": 0.1, "dense_layers": 40}])
    assert err.value.where == "techniques[0].dense_layers"


# ------------------------------------------------------------------ composition
def test_composes_with_speculative_decoding():
    spec = {"name": "speculative-decoding", "drafter": "ngram", "k": 3, "acceptance": 0.8}
    sys_ = system([{"name": SPARSE, "density": 1 / 16}, spec])
    assert sys_.step is not None
    verify = sys_.step.verify(4).table  # 4 tokens verified per sequence
    attn = next(o for o in verify.layer_ops if o.op_class == "attention_decode")
    dense = next(o for o in system().table.layer_ops if o.op_class == "attention_decode")
    from simulator.costmodel import features as F
    assert attn.flops[F.DECODE_CONTEXT] == pytest.approx(4 * dense.flops[F.DECODE_CONTEXT] / 16)
    assert attn.bytes[F.DECODE_CONTEXT] == pytest.approx(dense.bytes[F.DECODE_CONTEXT] / 16)


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_runs_under_every_scheduler_with_host_kv_and_speculation(scheduler):
    techniques = [{"name": SPARSE, "density": 0.25, "kv_location": "host", "host_kv_gib": 0.5},
                  {"name": "sparse-prefill", "density": 0.3}]
    # static batching, multi-step windows and the sglang scheduler refuse speculation (their own rules)
    if scheduler not in ("static", "sglang") and SCHEDULERS[scheduler].get("num_scheduler_steps", 1) == 1:
        techniques.append({"name": "speculative-decoding", "drafter": "ngram", "k": 2, "acceptance": 0.7})
    sc = Scenario.model_validate({
        "seed": 4, "model": "llama-2-7b", "deployment": {"device": "a100-80gb-sxm"},
        "scheduler": SCHEDULERS[scheduler],
        "workload": {"arrival": "poisson", "qps": 20, "prompt": {"dist": "uniform", "low": 1, "high": 600},
                     "output": {"dist": "uniform", "low": 1, "high": 200}},
        "simulation": {"num_requests": 30, "oversized": "drop"}, "techniques": techniques,
    })
    out = simulate(sc)
    check_invariants(out)


def test_device_spec_has_the_pcie_rate_the_fetch_uses():
    dev: DeviceSpec = system().device
    sys_ = system([{"name": SPARSE, "density": 0.5, "kv_location": "host", "host_kv_gib": 64}])
    link = next(ln for ln in sys_.table.links if ln.name == "pcie")
    assert link.bandwidth == dev.pcie_bandwidth


# ------------------------------------------------------------------ calibrated kernels at the attended context
@pytest.mark.parametrize("device", ["a100-80gb-sxm", "h100-sxm"])
def test_calibrated_sparse_row_is_the_dense_kernel_over_the_attended_tokens(device):
    """A sparse attention row reads density x C tokens' KV: the profile's decode curve prices it as the dense
    kernel at that context (split count and per-context terms included), not at the full context."""
    rho = 1 / 16
    sparse, dense = system([{"name": SPARSE, "density": rho}], device=device), system(device=device)
    assert sparse.roofline.profile is not None
    for batch, ctx in ((1, K128), (4, 32768), (16, 8192)):
        got = rows(sparse, BatchShape(decode_seqs=batch, decode_context=batch * ctx))["attention_decode"]
        want = rows(dense, BatchShape(decode_seqs=batch, decode_context=int(batch * ctx * rho)))["attention_decode"]
        assert got.source.startswith("profile")
        assert got.time_s == pytest.approx(want.time_s, rel=1e-9)


@pytest.mark.parametrize("device", ["a100-80gb-sxm", "h100-sxm"])
@pytest.mark.parametrize("host", [False, True])
def test_decode_runs_agree_with_step_by_step_prices(device, host):
    tech = {"name": SPARSE, "density": 0.1, "dense_layers": 1}
    if host:
        tech.update(kv_location="host", host_kv_gib=64)
    cm = cost(system([tech], device=device))
    batch, c0, k = 3, 3 * 20000, 400
    run = cm.decode_run(batch, c0, k)
    steps = [cm.iteration(BatchShape(decode_seqs=batch, decode_context=c0 + batch * j)).time_s for j in range(k)]
    assert run.all_durations() == pytest.approx(steps, rel=1e-9)


def test_example_scenario_prints_each_technique_beside_dense():
    """scenarios/examples/sparse_attention.yaml at its low rate: Quest cuts the decode gaps, sparse prefill
    the time to first token, and every run keeps the engine invariants."""
    from simulator.config.loader import load_scenarios

    runs = [sc for sc in load_scenarios("scenarios/examples/sparse_attention.yaml", ["simulation.num_requests=25"])
            if sc.workload.qps == 0.1]
    med = {}
    for sc in runs:
        name = sc.name
        out = simulate(sc)
        check_invariants(out)
        r = out.result.requests
        gap = ((r["finish_s"] - r["first_token_s"]) / (r["output_tokens"] - 1)).median()
        med[name.split(" ")[0]] = ((r["first_token_s"] - r["arrival_s"]).median(), gap)
    assert set(med) == {"dense", "quest", "quest+minference", "shadowkv-host"}
    assert med["quest"][1] < 0.8 * med["dense"][1]
    assert med["quest+minference"][0] < 0.6 * med["dense"][0]
