"""Memory plan: weights, KV bytes per token and KV capacity per GPU, by hand (docs/cost-model.md, "Memory")."""

from __future__ import annotations

import re

import pytest

from capsim.errors import DoesNotFitError
from hwmodels.device import get_device
from simulator.config.schema import DeploymentConfig, Scenario
from simulator.models import get_model
from simulator.system import build_system

GIB = 2**30

# https://huggingface.co/meta-llama/Llama-2-70b-hf/blob/main/config.json
LLAMA2_70B = dict(L=80, d=8192, h=64, hkv=8, dh=128, f=28672, V=32000)
# https://huggingface.co/meta-llama/Meta-Llama-3-8B/blob/main/config.json
LLAMA3_8B = dict(L=32, d=4096, h=32, hkv=8, dh=128, f=14336, V=128256)


def plan(model: str, device: str, **deployment):
    return build_system(Scenario(model=model, deployment=DeploymentConfig(device=device, **deployment))).memory


def layer_params(m: dict) -> int:
    """QKV + output projection + gated MLP + two RMSNorm weight vectors."""
    d = m["d"]
    return d * (m["h"] + 2 * m["hkv"]) * m["dh"] + m["h"] * m["dh"] * d + 3 * d * m["f"] + 2 * d


def test_llama2_70b_weights_per_gpu_at_tp4():
    m = LLAMA2_70B
    mem = plan("llama-2-70b", "h100-sxm", tp=4)
    by_hand = (m["L"] * layer_params(m) + 2 * m["V"] * m["d"]) / 4 * 2  # untied embedding + LM head
    assert mem.weights_bytes == pytest.approx(by_hand, rel=1e-4)
    # The headline figure: "70B parameters x 2 bytes / 4 GPUs" (the exact count is 69.0B).
    assert mem.weights_bytes == pytest.approx(70e9 * 2 / 4, rel=0.02)


def test_pipeline_stages_split_layers():
    m = LLAMA2_70B
    mem = plan("llama-2-70b", "h100-sxm", tp=2, pp=2)
    # Worst stage: 40 layers split 2 ways plus one V x d matrix (embedding or LM head) split 2 ways.
    by_hand = (40 * layer_params(m) + m["V"] * m["d"]) / 2 * 2
    assert mem.weights_bytes == pytest.approx(by_hand, rel=1e-4)
    assert mem.kv_bytes_per_token == 2 * 40 * 4 * m["dh"] * 2  # 8 KV heads / tp 2, 40 layers


def test_kv_bytes_per_token_and_replicated_kv_heads():
    m = LLAMA3_8B
    full = 2 * m["L"] * m["hkv"] * m["dh"] * 2
    assert full == 131072
    assert plan("llama-3-8b", "h100-sxm", tp=1).kv_bytes_per_token == 131072
    assert plan("llama-3-8b", "h100-sxm", tp=4).kv_bytes_per_token == 131072 / 4
    assert plan("llama-3-8b", "h100-sxm", tp=8).kv_bytes_per_token == 131072 / 8
    # 8 KV heads over 16 GPUs: each GPU keeps a whole (replicated) head, not half of one.
    assert plan("llama-3-8b", "h100-sxm", tp=16).kv_bytes_per_token == 131072 / 8


def test_replicated_kv_heads_also_replicate_their_projection_weights():
    m = LLAMA3_8B
    mem = plan("llama-3-8b", "h100-sxm", tp=16)
    # Each of the 16 GPUs holds 1/16 of everything except K and V: one whole KV head each,
    # i.e. 16 heads' worth of K/V projections stored where the model has 8.
    extra_kv = (16 - m["hkv"]) * 2 * m["d"] * m["dh"]
    by_hand = (m["L"] * (layer_params(m) + extra_kv) + 2 * m["V"] * m["d"]) / 16 * 2
    assert mem.weights_bytes == pytest.approx(by_hand, rel=1e-9)
    # Nothing is replicated when the KV heads divide evenly.
    mem8 = plan("llama-3-8b", "h100-sxm", tp=8)
    assert mem8.weights_bytes == pytest.approx((m["L"] * layer_params(m) + 2 * m["V"] * m["d"]) / 8 * 2, rel=1e-9)


def test_kv_capacity_by_hand():
    m = LLAMA3_8B
    util, reserve_gib, block = 0.9, 2.0, 16
    mem = plan(
        "llama-3-8b", "a100-80gb-sxm", memory_utilization=util, activation_reserve_gib=reserve_gib, block_size=block
    )
    weights = (m["L"] * layer_params(m) + 2 * m["V"] * m["d"]) * 2
    left = get_device("a100-80gb-sxm").memory_gib * GIB * util - weights - reserve_gib * GIB
    tokens = int(left // 131072) // block * block
    assert mem.kv_capacity_tokens == pytest.approx(tokens, abs=block)  # final-norm bytes may move one block
    assert mem.kv_capacity_tokens % block == 0
    assert mem.kv_blocks == mem.kv_capacity_tokens // block


@pytest.mark.parametrize("block", [1, 16, 32, 256])
def test_capacity_is_whole_blocks_and_shrinks_with_memory_utilization(block):
    caps = [
        plan("llama-3.1-8b", "h100-sxm", memory_utilization=u, block_size=block).kv_capacity_tokens
        for u in (0.95, 0.9, 0.8, 0.6)
    ]
    assert all(c % block == 0 for c in caps)
    assert caps == sorted(caps, reverse=True) and len(set(caps)) == len(caps)
    # Each 0.1 of utilisation is 8 GiB of KV: 8 GiB / 128 KiB per token = 65,536 tokens.
    assert caps[1] - caps[2] == pytest.approx(0.1 * 80 * GIB / 131072, abs=block)


def test_a_70b_model_on_one_a100_does_not_fit():
    with pytest.raises(DoesNotFitError) as info:
        plan("llama-2-70b", "a100-80gb-sxm", tp=1, activation_reserve_gib=2.0)
    err = info.value
    text = str(err)
    assert "short by" in text and "llama-2-70b" in text
    assert "deployment.tp" in err.fix
    # Shortfall by hand: weights + reserve + one block of KV - 90 % of 80 GiB.
    m = LLAMA2_70B
    weights = (m["L"] * layer_params(m) + 2 * m["V"] * m["d"]) * 2
    one_block = 16 * 2 * m["L"] * m["hkv"] * m["dh"] * 2
    short = (weights + 2 * GIB + one_block - 0.9 * 80 * GIB) / GIB
    shown = float(re.search(r"short by ([0-9.]+) GiB", text).group(1))
    assert shown == pytest.approx(short, abs=0.06)


def test_the_same_model_fits_when_split_four_ways():
    mem = plan("llama-2-70b", "a100-80gb-sxm", tp=4)
    assert mem.kv_capacity_tokens > 100_000
    assert mem.weights_bytes + mem.reserve_bytes + mem.kv_capacity_tokens * mem.kv_bytes_per_token <= (mem.usable_bytes)


def test_catalog_model_matches_hand_parameter_count():
    """The hand formulas above describe the catalog entries (guards the architecture numbers)."""
    m = LLAMA2_70B
    spec = get_model("llama-2-70b")
    assert spec.total_params() == m["L"] * layer_params(m) + 2 * m["V"] * m["d"] + m["d"]
