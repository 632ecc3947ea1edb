"""The operator table of a transformer replica.

Each operator is a row of coefficients over the batch features of
:mod:`simulator.costmodel.features`: ``flops = F . x`` and ``bytes = M . x``,
per GPU (tensor-parallel work is already divided by ``t``). Formulas are those
of docs/cost-model.md ("Operators"); the comments name each term. Collectives are separate rows
priced by the alpha-beta link model instead of the roofline.

Per layer, per token, per GPU (``h_t = h/t``, ``h_kv,t`` the KV heads one GPU holds, ``f_t = f/t``,
``b_a`` bytes per activation element), the bandwidth-bound elementwise operators between the GEMMs:

| operator | FLOPs | bytes |
|---|---|---|
| norm (x2: before attention and before the MLP) | 5·d | 2·d·b_a (read the residual stream, write the normalised copy) |
| rope (RoPE on q and k; none with learned positions or ALiBi) | 3·(h_t + h_kv,t)·d_h | 2·(h_t + h_kv,t)·d_h·b_a (read and write q and k) |
| activation, gated (SiLU(gate) · up) | 5·f_t | 3·f_t·b_a (read gate and up, write the product) |
| activation, plain (GELU; ReLU charged the same) | 8·f_t | 2·f_t·b_a (read, write) |
| residual_add (x2: after attention and after the MLP) | d | 3·d·b_a (read the stream and the branch, write the sum) |
| residual_add, parallel block (x1: stream + attention + MLP) | 2·d | 4·d·b_a (read three, write one) |

MoE layers run the activation on each of a token's ``k`` experts (``k`` times the row above). The
sin/cos table RoPE reads is indexed by position and shared by all heads (``d_h`` elements per token
against ``(h_t + h_kv,t)·d_h``), so it is left out, as is the norm's weight vector (``d`` elements
per iteration, cache-resident): these operators stream activations, and their time follows that.
FLOPs per element: RoPE ``x·cos + rot(x)·sin`` is 2 multiplies and an add; SiLU ``g / (1 + e^-g)``
is about 4 (negate, exp, add, divide) plus the multiply by ``up``; the tanh form of GELU
``0.5·x·(1 + tanh(c·(x + 0.044715·x³)))`` about 8. These are bandwidth-bound at any batch (under one
FLOP per byte), so the FLOP counts only feed MFU accounting.

Why a table rather than code that computes a batch's cost directly: techniques
transform costs by editing rows (sparse attention scales the KV-read bytes of
the attention rows, offload moves a row to another device), the ``estimate``
command and the dashboard show the per-operator breakdown from the same rows
the simulator prices, and the engine prices a whole run of iterations with one
matrix product.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from hwmodels.links import Link, ring_allreduce_coefficients
from hwmodels.roofline import RooflineDevice
from simulator.costmodel import features as F
from simulator.costmodel.sharding import heads_per_gpu, kv_heads_per_gpu
from simulator.models.spec import ModelSpec

GemmShape = tuple[float, float, float]  # (n, k, count): output and input features of one GEMM, launches of it


@dataclass(frozen=True)
class Operator:
    """One operator: FLOPs and bytes as coefficient vectors over batch features.

    ``op_class`` and ``placement`` pick the row's pricer (:mod:`simulator.costmodel.pricers`);
    ``gemms`` are the GEMMs a ``gemm``-class row launches, ``(n, k, count)`` each (per expert
    for MoE rows; the token count ``m`` comes from the batch), so a calibrated curve can price
    each at its own shape. They are set where the sharding that decides them is computed.
    """

    name: str
    op_class: str  # "gemm", "attention_prefill", "attention_decode", "elementwise"
    flops: np.ndarray
    bytes: np.ndarray
    launches: float = 1.0
    gemms: tuple[GemmShape, ...] = ()
    placement: str = "device"  # where the row runs: "device" (the replica's GPUs) or a link of the table
    # Rows sharing a non-empty ``overlap`` name run concurrently on different resources (a KV fetch over
    # PCIe beside the GPU's attention): the group takes the longest of its placements' summed times.
    overlap: str = ""
    # Within an overlap group, rows of the same lane run one after another and lanes run concurrently; empty:
    # the row's placement is its lane. NanoFlow's nano-batches put compute-, memory- and network-bound rows of
    # one GPU in separate lanes (simulator/techniques/nanoflow.py).
    lane: str = ""
    # Fraction of each sequence's context a decode-attention row attends (sparse attention reads a selected
    # share): its coefficients already count only that share; a kernel curve is priced at the attended context.
    attended: float = 1.0
    # A per-sequence token budget (sparse attention with ``budget_tokens``): in ``budget_share`` of the layers the
    # row reads at most ``budget_tokens`` of each sequence's context, so its context coefficients (which count the
    # whole context) apply to ``C - budget_share * max(0, C - b * budget_tokens)`` for ``b`` sequences of summed
    # context ``C`` (``pricers.BudgetedPricer``); 0: no budget.
    budget_tokens: float = 0.0
    budget_share: float = 0.0


@dataclass(frozen=True)
class AttentionGeometry:
    """The attention rows' shape on one GPU, for pricers whose curves depend on it (heads per GPU)."""

    heads: float
    kv_heads: float
    head_dim: float
    act_dtype: str = "bf16"
    kv_bytes: float = 2.0  # per KV-cache element (the cache write a calibrated attention curve may include)
    #: Multi-head latent attention: the rows attend a shared latent of ``head_dim`` elements per token (one
    #: "KV head" of keys, whose first ``kv_lora_rank`` elements are also the values), not FlashAttention's
    #: separate keys and values, so curves fitted on FlashAttention do not price them.
    latent: bool = False


@dataclass(frozen=True)
class Collective:
    """A communication step: ``time = coef . x`` seconds (alpha-beta link model).

    ``kind`` and ``group`` name the collective a calibrated profile may have fitted
    (``all_reduce`` over ``tp`` ranks, ``send_recv`` between 2); such a curve prices ``count``
    messages of ``message_scale * (bytes . x)`` bytes each instead of the link model.
    """

    name: str
    time: np.ndarray
    bytes: np.ndarray  # bytes each GPU sends, for accounting
    kind: str = ""  # "" when no fitted curve applies
    group: int = 1
    message_scale: float = 1.0
    count: float = 1.0


@dataclass(frozen=True)
class OperatorTable:
    """All operators of one forward pass of a replica, per GPU.

    ``layer_ops`` and ``layer_comms`` run once per layer (``num_layers`` times,
    stages one after another for a single batch); ``iteration_ops`` and
    ``iteration_comms`` once per iteration. ``attention`` is the attention rows'
    per-GPU geometry, which calibrated attention curves are priced at.
    """

    num_layers: int
    tp: int
    pp: int
    num_experts: int
    experts_per_token: int
    layer_ops: tuple[Operator, ...]
    iteration_ops: tuple[Operator, ...]
    layer_comms: tuple[Collective, ...] = ()
    iteration_comms: tuple[Collective, ...] = ()
    notes: tuple[str, ...] = field(default=())
    attention: AttentionGeometry | None = None
    #: Links rows may be placed on (a row with ``placement="pcie"`` is priced by the link named "pcie").
    links: tuple[Link, ...] = ()
    #: Processors inside memory tiers rows may be placed on (a row with ``placement`` naming one is priced by its
    #: roofline: PIM, a computational storage drive); empty for every table no technique places there.
    processors: tuple[RooflineDevice, ...] = ()
    #: Nano-batches each layer's overlapped rows are split into (NanoFlow): each runs over 1/n of the batch's
    #: tokens and reads all of the weights; 1 (the default) leaves the batch whole.
    nano_batches: int = 1
    #: With nano-batches: each pass runs split or whole, whichever is cheaper (NanoFlow tunes the split per batch).
    nano_adaptive: bool = False
    #: The model's sliding window as prefill attention sees it (its prefill features count the pairs and KV a
    #: windowed layer attends, :class:`~simulator.costmodel.features.PrefillWindow`); None: full attention.
    prefill_window: F.PrefillWindow | None = None

    def with_ops(self, **changes) -> OperatorTable:
        """A copy with some fields replaced (techniques transform tables this way)."""
        return replace(self, **changes)


def _vec(**coefficients: float) -> np.ndarray:
    """Coefficient vector from feature names, e.g. ``_vec(prefill_tokens=2.0, one=5.0)``."""
    v = np.zeros(F.NUM_FEATURES)
    for name, value in coefficients.items():
        v[F.FEATURE_NAMES.index(name)] = value
    return v


def _per_token(value: float) -> dict[str, float]:
    """The same coefficient on every token of the iteration (prefill and decode)."""
    return {"prefill_tokens": value, "decode_seqs": value}


def build_operator_table(
    model: ModelSpec,
    *,
    tp: int,
    pp: int,
    weight_bytes: float,
    kv_bytes: float,
    act_bytes: float,
    tp_link: Link,
    pp_link: Link,
    act_dtype: str = "bf16",
    expert_bytes_per_weight: float | None = None,
) -> OperatorTable:
    """Operators of ``model`` sharded ``tp``-way per layer and ``pp``-way across layers.

    ``expert_bytes_per_weight`` prices the MoE experts' weights when the model releases them in a
    format of their own (gpt-oss: MXFP4); None: ``weight_bytes`` like every other weight.

    GEMM rows carry their GEMMs as vLLM launches them: fused QKV, output projection,
    fused gate+up (when gated) and down projection, MoE router and per-expert MLP,
    LM head; weights ``[k, n]`` with ``k`` the input features, sharded ``tp``-way.
    """
    d, L = model.hidden_size, model.num_layers
    h, dh = model.num_heads, model.head_dim
    hkv = model.num_kv_heads
    f, V = model.ffn_size, model.vocab_size
    t = tp
    # Query heads split evenly; KV heads are replicated when there are fewer than t.
    h_gpu = heads_per_gpu(h, t)
    hkv_gpu = float(kv_heads_per_gpu(hkv, t))
    qkv_out = (h_gpu + 2 * hkv_gpu) * dh
    mlp_mats = 3 if model.mlp == "gated" else 2
    ba, bw, bkv = act_bytes, weight_bytes, kv_bytes

    norm = Operator(
        "norm",
        "elementwise",
        flops=_vec(**_per_token(5.0 * d)),
        bytes=_vec(**_per_token(2.0 * d * ba)),
    )
    qkv = Operator(
        "qkv_proj",
        "gemm",
        flops=_vec(**_per_token(2.0 * d * qkv_out)),
        bytes=_vec(one=d * qkv_out * bw, **_per_token((d + qkv_out) * ba)),
        gemms=((qkv_out, float(d), 1.0),),
    )
    # Causal prefill attention: 4*h*dh FLOPs per query-key pair (QK^T and AV);
    # reads the chunk's KV (cached + new) once, writes the new tokens' KV.
    attn_prefill = Operator(
        "attention_prefill",
        "attention_prefill",
        flops=_vec(prefill_attn_work=4.0 * h_gpu * dh),
        bytes=_vec(
            prefill_kv_read=2.0 * hkv_gpu * dh * bkv,
            prefill_tokens=2.0 * h_gpu * dh * ba + 2.0 * hkv_gpu * dh * bkv,
        ),
    )
    # Decode attention: one query per sequence against its whole context.
    attn_decode = Operator(
        "attention_decode",
        "attention_decode",
        flops=_vec(decode_context=4.0 * h_gpu * dh),
        bytes=_vec(
            decode_context=2.0 * hkv_gpu * dh * bkv,
            decode_seqs=2.0 * h_gpu * dh * ba + 2.0 * hkv_gpu * dh * bkv,
        ),
    )
    o_proj = Operator(
        "o_proj",
        "gemm",
        flops=_vec(**_per_token(2.0 * h_gpu * dh * d)),
        bytes=_vec(one=h_gpu * dh * d * bw, **_per_token((h_gpu * dh + d) * ba)),
        gemms=((float(d), h_gpu * dh, 1.0),),
    )
    expert_weight_bytes = mlp_mats * d * (f / t) * bw
    mlp_act_bytes = (2.0 * d + mlp_mats * f / t) * ba
    # The MLP's GEMMs (per expert): gate and up fused into one when gated, then down.
    up = (2.0 if model.mlp == "gated" else 1.0) * f / t
    mlp_gemms = ((up, float(d), 1.0), (float(d), f / t, 1.0))
    if model.is_moe:
        k, E = model.experts_per_token, model.num_experts
        router = Operator(
            "moe_router",
            "gemm",
            flops=_vec(**_per_token(2.0 * d * E)),
            bytes=_vec(one=d * E * bw, **_per_token(d * ba)),
            gemms=((float(E), float(d), 1.0),),
        )
        # Routed experts in a format of their own (gpt-oss: MXFP4); shared experts and dense layers keep ``bw``.
        per_expert = expert_weight_bytes if expert_bytes_per_weight is None else (
            mlp_mats * d * (f / t) * expert_bytes_per_weight)
        experts = Operator(
            "moe_experts",
            "gemm",
            flops=_vec(**_per_token(k * 2.0 * mlp_mats * d * f / t)),
            bytes=_vec(experts_hit=per_expert, **_per_token(k * mlp_act_bytes)),
            launches=2.0 * mlp_mats,
            gemms=mlp_gemms,
        )
        mlp_ops: tuple[Operator, ...] = (router, experts)
    else:
        mlp_ops = (
            Operator(
                "mlp",
                "gemm",
                flops=_vec(**_per_token(2.0 * mlp_mats * d * f / t)),
                bytes=_vec(one=expert_weight_bytes, **_per_token(mlp_act_bytes)),
                launches=float(mlp_mats),
                gemms=mlp_gemms,
            ),
        )
    if model.num_shared_experts:  # DeepSeek: always-on experts, run as one dense MLP s times as wide
        mlp_ops = (*mlp_ops, _dense_mlp("moe_shared_experts", model, model.num_shared_experts * f, t, bw, ba))
    if model.dense_layers:
        # The leading dense layers and the MoE rest as rows weighted by their share of the L layers: the table
        # is charged L times, and a row's roofline time (and a GEMM curve's, its launch count weighted the same)
        # scales with the weight, so the sum over the table is the sum over the real layers.
        moe_share = model.moe_layers / L
        mlp_ops = (*(_layer_share(op, moe_share) for op in mlp_ops),
                   _layer_share(_dense_mlp("mlp", model, model.dense_ffn_size, t, bw, ba), model.dense_layers / L))
    # Elementwise operators between the GEMMs (formulas in the module docstring). They scale with the
    # iteration's tokens only, so a decode step of a given batch size prices them once (context-free rows).
    rope_elems = (h_gpu + hkv_gpu) * dh
    rope = Operator(
        "rope",
        "elementwise",
        flops=_vec(**_per_token(3.0 * rope_elems)),
        bytes=_vec(**_per_token(2.0 * rope_elems * ba)),
    )
    experts_per_token = float(model.experts_per_token) if model.is_moe else 1.0
    f_gpu = f / t
    gated = model.mlp == "gated"
    if model.num_shared_experts or model.dense_layers:  # intermediate width per token, averaged over layers
        moe_width = (model.experts_per_token + model.num_shared_experts) * f_gpu
        f_gpu = (model.moe_layers * moe_width + model.dense_layers * (model.dense_ffn_size or 0) / t) / L
        experts_per_token = 1.0
    activation = Operator(
        "activation",
        "elementwise",
        flops=_vec(**_per_token(experts_per_token * (5.0 if gated else 8.0) * f_gpu)),
        bytes=_vec(**_per_token(experts_per_token * (3.0 if gated else 2.0) * f_gpu * ba)),
    )
    # A sequential block adds each branch to the stream (two adds of 2 inputs); a parallel block
    # (GPT-J/Falcon: attention and MLP read the same normalised input) adds both branches at once.
    add_inputs = 3.0 if model.parallel_attention else 2.0
    residual_add = Operator(
        "residual_add",
        "elementwise",
        flops=_vec(**_per_token((add_inputs - 1.0) * d)),
        bytes=_vec(**_per_token((add_inputs + 1.0) * d * ba)),
    )
    adds_after_attention = () if model.parallel_attention else (residual_add,)
    if model.is_mla:
        mla_rows, geometry = _mla_attention_rows(model, t, ba=ba, bw=bw, bkv=bkv, act_dtype=act_dtype)
        attention_block = (norm, *mla_rows, o_proj, *adds_after_attention)
    else:
        attention_block = (norm, qkv, *((rope,) if model.has_rope else ()), attn_prefill, attn_decode, o_proj,
                           *adds_after_attention)
        geometry = AttentionGeometry(h_gpu, hkv_gpu, float(dh), act_dtype, float(kv_bytes))
    layer_ops = (*attention_block, norm, *mlp_ops, activation, residual_add)

    # LM head on the last position of each sequence that produces logits, plus the final norm.
    lm_head = Operator(
        "lm_head",
        "gemm",
        flops=_vec(logit_seqs=2.0 * d * V / t),
        bytes=_vec(one=d * (V / t) * bw, logit_seqs=(d + V / t) * ba),
        gemms=((V / t, float(d), 1.0),),
    )
    embedding = Operator(
        "embedding",
        "elementwise",
        flops=_vec(),
        bytes=_vec(**_per_token(2.0 * d * ba)),
    )
    iteration_ops = (embedding, lm_head)

    layer_comms: tuple[Collective, ...] = ()
    if t > 1:
        fixed, per_byte = ring_allreduce_coefficients(tp_link, t)
        msg = d * ba  # bytes per token of one all-reduce
        ar = Collective(
            "tp_allreduce",
            time=_vec(one=fixed, **_per_token(per_byte * msg)),
            bytes=_vec(**_per_token(2.0 * (t - 1) / t * msg)),
            # A ring all-reduce sends 2 (t-1)/t of the message from each rank.
            kind="all_reduce", group=t, message_scale=t / (2.0 * (t - 1)),
        )
        layer_comms = (ar, ar)  # after attention and after the MLP
    iteration_comms: tuple[Collective, ...] = ()
    if pp > 1:
        msg = d * ba
        send = Collective(
            "pp_send",
            time=_vec(one=(pp - 1) * pp_link.latency_s, **_per_token((pp - 1) * msg / pp_link.bandwidth)),
            bytes=_vec(**_per_token((pp - 1) * msg)),
            # pp - 1 point-to-point sends, one per stage boundary.
            kind="send_recv", group=2, message_scale=1.0 / (pp - 1), count=float(pp - 1),
        )
        iteration_comms = (send,)

    return OperatorTable(
        num_layers=L,
        tp=t,
        pp=pp,
        num_experts=model.num_experts,
        experts_per_token=model.experts_per_token,
        layer_ops=layer_ops,
        iteration_ops=iteration_ops,
        layer_comms=layer_comms,
        iteration_comms=iteration_comms,
        attention=geometry,
        prefill_window=None if model.sliding_window is None else F.PrefillWindow(
            int(model.sliding_window), 1.0 - model.windowed_layer_fraction),
    )


def _dense_mlp(name: str, model: ModelSpec, width: float, t: int, bw: float, ba: float) -> Operator:
    """One dense MLP ``d -> width -> d`` split ``t`` ways (a DeepSeek dense layer's MLP, or its shared experts)."""
    d, mats = float(model.hidden_size), 3 if model.mlp == "gated" else 2
    w_gpu = width / t
    up = (2.0 if model.mlp == "gated" else 1.0) * w_gpu
    return Operator(
        name,
        "gemm",
        flops=_vec(**_per_token(2.0 * mats * d * w_gpu)),
        bytes=_vec(one=mats * d * w_gpu * bw, **_per_token((2.0 * d + mats * w_gpu) * ba)),
        launches=float(mats),
        gemms=((up, d, 1.0), (d, w_gpu, 1.0)),
    )


def _layer_share(op: Operator, share: float) -> Operator:
    """``op`` run in ``share`` of the layers: its work, launches and GEMM launch counts weighted by ``share``."""
    return replace(op, flops=op.flops * share, bytes=op.bytes * share, launches=op.launches * share,
                   gemms=tuple((n, k, c * share) for n, k, c in op.gemms))


def _mla_attention_rows(
    model: ModelSpec, t: int, *, ba: float, bw: float, bkv: float, act_dtype: str
) -> tuple[tuple[Operator, ...], AttentionGeometry]:
    """The rows of multi-head latent attention (DeepSeek-V2, arXiv:2405.04434, section 2.1), per GPU.

    Notation: ``h_t = h/t`` heads per GPU, ``d_h`` = qk_nope_head_dim = v_head_dim, ``d_r`` = qk_rope_head_dim,
    ``r_q``/``r_kv`` the query/KV latent ranks. Each token's hidden state is projected down to the query latent
    and to the KV latent ``c_KV`` plus one rotary key ``k_R`` shared by all heads (``qkv_a_proj``, replicated
    on every rank as vLLM does); the cache stores ``c_KV`` and ``k_R``: ``r_kv + d_r`` elements per token and
    layer, on every rank. The queries come from ``q_b_proj`` (``r_q -> h_t (d_h + d_r)``).

    Attention runs in two forms, as vLLM's MLA backends do:

    * prefill, expanded: ``mla_kv_up`` up-projects the latent of every KV token the chunk reads to per-head
      keys and values (``r_kv -> h_t * 2 d_h``), then ordinary attention with ``d_h + d_r``-wide query-key dot
      products and ``d_h``-wide values: ``2 h_t (d_h + d_r) + 2 h_t d_h`` FLOPs per query-key pair.
    * decode, weight-absorbed (section 2.1.2's "absorb W_UK into W_Q and W_UV into W_O"): ``mla_q_absorb``
      maps each head's ``d_h``-wide query into the latent space (``h_t`` GEMMs ``d_h -> r_kv``), attention then
      reads each cached latent once for all heads (multi-query style: ``(r_kv + d_r) b_kv`` bytes per context
      token, ``2 h_t (r_kv + d_r) + 2 h_t r_kv`` FLOPs), and ``mla_out_absorb`` maps each head's ``r_kv``-wide
      output back to ``d_h`` before ``o_proj``.

    The up-projection's weights (``kv_b_proj``, ``r_kv x h_t 2 d_h``) are what both forms multiply by; they are
    charged once per iteration, on the two absorb rows (``W_UK`` and ``W_UV`` halves), so an iteration that runs
    both forms is charged one read of them where the kernels make two (at most ``2 h_t d_h r_kv b_w`` bytes
    per layer, 4 MiB for DeepSeek-V3 at t = 8).
    """
    d = float(model.hidden_size)
    h_t = heads_per_gpu(model.num_heads, t)
    dh, dr = float(model.head_dim), float(model.qk_rope_head_dim)
    rq, rkv = float(model.q_lora_rank), float(model.kv_lora_rank)
    latent = rkv + dr  # cached elements per token and layer
    q_out = h_t * (dh + dr)  # per-GPU query width (no-position and rotary parts)
    rows: list[Operator] = []
    a_out = rq + latent  # the fused down-projection's outputs (query latent, KV latent, rotary key)
    rows.append(Operator(
        "qkv_a_proj", "gemm",
        flops=_vec(**_per_token(2.0 * d * a_out)),
        bytes=_vec(one=d * a_out * bw, **_per_token((d + a_out) * ba)),
        gemms=((a_out, d, 1.0),),
    ))
    if rq:
        rows.append(Operator(
            "q_b_proj", "gemm",
            flops=_vec(**_per_token(2.0 * rq * q_out)),
            bytes=_vec(one=rq * q_out * bw, **_per_token((rq + q_out) * ba)),
            gemms=((q_out, rq, 1.0),),
        ))
    else:  # DeepSeek-V2-Lite: queries straight from the hidden state, split by heads
        rows.append(Operator(
            "q_proj", "gemm",
            flops=_vec(**_per_token(2.0 * d * q_out)),
            bytes=_vec(one=d * q_out * bw, **_per_token((d + q_out) * ba)),
            gemms=((q_out, d, 1.0),),
        ))
    norms = rq + rkv  # RMSNorm on the query latent and on the KV latent
    rows.append(Operator("mla_norm", "elementwise", flops=_vec(**_per_token(5.0 * norms)),
                         bytes=_vec(**_per_token(2.0 * norms * ba))))
    rope_elems = (h_t + 1.0) * dr  # every head's rotary query part and the one shared rotary key
    rows.append(Operator("rope", "elementwise", flops=_vec(**_per_token(3.0 * rope_elems)),
                         bytes=_vec(**_per_token(2.0 * rope_elems * ba))))
    # Prefill: expand each KV token the chunk reads (cached and new) to per-head keys and values.
    kv_up = h_t * 2.0 * dh
    rows.append(Operator(
        "mla_kv_up", "gemm",
        flops=_vec(prefill_kv_read=2.0 * rkv * kv_up),
        bytes=_vec(prefill_kv_read=latent * bkv + kv_up * ba),  # read the cached latent, write keys and values
        gemms=((kv_up, rkv, 1.0),),
    ))
    rows.append(Operator(
        "attention_prefill", "attention_prefill",
        flops=_vec(prefill_attn_work=2.0 * h_t * (dh + dr) + 2.0 * h_t * dh),
        bytes=_vec(
            prefill_kv_read=h_t * (dh + dr + dh) * ba,  # expanded keys (rotary part broadcast) and values
            prefill_tokens=(q_out + h_t * dh) * ba + latent * bkv,  # queries in, outputs out, cache write
        ),
    ))
    # Decode: absorb the up-projections into the query and the output; attend the latent directly.
    rows.append(Operator(
        "mla_q_absorb", "gemm",
        flops=_vec(decode_seqs=2.0 * h_t * dh * rkv),
        bytes=_vec(one=h_t * dh * rkv * bw, decode_seqs=h_t * (dh + rkv) * ba),
        gemms=((rkv, dh, h_t),),
    ))
    rows.append(Operator(
        "attention_decode", "attention_decode",
        flops=_vec(decode_context=2.0 * h_t * latent + 2.0 * h_t * rkv),
        bytes=_vec(
            decode_context=latent * bkv,  # each cached latent read once for all heads
            decode_seqs=h_t * (latent + rkv) * ba + latent * bkv,  # latent queries in, outputs out, cache write
        ),
    ))
    rows.append(Operator(
        "mla_out_absorb", "gemm",
        flops=_vec(decode_seqs=2.0 * h_t * rkv * dh),
        bytes=_vec(one=h_t * rkv * dh * bw, decode_seqs=h_t * (rkv + dh) * ba),
        gemms=((dh, rkv, h_t),),
    ))
    geometry = AttentionGeometry(h_t, 1.0, latent, act_dtype, float(bkv), latent=True)
    return tuple(rows), geometry
