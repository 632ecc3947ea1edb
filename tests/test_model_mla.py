"""Multi-head latent attention and DeepSeekMoE (DeepSeek-V2/V3): parameter counts, KV bytes, the memory plan
and the operator table's rows, each checked against numbers worked out by hand from the configs."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from capsim.errors import CapsimError
from simulator.config.schema import DeploymentConfig, Scenario
from simulator.costmodel import BatchShape
from simulator.costmodel import features as F
from simulator.models import get_model, model_from_dict
from simulator.system import build_system

# DeepSeek-V3 config.json (huggingface.co/deepseek-ai/DeepSeek-V3).
V3 = dict(L=61, d=7168, h=128, dh=128, dr=64, rq=1536, rkv=512, E=256, k=8, s=1, f=2048, dense=3, fd=18432, V=129280)


def system(model: str, device: str = "h200-sxm", tp: int = 1, **deployment):
    deployment.setdefault("calibration", "datasheet")
    return build_system(Scenario(model=model, deployment=DeploymentConfig(device=device, tp=tp, **deployment)))


def v3_attention_params(m: dict) -> int:
    """q_a (d x r_q), q_b (r_q x h(d_h + d_r)), kv_a (d x (r_kv + d_r)), kv_b (r_kv x h 2 d_h), o (h d_h x d), norms."""
    d, h, dh, dr, rq, rkv = m["d"], m["h"], m["dh"], m["dr"], m["rq"], m["rkv"]
    return d * rq + rq * h * (dh + dr) + d * (rkv + dr) + rkv * h * 2 * dh + h * dh * d + rq + rkv


def test_deepseek_v3_kv_cache_is_70_272_bytes_per_token():
    # (kv_lora_rank + qk_rope_head_dim) x layers x 2 bytes = 576 x 61 x 2. DeepSeek's own figure for
    # DeepSeek-V3 is "70.272 KB" per token (Insights into DeepSeek-V3, arXiv:2505.09343, Table 1), against
    # 327.680 KB for Qwen-2.5-72B and 516.096 KB for Llama-3.1-405B, which the same formula gives for GQA.
    m = get_model("deepseek-v3")
    assert m.kv_elements_per_token_layer == 512 + 64
    assert m.kv_bytes_per_token(2) == 61 * 576 * 2 == 70_272
    assert get_model("qwen2.5-72b").kv_bytes_per_token(2) == 327_680
    assert get_model("llama-3.1-405b").kv_bytes_per_token(2) == 516_096
    # DeepSeek-V2 paper (arXiv:2405.04434, Table 1): MLA caches (d_c + d_h^R) l = 4.5 d_h l elements per token.
    v2 = get_model("deepseek-v2")
    assert v2.kv_bytes_per_token(1) == 4.5 * 128 * 60


@pytest.mark.parametrize(("name", "total_b", "active_b"), [("deepseek-v2", 236, 21), ("deepseek-v3", 671, 37)])
def test_deepseek_parameters_match_the_papers(name, total_b, active_b):
    # V2 abstract: "236B total parameters, of which 21B are activated for each token";
    # V3 abstract: "671B total parameters with 37B activated for each token".
    m = get_model(name)
    assert m.total_params() / 1e9 == pytest.approx(total_b, rel=0.005)
    assert m.active_params_per_token() / 1e9 == pytest.approx(active_b, rel=0.03)


def test_deepseek_v3_parameter_count_by_hand():
    m = V3
    expert = 3 * m["d"] * m["f"]
    moe_layer = v3_attention_params(m) + (m["E"] + m["s"]) * expert + m["d"] * m["E"] + 2 * m["d"]
    dense_layer = v3_attention_params(m) + 3 * m["d"] * m["fd"] + 2 * m["d"]
    total = 2 * m["V"] * m["d"] + m["dense"] * dense_layer + (m["L"] - m["dense"]) * moe_layer + m["d"]
    spec = get_model("deepseek-v3")
    assert spec.total_params() == total
    assert spec.active_params_per_token() == total - (m["L"] - m["dense"]) * (m["E"] - m["k"]) * expert


def test_mla_kv_cache_is_whole_on_every_tensor_parallel_rank():
    # The latent is shared by all heads, so splitting heads over 8 GPUs leaves each a whole copy;
    # a GQA model's cache splits with its KV heads.
    assert system("deepseek-v3", tp=8, weight_dtype="fp8").memory.kv_bytes_per_token == 70_272
    assert system("deepseek-v3", tp=8, weight_dtype="fp8", kv_dtype="fp8").memory.kv_bytes_per_token == 35_136
    assert system("qwen2.5-72b", tp=8).memory.kv_bytes_per_token == 327_680 / 8


def test_deepseek_v3_weights_per_gpu_at_tp8_by_hand():
    m, t = V3, 8
    spec = get_model("deepseek-v3")
    replicated = m["d"] * (m["rq"] + m["rkv"] + m["dr"]) + m["rq"] + m["rkv"]  # q_a, kv_a and their norms
    body = spec.body_params - m["L"] * replicated
    by_hand = (body / t + m["L"] * replicated + 2 * m["V"] * m["d"] / t) * 1.0  # fp8: 1 byte a weight
    mem = system("deepseek-v3", tp=t, weight_dtype="fp8").memory
    assert mem.weights_bytes == pytest.approx(by_hand, rel=1e-9)
    # The headline: 671B at one byte over 8 GPUs is 83.9 GB, plus 7/8 of the down-projections' 0.92 GB
    # (7168 x 2112 per layer, 61 layers) that every rank holds whole.
    assert mem.weights_bytes / 1e9 == pytest.approx(671 / 8 + 0.924 * 7 / 8, rel=0.002)


def _layer_rows(cost, shape) -> dict[str, tuple[float, float]]:
    """Per-layer (FLOPs, bytes) of each row of the table at ``shape``."""
    x = shape.features(cost.table.num_experts, cost.table.experts_per_token)
    return {op.name: (float(op.flops @ x), float(op.bytes @ x)) for op in cost.table.layer_ops}


def test_mla_decode_attention_reads_the_latent_once_for_all_heads():
    m = V3
    cost = system("deepseek-v3", tp=1, pp=8, weight_dtype="fp8").cost_model()
    ctx = 32_768
    rows = _layer_rows(cost, BatchShape(decode_seqs=1, decode_context=ctx))
    flops, nbytes = rows["attention_decode"]
    latent = m["rkv"] + m["dr"]
    # Absorbed form: scores over r_kv + d_r and a weighted sum of r_kv-wide latents, per head and context token;
    # the cached latent (bf16) read once; latent queries in, latent outputs out and one cache write per sequence.
    assert flops == 2 * m["h"] * latent * ctx + 2 * m["h"] * m["rkv"] * ctx
    assert nbytes == latent * 2 * ctx + m["h"] * (latent + m["rkv"]) * 2 + latent * 2
    # Over the 61 layers at a 32k context: 2.30 GB of cache per step, where a 128-head MHA cache of the same
    # head size would read 2 x 128 x 128 x 2 bytes per token and layer, 56.9 times as much.
    assert 61 * latent * 2 * ctx / 1e9 == pytest.approx(2.303, abs=1e-3)
    assert (2 * 128 * 128) / latent == pytest.approx(56.9, abs=0.05)
    # The absorbed GEMMs map q_nope into the latent space and the latent output back to d_h, per head.
    assert rows["mla_q_absorb"][0] == 2 * m["h"] * m["dh"] * m["rkv"]
    assert rows["mla_out_absorb"][0] == 2 * m["h"] * m["rkv"] * m["dh"]
    # Intensity of the absorbed attention: 2 h (r_kv + d_r + r_kv) / ((r_kv + d_r) 2) = 241.8 FLOP/byte at
    # tp = 1, above an H200's bf16 ridge (~206): MLA decode attention is compute-bound without sharding heads.
    assert (flops / (latent * 2 * ctx)) == pytest.approx(241.8, abs=0.1)


def test_mla_decode_attention_bytes_do_not_shrink_with_tp_but_flops_do():
    def decode_row(tp):
        table = system("deepseek-v3", tp=tp, pp=8 // tp, weight_dtype="fp8").cost_model().table
        return next(op for op in table.layer_ops if op.name == "attention_decode")

    one, eight = decode_row(1), decode_row(8)
    c = F.DECODE_CONTEXT
    assert one.bytes[c] == eight.bytes[c] == 576 * 2  # every rank reads the whole latent of each token
    assert eight.flops[c] == pytest.approx(one.flops[c] / 8)  # but computes for its 16 of the 128 heads


def test_mla_prefill_is_the_expanded_form():
    m = V3
    cost = system("deepseek-v3", tp=1, pp=8, weight_dtype="fp8").cost_model()
    q = 2048
    rows = _layer_rows(cost, BatchShape(prefill_chunks=((q, 0, True),)))
    work = q * q / 2  # causal query-key pairs of one chunk from an empty cache
    # QK^T over d_h + d_r and AV over d_h, per head.
    assert rows["attention_prefill"][0] == (2 * m["h"] * (m["dh"] + m["dr"]) + 2 * m["h"] * m["dh"]) * work
    # Every KV token read (here the chunk's own q) is up-projected to per-head keys and values.
    assert rows["mla_kv_up"][0] == 2 * m["rkv"] * m["h"] * 2 * m["dh"] * q
    # The absorbed decode GEMMs have no work in a prefill-only iteration; they carry kv_b's weight read (fp8).
    assert rows["mla_q_absorb"] == (0.0, m["h"] * m["dh"] * m["rkv"] * 1.0)


def test_dense_and_moe_layers_sum_to_their_own_counts_over_the_table():
    m = V3
    cost = system("deepseek-v3", tp=1, pp=8, weight_dtype="fp8").cost_model()
    rows = _layer_rows(cost, BatchShape(decode_seqs=1, decode_context=100))
    L = m["L"]
    # Charged L times, the dense row totals the 3 dense layers' MLP and the MoE rows the 58 MoE layers'.
    assert L * rows["mlp"][0] == pytest.approx(m["dense"] * 2 * 3 * m["d"] * m["fd"])
    assert L * rows["moe_shared_experts"][0] == pytest.approx((L - m["dense"]) * 2 * 3 * m["d"] * m["f"])
    assert L * rows["moe_experts"][0] == pytest.approx((L - m["dense"]) * m["k"] * 2 * 3 * m["d"] * m["f"])
    # Weights read by a one-token decode step: the dense MLPs once, each MoE layer's shared expert and the
    # k routed experts the token hits (fp8, 1 byte): the active parameters' MLP share.
    assert L * (rows["mlp"][1] + rows["moe_shared_experts"][1]) == pytest.approx(
        m["dense"] * 3 * m["d"] * m["fd"] + (L - m["dense"]) * 3 * m["d"] * m["f"], rel=1e-3
    )


def test_deepseek_v3_serves_end_to_end_on_eight_h200():
    s = system("deepseek-v3", tp=8, weight_dtype="fp8")
    cost = s.cost_model()
    decode = cost.iteration(BatchShape(decode_seqs=32, decode_context=32 * 4096)).time_s
    longer = cost.iteration(BatchShape(decode_seqs=32, decode_context=32 * 16384)).time_s
    assert 0 < decode < longer
    run = cost.decode_run(32, 32 * 4096, 10).all_durations()
    assert run[0] == pytest.approx(decode, rel=1e-9)
    assert s.memory.kv_capacity_tokens > 0


def test_mla_needs_its_rope_width_and_moe_extras_need_experts():
    base = dict(
        name="m",
        num_layers=2,
        hidden_size=64,
        num_heads=4,
        num_kv_heads=4,
        head_dim=16,
        ffn_size=32,
        vocab_size=100,
        mlp="gated",
        max_context=128,
        norm="rmsnorm",
    )
    with pytest.raises((CapsimError, ValidationError), match="qk_rope_head_dim"):
        model_from_dict({**base, "kv_lora_rank": 32})
    with pytest.raises((CapsimError, ValidationError), match="kv_lora_rank"):
        model_from_dict({**base, "q_lora_rank": 32})
    with pytest.raises((CapsimError, ValidationError), match="num_kv_heads"):
        model_from_dict({**base, "num_kv_heads": 2, "kv_lora_rank": 32, "qk_rope_head_dim": 8})
    with pytest.raises((CapsimError, ValidationError), match="num_experts"):
        model_from_dict({**base, "num_shared_experts": 1})
    with pytest.raises((CapsimError, ValidationError), match="dense_ffn_size"):
        model_from_dict({**base, "num_experts": 4, "experts_per_token": 2, "dense_layers": 1})
    ok = model_from_dict({**base, "kv_lora_rank": 32, "qk_rope_head_dim": 8})
    assert ok.is_mla and ok.kv_bytes_per_token(2) == 2 * 40 * 2


def test_techniques_that_assume_keys_and_values_refuse_mla():
    with pytest.raises(CapsimError, match="latent"):
        build_system(
            Scenario(
                model="deepseek-v3",
                deployment=DeploymentConfig(device="h200-sxm", tp=8, weight_dtype="fp8"),
                techniques=[{"name": "kv_quantization", "bits": 4}],
            )
        )
