"""The decode-attention kernel technique: SM occupancy by hand, the effects that must emerge (a non-split
kernel loses most at long context and small batch), decode runs in closed form agreeing with step prices
across the kernels' split regimes, the calibrated curve replaced rather than scaled, and parameter errors."""

from __future__ import annotations

import pytest

from capsim.errors import CapsimError
from simulator.config.schema import Scenario
from simulator.costmodel.features import BatchShape
from simulator.engine import simulate
from tests.test_engine_invariants import SCHEDULERS, check_invariants
from tests.test_sparse_attention import cost, system

K128 = 131072
L = 32  # Llama-3.1-8B layers; 8 KV heads of 128 channels, 32 query heads


def kernel(name: str, **params) -> list[dict]:
    return [{"name": "decode-kernel", "kernel": name, **params}]


def attention_row(sys_, batch: int, context: int):
    rows = {r.name: r for r in cost(sys_).breakdown(BatchShape(decode_seqs=batch, decode_context=batch * context))}
    return rows["attention_decode"]


def step_s(techniques, batch: int, context: int, **kw) -> float:
    shape = BatchShape(decode_seqs=batch, decode_context=batch * context)
    return cost(system(techniques, **kw)).iteration(shape).time_s


# ------------------------------------------------------------------ hand-checked
def test_non_split_kernel_uses_8_of_132_sms_at_batch_1_and_128k():
    """One sequence, 8 KV heads: FlashAttention-2 launches 8 CTAs on the H100's 132 SMs, so the row streams
    at 8/132 of the roofline bandwidth (memory-bound: 4 FLOPs per KV byte here)."""
    sys_ = system(kernel("flash-attention-2"))
    roof = sys_.roofline
    assert sys_.device.num_sms == 132
    row = attention_row(sys_, 1, K128)
    per_layer_bytes = row.bytes / L
    expected = L * (per_layer_bytes / roof.effective_bandwidth * 132 / 8 + roof.launch_overhead_s)
    assert row.time_s == pytest.approx(expected, rel=1e-12)
    assert row.source == "roofline x flash-attention-2 occupancy (132 SMs)"
    # 17 sequences x 8 KV heads = 136 CTAs fill the GPU: the plain roofline (no occupancy loss).
    full = attention_row(sys_, 17, K128)
    assert full.time_s == pytest.approx(
        L * (full.bytes / L / roof.effective_bandwidth + roof.launch_overhead_s), rel=1e-12
    )


def test_flash_decoding_split_count_and_merge_bytes_by_hand():
    """A fixed split of 16 at one sequence: 8 x 16 = 128 CTAs of 132 SMs, plus the merge: each split's output
    row and log-sum-exp for the 32 query heads in fp32, written and read back (2 x 16 x 32 x 129 x 4 B)."""
    sys_ = system(kernel("flash-decoding", splits=16))
    roof = sys_.roofline
    row = attention_row(sys_, 1, K128)
    merge = 2 * 16 * 32 * (128 + 1) * 4
    expected = L * (
        row.bytes / L / roof.effective_bandwidth * 132 / 128
        + merge / roof.effective_bandwidth
        + 2 * roof.launch_overhead_s
    )
    assert row.time_s == pytest.approx(expected, rel=1e-12)


def test_lean_fills_every_sm_at_long_context_and_is_near_the_plain_roofline():
    """Stream-K spreads 8 x 1,024 KV blocks over all 132 SMs: the roofline at full bandwidth plus 132 partials
    of a 4-head tile; the default (no technique, datasheet device) is that case without the fix-up bytes."""
    lean = attention_row(system(kernel("lean"), device="h100-pcie"), 1, K128)
    plain = attention_row(system(device="h100-pcie"), 1, K128)
    roof = system(device="h100-pcie").roofline
    fixup = 2 * 114 * 4 * 129 * 4  # h100-pcie: 114 SMs
    assert lean.time_s - plain.time_s == pytest.approx(L * fixup / roof.effective_bandwidth, rel=1e-9)
    assert lean.time_s / plain.time_s < 1.001


# ------------------------------------------------------------------ effects that must emerge
def test_speed_up_over_the_non_split_kernel_grows_with_context_and_shrinks_with_batch():
    def speedup(batch, context):
        return step_s(kernel("flash-attention-2"), batch, context) / step_s(kernel("lean"), batch, context)

    by_context = [speedup(1, c) for c in (2048, 16384, K128)]
    assert by_context[0] < by_context[1] < by_context[2]
    assert by_context[2] > 5.0  # at 128k the step is mostly a KV read at 8/132 of the bandwidth
    by_batch = [speedup(b, K128 // 4) for b in (1, 4, 16)]
    assert by_batch[0] > by_batch[1] > by_batch[2]
    assert by_batch[2] < 1.05  # 16 x 8 = 128 CTAs of 132 SMs: within 132/128 of the full-bandwidth kernel


# ------------------------------------------------------------------ consistency
@pytest.mark.parametrize("name", ["flash-attention-2", "flash-decoding", "lean"])
@pytest.mark.parametrize("batch,c0", [(1, 300), (3, 3 * 20000)])
def test_decode_runs_agree_with_step_by_step_prices(name, batch, c0):
    """Across the KV-block boundaries where the split count (or Lean's busy SMs) changes."""
    cm = cost(system(kernel(name)))
    k = 700
    run = cm.decode_run(batch, c0, k)
    steps = [cm.iteration(BatchShape(decode_seqs=batch, decode_context=c0 + batch * j)).time_s for j in range(k)]
    assert run.all_durations() == pytest.approx(steps, rel=1e-9)


def test_calibrated_curve_is_replaced_not_scaled():
    """The A100 profile prices decode attention with FlashAttention-2's measured split-KV curve; with the
    technique the kernel model prices the row instead, and prefill attention keeps its curve."""
    dense = {
        r.name: r.source
        for r in cost(system(device="a100-80gb-sxm")).breakdown(
            BatchShape(prefill_chunks=((512, 0, True),), decode_seqs=2, decode_context=4096)
        )
    }
    lean = {
        r.name: r.source
        for r in cost(system(kernel("lean"), device="a100-80gb-sxm")).breakdown(
            BatchShape(prefill_chunks=((512, 0, True),), decode_seqs=2, decode_context=4096)
        )
    }
    assert dense["attention_decode"].startswith("profile")
    assert lean["attention_decode"] == "roofline x lean occupancy (108 SMs)"
    assert lean["attention_prefill"] == dense["attention_prefill"]


def test_composes_with_sparse_attention_at_the_attended_context():
    """Quest reads 1/16 of a 128k context: the non-split kernel still streams it with 8 CTAs."""
    tech = [{"name": "sparse-attention", "density": 1 / 16, "summary_vectors": 0}, *kernel("flash-attention-2")]
    sys_ = system(tech)
    row = attention_row(sys_, 1, K128)
    roof = sys_.roofline
    assert row.time_s == pytest.approx(
        L * (row.bytes / L / roof.effective_bandwidth * 132 / 8 + roof.launch_overhead_s), rel=1e-12
    )


# ------------------------------------------------------------------ errors and runs
def test_splits_only_with_flash_decoding():
    with pytest.raises(CapsimError) as exc:
        system(kernel("lean", splits=4))
    assert exc.value.where == "techniques[0].splits"


def test_unknown_kernel_names_the_field():
    with pytest.raises(CapsimError) as exc:
        system(kernel("flash-attention-9"))
    assert exc.value.where == "techniques[0].kernel"


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_runs_under_every_scheduler(scheduler):
    sc = Scenario.model_validate(
        {
            "seed": 3,
            "model": "llama-3.1-8b",
            "deployment": {"device": "h100-sxm"},
            "scheduler": SCHEDULERS[scheduler],
            "workload": {
                "arrival": "poisson",
                "qps": 20,
                "prompt": {"dist": "uniform", "low": 1, "high": 3000},
                "output": {"dist": "uniform", "low": 1, "high": 200},
            },
            "simulation": {"num_requests": 30, "oversized": "drop"},
            "techniques": kernel("flash-decoding"),
        }
    )
    check_invariants(simulate(sc))


def test_example_scenario_non_split_kernel_slows_decode_and_lean_matches_the_default():
    """scenarios/examples/decode_kernels.yaml with fewer requests: one or two long sequences decode at a time,
    so the kernel without split-KV stretches every decode gap, and Lean's stream-K stays within 10 % of the
    calibrated split-KV curve."""
    from simulator.config.loader import load_scenarios

    med = {}
    for sc in load_scenarios("scenarios/examples/decode_kernels.yaml", ["simulation.num_requests=20"]):
        out = simulate(sc)
        check_invariants(out)
        r = out.result.requests
        med[sc.name] = ((r["finish_s"] - r["first_token_s"]) / (r["output_tokens"] - 1)).median()
    assert set(med) == {"default", "flash-attention-2", "flash-decoding", "lean"}
    assert med["flash-attention-2"] > 2.5 * med["lean"]
    assert med["lean"] == pytest.approx(med["default"], rel=0.1)
    assert med["lean"] <= med["flash-decoding"] < 1.2 * med["lean"]
