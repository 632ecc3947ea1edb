"""The device catalog: entries load, agree with the public spec files we ship under
shared/data, derive roofline numbers correctly, and reject bad input clearly."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from capsim.errors import CapsimError, UnknownNameError
from hwmodels import DEVICES, device_from_dict, get_device, load_device_catalog
from hwmodels.device import DTYPES

CATALOG = load_device_catalog()
REPO = Path(__file__).resolve().parents[1]

REQUIRED_IDS = {
    "a100-80gb-sxm",
    "a100-40gb-sxm",
    "h100-sxm",
    "h100-pcie",
    "h200",
    "l40s",
    "a6000",
    "rtx-4090",
    "mi300x",
    "b200",
    "l4",
    "a10g",
    # issue 19
    "a100-80gb-pcie",
    "a40",
    "t4",
    "b300",
    "a10",
    "h20",
    "gb200",
    "a100-40gb-pcie",
}


def _shared_data() -> Path | None:
    """shared/data holds third-party spec files (llm-analysis, aiconfigurator) when present."""
    candidates = [
        os.environ.get("CAPSIM_SHARED_DATA"),
        REPO / "shared" / "data",
        REPO.parent / "shared" / "data",
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


SHARED = _shared_data()

# catalog id -> cli99/llm-analysis gpu_configs file (vendor datasheet numbers)
LLM_ANALYSIS = {
    "a100-80gb-sxm": "a100-sxm-80gb.json",
    "a100-40gb-sxm": "a100-sxm-40gb.json",
    "h100-sxm": "h100-sxm-80gb.json",
    "h100-pcie": "h100-pcie-80gb.json",
    "a6000": "a6000-48gb.json",
    "a10g": "a10g-pcie-24gb.json",
    "a100-80gb-pcie": "a100-pcie-80gb.json",
    "a100-40gb-pcie": "a100-pcie-40gb.json",
}

# catalog id -> NVIDIA aiconfigurator systems file
AICONFIGURATOR = {
    "a100-80gb-sxm": "a100_sxm.yaml",
    "h100-sxm": "h100_sxm.yaml",
    "h100-pcie": "h100_pcie.yaml",
    "h200": "h200_sxm.yaml",
    "l40s": "l40s.yaml",
    "l4": "l4.yaml",
    "b200": "b200_sxm.yaml",
    "a100-80gb-pcie": "a100_pcie.yaml",
    "b300": "b300_sxm.yaml",
    "gb200": "gb200.yaml",
}


def test_every_required_device_loads_with_sources():
    assert REQUIRED_IDS <= set(CATALOG)
    assert set(DEVICES.names()) == set(CATALOG)
    for name, dev in CATALOG.items():
        assert dev.name == name
        assert dev.source and dev.price_source, name
        assert set(dev.peak_tflops) <= set(DTYPES)
        assert 0 <= dev.idle_w < dev.tdp_w
        if dev.memory_kind == "lpddr":  # an on-device SoC: owned, not rented; an NPU may publish only INT8
            assert dev.price_usd_per_hour == 0, name
            assert {"int8", "bf16", "fp16"} & set(dev.peak_tflops), name
            continue
        assert "bf16" in dev.peak_tflops or "fp16" in dev.peak_tflops, name
        assert dev.price_usd_per_hour > 0


def test_a100_and_h100_datasheet_numbers():
    a100, h100 = get_device("a100"), get_device("h100")
    assert a100.peak_flops("bf16") == 312e12
    assert a100.memory_bandwidth == 2039e9
    assert a100.memory_bytes == 80 * 2**30
    assert h100.peak_flops("bf16") == 989e12
    assert h100.peak_flops("fp8") == 1979e12
    assert h100.memory_bandwidth == 3350e9
    assert h100.nvlink_bandwidth == 450e9  # 900 GB/s bidirectional
    assert h100.memory_bytes == 85_899_345_920


@pytest.mark.parametrize("name", sorted(LLM_ANALYSIS))
def test_datasheet_numbers_match_llm_analysis(name):
    if SHARED is None:
        pytest.skip("shared/data not present (set CAPSIM_SHARED_DATA to the shared data folder)")
    path = SHARED / "llm_analysis_gpu_specs" / "gpu_configs" / LLM_ANALYSIS[name]
    if not path.is_file():
        pytest.skip(f"{path} not present")
    ref = json.loads(path.read_text())
    dev = CATALOG[name]
    assert dev.peak_tflops["fp16"] == pytest.approx(ref["peak_fp16_TFLOPS"], rel=0.01)
    assert dev.peak_tflops["int8"] == pytest.approx(ref["peak_i8_TFLOPS"], rel=0.01)
    # Hopper has no int4 tensor cores; llm-analysis lists an int4 peak for it anyway.
    if "int4" in dev.peak_tflops:
        assert dev.peak_tflops["int4"] == pytest.approx(ref["peak_i4_TFLOPS"], rel=0.01)
    assert dev.memory_bandwidth_gbs == pytest.approx(ref["hbm_bandwidth_in_GB_per_sec"], rel=0.01)
    assert dev.memory_gib == pytest.approx(ref["mem_per_GPU_in_GB"], rel=0.01)
    if dev.interconnect.nvlink_gbs:
        assert dev.interconnect.nvlink_gbs == pytest.approx(ref["intra_node_bandwidth_in_GB_per_sec"], rel=0.01)


@pytest.mark.parametrize("name", sorted(AICONFIGURATOR))
def test_numbers_match_aiconfigurator_systems(name):
    if SHARED is None:
        pytest.skip("shared/data not present (set CAPSIM_SHARED_DATA to the shared data folder)")
    path = SHARED / "aiconfigurator" / "systems" / AICONFIGURATOR[name]
    if not path.is_file():
        pytest.skip(f"{path} not present")
    ref = yaml.safe_load(path.read_text())
    gpu, node = ref["gpu"], ref["node"]
    dev = CATALOG[name]
    assert dev.memory_bytes == gpu["mem_capacity"]
    assert dev.memory_bandwidth == pytest.approx(gpu["mem_bw"], rel=0.001)
    assert dev.peak_flops("bf16") == pytest.approx(gpu["bfloat16_tc_flops"], rel=0.01)
    if "fp8_tc_flops" in gpu:
        assert dev.peak_flops("fp8") == pytest.approx(gpu["fp8_tc_flops"], rel=0.01)
    assert dev.tdp_w == gpu["power"]
    assert dev.pcie_bandwidth == pytest.approx(node["pcie_bw"])
    if dev.interconnect.nvlink_gbs:
        assert dev.nvlink_bandwidth == pytest.approx(node["intra_node_bw"])
    assert dev.efficiency.memory == gpu["mem_bw_empirical_scaling_factor"]
    assert dev.efficiency.launch_overhead_us * 1e-6 == pytest.approx(gpu["mem_empirical_constant_latency"])


def test_pcie_parts_have_no_scale_up_fabric_and_turing_has_no_bf16():
    for name in ("a100-80gb-pcie", "a40", "t4"):
        dev = get_device(name)
        assert dev.nvlink_bandwidth == 0 and dev.interconnect.pcie_gbs > 0
    # Same tensor rates as the SXM A100, less bandwidth and power.
    pcie, sxm = get_device("a100-pcie"), get_device("a100-80gb-sxm")
    assert pcie.peak_tflops == sxm.peak_tflops
    assert pcie.memory_bandwidth_gbs < sxm.memory_bandwidth_gbs and pcie.tdp_w < sxm.tdp_w
    t4 = get_device("tesla-t4")
    assert t4.interconnect.pcie_gbs == 16  # PCIe Gen3 x16
    with pytest.raises(CapsimError) as info:
        t4.peak_flops("bf16")
    assert "fp16" in info.value.fix


def test_b300_keeps_b200_float_rates_but_not_its_int8():
    b300, b200 = get_device("b300"), get_device("b200")
    assert b300.peak_tflops["bf16"] == b200.peak_tflops["bf16"]
    assert b300.peak_tflops["int8"] < b200.peak_tflops["int8"] / 10
    assert b300.memory_gib > b200.memory_gib
    assert b300.sram_mib is None and b300.num_sms is None  # no source found: unset, not guessed


def test_ridge_points_match_the_cost_model_primer():
    assert get_device("a100-80gb-sxm").ridge_point("bf16") == pytest.approx(153, abs=1)
    assert get_device("h100-sxm").ridge_point("bf16") == pytest.approx(295, abs=1)


@pytest.mark.parametrize(
    "alias, canonical",
    [
        ("a100", "a100-80gb-sxm"),
        ("a100-80gb", "a100-80gb-sxm"),
        ("A100_SXM", "a100-80gb-sxm"),
        ("h100", "h100-sxm"),
        ("h100-80gb", "h100-sxm"),
        ("H100-SXM5", "h100-sxm"),
        ("h200-sxm", "h200"),
        ("rtx-a6000", "a6000"),
        ("4090", "rtx-4090"),
    ],
)
def test_aliases_resolve(alias, canonical):
    assert get_device(alias).name == canonical


def test_unknown_device_suggests_the_closest_name():
    with pytest.raises(UnknownNameError) as info:
        get_device("h100-sxm6")
    assert "h100-sxm" in str(info.value)


def test_unsupported_dtype_names_the_device_and_its_formats():
    with pytest.raises(CapsimError) as info:
        get_device("a100").peak_flops("fp8")
    message = str(info.value)
    assert "a100-80gb-sxm" in message and "fp8" in message and "bf16" in message


def test_dtype_synonyms_map_to_catalog_keys():
    h100 = get_device("h100")
    assert h100.peak_flops("bfloat16") == h100.peak_flops("bf16")
    assert h100.peak_flops("float16") == h100.peak_flops("fp16")


def test_consumer_card_lists_fp32_accumulate_rate():
    # 165.2 TFLOP/s bf16 with fp32 accumulate, not the 330 fp16-accumulate figure.
    assert get_device("rtx-4090").peak_tflops["bf16"] == pytest.approx(165.2)


def test_inline_device_round_trips_and_is_hashable():
    h100 = get_device("h100")
    clone = device_from_dict(h100.model_dump())
    assert clone == h100 and hash(clone) == hash(h100)
    assert {h100: 1}[clone] == 1


def _inline(**changes):
    base = get_device("l4").model_dump()
    base.update(name="my-card", aliases=())
    base.update(changes)
    return base


def test_inline_device_with_unknown_key_is_rejected():
    with pytest.raises(CapsimError) as info:
        device_from_dict(_inline(memory_gb=24), where="hardware.device")
    message = str(info.value)
    assert "memory_gb" in message and message.startswith("hardware.device")


def test_inline_device_with_unknown_nested_key_is_rejected():
    links = {
        "nvlink_gbs": 0,
        "pcie_gbs": 32,
        "link_latency_us": 10,
        "infiniband_gbs": 50,
    }
    with pytest.raises(CapsimError, match="infiniband_gbs"):
        device_from_dict(_inline(interconnect=links))


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"peak_tflops": {"bf16": 100, "fp6": 400}}, "fp6"),
        ({"peak_tflops": {"bf16": -1}}, "positive"),
        ({"peak_tflops": {}}, "at least one"),
        ({"idle_w": 500}, "idle_w"),
        ({"memory_gib": 0}, "memory_gib"),
    ],
)
def test_inline_device_with_bad_values_is_rejected(changes, words):
    with pytest.raises(CapsimError) as info:
        device_from_dict(_inline(**changes))
    assert words in str(info.value)


def test_device_specs_are_immutable():
    with pytest.raises(ValidationError, match="frozen"):
        get_device("h100").memory_gib = 1  # type: ignore[misc]


# -- inline devices on a catalog base ------------------------------------------------------


def test_inline_device_on_a_base_overrides_fields_and_keeps_the_calibrated_profile():
    from hwmodels.device import calibrated_profile

    h100 = get_device("h100-sxm")
    dev = device_from_dict({"base": "h100", "memory_gib": 94, "price_usd_per_hour": 3.5}, where="deployment.device")
    assert dev.name == "h100-sxm-custom" and dev.aliases == ()
    assert dev.memory_gib == 94 and dev.price_usd_per_hour == 3.5
    assert dev.peak_tflops == h100.peak_tflops and dev.interconnect == h100.interconnect
    profile = calibrated_profile(dev)
    assert profile is not None and profile is calibrated_profile(h100)


def test_inline_device_on_a_base_merges_nested_mappings():
    dev = device_from_dict({"base": "l4", "name": "l4-bridged", "interconnect": {"nvlink_gbs": 50}})
    assert dev.name == "l4-bridged"
    assert dev.interconnect.nvlink_gbs == 50
    assert dev.interconnect.pcie_gbs == get_device("l4").interconnect.pcie_gbs


def test_inline_device_on_a_base_with_new_peaks_falls_back_to_datasheet_with_a_warning():
    from hwmodels.device import calibrated_profile

    with pytest.warns(UserWarning, match="peak_tflops.*datasheet"):
        dev = device_from_dict({"base": "h100-sxm", "peak_tflops": {"bf16": 900}}, where="deployment.device")
    assert dev.peak_tflops["bf16"] == 900 and dev.peak_tflops["fp8"] == 1979
    assert calibrated_profile(dev) is None
    with pytest.warns(UserWarning, match="memory_bandwidth_gbs"):
        assert calibrated_profile(device_from_dict({"base": "h200", "memory_bandwidth_gbs": 4000})) is None
    # Naming the profile keeps it; restating the base's own peaks is no change.
    kept = device_from_dict({"base": "h100-sxm", "peak_tflops": {"bf16": 900}, "calibration_profile": "h100-sxm"})
    assert calibrated_profile(kept) is not None
    assert calibrated_profile(device_from_dict({"base": "h100-sxm", "peak_tflops": {"bfloat16": 989}})) is not None


def test_inline_device_on_an_uncalibrated_base_stays_uncalibrated():
    from hwmodels.device import calibrated_profile

    dev = device_from_dict({"base": "l40s", "memory_gib": 40})
    assert dev.calibration_profile is None and calibrated_profile(dev) is None


def test_inline_device_with_unknown_base_names_the_field():
    with pytest.raises(UnknownNameError) as info:
        device_from_dict({"base": "h100-sxm6", "memory_gib": 94}, where="deployment.device")
    assert info.value.where == "deployment.device.base"
    assert "h100-sxm" in info.value.fix
    with pytest.raises(CapsimError) as info:
        device_from_dict({"base": 7}, where="deployment.device")
    assert info.value.where == "deployment.device.base"


def test_inline_device_on_a_base_still_rejects_unknown_fields():
    with pytest.raises(CapsimError) as info:
        device_from_dict({"base": "h100", "memory_gb": 94}, where="deployment.device")
    assert "memory_gb" in info.value.render() and "memory_gib" in info.value.render()


def test_scenario_device_on_a_base_resolves_with_the_profile():
    from simulator.system import resolve_device

    dev = resolve_device({"base": "a100-80gb-sxm", "price_usd_per_hour": 1.0})
    assert dev.calibration_profile == "a100-80gb-sxm" and dev.price_usd_per_hour == 1.0
    with pytest.raises(UnknownNameError) as info:
        resolve_device({"base": "nope"})
    assert info.value.where == "deployment.device.base"


def test_gb200_is_one_gpu_of_the_nvl72_rack():
    # The NVL72 datasheet's rack figures over its 72 GPUs, sparse tensor rates halved.
    gb200 = get_device("gb200-nvl72")
    rack = {"bf16": 360e15, "fp8": 720e15, "tf32": 180e15}  # sparse, whole rack
    for fmt, sparse in rack.items():
        assert gb200.peak_flops(fmt) == pytest.approx(sparse / 72 / 2)
    assert gb200.peak_tflops["fp32"] * 72 == pytest.approx(5760)
    assert gb200.memory_bandwidth * 72 == pytest.approx(576e12)
    assert 2 * gb200.nvlink_bandwidth * 72 == pytest.approx(129.6e12)  # the rack's "130 TB/s"
    assert gb200.interconnect.nvlink_domain == 72
    # Same float rates per GPU as the 8-GPU B200 board's, a little more of everything else.
    b200 = get_device("b200")
    assert gb200.peak_flops("bf16") > b200.peak_flops("bf16") and gb200.memory_gib > b200.memory_gib


def test_a_replica_larger_than_the_nvlink_domain_is_refused():
    from simulator.config.schema import DeploymentConfig, Scenario
    from simulator.system import build_system

    def build(tp, pp):
        return build_system(Scenario(model="llama-3.1-405b", deployment=DeploymentConfig(device="gb200", tp=tp, pp=pp)))

    assert build(8, 9).deployment.gpus_per_replica == 72
    with pytest.raises(CapsimError) as info:
        build(8, 16)
    assert info.value.where == "deployment.tp" and "72" in info.value.fix
    # Devices without a stated domain are not checked (an H100 replica of 16 GPUs still builds).
    assert build_system(Scenario(model="llama-3.1-405b", deployment=DeploymentConfig(device="h100-sxm", tp=16)))


def test_a10_has_the_a10g_memory_system_and_twice_its_tensor_rate():
    a10, a10g = get_device("a10"), get_device("a10g")
    assert (a10.memory_gib, a10.memory_bandwidth_gbs) == (a10g.memory_gib, a10g.memory_bandwidth_gbs) == (24, 600)
    assert a10.peak_tflops["fp16"] == 125 and a10g.peak_tflops["fp16"] == 70
    assert a10.tdp_w == 150 and a10.nvlink_bandwidth == 0


def test_h20_trades_h100_compute_for_memory():
    h20, h100 = get_device("h20"), get_device("h100-sxm")
    assert h20.peak_flops("bf16") / h100.peak_flops("bf16") == pytest.approx(0.15, abs=0.005)
    assert h20.memory_gib > h100.memory_gib and h20.memory_bandwidth > h100.memory_bandwidth
    assert h20.ridge_point("bf16") == pytest.approx(37.0)  # 148 TFLOP/s over 4 TB/s: decode-friendly
    assert h20.nvlink_bandwidth == h100.nvlink_bandwidth


def test_a100_40gb_pcie_is_the_40gb_sxm_part_at_pcie_power_without_nvlink():
    pcie, sxm = get_device("a100-pcie-40gb"), get_device("a100-40gb-sxm")
    assert pcie.peak_tflops == sxm.peak_tflops
    assert (pcie.memory_gib, pcie.memory_bandwidth_gbs) == (sxm.memory_gib, sxm.memory_bandwidth_gbs)
    assert pcie.tdp_w == 250 < sxm.tdp_w and pcie.nvlink_bandwidth == 0 < sxm.nvlink_bandwidth
    # No public price of its own: the rule in devices.yaml takes the SXM part's rate.
    assert pcie.price_usd_per_hour == sxm.price_usd_per_hour and "upper bound" in pcie.price_source
