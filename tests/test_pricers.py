"""The row-pricer interface and its registry: every row of a table gets a pricer by class and placement, a row
no pricer covers is an error naming it, a pricer registered for a new class is used, and each pricer's scalar,
vectorised and decode-line paths agree. (Whole-iteration agreement of the vectorised and scalar paths, and of
decode runs with step-by-step pricing, is in tests/test_calibration_costmodel.py.)"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from capsim.errors import CapsimError
from hwmodels.calibration.pricing import Priced
from simulator.config.schema import DeploymentConfig, Scenario
from simulator.costmodel import BatchShape
from simulator.costmodel import features as F
from simulator.costmodel.iteration import IterationCostModel
from simulator.costmodel.operators import Operator
from simulator.costmodel.pricers import PRICERS, PricingContext, RooflinePricer, RowPricer
from simulator.costmodel.scopes import RooflineBlock, RowByRow, context_dependent
from simulator.system import build_system


def system(model="llama-3.1-8b", device="h100-sxm", tp=1, **deployment):
    """A system priced by its kernels alone unless the test names an engine (these tests check the pricers)."""
    if "engine" not in deployment and deployment.get("overheads", "none") == "none":
        deployment["engine"] = "none"
    return build_system(Scenario(model=model, deployment=DeploymentConfig(device=device, tp=tp, **deployment)))


def _random_features(rng, n: int, num_experts: int = 1, top_k: int = 1) -> np.ndarray:
    """``n`` feature vectors of mixed batches: prefill chunks with cached context and decodes."""
    X = np.zeros((n, F.NUM_FEATURES))
    for i in range(n):
        chunks = tuple((int(rng.integers(1, 4000)), int(rng.integers(0, 8000)), bool(rng.integers(0, 2)))
                       for _ in range(int(rng.integers(1, 4))))
        seqs = int(rng.integers(1, 200))
        X[i] = BatchShape(chunks, seqs, seqs * int(rng.integers(1, 9000))).features(num_experts, top_k)
    return X


def _with_row(table, op: Operator):
    """The table with ``op`` added to every layer."""
    return table.with_ops(layer_ops=(*table.layer_ops, op))


LORA = Operator("lora_a", "lora_gemm", flops=np.eye(F.NUM_FEATURES)[F.PREFILL_TOKENS] * 2e6,
                bytes=np.eye(F.NUM_FEATURES)[F.ONE] * 1e6)


# ------------------------------------------------------------------------ the registry


def test_a_row_whose_class_has_no_pricer_is_an_error_naming_it_and_the_known_classes():
    sys_ = system()
    with pytest.raises(CapsimError) as info:
        IterationCostModel(_with_row(sys_.table, LORA), sys_.roofline)
    err = info.value
    assert "'lora_a'" in err.problem and "'lora_gemm'" in err.problem and "lora_a" in err.where
    for known in ("gemm@device", "attention_prefill@device", "attention_decode@device", "elementwise@device"):
        assert known in err.problem
    assert "register" in err.fix


def test_a_row_placed_where_no_pricer_runs_is_an_error_naming_the_placement():
    sys_ = system(calibration="datasheet")
    offloaded = replace(sys_.table.layer_ops[1], name="qkv_on_cpu", placement="cpu")
    with pytest.raises(CapsimError, match="'qkv_on_cpu' of class 'gemm' placed on 'cpu'"):
        IterationCostModel(_with_row(sys_.table, offloaded), sys_.roofline)


class _Fixed(RowPricer):
    """A pricer of a made-up class: a fixed time per pass whenever the row has work."""

    source = "test lora"

    def __init__(self, seconds: float):
        self.seconds = seconds

    def price(self, x, flops, nbytes):
        return Priced(self.seconds, self.seconds, 0.0) if flops or nbytes else Priced(0.0, 0.0, 0.0)


@pytest.mark.parametrize("calibration", ["datasheet", "profile"])
def test_a_pricer_registered_for_a_new_class_prices_its_rows(calibration):
    sys_ = system(calibration=calibration)
    pricers = PRICERS.copy()
    pricers.register("lora_gemm")(lambda op, ctx: _Fixed(1e-4))
    base = IterationCostModel(sys_.table, sys_.roofline)
    with_lora = IterationCostModel(_with_row(sys_.table, LORA), sys_.roofline, pricers=pricers)
    shape = BatchShape(prefill_chunks=((300, 0, True),))
    extra = with_lora.iteration(shape).time_s - base.iteration(shape).time_s
    assert extra == pytest.approx(sys_.table.num_layers * 1e-4, rel=1e-9)
    rows = [r for r in with_lora.breakdown(shape) if r.name == "lora_a"]
    assert rows and all(r.source == "test lora" for r in rows)
    # A decode run prices the new row like the scalar path does (it has work at every step).
    run = with_lora.decode_run(4, 4 * 100, 5)
    assert run.first == pytest.approx(with_lora.iteration(BatchShape(decode_seqs=4, decode_context=400)).time_s,
                                      rel=1e-12)
    # The shared registry is untouched.
    with pytest.raises(CapsimError):
        IterationCostModel(_with_row(sys_.table, LORA), sys_.roofline)


def test_registering_a_class_twice_is_refused():
    with pytest.raises(ValueError, match="registered twice"):
        PRICERS.copy().register("gemm")(lambda op, ctx: None)


def test_rows_are_placed_on_the_device_by_default():
    assert {op.placement for op in system().table.layer_ops} == {"device"}


# ------------------------------------------------------------------------ shapes live on the rows


def test_a_calibrated_gemm_row_without_shapes_is_an_error_naming_it():
    sys_ = system()  # the shipped H100 profile has a GEMM curve
    bare = tuple(replace(op, gemms=()) if op.name == "o_proj" else op for op in sys_.table.layer_ops)
    with pytest.raises(CapsimError) as info:
        IterationCostModel(sys_.table.with_ops(layer_ops=bare), sys_.roofline)
    assert "'o_proj'" in info.value.problem and "o_proj" in info.value.where
    # Datasheet pricing needs no shapes.
    plain = system(calibration="datasheet")
    IterationCostModel(plain.table.with_ops(layer_ops=bare), plain.roofline)


def test_a_calibrated_attention_row_without_geometry_is_an_error_naming_it():
    sys_ = system()
    with pytest.raises(CapsimError, match="attention_prefill"):
        IterationCostModel(sys_.table.with_ops(attention=None), sys_.roofline)


@pytest.mark.parametrize(("model", "tp"), [("llama-3.1-8b", 1), ("llama-3.1-70b", 4), ("mixtral-8x7b", 2)])
def test_gemm_shapes_match_the_rows_work(model, tp):
    """A GEMM row's FLOPs per token are 2 x its GEMMs' weights (times k experts for MoE): the shapes a
    calibrated curve prices are those of the work the row charges."""
    table = system(model, tp=tp).table
    k = table.experts_per_token if table.num_experts > 1 else 1
    for op in (*table.layer_ops, *table.iteration_ops):
        if op.op_class != "gemm":
            continue
        weights = sum(n * kk * c for n, kk, c in op.gemms)
        per_token = max(op.flops[F.PREFILL_TOKENS], op.flops[F.LOGIT_SEQS])
        experts = k if op.bytes[F.EXPERTS_HIT] else 1
        assert per_token == pytest.approx(2.0 * weights * experts, rel=1e-12), op.name


# ------------------------------------------------------------------------ scalar, vectorised, decode line


CASES = [
    ("llama-3.1-8b", "h100-sxm", 1, "datasheet"),
    ("llama-3.1-8b", "h100-sxm", 1, "profile"),
    ("llama-2-7b", "a100-80gb-sxm", 2, "profile"),  # MHA; FlashAttention-2 split regimes; elementwise curves
    ("mixtral-8x7b", "h200", 2, "profile"),  # MoE GEMMs per expert hit
]


def _pricers(sys_):
    ctx = PricingContext(sys_.roofline, sys_.table.attention)
    return [(op, PRICERS.for_row(op, ctx)) for op in (*sys_.table.layer_ops, *sys_.table.iteration_ops)]


@pytest.mark.parametrize(("model", "device", "tp", "calibration"), CASES)
def test_each_pricer_agrees_on_its_scalar_and_vectorised_paths(model, device, tp, calibration):
    sys_ = system(model, device, tp, calibration=calibration)
    rng = np.random.default_rng(11)
    X = _random_features(rng, 40, sys_.table.num_experts, sys_.table.experts_per_token)
    vectorised = 0
    for op, pricer in _pricers(sys_):
        f, b = X @ op.flops, X @ op.bytes
        busy = (f != 0.0) | (b != 0.0)
        many = pricer.price_many(X[busy], f[busy], b[busy])
        if many is None:  # decode attention prices shape by shape (its runs use decode_line)
            assert op.op_class == "attention_decode"
            continue
        vectorised += 1
        scalar = [pricer.price(x.tolist(), fi, bi).time_s for x, fi, bi in zip(X[busy], f[busy], b[busy], strict=True)]
        np.testing.assert_allclose(many, scalar, rtol=1e-12, atol=0.0, err_msg=op.name)
    assert vectorised >= 5


@pytest.mark.parametrize(("model", "device", "tp", "calibration"), CASES)
def test_each_context_dependent_pricer_agrees_on_its_scalar_and_decode_line_paths(model, device, tp, calibration):
    sys_ = system(model, device, tp, calibration=calibration)
    L = float(sys_.table.num_layers)
    rng = np.random.default_rng(5)
    rows = [(op, p) for op, p in _pricers(sys_) if context_dependent([op])[0]]
    assert [op.name for op, _ in rows] == ["attention_decode"]
    for op, pricer in rows:
        for _ in range(30):
            batch = int(rng.integers(1, 256))
            context = float(batch * rng.integers(1, 20000))
            base = BatchShape(decode_seqs=batch).features(sys_.table.num_experts, sys_.table.experts_per_token)
            x = base.copy()
            x[F.DECODE_CONTEXT] = context
            line = pricer.decode_line(batch, float(op.flops @ base), float(op.bytes @ base), context / batch, L)
            assert line is not None
            closed = L * line.static_s + max(line.compute_slope * context + line.compute_base,
                                             line.memory_slope * context + line.memory_base)
            scalar = L * pricer.price(x.tolist(), float(op.flops @ x), float(op.bytes @ x)).time_s
            assert closed == pytest.approx(scalar, rel=1e-12), (batch, context)


@pytest.mark.parametrize("model", ["llama-3.1-8b", "mixtral-8x7b"])
def test_the_roofline_block_prices_like_its_rows_one_by_one(model):
    """A table priced wholly by the roofline is summed as matrix products; row by row gives the same times."""
    sys_ = system(model, tp=2, calibration="datasheet")
    ops = sys_.table.layer_ops
    pricers = [RooflinePricer(op, sys_.roofline) for op in ops]
    block, rows = RooflineBlock(ops, pricers, sys_.roofline), RowByRow(ops, pricers)
    rng = np.random.default_rng(2)
    for x in _random_features(rng, 25, sys_.table.num_experts, sys_.table.experts_per_token):
        assert block.time(x, x.tolist()) == pytest.approx(rows.time(x, x.tolist()), rel=1e-12)
    base = BatchShape(decode_seqs=16).features(sys_.table.num_experts, sys_.table.experts_per_token)
    a, b = block.decode(16, base, base.tolist(), None, 32.0), rows.decode(16, base, base.tolist(), None, 32.0)
    assert a.static_s == pytest.approx(b.static_s, rel=1e-12)
    for col_a, col_b in zip(a.lines, b.lines, strict=True):
        np.testing.assert_allclose(col_a, col_b, rtol=1e-12)


def test_breakdown_says_what_priced_each_row():
    cal = {r.name: r.source for r in system("llama-3.1-8b", "h200", tp=2).cost_model().breakdown(
        BatchShape(prefill_chunks=((512, 0, True),), decode_seqs=4, decode_context=4000))}
    assert cal["qkv_proj"] == "profile gemm/bf16"
    assert cal["attention_decode"] == "profile attention_decode/bf16"
    assert cal["norm"] == "roofline"  # the H200 profile has no elementwise curves: an explicit, recorded choice
    assert cal["tp_allreduce"] == "profile all_reduce x2"
    plain = system("llama-3.1-8b", "h200", tp=2, calibration="datasheet").cost_model()
    sources = {r.source for r in plain.breakdown(BatchShape(prefill_chunks=((512, 0, True),)))}
    assert sources == {"roofline", "link model"}


@pytest.mark.parametrize(("model", "tp"), [("llama-3.1-8b", 2), ("llama-3.1-70b", 16), ("llama-2-7b", 4)])
def test_the_table_and_the_memory_plan_shard_kv_heads_alike(model, tp):
    """The KV bytes a decode step reads per context token are the KV cache's bytes per token: both hold
    ceil(h_kv / t) heads per GPU (a whole head each when there are fewer KV heads than ranks)."""
    sys_ = system(model, "h100-sxm", tp, calibration="datasheet")
    decode = next(op for op in sys_.table.layer_ops if op.op_class == "attention_decode")
    assert sys_.memory.kv_bytes_per_token == pytest.approx(sys_.table.num_layers * decode.bytes[F.DECODE_CONTEXT],
                                                           rel=1e-12)
    assert sys_.table.attention.kv_heads == -(-sys_.model.num_kv_heads // tp)


# ------------------------------------------------------------------------ rows sparse attention adds
SPARSE_HOST = {"name": "sparse-attention", "density": 0.1, "dense_layers": 1, "kv_location": "host",
               "host_kv_gib": 64, "host_tensors": "values", "key_rank": 96, "overlap": False}


@pytest.mark.parametrize("calibration", ["datasheet", "profile"])
@pytest.mark.parametrize("device", ["h100-sxm", "a100-80gb-sxm"])
def test_sparse_rows_agree_on_scalar_vectorised_and_decode_line_paths(calibration, device):
    """The transfer row on the PCIe link and the selection rows: registered pricers whose three paths agree,
    and the sparse decode-attention row's lines in the summed context (priced at the attended context)."""
    sys_ = build_system(Scenario.model_validate({
        "model": "llama-3.1-8b", "deployment": {"device": device, "calibration": calibration},
        "techniques": [{"name": "sparse-prefill", "density": 0.2}, SPARSE_HOST]}))
    ctx = PricingContext(sys_.roofline, sys_.table.attention, sys_.table.links)
    pricers = [(op, PRICERS.for_row(op, ctx)) for op in sys_.table.layer_ops]
    names = {op.name: p for op, p in pricers}
    assert names["kv_fetch"].source == "link model (pcie)"
    assert type(names["kv_select"]) is RooflinePricer and type(names["sparse_pattern"]) is RooflinePricer
    rng = np.random.default_rng(3)
    X = _random_features(rng, 30)
    L = float(sys_.table.num_layers)
    for op, pricer in pricers:
        f, b = X @ op.flops, X @ op.bytes
        busy = (f != 0.0) | (b != 0.0)
        many = pricer.price_many(X[busy], f[busy], b[busy])
        if many is not None:
            scalar = [pricer.price(x.tolist(), fi, bi).time_s for x, fi, bi in zip(X[busy], f[busy], b[busy], strict=True)]
            np.testing.assert_allclose(many, scalar, rtol=1e-12, atol=0.0, err_msg=op.name)
        if not context_dependent([op])[0]:
            continue
        for _ in range(20):
            batch = int(rng.integers(1, 128))
            context = float(batch * rng.integers(1, 60000))
            base = BatchShape(decode_seqs=batch).features()
            x = base.copy()
            x[F.DECODE_CONTEXT] = context
            line = pricer.decode_line(batch, float(op.flops @ base), float(op.bytes @ base), context / batch, L)
            assert line is not None, op.name
            closed = L * line.static_s + max(line.compute_slope * context + line.compute_base,
                                             line.memory_slope * context + line.memory_base)
            scalar = L * pricer.price(x.tolist(), float(op.flops @ x), float(op.bytes @ x)).time_s
            assert closed == pytest.approx(scalar, rel=1e-12), (op.name, batch, context)


def test_a_row_on_a_link_the_table_lacks_is_an_error_naming_it():
    sys_ = system(calibration="datasheet")
    fetch = Operator("kv_fetch", "transfer", flops=np.zeros(F.NUM_FEATURES),
                     bytes=np.eye(F.NUM_FEATURES)[F.DECODE_CONTEXT] * 4096.0, placement="pcie")
    with pytest.raises(CapsimError, match="link 'pcie'"):
        IterationCostModel(_with_row(sys_.table, fetch), sys_.roofline)
