"""Per-component weight formats: gpt-oss releases its MoE experts in MXFP4 and the rest in bf16. The memory plan
and the experts' operator row count the experts at 4.25 bits and every other weight in deployment.weight_dtype;
models without the field are unchanged."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from simulator.config.schema import Scenario
from simulator.costmodel import features as F
from simulator.models.catalog import get_model
from simulator.models.spec import ModelSpec
from simulator.system import build_system

MXFP4 = 4.25 / 8


def system(model: str, weight_dtype: str = "bf16", tp: int = 1):
    return build_system(Scenario.model_validate(
        {"model": model, "deployment": {"device": "h100-sxm", "weight_dtype": weight_dtype, "tp": tp}}))


def test_gpt_oss_120b_weights_by_hand():
    """Experts: 36 layers x 128 experts x 3 x 2880 x 2880 (+ biases) at 4.25 bits; the other parameters at 2 bytes."""
    m = get_model("gpt-oss-120b")
    assert m.expert_weight_dtype == "mxfp4"
    experts = m.moe_layers * m.num_experts * m.mlp_params_per_expert
    assert experts > 0.98 * m.total_params()
    stored = m.body_params + m.embedding_params  # the memory plan's weights (the final norm's d are left out)
    rest = stored - experts
    got = system("gpt-oss-120b").memory.weights_bytes
    assert got == pytest.approx(experts * MXFP4 + rest * 2, rel=1e-12)
    assert got < 64 * 2**30  # one 80 GB GPU holds it, as the model card says of the release
    # weight_dtype mxfp4 puts the rest at 4.25 bits too (the one-format behaviour before the field).
    assert system("gpt-oss-120b", "mxfp4").memory.weights_bytes == pytest.approx(stored * MXFP4, rel=1e-12)


def test_the_experts_row_streams_mxfp4_and_attention_bf16():
    sys_ = system("gpt-oss-20b", tp=2)
    ops = {op.name: op for op in sys_.table.layer_ops}
    m = get_model("gpt-oss-20b")
    d, f = m.hidden_size, m.ffn_size
    assert ops["moe_experts"].bytes[F.EXPERTS_HIT] == pytest.approx(3 * d * (f / 2) * MXFP4, rel=1e-12)
    qkv_out = (m.num_heads / 2 + 2 * m.num_kv_heads / 2) * m.head_dim
    assert ops["qkv_proj"].bytes[F.ONE] == pytest.approx(d * qkv_out * 2, rel=1e-12)


def test_models_without_the_field_are_unchanged():
    m = get_model("mixtral-8x7b")
    assert m.expert_weight_dtype is None
    assert system("mixtral-8x7b", tp=2).memory.weights_bytes == pytest.approx(m.total_params() * 2 / 2, rel=0.01)


def test_the_field_needs_experts_and_a_known_format():
    base = get_model("llama-3.1-8b").model_dump()
    with pytest.raises(ValidationError, match="mixture-of-experts"):
        ModelSpec.model_validate({**base, "expert_weight_dtype": "mxfp4"})
    moe = get_model("gpt-oss-20b").model_dump()
    with pytest.raises(ValidationError, match="not a known format"):
        ModelSpec.model_validate({**moe, "expert_weight_dtype": "fp3"})
