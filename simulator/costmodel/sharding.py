"""How tensor parallelism splits a layer's attention heads over the GPUs of a replica.

Why one module: the operator table (FLOPs and bytes per GPU), the memory plan
(KV cache and weights per GPU) and the calibration harness (kernel shapes it
times) must agree on how many heads one GPU holds; a second copy of the
formula is a second place for them to drift apart.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the spec imports nothing from here; a run-time import would only add a cycle risk
    from simulator.models.spec import ModelSpec


def heads_per_gpu(heads: int, tp: int) -> float:
    """Query heads on one GPU: they split evenly (``tp`` divides ``heads``; the system checks it)."""
    return heads / tp


def kv_heads_per_gpu(kv_heads: int, tp: int) -> int:
    """KV heads on one GPU: ``ceil(kv_heads / tp)``, so with fewer KV heads than ranks each rank keeps a
    whole head (vLLM replicates them) rather than a fraction of one."""
    return -(-kv_heads // tp)


def kv_elements_per_layer_per_gpu(model: ModelSpec, tp: int) -> float:
    """KV-cache elements one token stores in one layer on one GPU.

    Ordinary attention: a key and a value per KV head the GPU holds, ``2 * ceil(h_kv / tp) * d_h``.
    Multi-head latent attention: the whole latent plus rotary key, ``kv_lora_rank + qk_rope_head_dim``,
    on every rank -- the latent is shared by all heads, so splitting heads does not split it (vLLM's MLA
    backends keep it replicated; DeepSeek-V3's own deployment splits it with data-parallel attention
    instead, arXiv:2412.19437 section 3.4, which capsim does not model).
    """
    if model.is_mla:
        return float(model.kv_elements_per_token_layer)
    return 2.0 * kv_heads_per_gpu(model.num_kv_heads, tp) * model.head_dim
