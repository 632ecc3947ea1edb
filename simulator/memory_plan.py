"""How a replica's GPU memory divides into weights, activations and KV cache.

KV capacity = GPU memory x utilisation - weights - activation/workspace
reserve, divided by KV bytes per token (docs/cost-model.md, "Memory"). The reserve
matters at the margin (it decides whether a 70B model fits on 2 GPUs), so
when the user does not give it we estimate it the way vLLM's profiling run
finds it -- the activations of the largest batch the scheduler may form, plus
the fp32 logits of its sequences -- plus a fixed runtime workspace.

A model that does not fit raises :class:`~capsim.errors.DoesNotFitError`
naming the shortfall and what would fix it.
"""

from __future__ import annotations

from dataclasses import dataclass

from capsim.errors import DoesNotFitError
from hwmodels.device import DeviceSpec
from simulator.costmodel.sharding import kv_elements_per_layer_per_gpu, kv_heads_per_gpu
from simulator.models.spec import ModelSpec

GIB = float(2**30)
#: CUDA context, cuBLAS/NCCL workspaces and allocator slack per GPU. An
#: assumption (vLLM logs show 0.5-1.5 GiB of "non-torch" memory on H100s).
RUNTIME_WORKSPACE_BYTES = 1.0 * GIB


@dataclass(frozen=True)
class MemoryPlan:
    """Per-GPU memory budget of one replica (worst pipeline stage)."""

    gpu_memory_bytes: float
    usable_bytes: float
    weights_bytes: float
    reserve_bytes: float
    kv_bytes_per_token: float  # per GPU
    kv_capacity_tokens: int  # per replica
    block_size: int
    host_kv_bytes_per_token: float = 0.0  # per GPU's share, when a technique keeps KV in host memory
    host_kv_bytes: float = 0.0  # host memory for KV, per GPU
    offloaded_weight_bytes: float = 0.0  # per GPU, kept in a slower tier and streamed in (weight offload)

    @property
    def kv_bytes(self) -> float:
        return self.usable_bytes - self.weights_bytes - self.reserve_bytes

    @property
    def kv_blocks(self) -> int:
        return self.kv_capacity_tokens // self.block_size


def weights_per_gpu(model: ModelSpec, tp: int, pp: int, bytes_per_weight: float) -> float:
    """Weight bytes on the most loaded GPU: its stage's layers split ``tp`` ways plus embeddings.

    With one stage a GPU holds 1/tp of the input embedding and of the LM head;
    with several, the first stage holds the embedding and the last the LM head,
    so the worst stage holds one ``V x d`` matrix (both when they are tied).
    """
    body, emb = _weight_params_per_gpu(model, tp, pp)
    if model.expert_weight_dtype is not None:  # experts in their own format (gpt-oss: MXFP4)
        return (body + emb) * bytes_per_weight + _expert_params_per_gpu(model, tp, pp) * (
            _expert_bytes(model) - bytes_per_weight)
    return (body + emb) * bytes_per_weight


def layer_weights_per_gpu(model: ModelSpec, tp: int, pp: int, bytes_per_weight: float) -> float:
    """Weight bytes of the transformer blocks (no embedding, no LM head) on the most loaded GPU.

    What an offload of the layers' weights moves out of device memory (the embedding and LM head stay).
    """
    body, _ = _weight_params_per_gpu(model, tp, pp)
    if model.expert_weight_dtype is not None:
        return body * bytes_per_weight + _expert_params_per_gpu(model, tp, pp) * (_expert_bytes(model) - bytes_per_weight)
    return body * bytes_per_weight


def _expert_bytes(model: ModelSpec) -> float:
    from simulator.costmodel.precision import bytes_per_element

    return bytes_per_element(model.expert_weight_dtype, field="model.expert_weight_dtype")


def _expert_params_per_gpu(model: ModelSpec, tp: int, pp: int) -> float:
    """Routed-expert parameters on the most loaded GPU (the blocks of :func:`_weight_params_per_gpu`, whose last
    stage holds MoE layers only when the model has that many)."""
    layers = model.moe_layers if pp == 1 else min(-(-model.num_layers // pp), model.moe_layers)
    return layers * model.num_experts * model.mlp_params_per_expert / tp


def _weight_params_per_gpu(model: ModelSpec, tp: int, pp: int) -> tuple[float, float]:
    """(block parameters, embedding and LM-head parameters) on the most loaded GPU."""
    layers_per_stage = -(-model.num_layers // pp)
    # With fewer KV heads than ranks each rank keeps a whole KV head (as the KV cache does),
    # so the K and V projections of the replicated heads are stored more than once.
    kv_heads_gpu = kv_heads_per_gpu(model.num_kv_heads, tp)
    replicated_kv = (kv_heads_gpu * tp - model.num_kv_heads) * 2 * model.hidden_size * model.head_dim
    # MLA's down-projections are whole on every rank: each rank holds the rest's 1/tp plus all of them.
    replicated_mla = model.mla_replicated_params_per_layer * (tp - 1)
    if pp == 1:  # every block, the leading dense ones (DeepSeek) smaller than the MoE rest
        body = (model.body_params + model.num_layers * (replicated_kv + replicated_mla)) / tp
    else:  # the last stage's blocks are the largest ones (dense blocks, if any, lead)
        body = layers_per_stage * (model.layer_params + replicated_kv + replicated_mla) / tp
    vd = model.vocab_size * model.hidden_size + model.learned_positions * model.hidden_size
    if pp == 1:
        emb = model.embedding_params / tp
    else:
        emb = vd / tp
    return body, emb


def activation_reserve(
    model: ModelSpec, tp: int, max_batch_tokens: int, max_seqs: int, act_bytes: float
) -> float:
    """Estimated peak activation memory per GPU plus runtime workspace.

    The largest live tensors of a forward pass over ``max_batch_tokens``
    tokens: the residual stream and a normalised copy (2 d), the QKV output,
    and the MLP's intermediate (gate and up for gated MLPs), split tp ways;
    plus fp32 logits of ``max_seqs`` sequences over the vocabulary.
    """
    d, f = model.hidden_size, model.ffn_size * (model.experts_per_token + model.num_shared_experts)
    if model.dense_layers and model.dense_ffn_size:
        f = max(f, model.dense_ffn_size)
    mats = 2 if model.mlp == "gated" else 1
    qkv = model.q_dim + 2 * model.kv_dim
    if model.is_mla:  # MLA's prefill form expands the latent to full keys and values (queries carry d_r more)
        qkv += model.num_heads * model.qk_rope_head_dim
    per_token = (2 * d + qkv / tp + mats * f / tp) * act_bytes
    logits = max_seqs * model.vocab_size / tp * 4.0
    return max_batch_tokens * per_token + logits + RUNTIME_WORKSPACE_BYTES


def plan_memory(
    model: ModelSpec,
    device: DeviceSpec,
    *,
    tp: int,
    pp: int,
    weight_bytes: float,
    kv_bytes: float,
    act_bytes: float,
    memory_utilization: float,
    block_size: int,
    reserve_bytes: float,
    technique_kv_bytes_per_token: float = 0.0,
    technique_reserved_bytes: float = 0.0,
    gpu_kv_fraction: float = 1.0,
    host_kv_bytes_per_token: float = 0.0,
    host_kv_bytes: float = 0.0,
    technique_kv_scale: float = 1.0,
    offloaded_weight_bytes: float = 0.0,
) -> MemoryPlan:
    """Budget one replica's memory; raise when nothing is left for the KV cache.

    ``technique_*`` are what the scenario's techniques add per GPU (a draft model's own KV per token,
    its weights); they are kept apart from the served model's figures so reports can show both.
    ``gpu_kv_fraction`` of the served model's KV stays on the GPU when a technique keeps the rest in host
    memory (``host_kv_bytes_per_token`` per GPU's share, ``host_kv_bytes`` set aside per GPU); the
    capacity is then the fewest tokens either tier holds, so KV in use never exceeds either.
    ``technique_kv_scale`` multiplies the served model's own KV bytes per token (a quantised cache).
    ``offloaded_weight_bytes`` per GPU live in a slower tier (weight offload) and take no device memory.
    """
    gpu = float(device.memory_bytes)
    usable = gpu * memory_utilization
    weights = weights_per_gpu(model, tp, pp, weight_bytes)
    if offloaded_weight_bytes:
        weights -= offloaded_weight_bytes
    layers_per_stage = -(-model.num_layers // pp)
    # KV heads are replicated when fewer than ranks; an MLA latent is whole on every rank.
    kv_per_token = layers_per_stage * kv_elements_per_layer_per_gpu(model, tp) * kv_bytes
    if gpu_kv_fraction != 1.0:
        kv_per_token *= gpu_kv_fraction
    if technique_kv_scale != 1.0:
        kv_per_token *= technique_kv_scale
    techniques_note = ""
    if technique_kv_bytes_per_token or technique_reserved_bytes:
        techniques_note = f" (of which {technique_reserved_bytes / GIB:.1f} GiB for the scenario's techniques)"
        kv_per_token += technique_kv_bytes_per_token
        reserve_bytes += technique_reserved_bytes
    left = usable - weights - reserve_bytes
    min_tokens = block_size
    if left < kv_per_token * min_tokens:
        short = (weights + reserve_bytes + kv_per_token * min_tokens - usable) / GIB
        raise DoesNotFitError(
            f"{model.name} does not fit on {device.name} with tp={tp}, pp={pp}: each GPU has "
            f"{usable / GIB:.1f} GiB usable ({device.memory_gib:g} GiB x {memory_utilization:g}) but needs "
            f"{weights / GIB:.1f} GiB of weights + {reserve_bytes / GIB:.1f} GiB of activations/workspace"
            f"{techniques_note} "
            f"+ KV cache; short by {short:.1f} GiB per GPU",
            where="deployment",
            fix="raise deployment.tp or deployment.pp, use a device with more memory, a smaller "
            "weight_dtype (fp8/int4), or a higher memory_utilization"
            + (", or lighten the techniques (a smaller draft model, fewer heads)" if techniques_note else ""),
        )
    if host_kv_bytes_per_token:
        if host_kv_bytes < host_kv_bytes_per_token * min_tokens:
            raise DoesNotFitError(
                f"the host memory set aside for KV ({host_kv_bytes / GIB:.2f} GiB per GPU) holds fewer than "
                f"{min_tokens} tokens at {host_kv_bytes_per_token:.0f} B per token",
                where="techniques", fix="raise the technique's host_kv_gib",
            )
        host_capacity = int(host_kv_bytes // host_kv_bytes_per_token)
        capacity = host_capacity if kv_per_token <= 0 else min(int(left // kv_per_token), host_capacity)
        capacity -= capacity % block_size
        return MemoryPlan(gpu, usable, weights, reserve_bytes, kv_per_token, capacity, block_size,
                          host_kv_bytes_per_token, host_kv_bytes, offloaded_weight_bytes)
    capacity = int(left // kv_per_token)
    capacity -= capacity % block_size
    return MemoryPlan(gpu, usable, weights, reserve_bytes, kv_per_token, capacity, block_size,
                      offloaded_weight_bytes=offloaded_weight_bytes)
