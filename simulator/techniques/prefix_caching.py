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

* **Remote store** (``remote_store``, CacheGen / LMCache): every computed prompt block is also written to a
  store shared by all replicas; at admission the blocks after the local hit that the store holds are loaded
  over a catalog network link (bytes / ``compression_ratio``, plus a GPU decode at ``decode_gbps``) when that
  takes less time than the cost model's marginal prefill price of those tokens, else recomputed; the iteration
  running a loaded chunk waits for the load (:mod:`simulator.remote_kv`). The summary gains
  ``remote_hit_rate_tokens``, ``remote_loads``, ``remote_recomputes``, ``remote_bytes_loaded``.

* **Generated tokens** (``cache_generated``): at release, the full blocks of a request's answer stay cached too
  (vLLM), so turn k+1 of a conversation reuses turn k's prompt and answer.

* **Chunk reuse** (``reuse``, CacheBlend / Cache-Craft / KVShare): a prompt unit after the prefix hit whose
  position-independent chunk block (a ``rag`` pattern's corpus chunk) is cached on the replica has its KV copied
  from there, and ``recompute_fraction`` of those tokens recomputed; the prefill computes only the rest, the
  copy (read + write of the reused KV in HBM) delays its iteration. The request table gains ``reused_tokens``,
  the summary ``chunk_reuse_rate_tokens`` and ``chunk_reused_tokens``.

* **Host tier** (``host_tier``, AttentionStore / LMCache CPU offload): each replica keeps the units its HBM cache
  evicts in its own host DRAM (LRU, ``capacity_gib``); at admission the units after the HBM hit that its host
  holds are loaded over the device's host link (PCIe) with the remote store's load-vs-recompute decision, before
  the remote store is tried. The cache-aware router counts host-held units as the replica's. The summary gains
  ``host_hit_rate_tokens``, ``host_loads``, ``host_recomputes``, ``host_loaded_tokens``, ``host_bytes_loaded``.

Not modelled: sharing below whole blocks; an SSD tier below host memory; PCIe contention between host loads
and other host traffic (swaps); the hashing cost itself (microseconds per block).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from capsim.errors import CapsimError
from hwmodels.network import LinkConfig, resolve_link
from simulator.costmodel.precision import bytes_per_element
from simulator.prefix_cache import ChunkReuse, PrefixIndex
from simulator.remote_kv import ContextLoader, RemoteStore, lone_prefill_price
from simulator.requests import RequestTable
from simulator.techniques.base import TECHNIQUES, Technique, TechniqueParams
from simulator.techniques.context import BuildContext


class RemoteStoreParams(BaseModel):
    """A KV store shared by every replica behind a network link (LMCache remote backend, Mooncake Store), with
    CacheGen-style compression of what travels over the link."""

    model_config = ConfigDict(extra="forbid")

    link: LinkConfig = Field(
        ...,
        description="The link from the store to each replica: a catalog link of hwmodels/network.yaml "
        "(a name, or {kind, bandwidth_gbps, latency_us, per}); per-GPU links have one lane per GPU of the replica.",
    )
    compression_ratio: float = Field(
        1.0,
        ge=1.0,
        allow_inf_nan=False,
        description="KV bytes over bytes on the wire (1: raw KV; CacheGen reports 3.5-4.3x over 8-bit KV).",
    )
    decode_gbps: float = Field(
        0.0,
        ge=0.0,
        allow_inf_nan=False,
        description="GPU decompression throughput, gigabits per second of restored KV (0: no decode cost).",
    )
    capacity_gib: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="Store capacity (GiB of stored, compressed KV; least recently used blocks dropped first); "
        "null: unbounded.",
    )

    @field_validator("link", mode="before")
    @classmethod
    def _link_name(cls, v):
        return {"kind": v} if isinstance(v, str) else v


class HostTierParams(BaseModel):
    """A host-memory KV tier per replica (AttentionStore / CachedAttention, LMCache's CPU offload): the prefix
    blocks its HBM cache evicts are kept in the server's DRAM and loaded back over the device's host link."""

    model_config = ConfigDict(extra="forbid")

    capacity_gib: float = Field(
        ...,
        gt=0,
        allow_inf_nan=False,
        description="Host DRAM per replica for evicted KV, GiB (least recently used blocks dropped first).",
    )


class PrefixCachingParams(TechniqueParams):
    """The sharing unit comes from the request stream's block ids; the parameters are the attention kernel and
    an optional remote store."""

    shared_prefix_attention: bool = Field(
        False,
        description="Hydragen: a decode step reads a cached prefix shared by several sequences of the batch once "
        "(its KV counted once in the step's attended context) instead of once per sequence.",
    )
    cache_generated: bool = Field(
        False,
        description="vLLM's automatic prefix caching: also keep the full blocks of each answer when its request "
        "finishes, so the next turn of a conversation reuses the previous prompt and answer (recommended; off "
        "keeps earlier releases' results: prompt blocks only).",
    )
    reuse: bool = Field(
        False,
        description="CacheBlend / Cache-Craft: reuse the cached KV of chunks that are not a prefix (a rag sharing "
        "pattern's corpus chunks), recomputing recompute_fraction of their tokens.",
    )
    recompute_fraction: float = Field(
        0.15,
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="reuse: share of a reused chunk's tokens recomputed to restore its cross-attention "
        "(CacheBlend recomputes about 15 %).",
    )
    remote_store: RemoteStoreParams | None = Field(
        None,
        description="CacheGen/LMCache: a store holding the KV of every prefix block any replica computed; at "
        "admission the blocks after the local hit are loaded over the link when that beats recomputing them.",
    )
    host_tier: HostTierParams | None = Field(
        None,
        description="AttentionStore / LMCache CPU offload: each replica keeps the prefix blocks its HBM cache "
        "evicts in host DRAM (capacity_gib) and loads them back over the device's link to its host tier (PCIe: "
        "interconnect.pcie_gbs and link_latency_us, one lane per GPU) when that beats recomputing them; tried "
        "before the remote store. Null: HBM only.",
    )


class PrefixCachePolicy:
    """Built by the technique's ``admit`` hook; bound once per simulation to its requests and their block ids."""

    def __init__(
        self,
        shared_attention: bool = False,
        remote: Callable[[int, int], ContextLoader] | None = None,
        cache_generated: bool = False,
        reuse: Callable[[], ChunkReuse] | None = None,
        host: Callable[[int, int], tuple[ContextLoader, int]] | None = None,
    ):
        self.shared_attention = shared_attention
        self.cache_generated = cache_generated
        self.reuse = reuse  # builds a run's chunk-reuse record; None: prefix hits only
        self.remote = remote  # builds a run's context loader (requests, unit tokens); None: no remote store
        self.host = host  # builds a run's host-tier loader and per-replica capacity in units; None: no host tier

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
        reuse = self.reuse() if self.reuse is not None else None
        index = PrefixIndex(table, hashes, unit_tokens, clock, self.shared_attention, self.cache_generated, reuse)
        if self.remote is not None:
            index.remote = self.remote(table.n, unit_tokens)
        if self.host is not None:
            index.host, index.host_units = self.host(table.n, unit_tokens)
        return index


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
        "Liu et al. CacheGen: KV Cache Compression and Streaming for Fast Large Language Model Serving. "
        "ACM SIGCOMM 2024 (arXiv 2310.07240) -- remote KV loading with compression.",
        "Gao et al. Cost-Efficient Large Language Model Serving for Multi-turn Conversations with "
        "CachedAttention (AttentionStore). USENIX ATC 2024 (arXiv 2403.19708) -- KV of past turns kept in host "
        "memory and loaded back over PCIe.",
    )
    # The KV of a shared block must be the same for every request using it; a retention policy rewrites a
    # sequence's KV after its prefill (and the block accounting of both would have to be merged).
    incompatible = ("kv-eviction",)
    exclusive = ("admit",)

    def admit(self, ctx: BuildContext) -> PrefixCachePolicy:
        cfg = self.params.remote_store
        p = self.params
        return PrefixCachePolicy(
            p.shared_prefix_attention,
            None if cfg is None else _loader(cfg, ctx),
            p.cache_generated,
            _chunk_reuse(p.recompute_fraction, ctx) if p.reuse else None,
            None if p.host_tier is None else _host_loader(p.host_tier, ctx),
        )

    def keeps_planner_bounds(self) -> bool:
        return False  # a hit makes a prefill cheaper than the analytic bound of the plain deployment


def _chunk_reuse(fraction: float, ctx: BuildContext) -> Callable[[], ChunkReuse]:
    """A reused token's copy: its KV read and written once in HBM, every GPU its own shard in parallel."""
    dep = ctx.deployment
    per_token = ctx.model.kv_bytes_per_token(bytes_per_element(dep.kv_dtype, field="deployment.kv_dtype"))
    seconds = 2.0 * per_token / (dep.tp * dep.pp) / ctx.device.memory_bandwidth
    return lambda: ChunkReuse(fraction, seconds)


def _loader(cfg: RemoteStoreParams, ctx: BuildContext) -> Callable[[int, int], ContextLoader]:
    """Resolve the store's link and prices once per system; each run binds a fresh store and loader."""
    dep = ctx.deployment
    gpus = dep.tp * dep.pp
    link = resolve_link(
        cfg.link, ctx.device, ctx.device, gpus, gpus, where="techniques.prefix-caching.remote_store.link"
    )
    per_token = ctx.model.kv_bytes_per_token(bytes_per_element(dep.kv_dtype, field="deployment.kv_dtype"))
    price = lone_prefill_price(ctx.main_cost_model())

    def build(n: int, unit_tokens: int) -> ContextLoader:
        capacity = None
        if cfg.capacity_gib is not None:
            capacity = int(cfg.capacity_gib * 2**30 // (unit_tokens * per_token / cfg.compression_ratio))
        return ContextLoader(
            n,
            RemoteStore(capacity),
            per_token,
            link.bandwidth,
            link.latency_s,
            cfg.compression_ratio,
            cfg.decode_gbps * 1e9 / 8,
            price,
        )

    return build


def _host_loader(cfg: HostTierParams, ctx: BuildContext) -> Callable[[int, int], tuple[ContextLoader, int]]:
    """The replica's link to host DRAM (the device's main-tier-to-host link, each GPU its own lane loading its
    shard of the KV) and the tier's capacity in units, resolved once per system."""
    dep = ctx.deployment
    link = ctx.device.transfer_link(ctx.device.main_tier, "host", where="techniques.prefix-caching.host_tier")
    per_token = ctx.model.kv_bytes_per_token(bytes_per_element(dep.kv_dtype, field="deployment.kv_dtype"))
    price = lone_prefill_price(ctx.main_cost_model())
    bandwidth = link.bandwidth * dep.tp * dep.pp

    def build(n: int, unit_tokens: int) -> tuple[ContextLoader, int]:
        units = int(cfg.capacity_gib * 2**30 // (unit_tokens * per_token))
        if units < 1:
            raise CapsimError(
                f"a host tier of {cfg.capacity_gib} GiB holds no {unit_tokens}-token block "
                f"({unit_tokens * per_token / 2**30:.3g} GiB each)",
                where="techniques.prefix-caching.host_tier.capacity_gib",
                fix="give the host tier at least one block's worth of memory",
            )
        return ContextLoader(n, None, per_token, bandwidth, link.latency_s, 1.0, 0.0, price), units

    return build


__all__ = ["HostTierParams", "PrefixCachePolicy", "PrefixCaching", "PrefixCachingParams", "RemoteStoreParams"]
