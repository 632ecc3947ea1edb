"""On-device devices (issue 17, NPUs): catalog entries, static graph shapes, weights streamed from flash, thermal
throttling and energy per token, each checked by hand against the datasheet figures of the entries."""

from __future__ import annotations

import math

import numpy as np
import pytest

from capsim.errors import CapsimError, DoesNotFitError
from hwmodels.device import Thermal, get_device
from simulator.config.schema import Scenario
from simulator.costmodel import features as F
from simulator.costmodel.static_shapes import StaticShapeCostModel
from simulator.costmodel.thermal import ThermalCostModel, bind_thermal, heat_after, speed, wall_times
from simulator.engine import simulate
from simulator.metrics.summary import summarise
from simulator.models import get_model
from simulator.system import build_system

PHONE = "snapdragon-8-gen3"


def scenario(device=PHONE, model="phi-3-mini", techniques=(), **workload) -> Scenario:
    wl = {
        "arrival": "closed-loop",
        "concurrency": 1,
        "prompt": {"dist": "fixed", "value": 256},
        "output": {"dist": "fixed", "value": 64},
        **workload,
    }
    return Scenario.model_validate(
        {
            "seed": 5,
            "model": model,
            "deployment": {"device": device, "weight_dtype": "int8", "kv_dtype": "fp16"},
            "scheduler": {"name": "vllm", "max_num_seqs": 1},
            "techniques": list(techniques),
            "workload": wl,
            "simulation": {"num_requests": 6},
        }
    )


def prefill_s(cost, tokens: int) -> float:
    """One prompt of ``tokens`` prefilled alone."""
    return cost.iteration_from_totals(
        tokens, 1, F.prefill_attention_work(tokens, 0), F.prefill_kv_read(tokens, 0), 0, 0
    ).time_s


def dynamic_phone(**fields) -> dict:
    """The phone without compiled shapes (as if its runtime built a graph per shape for free)."""
    return {"base": PHONE, "name": "phone-dynamic", "static_shapes": None, **fields}


# ------------------------------------------------------------------------------------------ catalog


@pytest.mark.parametrize(
    "name,storage", [(PHONE, "flash"), ("intel-core-ultra-7-258v", "nvme"), ("jetson-agx-orin-64gb", "nvme")]
)
def test_on_device_entries_have_lpddr_and_a_storage_tier_with_sources(name, storage):
    dev = get_device(name)
    assert dev.memory_kind == "lpddr" and dev.main_tier == "lpddr"
    assert dev.source and "int8" in dev.peak_tflops
    tier = dev.tier(storage)
    assert tier.bandwidth_gbs and tier.source
    link = dev.link_between("lpddr", storage)
    assert link.bandwidth_gbs == tier.bandwidth_gbs and link.source


def test_datasheet_figures_of_the_on_device_entries():
    phone, orin, laptop = get_device(PHONE), get_device("jetson-agx-orin"), get_device("lunar-lake")
    assert phone.peak_flops("int8") == 73e12 and phone.memory_bandwidth == 76.8e9 and phone.memory_gib == 24
    assert phone.link_between("lpddr", "flash").kind == "ufs"
    assert phone.static_shapes.prefill_chunk == 256
    assert orin.peak_flops("int8") == 85e12 and orin.memory_bandwidth_gbs == 204.8 and orin.memory_gib == 64
    assert laptop.peak_flops("int8") == 47e12 and laptop.memory_bandwidth_gbs == pytest.approx(
        8533 * 16 / 1000, abs=0.05
    )
    # Nothing in the GPU entries changed: no compiled shapes, no throttling.
    assert get_device("h100").static_shapes is None and get_device("h100").thermal is None


# ------------------------------------------------------------------------------------------ static shapes


def test_a_prompt_one_token_past_the_chunk_costs_two_chunks():
    cost = build_system(scenario()).cost_model()
    assert isinstance(cost, StaticShapeCostModel)
    one, full, over, two = (prefill_s(cost, q) for q in (1, 256, 257, 512))
    # A 1-token prompt is padded to the whole chunk (attention aside, which is on the real tokens).
    assert one == pytest.approx(full, rel=0.02)
    # chunk + 1 tokens: two chunk graphs, each reading the 3.8 GB of INT8 weights again.
    assert over / full == pytest.approx(2.0, rel=0.02)
    assert over == pytest.approx(two, rel=0.02)
    # Without compiled shapes the 257th token is nearly free: the chunk is bound by reading the weights.
    dyn = build_system(scenario(device=dynamic_phone())).cost_model()
    assert type(dyn) is not StaticShapeCostModel
    assert prefill_s(dyn, 257) / prefill_s(dyn, 256) < 1.05
    # Fast only at its native shapes: per real token, 256 is twice as cheap as 257.
    assert (over / 257) / (full / 256) > 1.9


def test_a_chunk_is_bound_by_the_lpddr_read_of_the_weights_by_hand():
    """A 256-token INT8 chunk of Phi-3-mini: 2 x 3.7e9 x 256 = 1.9 TOP at 73 TOPS x 0.7 is 37 ms, below the
    weights' 3.8 GB at 76.8 GB/s x 0.8 = 61 ms; activations in fp16 add to the memory side."""
    m = get_model("phi-3-mini")
    phone = get_device(PHONE)
    compute = 2 * m.body_params * 256 / (phone.peak_flops("int8") * 0.7)
    weights = m.body_params * 1 / (phone.memory_bandwidth * 0.8)
    assert compute < weights
    chunk = prefill_s(build_system(scenario()).cost_model(), 256)
    assert weights < chunk < 2 * weights


def test_decode_runs_at_the_compiled_batches():
    shapes = {"prefill_chunk": 256, "decode_batches": [1, 4]}
    cost = build_system(scenario(device=dynamic_phone(static_shapes=shapes))).cost_model()
    dyn = build_system(scenario(device=dynamic_phone())).cost_model()
    # A batch of 2 runs the 4-row graph; 4 rows cost what the dynamic model charges for 4.
    two = cost.decode_run(2, 2000, 10).total
    assert two == pytest.approx(dyn.decode_run(4, 2000, 10, 2.0).total, rel=1e-12)
    # A batch of 8 runs the 4-row graph twice a step, each with half the context.
    eight = cost.decode_run(8, 8000, 10).total
    assert eight == pytest.approx(2 * dyn.decode_run(4, 4000, 10, 4.0).total, rel=1e-12)
    assert cost.decode_work(2, 2000, 10) == pytest.approx(dyn.decode_work(4, 2000, 10, 2.0))


# ------------------------------------------------------------------------------------------ flash


def test_a_model_larger_than_memory_streamed_from_flash_is_io_bound_by_hand():
    """Llama-3.1-70B in INT8 (68.5e9 block parameters, 65 GiB) does not fit the phone's 24 GB. With 80 % of its
    blocks on UFS 4.0 flash, every decode step reads 0.8 x 68.45e9 B = 54.8 GB at 4.2 GB/s: 13.0 s a token,
    whatever the NPU does (LLM in a flash's premise: the flash read, not compute, bounds the step)."""
    with pytest.raises(DoesNotFitError):
        build_system(scenario(model="llama-3.1-70b"))
    sys_ = build_system(
        scenario(model="llama-3.1-70b", techniques=[{"name": "weight-offload", "fraction": 0.8, "tier": "flash"}])
    )
    m = get_model("llama-3.1-70b")
    flash_s = 0.8 * m.body_params * 1 / 4.2e9
    assert flash_s == pytest.approx(13.04, abs=0.01)
    cost = sys_.cost_model()
    step = cost.decode_run(1, 1000, 1).total
    assert step == pytest.approx(flash_s, rel=0.01)
    # The same step with the weights resident (a device with room for them) is 4.2/61 of it: IO-bound.
    resident = 0.2 * m.body_params / (76.8e9 * 0.8)
    assert step > 5 * resident


# ------------------------------------------------------------------------------------------ thermal


THERMAL = Thermal(sustained_fraction=0.5, time_constant_s=20.0)


def test_heat_and_speed_follow_the_first_order_curve():
    assert speed(THERMAL, 0.0) == 1.0 and speed(THERMAL, 1.0) == 0.5
    assert heat_after(THERMAL, 0.0, 20.0) == pytest.approx(1 - math.exp(-1))
    assert heat_after(THERMAL, 1.0, 0.0, 40.0) == pytest.approx(math.exp(-2))
    # W(t) = f t + (1 - f) tau (1 - exp(-t / tau)) from cold: the wall time of 10 s of peak-rate work.
    t = wall_times(THERMAL, 0.0, np.array([10.0]))[0]
    assert 0.5 * t + 0.5 * 20 * (1 - math.exp(-t / 20)) == pytest.approx(10.0, rel=1e-12)
    assert 10.0 < t < 20.0


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_sustained_decode_slows_monotonically_towards_the_sustained_fraction():
    plain = build_system(scenario()).cost_model()
    clock = Clock()
    hot = bind_thermal(plain, THERMAL, clock)
    assert isinstance(hot, ThermalCostModel) and bind_thermal(plain, None, clock) is plain
    cold = plain.decode_run(1, 300, 4000)
    run = hot.decode_run(1, 300, 4000)  # ~4000 x 64 ms = 256 s of work, many time constants
    d, base = run.all_durations(), cold.all_durations()
    ratio = d / base
    assert ratio[0] == pytest.approx(1.0, rel=1e-3)
    assert np.all(np.diff(ratio) >= -1e-9)  # monotone (to the rounding of differenced wall times)
    assert ratio[-1] == pytest.approx(1 / THERMAL.sustained_fraction, rel=0.01)
    assert run.total > 1.5 * cold.total
    # Idle for ten time constants: the device is cold again and an iteration costs its cold price.
    clock.now = run.total + 10 * THERMAL.time_constant_s
    assert hot.heat < 1e-3
    it = hot.iteration_from_totals(256, 1, F.prefill_attention_work(256, 0), F.prefill_kv_read(256, 0), 0, 0)
    assert it.time_s == pytest.approx(prefill_s(plain, 256), rel=2e-3)


def test_a_run_cut_short_heats_only_for_the_time_it_ran():
    plain = build_system(scenario()).cost_model()
    clock = Clock()
    hot = bind_thermal(plain, THERMAL, clock)
    run = hot.decode_run(1, 300, 1000)
    clock.now = run.total / 10  # an arrival cut the run at a tenth of it
    assert hot.heat == pytest.approx(heat_after(THERMAL, 0.0, run.total / 10), rel=1e-9)


def test_throttling_off_is_the_catalog_default_and_on_slows_a_long_session():
    base = simulate(scenario(think_time_s=0.0)).result
    hot_dev = {"base": PHONE, "name": "hot-phone", "thermal": {"sustained_fraction": 0.5, "time_constant_s": 5.0}}
    hot = simulate(scenario(device=hot_dev, think_time_s=0.0)).result
    e2e = lambda r: (r.requests["finish_s"] - r.requests["arrival_s"]).to_numpy()  # noqa: E731
    assert np.allclose(np.diff(e2e(base)), 0.0)  # identical requests, no throttling: identical latencies
    assert np.all(np.diff(e2e(hot)) > 0)  # each request of the back-to-back session slower than the last
    assert e2e(hot)[0] > e2e(base)[0]


# ------------------------------------------------------------------------------------------ energy


def test_energy_per_token_is_busy_power_times_busy_time_by_hand():
    """One user, 256-token prompts, 64 output tokens, idle_w 0: each request keeps the phone busy for one
    prefill chunk and 63 decode steps at 7.0 W."""
    sc = scenario(think_time_s=2.0)
    result = simulate(sc).result
    s = summarise(result)
    cost = build_system(sc).cost_model()
    busy = prefill_s(cost, 256) + cost.decode_run(1, 256, 63).total
    assert s["energy_per_output_token_j"] == pytest.approx(7.0 * busy / 64, rel=1e-3)
    # Decode dominates: ~3.8 GB of weights per token at 61 GB/s is ~62 ms, 0.43 J a token at 7 W.
    assert s["energy_per_output_token_j"] == pytest.approx(0.45, abs=0.05)


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "fields,where",
    [
        ({"static_shapes": {"prefill_chunk": 0}}, "deployment.device.static_shapes.prefill_chunk"),
        (
            {"static_shapes": {"prefill_chunk": 256, "decode_batches": [4, 1]}},
            "deployment.device.static_shapes.decode_batches",
        ),
        ({"static_shapes": {"prefill_chunk": True}}, "deployment.device.static_shapes.prefill_chunk"),
        (
            {"thermal": {"sustained_fraction": 1.5, "time_constant_s": 10}},
            "deployment.device.thermal.sustained_fraction",
        ),
        ({"thermal": {"sustained_fraction": 0.5, "time_constant_s": 0}}, "deployment.device.thermal.time_constant_s"),
        ({"thermal": {"sustained_fraction": 0.5}}, "deployment.device.thermal.time_constant_s"),
        (
            {"thermal": {"sustained_fraction": 0.5, "time_constant_s": 5, "power_exponent": 4}},
            "deployment.device.thermal.power_exponent",
        ),
        (
            {"thermal": {"sustained_fraction": 0.5, "time_constant_s": 5, "power_exponent": True}},
            "deployment.device.thermal.power_exponent",
        ),
    ],
)
def test_bad_device_properties_are_named_by_field(fields, where):
    with pytest.raises(CapsimError) as err:
        build_system(scenario(device={"base": PHONE, **fields}))
    assert err.value.where == where


def test_a_speculative_step_model_is_refused_on_a_device_with_static_shapes():
    with pytest.raises(CapsimError) as err:
        build_system(
            scenario(model="llama-2-7b", techniques=[{"name": "speculative", "draft_model": "llama-68m", "k": 4}])
        )
    assert err.value.where == "techniques"


# ------------------------------------------------------------------------------------------ outliers


def outliers(fraction: float, **kw) -> list[dict]:
    # 1 TFLOP/s is an illustrative CPU figure for the test, not a catalog value.
    return [{"name": "npu-outliers", "fraction": fraction, "processor_tflops": 1.0, **kw}]


def test_outliers_run_beside_each_gemm_and_cost_the_longer_lane_by_hand():
    """Each GEMM and its outlier row cost max(NPU GEMM, fraction x FLOPs at 1 TFLOP/s x 0.7 + sync per kernel
    launch); without overlap the two add up."""
    from simulator.costmodel.features import BatchShape

    shape = BatchShape(prefill_chunks=((256, 0, True),))
    plain = build_system(scenario()).cost_model()
    gemms = [r for r in plain.breakdown(shape) if r.op_class == "gemm" and r.scope == "layer"]
    assert {r.name for r in gemms} == {"qkv_proj", "o_proj", "mlp"}
    layers = get_model("phi-3-mini").num_layers
    launches = {op.name: op.launches for op in build_system(scenario()).table.layer_ops}
    assert launches == {**launches, "qkv_proj": 1.0, "o_proj": 1.0, "mlp": 3.0}  # gate, up, down
    for fraction, sync_us in ((0.01, 0.0), (0.05, 0.0), (0.05, 50.0)):
        side = [fraction * r.flops / 0.7e12 + layers * launches[r.name] * sync_us * 1e-6 for r in gemms]
        par = build_system(scenario(techniques=outliers(fraction, sync_us=sync_us))).cost_model()
        ser = build_system(scenario(techniques=outliers(fraction, sync_us=sync_us, overlap=False))).cost_model()
        base = prefill_s(plain, 256)
        expected = sum(max(r.time_s, s) - r.time_s for r, s in zip(gemms, side, strict=True))
        assert prefill_s(par, 256) - base == pytest.approx(expected, rel=1e-6, abs=1e-12)
        assert prefill_s(ser, 256) - base == pytest.approx(sum(side), rel=1e-6)
    # 1 % of the work hides entirely behind the NPU (its GEMMs are bound by reading the weights).
    hidden = build_system(scenario(techniques=outliers(0.01))).cost_model()
    assert prefill_s(hidden, 256) == pytest.approx(prefill_s(plain, 256), rel=1e-12)


def test_outlier_parameters_are_checked_by_field():
    with pytest.raises(CapsimError) as err:
        build_system(scenario(techniques=outliers(0.9)))
    assert err.value.where.endswith("fraction")
    with pytest.raises(CapsimError) as err:
        build_system(scenario(techniques=[{"name": "npu-outliers", "fraction": 0.01}]))
    assert err.value.where.endswith("processor_tflops")
    with pytest.raises(CapsimError) as err:
        build_system(scenario(techniques=outliers(0.01, processor="flash")))
    assert err.value.where.endswith("processor")


def test_throttling_is_refused_in_a_multi_pool_deployment():
    from simulator.pools.build import build_pools

    hot = {"base": "h100-sxm", "thermal": {"sustained_fraction": 0.8, "time_constant_s": 30}}
    sc = Scenario.model_validate(
        {
            "seed": 1,
            "model": "llama-3.1-8b",
            "scheduler": {"name": "vllm"},
            "serving": {"name": "disaggregated", "link": {"kind": "nvlink"}},
            "pools": [
                {"name": "prefill", "role": "prefill", "device": "h100-sxm", "num_replicas": 1},
                {"name": "decode", "role": "decode", "device": hot, "num_replicas": 1},
            ],
            "workload": {
                "arrival": "poisson",
                "qps": 1,
                "prompt": {"dist": "fixed", "value": 128},
                "output": {"dist": "fixed", "value": 8},
            },
            "simulation": {"num_requests": 4},
        }
    )
    with pytest.raises(CapsimError) as err:
        build_pools(sc)
    assert err.value.where == "pools.1.device"
