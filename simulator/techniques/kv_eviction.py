"""KV eviction, merging and structure: each sequence keeps (and attends) fewer tokens' KV, or fewer bytes per
token.

Why one technique for the family: which tokens a method keeps (heavy hitters, an observation window's
favourites, sinks and a recent window) decides accuracy, which capsim does not model; what it changes in a
serving system is *how many* tokens each sequence stores and attends and what choosing them costs. Those
reduce to a retention function per request (:class:`simulator.kvcache.Retention`) and a few operator-table
edits, which this module derives from the method's parameters.

How capsim models it (nothing fitted to a paper's speed-up):

* **Token retention** (``policy``), applied once the prompt's prefill is done:

  - ``snapkv``: the prompt's KV is compressed once to ``budget`` tokens; generated tokens are all kept
    (SnapKV). A sequence stores ``min(prompt, budget) + generated`` tokens.
  - ``h2o``: the cache is capped at ``budget`` tokens during decoding, evicting one token per new one (H2O's
    heavy hitters plus recent tokens). A sequence stores ``min(prompt + generated, budget)``.
  - ``streaming``: the cap is ``sink_tokens + window_tokens`` (StreamingLLM's attention sinks plus a window).
  - ``none``: no eviction (for the structural options alone).

  ``budget`` is ``budget_tokens``, or ``retention`` times each request's prompt. Per-layer or per-head
  budgets (pyramids, head-wise allocation) enter as their mean: only the total kept tokens cost memory and
  bandwidth. ``full_head_fraction`` of the KV heads keep every token while the rest follow the policy
  (DuoAttention's retrieval versus streaming heads: ``policy: streaming``).
* **Capacity**: the block manager counts ``ceil(kept / block_size)`` blocks per sequence, so more sequences
  fit; the scheduler's admission, growth and preemption checks all see the kept tokens.
* **Decode attention** reads the kept tokens only: the step's summed context is ``sum_i kept_i``, which stops
  growing for a sequence at its cap. A decode run is affine until the next sequence reaches its cap, where
  the engine cuts it (the attended context is piecewise linear in the steps, one piece per cap reached).
* **Selection cost**: ``selection_flops`` operations per attended token per query head per layer and step
  (H2O accumulates attention scores); SnapKV's one-off scoring is ``2 * observation_window * head_dim``
  operations per prompt token per query head per layer (the window's queries against the prompt's keys).
  Both are a ``kv_selection`` row with no bytes of its own (its operands are the attention rows' reads).
* **Structure**: ``merged_layer_fraction`` of the layers share their KV with a neighbour (MiniCache merges
  adjacent deep layers pairwise): KV bytes per token times ``1 - merged / 2``; each layer still reads its
  (reconstructed) KV, so attention bytes are unchanged. ``key_channel_pruning`` of the key channels are
  dropped (ThinK): KV bytes per token times ``1 - pruned / 2``, and the attention rows' KV bytes and their
  query-key FLOPs (half of attention's) by the same factors.

Not modelled: which tokens are kept and the accuracy that buys; the prompt's full KV during its own prefill
(the compression happens as the prefill completes, so its transient peak is not charged); a recomputed
sequence after preemption attends its whole context during the recompute; the metadata of merged layers
(per-token magnitudes, a few bytes).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from capsim.types import Count, OptionalCount
from simulator.costmodel import features as F
from simulator.costmodel.operators import Operator, OperatorTable
from simulator.costmodel.sharding import heads_per_gpu, kv_heads_per_gpu
from simulator.kvcache import NO_CAP, Retention
from simulator.requests import RequestTable
from simulator.techniques.base import TECHNIQUES, MemoryTerms, Technique, TechniqueParams
from simulator.techniques.context import BuildContext

Policy = Literal["snapkv", "h2o", "streaming", "none"]


class KVEvictionParams(TechniqueParams):
    """Parameters of KV eviction, merging and structure (units in each description)."""

    policy: Policy = Field(
        "h2o", description="Which tokens stay: 'snapkv' (prompt compressed once to the budget after prefill), "
        "'h2o' (cache capped at the budget during decoding), 'streaming' (sink_tokens + window_tokens), "
        "'none' (no eviction: only the structural options).")
    budget_tokens: OptionalCount = Field(
        None, ge=1, description="Tokens kept per sequence (snapkv: of the prompt; h2o: in all). Give this or "
        "retention.")
    retention: float | None = Field(
        None, gt=0, le=1, description="Fraction of each request's prompt kept as its budget (instead of "
        "budget_tokens).")
    sink_tokens: Count = Field(4, ge=0, description="Initial tokens always kept (streaming).")
    window_tokens: Count = Field(1020, ge=1, description="Most recent tokens kept (streaming).")
    full_head_fraction: float = Field(
        0.0, ge=0, lt=1, description="Fraction of KV heads that keep every token (DuoAttention's retrieval "
        "heads); the rest follow the policy.")
    selection_flops: float = Field(
        0.0, ge=0, description="Operations per attended token per query head per layer each decode step to pick "
        "what to evict (e.g. 1 to accumulate H2O's attention scores).")
    observation_window: Count = Field(
        32, ge=1, description="Prompt tokens whose queries score the prompt's keys once after prefill (snapkv).")
    merged_layer_fraction: float = Field(
        0.0, ge=0, le=1, description="Fraction of layers whose KV is merged pairwise with a neighbour's "
        "(MiniCache).")
    key_channel_pruning: float = Field(
        0.0, ge=0, lt=1, description="Fraction of key channels pruned from the cache (ThinK).")

    @model_validator(mode="after")
    def _consistent(self):
        has_budget = self.budget_tokens is not None or self.retention is not None
        if self.budget_tokens is not None and self.retention is not None:
            raise ValueError("give budget_tokens or retention, not both")
        if self.policy in ("snapkv", "h2o") and not has_budget:
            raise ValueError(f"policy {self.policy!r} needs budget_tokens or retention")
        if self.policy in ("streaming", "none") and has_budget:
            raise ValueError(f"policy {self.policy!r} takes no budget_tokens or retention "
                             "(streaming keeps sink_tokens + window_tokens)")
        if self.policy == "none" and self.full_head_fraction:
            raise ValueError("full_head_fraction needs a policy for the other heads (e.g. streaming)")
        return self

    def memory_scale(self) -> float:
        """Bytes per token of the structural options, relative to the unmodified cache."""
        return (1.0 - self.merged_layer_fraction / 2.0) * (1.0 - self.key_channel_pruning / 2.0)


class RetentionPolicy:
    """The kv_policy hook's product: budgets from each request's prompt, bound per simulation."""

    def __init__(self, p: KVEvictionParams):
        self.p = p

    def budgets(self, prompt: np.ndarray) -> np.ndarray:
        p = self.p
        if p.policy == "streaming":
            return np.full(len(prompt), p.sink_tokens + p.window_tokens, dtype=np.int64)
        if p.budget_tokens is not None:
            return np.full(len(prompt), p.budget_tokens, dtype=np.int64)
        return np.maximum(1, np.ceil(p.retention * prompt)).astype(np.int64)

    def bind(self, table: RequestTable) -> Retention:
        prompt = table.prompt
        budget = self.budgets(prompt)
        if self.p.policy == "snapkv":
            drop, cap = np.maximum(0, prompt - budget), np.full(len(prompt), NO_CAP, dtype=np.int64)
        else:
            drop, cap = np.zeros(len(prompt), dtype=np.int64), budget
        return Retention(prompt, drop, cap, self.p.full_head_fraction)


@TECHNIQUES.register("kv-eviction", aliases=("kv-evict", "kv-compression"))
class KVEviction(Technique):
    Params = KVEvictionParams
    needs_key_value_heads = True
    summary = "Keep fewer tokens' KV per sequence (SnapKV, H2O, StreamingLLM, DuoAttention) or fewer bytes per " \
              "token (MiniCache, ThinK)."
    mechanism = __doc__
    sources = (
        "Zhang et al. H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large Language Models. "
        "NeurIPS 2023 (arXiv 2306.14048).",
        "Li et al. SnapKV: LLM Knows What You are Looking for Before Generation (arXiv 2404.14469).",
        "Xiao et al. Efficient Streaming Language Models with Attention Sinks (StreamingLLM, arXiv 2309.17453).",
        "Xiao et al. DuoAttention: Efficient Long-Context LLM Inference with Retrieval and Streaming Heads "
        "(arXiv 2410.10819).",
        "Liu et al. MiniCache: KV Cache Compression in Depth Dimension for Large Language Models "
        "(arXiv 2405.14366).",
        "Xu et al. ThinK: Thinner Key Cache by Query-Driven Pruning (arXiv 2407.21018).",
    )
    exclusive = ("kv_policy",)

    def memory(self, terms: MemoryTerms, ctx: BuildContext) -> MemoryTerms:
        scale = self.params.memory_scale()
        if scale == 1.0:
            return terms
        return terms.scaled(scale, note=f"KV bytes per token x {scale:.3f} (merged layers, pruned key channels)")

    def operators(self, table: OperatorTable, ctx: BuildContext) -> OperatorTable:
        p = self.params
        heads = heads_per_gpu(ctx.model.num_heads, ctx.deployment.tp)
        dh = float(ctx.model.head_dim)
        keep = 1.0 - p.key_channel_pruning / 2.0  # of the KV bytes, and of attention's FLOPs (QK^T is half)
        layer_ops = table.layer_ops
        if p.key_channel_pruning:
            hkv = float(kv_heads_per_gpu(ctx.model.num_kv_heads, ctx.deployment.tp))
            kv_bytes = table.attention.kv_bytes if table.attention is not None else 2.0
            cut = 2.0 * hkv * dh * kv_bytes * (1.0 - keep)  # bytes per token per layer no longer stored

            def thin(o: Operator) -> Operator:
                cols = {"attention_decode": (F.DECODE_CONTEXT, F.DECODE_SEQS, F.DECODE_CONTEXT),
                        "attention_prefill": (F.PREFILL_KV_READ, F.PREFILL_TOKENS, F.PREFILL_ATTN_WORK)}
                if o.op_class not in cols:
                    return o
                read, write, work = cols[o.op_class]
                fl, by = o.flops.copy(), o.bytes.copy()
                by[read] -= cut
                by[write] -= cut
                fl[work] *= keep
                return replace(o, flops=fl, bytes=by)

            layer_ops = tuple(thin(o) for o in layer_ops)
        fl = np.zeros(F.NUM_FEATURES)
        fl[F.DECODE_CONTEXT] = p.selection_flops * heads
        if p.policy == "snapkv":
            fl[F.PREFILL_TOKENS] = 2.0 * p.observation_window * dh * heads
        if fl.any():
            layer_ops += (Operator("kv_selection", "elementwise", flops=fl, bytes=np.zeros(F.NUM_FEATURES),
                                   launches=0.0),)
        return table if layer_ops is table.layer_ops else table.with_ops(layer_ops=layer_ops)

    def kv_policy(self, ctx: BuildContext) -> RetentionPolicy | None:
        return None if self.params.policy == "none" else RetentionPolicy(self.params)


def blocks_held(policy: KVEvictionParams, prompt: int, generated: int, block_size: int) -> int:
    """Blocks one sequence holds after ``generated`` tokens (a hand-check helper for docs and tests)."""
    table = RequestTable(np.array([0.0]), np.array([prompt]), np.array([generated + 1]))
    r = RetentionPolicy(policy).bind(table) if policy.policy != "none" else None
    n = prompt + generated
    kept = n if r is None else float(r.retained(0, n))
    return math.ceil(kept / block_size)


__all__ = ["KVEviction", "KVEvictionParams", "RetentionPolicy", "blocks_held"]
