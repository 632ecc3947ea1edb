"""Sparse attention with a per-sequence token budget: a sparse layer reads min(c, B) of each sequence's
context. The bytes at 128k with B = 2,048 by hand, dense reads below the budget, decode runs (priced step by
step) agreeing with single steps across the budget's kink, the effect at 128k and not at 2k, errors, runs."""

from __future__ import annotations

import pytest

from capsim.errors import CapsimError
from simulator.config.schema import Scenario
from simulator.costmodel.features import BatchShape
from simulator.engine import simulate
from tests.test_engine_invariants import check_invariants
from tests.test_sparse_attention import cost, rows, system

SPARSE = "sparse-attention"
K128 = 131072
B = 2048
# Llama-3.1-8B: 32 layers, 32 query heads, 8 KV heads of 128 channels, bf16 KV.
L, H, HKV, DH = 32, 32, 8, 128
KV_TOKEN = 2 * HKV * DH * 2  # K and V per token and layer: 4,096 B
PER_SEQ = 2 * H * DH * 2 + 2 * HKV * DH * 2  # query in, output out, the new token's K and V


def budget(**kw) -> list[dict]:
    return [{"name": SPARSE, "budget_tokens": B, **kw}]


def test_bytes_at_128k_with_a_2048_token_budget_by_hand():
    """One sequence at 128k: each layer reads 2,048 of its tokens (8 MiB) instead of 131,072 (512 MiB), and the
    selector scores the min and max key of every 16-token page of the whole context (256 B per token, 32 MiB)."""
    got = rows(system(budget()), BatchShape(decode_seqs=1, decode_context=K128))
    assert got["attention_decode"].bytes == pytest.approx(L * (KV_TOKEN * B + PER_SEQ), rel=1e-12)
    assert got["attention_decode"].bytes < L * (KV_TOKEN * K128) / 60
    assert got["kv_select"].bytes == pytest.approx(L * 256 * K128, rel=1e-12)
    assert got["attention_decode"].source.endswith("2048-token budget")


def test_one_sequence_prices_as_the_density_budget_over_context():
    """At batch 1 the budget is density B / c exactly (what the doc told users to set before)."""
    shape = BatchShape(decode_seqs=1, decode_context=K128)
    for device in ("h100-pcie", "h100-sxm", "a100-80gb-sxm"):
        by_budget = cost(system(budget(), device=device)).iteration(shape).time_s
        by_density = cost(system([{"name": SPARSE, "density": B / K128}], device=device)).iteration(shape).time_s
        assert by_budget == pytest.approx(by_density, rel=1e-12), device


def test_a_context_below_the_budget_is_read_densely_and_a_batch_reads_b_budgets():
    dense = rows(system(), BatchShape(decode_seqs=1, decode_context=1500))
    short = rows(system(budget(summary_vectors=0)), BatchShape(decode_seqs=1, decode_context=1500))
    assert short["attention_decode"].bytes == pytest.approx(dense["attention_decode"].bytes, rel=1e-12)
    four = rows(system(budget()), BatchShape(decode_seqs=4, decode_context=4 * 65536))
    assert four["attention_decode"].bytes == pytest.approx(L * (KV_TOKEN * 4 * B + 4 * PER_SEQ), rel=1e-12)


def test_dense_layers_read_their_whole_context():
    got = rows(system(budget(dense_layers=2)), BatchShape(decode_seqs=1, decode_context=K128))
    assert got["attention_decode"].bytes == pytest.approx(
        L * PER_SEQ + KV_TOKEN * (2 * K128 + 30 * B), rel=1e-12)


def test_speeds_decode_at_128k_and_barely_at_2k():
    def speedup(context):
        shape = BatchShape(decode_seqs=1, decode_context=context)
        return cost(system()).iteration(shape).time_s / cost(system(budget())).iteration(shape).time_s

    assert speedup(K128) > 1.4
    assert speedup(2048) < 1.02  # the whole context is within the budget: only the selector is added


@pytest.mark.parametrize("device,host", [("h100-sxm", False), ("a100-80gb-sxm", False), ("h100-pcie", True)])
def test_decode_runs_agree_with_step_by_step_prices_across_the_budget(device, host):
    tech = budget(dense_layers=1)
    if host:
        tech[0].update(kv_location="host", host_kv_gib=64)
    cm = cost(system(tech, device=device))
    batch, c0, k = 2, 2 * 1500, 1200  # the mean context crosses 2,048 after 548 steps
    run = cm.decode_run(batch, c0, k)
    steps = [cm.iteration(BatchShape(decode_seqs=batch, decode_context=c0 + batch * j)).time_s for j in range(k)]
    assert run.all_durations() == pytest.approx(steps, rel=1e-9)


def test_density_and_budget_are_exclusive():
    with pytest.raises(CapsimError) as exc:
        system([{"name": SPARSE, "density": 0.1, "budget_tokens": B}])
    assert exc.value.where.startswith("techniques[0]")
    with pytest.raises(CapsimError):
        system([{"name": SPARSE}])


@pytest.mark.parametrize("scheduler", ["vllm", "sarathi"])
def test_runs_keep_the_engine_invariants(scheduler):
    sc = Scenario.model_validate({
        "seed": 5, "model": "llama-3.1-8b", "deployment": {"device": "h100-sxm"},
        "scheduler": {"name": scheduler},
        "workload": {"arrival": "poisson", "qps": 4, "prompt": {"dist": "uniform", "low": 100, "high": 6000},
                     "output": {"dist": "uniform", "low": 1, "high": 300}},
        "simulation": {"num_requests": 30}, "techniques": budget(page_size=16),
    })
    check_invariants(simulate(sc))
