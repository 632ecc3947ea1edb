"""Prefix caching and KV reuse: a prompt whose leading blocks another request already computed reuses their KV.

How capsim models it (nothing fitted to a paper's speed-up; the saving is what the cost model charges for
the prefill tokens a hit skips):

* **Identities.** Requests carry one id per prompt block from the request stream: the Mooncake trace's
  ``hash_ids`` (512 tokens each), or a synthetic pattern (``workload.sharing``: a system prompt shared by all,
  few-shot templates, multi-turn conversations; :mod:`traces.sharing` states each one's hit structure).
* **Cache.** Each replica's KV block manager keeps computed prompt blocks after their request leaves
  (:mod:`simulator.prefix_cache`): reference counts, least-recently-released eviction of unreferenced blocks,
  capacity shared with the running sequences' KV (cached but unreferenced blocks count as free). This is vLLM's
  automatic prefix caching and SGLang's radix cache at block granularity.
* **Hits.** On admission, a request references the longest cached prefix of its prompt (whole blocks, leaving at
  least one token to compute); its prefill chunk then has ``tokens = prompt - hit`` new tokens after
  ``cached = hit`` cached ones, so the GEMMs, KV writes and logits cover only the new tokens while attention
  still reads (and attends to) the cached ones. Every scheduler gets it through the block manager's
  ``attach`` call at admission; a shared prefix is also stored once, however many running requests use it.
* **Shared-prefix attention** (``shared_prefix_attention``, Hydragen): a decode step reads a cached unit that
  ``c`` sequences of the batch share once instead of ``c`` times, so the step's attended context is the batch's
  distinct KV tokens; prefill attention and blocks are unchanged.
* **Reports.** The run's summary gains ``prefix_hit_rate_tokens`` (cached prompt tokens / prompt tokens) and
  ``prefix_hit_rate_requests`` (requests with a hit), measured at each request's first admission; the request
  table gains ``cached_tokens``. The ``cache-aware`` router sends a request to the replica holding its longest
  cached prefix, within a load-imbalance guard.

Not modelled: caching of generated tokens (a later turn reuses earlier prompts only); sharing below whole
blocks; a cache tier below HBM (host memory, remote store); the hashing cost itself (microseconds per block).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from pydantic import Field

from capsim.errors import CapsimError
from simulator.prefix_cache import PrefixIndex
from simulator.requests import RequestTable
from simulator.techniques.base import TECHNIQUES, Technique, TechniqueParams
from simulator.techniques.context import BuildContext


class PrefixCachingParams(TechniqueParams):
    """The sharing unit comes from the request stream's block ids; the one parameter is the attention kernel."""

    shared_prefix_attention: bool = Field(
        False,
        description="Hydragen: a decode step reads a cached prefix shared by several sequences of the batch once "
        "(its KV counted once in the step's attended context) instead of once per sequence.",
    )


class PrefixCachePolicy:
    """Built by the technique's ``admit`` hook; bound once per simulation to its requests and their block ids."""

    def __init__(self, shared_attention: bool = False):
        self.shared_attention = shared_attention

    def bind(
        self,
        table: RequestTable,
        hashes: Sequence[np.ndarray] | None,
        unit_tokens: int | None,
        clock: Callable[[], float],
    ) -> PrefixIndex:
        if hashes is None or not unit_tokens:
            raise CapsimError(
                "prefix caching needs prompt block identities, and this workload has none",
                where="techniques (prefix-caching)",
                fix="replay a trace that carries them (trace: {name: mooncake-conversation}) or add a sharing "
                "pattern (workload.sharing: {pattern: system-prompt, shared_tokens: 1024})",
            )
        return PrefixIndex(table, hashes, unit_tokens, clock, self.shared_attention)


@TECHNIQUES.register("prefix-caching", aliases=("automatic-prefix-caching", "apc", "radix-cache", "prefix-cache"))
class PrefixCaching(Technique):
    Params = PrefixCachingParams
    summary = "Reuse the KV of cached prompt prefixes (vLLM automatic prefix caching, SGLang RadixAttention)."
    mechanism = __doc__
    sources = (
        "Kwon et al. Efficient Memory Management for Large Language Model Serving with PagedAttention. "
        "SOSP 2023 (arXiv 2309.06180) -- block sharing; vLLM automatic prefix caching.",
        "Zheng et al. SGLang: Efficient Execution of Structured Language Model Programs (RadixAttention). "
        "NeurIPS 2024 (arXiv 2312.07104).",
        "Qin et al. Mooncake: Trading More Storage for Less Computation. USENIX FAST 2025 -- the trace's "
        "512-token block ids.",
        "Juravsky et al. Hydragen: High-Throughput LLM Inference with Shared Prefixes (arXiv 2402.05099).",
    )
    # The KV of a shared block must be the same for every request using it; a retention policy rewrites a
    # sequence's KV after its prefill (and the block accounting of both would have to be merged).
    incompatible = ("kv-eviction",)
    exclusive = ("admit",)

    def admit(self, ctx: BuildContext) -> PrefixCachePolicy:
        return PrefixCachePolicy(self.params.shared_prefix_attention)

    def keeps_planner_bounds(self) -> bool:
        return False  # a hit makes a prefill cheaper than the analytic bound of the plain deployment


__all__ = ["PrefixCachePolicy", "PrefixCaching", "PrefixCachingParams"]
