"""The SambaNova SN40L RDU: its catalog entry (three tiers and the DDR->HBM link), dataflow fusion's bytes and
launches by hand, and Composition of Experts -- switch times by hand on the RDU and on a GPU, LRU residency
replayed independently, batches that never mix experts beyond the HBM slots, conservation, determinism and bad
input naming its field."""

from __future__ import annotations

import numpy as np
import pytest

from capsim.errors import CapsimError, DoesNotFitError
from hwmodels.device import get_device
from simulator.config.schema import Scenario
from simulator.costmodel.features import BatchShape
from simulator.costmodel.iteration import IterationCostModel
from simulator.engine import simulate
from simulator.metrics.summary import summarise
from simulator.system import build_system
from tests.test_engine_invariants import check_invariants

FUSION = {"name": "dataflow-fusion"}


def scenario(
    techniques=(),
    *,
    device="sn40l",
    model="llama-3.1-8b",
    tp=1,
    n=20,
    qps=1.0,
    prompt=512,
    output=32,
    seed=3,
    **deployment,
) -> Scenario:
    return Scenario.model_validate(
        {
            "name": "rdu-test",
            "seed": seed,
            "model": model,
            "deployment": {"device": device, "tp": tp, **deployment},
            "workload": {
                "arrival": "poisson",
                "qps": qps,
                "prompt": {"dist": "fixed", "value": prompt},
                "output": {"dist": "fixed", "value": output},
            },
            "simulation": {"num_requests": n},
            "techniques": list(techniques),
        }
    )


def step(sys_, batch: int, context: int = 1000):
    cost = IterationCostModel(sys_.table, sys_.roofline, sys_.overheads)
    return cost.iteration(BatchShape(decode_seqs=batch, decode_context=batch * context))


def coe(experts=("a", "b", "c", "d"), slots=1, tier="ddr", **extra) -> dict:
    return {"name": "composition-of-experts", "experts": list(experts), "hbm_slots": slots, "tier": tier, **extra}


# ------------------------------------------------------------------ the catalog entry
def test_sn40l_has_three_tiers_and_a_ddr_link_bound_by_the_ddr():
    dev = get_device("sn40l")
    tiers = {t.name: t for t in dev.tiers}
    assert [t for t in tiers if t != "host"] == ["sram", "hbm", "ddr"]
    assert tiers["sram"].capacity_gib == pytest.approx(520 / 1024)
    assert (tiers["hbm"].capacity_gib, tiers["hbm"].bandwidth_gbs) == (64, 1600)  # 25.6 TB/s / 16 sockets
    assert (tiers["ddr"].capacity_gib, tiers["ddr"].bandwidth_gbs) == (1536, 100)  # 1,600 GB/s / 16 sockets
    assert dev.peak_tflops == {"bf16": 638}
    link = dev.transfer_link("hbm", "ddr")
    assert link.bandwidth == 100e9 and link.kind == "c2c"
    assert "placeholder" in dev.price_source


@pytest.mark.parametrize("tp", [1, 2, 4, 8])
def test_sn40l_serves_with_tensor_parallelism_up_to_the_8_socket_node(tp):
    sys_ = build_system(scenario(tp=tp))
    assert sys_.device.name == "sn40l" and sys_.memory.kv_blocks > 0


def test_hot_chips_model_switch_figure_follows_from_the_ddr_bandwidth():
    # Hot Chips 2024: "0.01 s" to switch Llama 3.1 8B on 16 sockets. Each socket copies its 1/16 of 16.06 GB.
    sys_ = build_system(scenario([coe()], tp=16))
    params = 8_030_261_248  # Llama-3.1-8B (config.json shapes): 16.06 GB in bf16
    # 8 KV heads over 16 sockets: each socket holds one whole KV head's K and V projections (2x its share).
    replicated = 32 * 2 * 128 * 4096 * (1 - 8 / 16) * 2
    assert sys_.gate.switch_s == pytest.approx((2 * params / 16 + replicated) / 100e9, rel=1e-6)
    assert sys_.gate.switch_s == pytest.approx(0.01, rel=0.04)


# ------------------------------------------------------------------ dataflow fusion
def test_fusion_removes_exactly_the_layer_activations_by_hand():
    plain, fused = build_system(scenario()), build_system(scenario([{**FUSION, "one_kernel": False}]))
    d, h, kv, dh, f, ba = 4096, 32, 8, 128, 14336, 2  # Llama-3.1-8B, bf16 activations, tp = 1
    per_token_layer = ba * (
        2 * 2 * d  # two norms: read the stream, write the normalised copy
        + d
        + (h + 2 * kv) * dh  # QKV projection: read the input, write q, k, v
        + 2 * (h + kv) * dh  # RoPE on q and k: read and write
        + 2 * h * dh  # attention: read the queries, write the outputs (the KV stays)
        + h * dh
        + d  # output projection
        + 2 * d
        + 3 * f  # MLP: read the input, write gate/up, read the product, write the output
        + 3 * f  # SiLU(gate) * up: read two, write one
        + 2 * 3 * d  # two residual adds: read two, write one
    )
    assert per_token_layer == 344_064
    for batch in (1, 16, 64):
        a, b = step(plain, batch), step(fused, batch)
        assert a.bytes - b.bytes == pytest.approx(batch * 32 * per_token_layer)
        assert a.flops == pytest.approx(b.flops)
        # The GEMM and attention rows stay memory-bound (weights, KV), so they save their activation bytes over the
        # bandwidth; the elementwise rows, left with no bytes, now cost their FLOPs (norms 5d each, RoPE 3 per
        # element, SiLU-and-multiply 5f, adds d each).
        elementwise_flops = 2 * 5 * d + 3 * (h + kv) * dh + 5 * f + 2 * d
        saved = (
            a.bytes - b.bytes
        ) / plain.roofline.effective_bandwidth - batch * 32 * elementwise_flops / plain.roofline.effective_flops
        assert a.time_s - b.time_s == pytest.approx(saved, rel=1e-9)


def test_one_kernel_per_layer_saves_the_other_launches():
    loose = build_system(scenario([{**FUSION, "one_kernel": False}]))
    tight = build_system(scenario([FUSION]))
    # A decode step launches 12 kernels per layer with work (norm, qkv, rope, attention, o_proj, add, norm, the MLP's
    # 3 GEMMs, activation, add; the prefill attention has none): fused, one.
    saved = 11 * 32 * loose.roofline.launch_overhead_s
    assert step(loose, 8).time_s - step(tight, 8).time_s == pytest.approx(saved, rel=1e-9)


def test_fusion_leaves_weight_and_kv_bytes_and_other_devices_alone():
    plain, fused = build_system(scenario()), build_system(scenario([FUSION]))
    by_name = {op.name: op for op in plain.table.layer_ops}
    for op in fused.table.layer_ops:
        ref = by_name[op.name]
        assert op.bytes[0] == ref.bytes[0]  # weights (the `one` feature) still stream from HBM
        assert op.bytes[6] == ref.bytes[6] and op.bytes[5] == ref.bytes[5]  # decode context and prefill KV reads
    for a, b in zip(fused.table.iteration_ops, plain.table.iteration_ops, strict=True):  # embedding, LM head: not fused
        assert np.array_equal(a.bytes, b.bytes) and a.launches == b.launches

    # A long prefill's GEMMs are compute-bound: fusion only removes the memory-bound rows' traffic.
    def cost(s):
        model = IterationCostModel(s.table, s.roofline, s.overheads)
        return model.iteration(BatchShape(prefill_chunks=((4096, 0, True),))).time_s

    assert 0.8 * cost(plain) < cost(fused) < cost(plain)


def test_fusion_is_refused_on_calibrated_or_sramless_devices():
    with pytest.raises(CapsimError) as err:
        build_system(scenario([FUSION], device="h100-sxm"))
    assert err.value.where == "techniques[0] (dataflow-fusion)" and "calibration" in err.value.fix
    build_system(scenario([FUSION], device="h100-sxm", calibration="datasheet"))  # priced by its roofline: allowed
    bare = {"base": "sn40l", "sram_mib": None}
    with pytest.raises(CapsimError, match="no on-chip SRAM"):
        build_system(scenario([FUSION], device=bare))


# ------------------------------------------------------------------ composition of experts: switch time
def test_switch_time_by_hand_on_the_rdu_and_on_a_gpu():
    # Llama-2-7B: V=32000, d=4096, f=11008, 32 layers, untied embeddings.
    params = 2 * 32000 * 4096 + 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096) + 4096
    per_device = 2 * params / 8  # bf16, tp = 8
    rdu = build_system(scenario([coe()], model="llama-2-7b", tp=8)).gate
    gpu = build_system(scenario([coe(tier="host")], model="llama-2-7b", tp=8, device="h100-sxm")).gate
    assert rdu.link == "ddr-hbm" and gpu.link == "pcie"
    assert rdu.switch_s == pytest.approx(per_device / 100e9, rel=1e-5)  # DDR -> HBM, 100 GB/s per socket
    assert gpu.switch_s == pytest.approx(per_device / 64e9 + 10e-6, rel=1e-5)  # host -> HBM, PCIe Gen5 x16
    # The comparison is the two links' ratio, and nothing else: ~1.56x here (the paper reports 15x to 31x).
    assert gpu.switch_s / rdu.switch_s == pytest.approx(100 / 64, rel=1e-3)


def test_first_request_waits_for_its_expert_then_prefills():
    out = simulate(scenario([coe(experts=("only",))], n=3, qps=0.01, output=4))
    req = out.result.requests
    pool = out.system.gate
    first = req.iloc[0]
    prefill = (
        IterationCostModel(out.system.table, out.system.roofline, out.system.overheads)
        .iteration(BatchShape(prefill_chunks=((512, 0, True),)))
        .time_s
    )
    assert first["switch_s"] == pytest.approx(pool.switch_s)
    assert first["first_token_s"] - first["arrival_s"] == pytest.approx(pool.switch_s + prefill, rel=1e-9)
    assert req["switches"].tolist() == [1, 0, 0]  # the expert stays resident


def test_lru_residency_matches_an_independent_replay():
    # Arrivals far apart (each request done before the next): the replica is idle at every arrival, so the loads
    # are those of an LRU cache of `slots` experts over the arrival sequence of experts.
    for slots in (1, 2, 3):
        out = simulate(
            scenario([coe(experts=("a", "b", "c", "d", "e"), slots=slots)], n=60, qps=0.02, output=4, seed=5)
        )
        req = out.result.requests.sort_values("arrival_s")
        cache: list[str] = []
        expected = []
        for e in req["expert"]:
            if e in cache:
                cache.remove(e)
                expected.append(0)
            else:
                if len(cache) == slots:
                    cache.pop(0)
                expected.append(1)
            cache.append(e)
        assert req["switches"].tolist() == expected
        summary = summarise(out.result)
        assert summary["model_switches"] == sum(expected)
        assert summary["model_switch_time_s"] == pytest.approx(sum(expected) * out.system.gate.switch_s)
        for name in set(req["expert"]):
            mine = (req["expert"] == name).to_numpy()
            assert summary[f"model_switches.{name}"] == int(np.asarray(expected)[mine].sum())


@pytest.mark.parametrize("slots", [1, 2])
def test_batches_never_mix_more_experts_than_slots_and_every_request_is_served_once(slots):
    out = simulate(scenario([coe(slots=slots)], n=120, qps=20.0, output=24, seed=11, num_replicas=2))
    check_invariants(out)
    req = out.result.requests
    for _, mine in req.groupby("replica"):
        events = sorted(
            [(s, 1, e) for s, e in zip(mine["schedule_s"], mine["expert"], strict=True)]
            + [(f, -1, e) for f, e in zip(mine["finish_s"], mine["expert"], strict=True)],
            key=lambda ev: (ev[0], ev[1]),
        )
        live: dict[str, int] = {}
        for _, delta, e in events:
            live[e] = live.get(e, 0) + delta
            assert sum(1 for v in live.values() if v > 0) <= slots
    assert summarise(out.result)["model_switches"] > 4  # a mixed stream does switch


def test_coe_is_deterministic_and_off_adds_no_keys():
    timing = ("wall_time_s", "sim_speed_rps")
    on = summarise(simulate(scenario([coe()], n=40, qps=5.0)).result)
    again = summarise(simulate(scenario([coe()], n=40, qps=5.0)).result)
    assert {k: v for k, v in on.items() if k not in timing} == {k: v for k, v in again.items() if k not in timing}
    off = summarise(simulate(scenario(n=40, qps=5.0)).result)
    assert not any(k.startswith("model_switch") for k in off)
    assert on["model_switches"] >= 1


def test_rare_expert_waits_are_bounded_by_max_wait():
    # A steady hot stream keeps the batch busy, so without a bound a rare request waits for the stream to end.
    mix = {"hot": 0.95, "rare": 0.05}
    args = dict(n=300, qps=10.0, output=64, seed=2)
    loose = simulate(scenario([coe(experts=("hot", "rare"), popularity=mix)], **args)).result.requests
    bounded = simulate(scenario([coe(experts=("hot", "rare"), popularity=mix, max_wait_s=2.0)], **args)).result.requests
    rare = lambda r: (r["first_token_s"] - r["arrival_s"])[r["expert"] == "rare"].max()  # noqa: E731
    assert rare(loose) > 10.0
    assert rare(bounded) < 0.25 * rare(loose)
    assert bounded["switches"].sum() > loose["switches"].sum()  # the price: more switches


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("entry", "where"),
    [
        (coe(popularity={"a": 1.0, "zz": 2.0}), "techniques[0] (composition-of-experts).popularity.zz"),
        (coe(slots=0), "techniques[0].hbm_slots"),
        (coe(slots=5), "techniques[0] (composition-of-experts).hbm_slots"),  # 5 x 16 GB > 64 GiB of HBM
        (coe(tier="nvme"), "techniques[0] (composition-of-experts).tier"),
        (coe(tier="hbm"), "techniques[0] (composition-of-experts).tier"),
        (coe(experts=("a", "a")), "techniques[0].experts"),
        (
            coe(experts=[f"e{i}" for i in range(110)]),
            "techniques[0] (composition-of-experts).experts",
        ),  # 110 x 15 GiB > 1.5 TiB
    ],
)
def test_bad_input_names_the_field(entry, where):
    with pytest.raises(CapsimError) as err:
        build_system(scenario([entry]))
    assert err.value.where == where


def test_slots_too_small_for_one_model_is_a_does_not_fit_error():
    small = {"base": "sn40l", "memory_gib": 12}  # Llama-3.1-8B needs 15 GiB per socket at tp=1
    with pytest.raises(DoesNotFitError) as err:
        build_system(scenario([coe()], device=small))
    assert err.value.where == "techniques[0] (composition-of-experts).hbm_slots"


def test_pools_refuse_coe():
    data = scenario([coe()]).model_dump()
    data.pop("deployment")
    data["serving"] = {"name": "disaggregated"}
    data["pools"] = [
        {"name": "p", "role": "prefill", "device": "sn40l"},
        {"name": "d", "role": "decode", "device": "sn40l"},
    ]
    with pytest.raises(CapsimError, match="does not bind yet") as err:  # techniques run in pools; this one not yet
        simulate(Scenario.model_validate(data))
    assert err.value.where == "techniques[0]"
