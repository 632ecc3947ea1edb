"""KV-cache quantisation: bytes per element and per token by hand, the attention rows' edits, and the effect
that must emerge -- a quantised cache raises throughput when KV capacity binds, barely when it does not."""

from __future__ import annotations

import numpy as np
import pytest

from capsim.errors import CapsimError
from simulator.costmodel import features as F
from simulator.engine import simulate
from simulator.metrics.summary import summarise
from simulator.system import build_system
from tests.test_speculative import NGRAM, scenario

Q4 = {"name": "kv-quantization", "bits": 4, "group_size": 64, "metadata_bytes": 4}
H100 = {"model": "llama-3.1-8b", "device": "h100-sxm"}


@pytest.mark.parametrize("params,want", [
    # 4 bits = 0.5 B, one 4-byte scale+zero per 64 elements = 0.0625 B
    ({"bits": 4, "group_size": 64, "metadata_bytes": 4}, 0.5625),
    # KIVI-like 2 bits, groups of 32 with two fp16 numbers
    ({"bits": 2, "group_size": 32, "metadata_bytes": 4}, 0.25 + 0.125),
    # mixed precision: 4-bit keys, 2-bit values = 3 bits mean; no metadata
    ({"key_bits": 4, "value_bits": 2, "metadata_bytes": 0}, 0.375),
    # 1 % outliers at 16 bits plus a 4-byte index each: 0.01 * 6 = 0.06 B
    ({"bits": 3, "outlier_fraction": 0.01, "metadata_bytes": 0}, 0.375 + 0.06),
])
def test_kv_bytes_per_token_by_hand(params, want):
    base = build_system(scenario(**H100)).memory
    sys = build_system(scenario([{"name": "kv-quantization", **params}], **H100)).memory
    # Llama-3.1-8B on one GPU: 2 (K, V) x 32 layers x 8 KV heads x 128 = 65536 elements per token, bf16.
    assert base.kv_bytes_per_token == 65536 * 2.0
    assert sys.kv_bytes_per_token == pytest.approx(65536 * want)
    # Same bytes for the KV cache, so the capacity grows by the byte ratio (to a block).
    assert sys.kv_capacity_tokens == pytest.approx(base.kv_capacity_tokens * 2.0 / want, abs=base.block_size + 1)


def test_attention_rows_read_and_write_quantised_bytes_and_pay_dequantisation():
    plain = build_system(scenario(**H100)).table
    quant = build_system(scenario([{**Q4, "dequant_flops": 2, "quant_flops": 4}], **H100)).table
    rows = {o.name: o for o in plain.layer_ops}
    qrows = {o.name: o for o in quant.layer_ops}
    elems = 2 * 8 * 128  # KV elements per token per layer on one GPU
    dec, qdec = rows["attention_decode"], qrows["attention_decode"]
    assert dec.bytes[F.DECODE_CONTEXT] == elems * 2.0
    assert qdec.bytes[F.DECODE_CONTEXT] == pytest.approx(elems * 0.5625)
    assert qdec.bytes[F.DECODE_SEQS] == pytest.approx(dec.bytes[F.DECODE_SEQS] - elems * (2.0 - 0.5625))
    pre, qpre = rows["attention_prefill"], qrows["attention_prefill"]
    assert pre.bytes[F.PREFILL_KV_READ] == elems * 2.0
    assert qpre.bytes[F.PREFILL_KV_READ] == pytest.approx(elems * 0.5625)
    np.testing.assert_array_equal(qdec.flops, dec.flops)  # the attention FLOPs are unchanged ...
    dq = qrows["kv_dequant"]  # ... the arithmetic of (de)quantisation is a row of its own
    assert dq.flops[F.DECODE_CONTEXT] == elems * 2 and dq.flops[F.DECODE_SEQS] == elems * 4
    assert not dq.bytes.any() and dq.launches == 0
    assert quant.attention.kv_bytes == pytest.approx(0.5625)
    assert set(qrows) - set(rows) == {"kv_dequant"}
    for name in set(rows) - {"attention_decode", "attention_prefill"}:
        np.testing.assert_array_equal(rows[name].bytes, qrows[name].bytes)


def test_quantisation_composes_with_fp8_kv_dtype():
    base = build_system(scenario(model="llama-3.1-8b", device="h100-sxm",
                                 deployment={"device": "h100-sxm", "kv_dtype": "fp8"})).memory
    sys = build_system(scenario([Q4], model="llama-3.1-8b", device="h100-sxm",
                                deployment={"device": "h100-sxm", "kv_dtype": "fp8"})).memory
    assert sys.kv_bytes_per_token == pytest.approx(65536 * 0.5625)
    assert base.kv_bytes_per_token == 65536 * 1.0


def _run(techniques, prompt, output, qps):
    out = simulate(scenario(techniques, qps=qps, n=600, prompt=prompt, output=output, **H100))
    return summarise(out.result)


def test_quantised_kv_raises_throughput_when_kv_capacity_binds_but_barely_otherwise():
    # Long contexts at saturation: the batch is capped by KV capacity, so 3.5x the tokens admit a larger batch.
    long_base, long_q = _run([], 8000, 1000, 50), _run([Q4], 8000, 1000, 50)
    assert long_q["output_tps"] > 1.5 * long_base["output_tps"]
    # Short contexts at saturation: KV never binds; only the (small) attention reads shrink.
    short_base, short_q = _run([], 128, 128, 200), _run([Q4], 128, 128, 200)
    assert 0.98 < short_q["output_tps"] / short_base["output_tps"] < 1.15


def test_quantisation_composes_with_speculation():
    spec = {**NGRAM, "k": 3, "acceptance": 0.8}
    both = simulate(scenario([Q4, spec], n=30, prompt=4000, output=200, qps=5, **H100))
    alone = simulate(scenario([spec], n=30, prompt=4000, output=200, qps=5, **H100))
    assert both.table.finished_count == alone.table.finished_count == 30
    assert (both.table.generated == both.table.output).all()
    # The verification pass reads the quantised cache: long-context decode is cheaper with both on.
    assert summarise(both.result)["tpot_mean_s"] < summarise(alone.result)["tpot_mean_s"]


@pytest.mark.parametrize("tech,where,text", [
    ({**Q4, "bits": 0}, "techniques[0].bits", "greater than or equal to 1"),
    ({**Q4, "group_size": True}, "techniques[0].group_size", "whole number"),
    ({**Q4, "bits": 16}, "techniques[0].bits", "no smaller than"),
    ({**Q4, "colour": 1}, "techniques[0].colour", "unknown parameter"),
])
def test_bad_parameters_name_the_field(tech, where, text):
    with pytest.raises(CapsimError) as exc:
        build_system(scenario([tech], **H100))
    assert exc.value.where.startswith(where)
    assert text in exc.value.render()


@pytest.mark.parametrize("device,model", [("h100-sxm", "llama-3.1-8b"), ("a100-80gb-sxm", "llama-2-7b")])
def test_decode_runs_with_the_dequant_row_stay_closed_form_and_match_step_by_step_pricing(device, model):
    # The kv_dequant row has no memory line, so it folds into the attention row's closed form (an affine run)
    # rather than forcing per-row arrays; each step must still price exactly as the table says.
    cm = build_system(scenario([Q4], model=model, device=device)).cost_model()
    for n, c, k in ((8, 8000, 50), (64, 64 * 3000, 40)):
        run = cm.decode_run(n, c, k)
        steps = np.array([cm.price_features(cm._decode_x(n, c + j * n)) for j in range(k)])
        assert run.affine
        np.testing.assert_allclose(run.all_durations(), steps, rtol=1e-12)
