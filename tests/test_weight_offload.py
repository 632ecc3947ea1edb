"""Memory tiers and weight offload: the derived one-tier hierarchy of today's GPUs, explicit tiers and links on an
inline device, and a model that does not fit the device memory served by streaming weights from host DRAM --
a decode step bound by the link (hand-checked bytes over PCIe), a long prefill hiding the fetch behind compute,
capacity and parameter errors, and a full simulation keeping the engine's invariants."""

from __future__ import annotations

import pytest

from capsim.errors import CapsimError, DoesNotFitError
from hwmodels.device import DEVICES, device_from_dict, get_device
from simulator.config.schema import Scenario
from simulator.costmodel.features import BatchShape
from simulator.costmodel.iteration import IterationCostModel
from simulator.engine import simulate
from simulator.memory_plan import GIB
from simulator.models import get_model
from simulator.system import build_system
from tests.test_engine_invariants import check_invariants

OFFLOAD = "weight-offload"


def system(techniques=(), *, device="h100-sxm", model="llama-3.1-70b", **deployment):
    return build_system(
        Scenario.model_validate(
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
    )


def cost(sys_) -> IterationCostModel:
    return IterationCostModel(sys_.table, sys_.roofline, sys_.overheads)


def decode_s(sys_, batch: int, context: int = 1000) -> float:
    return cost(sys_).iteration(BatchShape(decode_seqs=batch, decode_context=batch * context)).time_s


def prefill_s(sys_, tokens: int) -> float:
    return cost(sys_).iteration(BatchShape(prefill_chunks=((tokens, 0, True),))).time_s


# ------------------------------------------------------------------ the device model
@pytest.mark.parametrize("name", sorted(DEVICES.names()))
def test_every_catalog_gpu_is_the_one_tier_case_of_the_hierarchy(name):
    dev = get_device(name)
    main = dev.tier(dev.main_tier)
    assert (main.capacity_gib, main.bandwidth_gbs) == (dev.memory_gib, dev.memory_bandwidth_gbs)
    assert [t.name for t in dev.tiers if t.kind not in ("sram",)][-1] == "host" or dev.memory_tiers
    link = dev.transfer_link(dev.main_tier, "host")
    assert link.bandwidth == dev.pcie_bandwidth and link.kind == "pcie"
    assert link.latency_s == pytest.approx(dev.interconnect.link_latency_us * 1e-6)
    if dev.sram_mib:
        assert dev.tier("sram").capacity_gib == pytest.approx(dev.sram_mib / 1024)


def _tiered(**extra):
    return device_from_dict(
        {
            "base": "h100-sxm",
            "name": "h100-c2c",
            "memory_tiers": [
                {"name": "host", "kind": "lpddr", "capacity_gib": 480, "bandwidth_gbs": 500, "source": "test figures"},
                {"name": "nvme", "kind": "nvme", "capacity_gib": 2048, "bandwidth_gbs": 7},
            ],
            "tier_links": [
                {"name": "c2c", "kind": "c2c", "between": ["hbm", "host"], "bandwidth_gbs": 450},
                {
                    "name": "nvme-pcie",
                    "kind": "pcie",
                    "between": ["hbm", "nvme"],
                    "bandwidth_gbs": 6.5,
                    "latency_us": 80,
                },
            ],
            **extra,
        }
    )


def test_an_inline_device_gives_its_own_tiers_and_links():
    dev = _tiered()
    assert [t.name for t in dev.tiers] == ["sram", "hbm", "host", "nvme"]
    assert dev.link_between("host", "hbm").name == "c2c"  # replaces the implied PCIe link
    assert [ln.name for ln in dev.links] == ["c2c", "nvme-pcie"]
    assert dev.transfer_link("hbm", "nvme").latency_s == pytest.approx(80e-6)


@pytest.mark.parametrize(
    "change, words",
    [
        (
            {"tier_links": [{"name": "x", "kind": "pcie", "between": ["hbm", "disk"], "bandwidth_gbs": 1}]},
            "unknown tier",
        ),
        ({"memory_tiers": [{"name": "hbm", "kind": "ddr", "bandwidth_gbs": 1}]}, "unique"),
        ({"memory_tiers": [{"name": "t", "kind": "tape"}]}, "kind"),
    ],
)
def test_bad_tiers_are_refused_with_the_field(change, words):
    with pytest.raises(CapsimError) as err:
        device_from_dict({"base": "h100-sxm", **change})
    assert words in str(err.value)


def test_unknown_tier_and_missing_link_name_the_technique_field():
    with pytest.raises(CapsimError) as err:
        system([{"name": OFFLOAD, "fraction": 0.6, "tier": "nvme"}])
    assert "techniques[0]" in err.value.where and "no memory tier 'nvme'" in err.value.problem
    with pytest.raises(CapsimError, match="no link between"):
        system(
            [{"name": OFFLOAD, "fraction": 0.6, "tier": "nvme"}],
            device={"base": "h100-sxm", "memory_tiers": [{"name": "nvme", "kind": "nvme"}]},
        )


# ------------------------------------------------------------------ offload: memory
def test_a_model_that_does_not_fit_is_served_with_weights_in_host_memory():
    with pytest.raises(DoesNotFitError):
        system()  # 131 GiB of bf16 weights on an 80 GiB GPU
    sys_ = system([{"name": OFFLOAD, "fraction": 0.6}])
    m = get_model("llama-3.1-70b")
    offloaded = 0.6 * m.body_params * 2  # bf16 blocks; the embedding and LM head stay
    assert sys_.memory.offloaded_weight_bytes == pytest.approx(offloaded, rel=1e-12)
    assert sys_.memory.weights_bytes == pytest.approx((m.body_params + m.embedding_params) * 2 - offloaded, rel=1e-12)
    assert sys_.memory.kv_capacity_tokens > 0


def test_offload_frees_memory_for_the_kv_cache():
    plain = system(model="llama-3.1-8b")
    half = system([{"name": OFFLOAD, "fraction": 0.5}], model="llama-3.1-8b")
    freed = plain.memory.weights_bytes - half.memory.weights_bytes
    assert freed == pytest.approx(half.memory.offloaded_weight_bytes, rel=1e-12)
    extra_tokens = half.memory.kv_capacity_tokens - plain.memory.kv_capacity_tokens
    assert extra_tokens == pytest.approx(freed / plain.memory.kv_bytes_per_token, abs=2 * plain.memory.block_size)


def test_a_tier_too_small_for_the_offloaded_weights_is_refused():
    dev = {"base": "h100-sxm", "memory_tiers": [{"name": "host", "kind": "ddr", "capacity_gib": 32}]}
    with pytest.raises(DoesNotFitError) as err:
        system([{"name": OFFLOAD, "fraction": 0.6}], device=dev)
    assert err.value.where == "techniques[0] (weight-offload).fraction"


@pytest.mark.parametrize("fraction", [0, 1.5, -0.1])
def test_fraction_outside_0_1_is_refused(fraction):
    with pytest.raises(CapsimError) as err:
        system([{"name": OFFLOAD, "fraction": fraction}])
    assert "fraction" in err.value.where


# ------------------------------------------------------------------ offload: time
def test_streamed_decode_step_is_bound_by_pcie_bandwidth_by_hand():
    """Llama-3.1-70B, 60 % of its blocks' bf16 weights in host DRAM: every decode step moves those bytes over
    PCIe Gen5 x16 (64 GB/s per direction) -- 0.6 x 68.5e9 params x 2 B = 82.1 GB, 1.28 s -- whatever the batch,
    plus 80 transfers' latency and the once-per-iteration rows (embedding, LM head) outside the layers."""
    sys_ = system([{"name": OFFLOAD, "fraction": 0.6}], engine="none")  # by hand: the kernels and the link alone
    h100 = sys_.device
    m = get_model("llama-3.1-70b")
    moved = 0.6 * m.body_params * 2
    link_s = moved / h100.pcie_bandwidth + m.num_layers * h100.interconnect.link_latency_us * 1e-6
    assert link_s == pytest.approx(1.2843, abs=1e-3)
    listed = cost(sys_).breakdown(BatchShape(decode_seqs=1, decode_context=1000))
    rows = {r.name: r for r in listed}
    assert rows["weight_fetch"].bytes == pytest.approx(moved, rel=1e-12)
    outside = rows["embedding"].time_s + rows["lm_head"].time_s
    for batch in (1, 8, 32):
        assert decode_s(sys_, batch) == pytest.approx(link_s + outside, rel=1e-3)
    # IO-bound: 32 sequences cost what one does, and the GPU's own work is a small share of the step.
    assert decode_s(sys_, 32) / decode_s(sys_, 1) < 1.001
    gpu = sum(r.time_s for r in listed if r.name not in ("weight_fetch", "embedding", "lm_head"))
    assert gpu < 0.1 * link_s


def test_tp2_without_offload_is_tens_of_times_faster_per_step():
    offload = decode_s(system([{"name": OFFLOAD, "fraction": 0.6}]), 8)
    tp2 = decode_s(system(tp=2), 8)
    assert offload / tp2 > 20


def test_a_long_prefill_hides_the_fetch_behind_compute():
    """Llama-3.1-8B with all of its blocks offloaded: at 32k tokens each layer's compute outlasts its 0.5 GB fetch,
    so the prefill costs what it costs with the weights resident; a decode step does not hide it."""
    plain = system(model="llama-3.1-8b")
    offload = system([{"name": OFFLOAD, "fraction": 1.0}], model="llama-3.1-8b")
    assert prefill_s(offload, 32768) == pytest.approx(prefill_s(plain, 32768), rel=1e-9)
    assert decode_s(offload, 8) > 10 * decode_s(plain, 8)


def test_overlap_takes_the_longer_of_compute_and_fetch():
    on = system([{"name": OFFLOAD, "fraction": 0.3}], model="llama-3.1-8b")
    off = system([{"name": OFFLOAD, "fraction": 0.3, "overlap": False}], model="llama-3.1-8b")
    plain = system(model="llama-3.1-8b")
    fetch = {r.name: r for r in cost(off).breakdown(BatchShape(decode_seqs=8, decode_context=8000))}["weight_fetch"]
    # Without overlap the fetch adds to the plain step; with it, the step is the longer of the two per layer.
    assert decode_s(off, 8) == pytest.approx(decode_s(plain, 8) + fetch.time_s, rel=1e-9)
    assert max(decode_s(plain, 8), fetch.time_s) <= decode_s(on, 8) * (1 + 1e-9) < decode_s(off, 8)


def test_a_faster_link_kind_is_priced_at_its_own_bandwidth():
    """The same offload over a chip-to-chip link (450 GB/s per direction) instead of PCIe (64 GB/s): the fetch
    row is placed on the link named 'c2c' and priced by the transfer pricer of its kind."""
    sys_ = system([{"name": OFFLOAD, "fraction": 0.6}], device=_tiered().model_dump(exclude={"aliases"}))
    rows = {r.name: r for r in cost(sys_).breakdown(BatchShape(decode_seqs=1, decode_context=1000))}
    assert rows["weight_fetch"].source == "link model (c2c)"
    assert rows["weight_fetch"].time_s == pytest.approx(
        rows["weight_fetch"].bytes / 450e9, rel=1e-9
    )  # no latency given
    pcie = system([{"name": OFFLOAD, "fraction": 0.6}])
    assert decode_s(pcie, 1) / decode_s(sys_, 1) > 5


def test_offload_to_nvme_tier_uses_that_link():
    sys_ = system(
        [{"name": OFFLOAD, "fraction": 0.6, "tier": "nvme"}], device=_tiered().model_dump(exclude={"aliases"})
    )
    fetch = {r.name: r for r in cost(sys_).breakdown(BatchShape(decode_seqs=1, decode_context=100))}["weight_fetch"]
    assert fetch.source == "link model (nvme-pcie)"
    assert fetch.time_s == pytest.approx(fetch.bytes / 6.5e9 + 80 * 80e-6, rel=1e-9)


# ------------------------------------------------------------------ end to end
@pytest.mark.parametrize("scheduler", ["vllm", "sarathi"])
def test_a_simulation_with_offload_keeps_the_invariants(scheduler):
    sc = Scenario.model_validate(
        {
            "model": "llama-3.1-8b",
            "deployment": {"device": "a100-80gb-sxm"},
            "scheduler": {"name": scheduler},
            "workload": {
                "arrival": "poisson",
                "qps": 2,
                "prompt": {"dist": "fixed", "value": 600},
                "output": {"dist": "fixed", "value": 20},
            },
            "simulation": {"num_requests": 20},
            "seed": 3,
            "techniques": [{"name": OFFLOAD, "fraction": 0.5}],
        }
    )
    out = simulate(sc)
    check_invariants(out)
    # Every token of every request waited for at least one streamed pass (half of the blocks over PCIe).
    fetch_s = 0.5 * get_model("llama-3.1-8b").body_params * 2 / get_device("a100-80gb-sxm").pcie_bandwidth
    req = out.result.requests
    per_token = (req["finish_s"] - req["first_token_s"]) / (req["output_tokens"] - 1)
    assert (per_token >= fetch_s * (1 - 1e-9)).all()
    assert ((req["first_token_s"] - req["schedule_s"]) >= fetch_s * (1 - 1e-9)).all()


def test_refused_beside_nanoflow():
    with pytest.raises(CapsimError, match="nanoflow"):
        system([{"name": OFFLOAD, "fraction": 0.5}, {"name": "nanoflow"}], model="llama-3.1-8b")


def test_offloaded_memory_is_reported_in_gib():
    sys_ = system([{"name": OFFLOAD, "fraction": 1.0}], model="llama-3.1-8b")
    assert sys_.memory.offloaded_weight_bytes / GIB == pytest.approx(
        get_model("llama-3.1-8b").body_params * 2 / GIB, rel=1e-12
    )


# ------------------------------------------------------------------ KV in another tier (FlexGen's KV on disk)
def _kv_on(tier: str, gib: float = 1000.0, **extra):
    return [
        {
            "name": "sparse-attention",
            "density": 1.0,
            "summary_vectors": 0,
            "kv_location": tier,
            "host_kv_gib": gib,
            **extra,
        }
    ]


def test_kv_on_an_nvme_tier_streams_the_context_over_its_link_by_hand():
    """Llama-3.1-8B with its whole KV cache on an NVMe tier (6.5 GB/s, 80 us): a decode step at 32k context reads
    32 layers x 4096 B x 32,768 tokens = 4.29 GB of KV over the drive's link, 0.66 s, beside which the GPU's
    work of the step is a rounding error."""
    dev = _tiered().model_dump(exclude={"aliases"})
    sys_ = system(_kv_on("nvme"), device=dev, model="llama-3.1-8b")
    shape = BatchShape(decode_seqs=1, decode_context=32768)
    listed = cost(sys_).breakdown(shape)  # rows of one name (norm, residual_add) appear twice per layer
    rows = {r.name: r for r in listed}
    fetch = rows["kv_fetch"]
    assert fetch.source == "link model (nvme-pcie)"
    assert fetch.bytes == pytest.approx(32 * 4096 * (32768 + 1), rel=1e-12)  # the context plus the new token's KV
    assert fetch.time_s == pytest.approx(fetch.bytes / 6.5e9 + 32 * 80e-6, rel=1e-9)
    # The step: the rows outside the overlap group add up, the group takes its longer lane (the fetch).
    outside = sum(r.time_s for r in listed if r.name not in ("attention_decode", "kv_fetch"))
    step = cost(sys_).iteration(shape).time_s
    assert step == pytest.approx(outside + fetch.time_s, rel=1e-9)
    assert fetch.time_s > 0.9 * step
    # The same KV in host DRAM over the 450 GB/s chip-to-chip link is far faster.
    c2c = cost(system(_kv_on("host", gib=400), device=dev, model="llama-3.1-8b")).iteration(shape).time_s
    assert step / c2c > 20


def test_kv_tier_capacity_bounds_host_kv_gib():
    dev = _tiered().model_dump(exclude={"aliases"})
    with pytest.raises(DoesNotFitError) as err:
        system(_kv_on("nvme", gib=4096), device=dev, model="llama-3.1-8b")
    assert err.value.where == "techniques[0] (sparse-attention).host_kv_gib"
    with pytest.raises(CapsimError) as err:
        system(_kv_on("disk"), model="llama-3.1-8b")
    assert err.value.where == "techniques[0] (sparse-attention).kv_location"
