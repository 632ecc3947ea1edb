"""How tensor parallelism splits a layer's attention heads over the GPUs of a replica.

Why one module: the operator table (FLOPs and bytes per GPU), the memory plan
(KV cache and weights per GPU) and the calibration harness (kernel shapes it
times) must agree on how many heads one GPU holds; a second copy of the
formula is a second place for them to drift apart.
"""

from __future__ import annotations


def heads_per_gpu(heads: int, tp: int) -> float:
    """Query heads on one GPU: they split evenly (``tp`` divides ``heads``; the system checks it)."""
    return heads / tp


def kv_heads_per_gpu(kv_heads: int, tp: int) -> int:
    """KV heads on one GPU: ``ceil(kv_heads / tp)``, so with fewer KV heads than ranks each rank keeps a
    whole head (vLLM replicates them) rather than a fraction of one."""
    return -(-kv_heads // tp)
