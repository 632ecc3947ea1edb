"""Sparse attention: decode steps that read a selected fraction of the KV cache (kept whole, in HBM or in host
memory), and prefills that compute a fraction of the causal attention pairs.

Decode (``sparse-attention``; Quest, Double Sparsity, ShadowKV, InfLLM, TidalDecode, A2ATS). The whole KV
cache is kept; each step scores a compact summary of it and attends to the ``density`` share it selects.
Everything is an edit of the operator table, priced by the same pricers as the rest of the step:

* **Sparse read.** The decode-attention row's per-context-token FLOPs and bytes are scaled by the effective
  density ``rho_eff = (D + (L - D) * density) / L`` -- ``D`` of the ``L`` layers stay dense (Quest leaves the
  first layers dense; TidalDecode's selection layers attend fully). The per-sequence terms (the query, the
  new token's KV written) are unchanged.
* **Selection.** A new ``kv_select`` row: per page of ``P`` tokens the selector keeps ``v`` summary vectors
  of ``m`` channels per KV head and scores every query head against them (a multiply-add per channel), so
  per context token and sparse layer it reads ``v * m * h_kv * b_kv / P`` bytes and does ``2 * v * m * h / P``
  FLOPs. Quest: ``v = 2`` (the page's per-channel min and max keys), ``m = d_h``; Double Sparsity: ``P = 1``,
  ``m`` label channels; one landmark per chunk: ``v = 1``. The summaries are stored: ``v * m * h_kv * b_kv /
  P`` extra KV bytes per token per sparse layer. The top-k over page scores is not charged (one pass over
  ``1/P`` of the context's scores, far below the summary read).
* **KV in host memory** (``kv_location: host``; ShadowKV, InfLLM; or any other memory tier of the device by
  name, e.g. an ``nvme`` tier for FlexGen's KV on disk, fetched over that tier's link). The served model's KV (``kv``) or its
  values (``values``, ShadowKV: the keys stay on the GPU as a rank-``r`` factor, ``r * b_kv`` bytes per token
  per layer) live in host memory, sized by ``host_kv_gib`` (devices do not model host DRAM yet). Each step
  moves the selected entries over PCIe: a ``transfer`` row on the device's PCIe link, ``rho_eff * n * h_kv *
  d_h * b_kv`` bytes per context token (``n`` = 2 for keys and values, 1 for values), plus the KV every new
  token writes out (prompt and decode tokens). ShadowKV rebuilds the selected keys from the factor: a
  ``kv_select`` row of ``2 * r * h_kv * d_h`` FLOPs and ``r * b_kv`` bytes per selected token, plus the
  ``r x h_kv d_h`` right factor read once per sequence. With ``overlap`` the fetch runs beside the GPU's
  attention work of the layer (ShadowKV overlaps value fetching with key reconstruction on separate CUDA
  streams): the group costs the longer of the GPU lane and the PCIe lane. KV capacity is the fewer tokens
  the GPU or the host holds.

Prefill (``sparse-prefill``; MInference, LServe). The prefill-attention row's FLOPs per causal pair are
scaled by ``density``; estimating the pattern adds a ``kv_select`` row in which the last
``estimate_queries`` queries of each chunk score every key it attends (``2 * h * d_h * estimate_queries``
FLOPs and ``h_kv * d_h * b_kv`` bytes per KV token read).

Token budget (``budget_tokens: B`` instead of ``density``): a sparse layer reads ``min(c, B)`` of each sequence's
context, so a context within the budget is read whole. The rows of selected tokens keep coefficients over the
whole context and carry the budget; the pricer registry wraps their pricers (``pricers.BudgetedPricer``) to
price them at ``C - s max(0, C - b B)`` -- each of the batch's ``b`` sequences at the mean context, exact for one
sequence or a batch wholly above or below ``B``, an over-read otherwise. Runs with a budget are priced per step.

Not modelled: accuracy (density is an input, chosen from the paper's accuracy results); a speculation
round's several queries selecting more than one query's pages (the selection is scored once per step); GPU
caches of recently fetched entries (ShadowKV's temporal-locality cache); PCIe reads and writes sharing one
direction's bandwidth (charged as one lane, which overstates write-heavy prefills). Split-KV kernels for very
long contexts (Lean Attention) are the ``decode-kernel`` technique, which composes with this one.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from capsim.errors import CapsimError, DoesNotFitError
from capsim.types import Count, Flag, OptionalCount
from hwmodels.links import Link
from simulator.costmodel import features as F
from simulator.costmodel.operators import AttentionGeometry, Operator, OperatorTable
from simulator.memory_plan import GIB
from simulator.techniques.base import TECHNIQUES, MemoryTerms, Technique, TechniqueParams, attention_geometry
from simulator.techniques.context import BuildContext

OVERLAP_GROUP = "kv_fetch"
"""The overlap group of a layer's GPU attention work and its PCIe fetch (rows with this ``overlap`` name)."""


def _vec(**coefficients: float) -> np.ndarray:
    v = np.zeros(F.NUM_FEATURES)
    for name, value in coefficients.items():
        v[F.FEATURE_NAMES.index(name)] = value
    return v


class SparseAttentionParams(TechniqueParams):
    """Parameters of decode-time sparse attention (units in each description)."""

    density: float | None = Field(
        None, gt=0, le=1, description="Fraction of each sequence's context KV a decode step reads in a sparse layer "
        "(set this or budget_tokens)."
    )
    budget_tokens: OptionalCount = Field(
        None, ge=1, description="Tokens of each sequence's context a decode step reads in a sparse layer: min(c, B) "
        "at context c, so a context shorter than the budget is read densely (Quest's token budget; set this or "
        "density)."
    )
    page_size: Count = Field(16, ge=1, description="Tokens per page the selector summarises and selects "
                             "(Quest: a KV-cache page; 1 selects single tokens).")
    summary_vectors: Count = Field(
        2, ge=0, description="Summary vectors kept per page and KV head and scored each step (Quest: 2, the "
        "per-channel min and max keys; a landmark: 1; 0: selection costs nothing, an idealised oracle)."
    )
    summary_channels: OptionalCount = Field(
        None, ge=1, description="Channels of each summary vector (None: the head size; Double Sparsity scores "
        "a few label channels)."
    )
    dense_layers: Count = Field(0, ge=0, description="Layers that keep dense attention (Quest: the first "
                                "layers; TidalDecode: its token-selection layers).")
    kv_location: str = Field(
        "hbm", description="Where the full KV cache lives: 'hbm' (the device memory), or another memory tier of the "
        "device by name -- 'host' (host memory over PCIe, every GPU has it), 'nvme' or any tier the device defines "
        "(docs/devices-and-tiers.md); each step fetches the selected entries over the link to that tier."
    )
    host_tensors: Literal["kv", "values"] = Field(
        "kv", description="With kv_location host: 'kv' keeps keys and values on the host (InfLLM); 'values' "
        "keeps only values there and the keys on the GPU as a rank-key_rank factor (ShadowKV)."
    )
    key_rank: OptionalCount = Field(
        None, ge=1, description="Rank of the GPU-resident key factor per token and layer (host_tensors: values)."
    )
    host_kv_gib: float | None = Field(
        None, gt=0, description="Memory of the kv_location tier set aside for KV per replica, GiB (any kv_location "
        "but 'hbm'); the tier's own capacity, where the device gives one, also bounds it."
    )
    overlap: Flag = Field(
        True, description="With kv_location host: the PCIe fetch runs concurrently with the layer's GPU "
        "attention work (a layer costs the longer of the two), as ShadowKV overlaps fetching with key "
        "reconstruction; False: they add up."
    )

    @model_validator(mode="after")
    def _consistent(self):
        if (self.density is None) == (self.budget_tokens is None):
            raise ValueError("set exactly one of density (a share of every context) and budget_tokens (at most B "
                             "tokens of each sequence's context)")
        host = self.kv_location != "hbm"
        if host and self.host_kv_gib is None:
            raise ValueError(f"kv_location {self.kv_location!r} needs host_kv_gib (memory of that tier for KV per "
                             "replica, GiB)")
        if not host:
            if self.host_kv_gib is not None:
                raise ValueError("host_kv_gib applies to a kv_location other than 'hbm'; remove it or set "
                                 "kv_location: host")
            if self.host_tensors != "kv":
                raise ValueError("host_tensors applies to a kv_location other than 'hbm'")
        if self.host_tensors == "values" and self.key_rank is None:
            raise ValueError("host_tensors 'values' needs key_rank (rank of the GPU-resident key factor)")
        if self.host_tensors != "values" and self.key_rank is not None:
            raise ValueError("key_rank applies to host_tensors 'values' (keys kept on the GPU as a low-rank factor)")
        return self


@TECHNIQUES.register("sparse-attention", aliases=("sparse-decode", "quest"))
class SparseAttention(Technique):
    Params = SparseAttentionParams
    needs_key_value_heads = True
    summary = "Decode steps read a selected fraction of a whole KV cache kept in HBM or host memory."
    mechanism = __doc__
    sources = (
        "Tang et al. Quest: Query-Aware Sparsity for Efficient Long-Context LLM Inference. ICML 2024 "
        "(arXiv 2406.10774): per-page min/max keys score pages; the top pages are attended.",
        "Sun et al. ShadowKV: KV Cache in Shadows for High-Throughput Long-Context LLM Inference (arXiv "
        "2410.21465): low-rank pre-RoPE keys and landmarks on the GPU, values on the host, fetch overlapped "
        "with key reconstruction.",
        "Yang et al. Post-Training Sparse Attention with Double Sparsity (arXiv 2408.07092).",
        "Xiao et al. InfLLM: Training-Free Long-Context Extrapolation with an Efficient Context Memory "
        "(arXiv 2402.04617).",
        "Yang et al. TidalDecode: Fast and Accurate LLM Decoding with Position Persistent Sparse Attention "
        "(arXiv 2410.05076).",
    )

    # -- derived sizes ------------------------------------------------------------------------------
    def _dense_share(self, layers: int) -> float:
        if self.params.dense_layers > layers:
            raise CapsimError(
                f"dense_layers={self.params.dense_layers} exceeds the model's {layers} layers",
                where=f"techniques[{self.index}].dense_layers", fix=f"set dense_layers to at most {layers}")
        return self.params.dense_layers / layers

    def effective_density(self, layers: int) -> float:
        """Mean fraction of the context KV a step reads per layer: dense layers read all of it. With a token
        budget the rows count the whole context (1) and the budget applies per sequence at pricing time."""
        if self.params.density is None:
            return 1.0
        dense = self._dense_share(layers)
        return dense + (1.0 - dense) * self.params.density

    def _summary_per_token(self, g: AttentionGeometry) -> tuple[float, float]:
        """(FLOPs, bytes) of scoring the summaries, per context token per sparse layer."""
        p = self.params
        m = float(p.summary_channels or g.head_dim)
        per_page = p.summary_vectors / p.page_size
        return 2.0 * per_page * m * g.heads, per_page * m * g.kv_heads * g.kv_bytes

    def _host_tensors(self) -> float:
        return 2.0 if self.params.host_tensors == "kv" else 1.0

    # -- hooks ----------------------------------------------------------------------------------------
    def operators(self, table: OperatorTable, ctx: BuildContext) -> OperatorTable:
        p = self.params
        g = attention_geometry(table, self.where)
        rho = self.effective_density(table.num_layers)
        sparse_share = 1.0 - self._dense_share(table.num_layers)
        host = p.kv_location != "hbm"
        group = OVERLAP_GROUP if host and p.overlap else ""
        link = self._link(ctx) if host else None
        ctx_i = F.DECODE_CONTEXT
        ops: list[Operator] = []
        for op in table.layer_ops:
            if op.op_class == "attention_decode":
                if p.budget_tokens is not None:  # rows of selected tokens count the whole context, capped per sequence
                    op = replace(op, overlap=group)
                    ops.append(self._budgeted(op, sparse_share))
                    ops.extend(r if r.op_class == "kv_select" and r.name == "kv_select" else
                               self._budgeted(r, sparse_share)
                               for r in self._extra_rows(g, 1.0, sparse_share, group, link))
                    continue
                fl, by = op.flops.copy(), op.bytes.copy()
                fl[ctx_i] *= rho
                by[ctx_i] *= rho
                op = replace(op, flops=fl, bytes=by, overlap=group, attended=op.attended * rho)
                ops.append(op)
                ops.extend(self._extra_rows(g, rho, sparse_share, group, link))
                continue
            if group and op.op_class == "attention_prefill":
                op = replace(op, overlap=group)  # the prompt's KV is written out while the layer computes
            ops.append(op)
        links = table.links
        if link is not None and not any(ln.name == link.name for ln in links):
            links = (*links, link)
        return table.with_ops(layer_ops=tuple(ops), links=links)

    def _budgeted(self, op: Operator, sparse_share: float) -> Operator:
        """``op`` reading at most ``budget_tokens`` of each sequence's context in the sparse layers."""
        return replace(op, budget_tokens=float(self.params.budget_tokens), budget_share=sparse_share)

    def _link(self, ctx: BuildContext) -> Link:
        """The link between the device memory and the KV's tier (host DRAM: the device's PCIe link)."""
        dev = ctx.device
        return dev.transfer_link(dev.main_tier, self.params.kv_location, where=f"{self.where}.kv_location")

    def _extra_rows(self, g: AttentionGeometry, rho: float, sparse_share: float, group: str,
                    link: Link | None) -> list[Operator]:
        p = self.params
        rows: list[Operator] = []
        sel_flops, sel_bytes = self._summary_per_token(g)
        if sel_flops or sel_bytes:
            rows.append(Operator("kv_select", "kv_select", flops=_vec(decode_context=sparse_share * sel_flops),
                                 bytes=_vec(decode_context=sparse_share * sel_bytes), overlap=group))
        if link is None:
            return rows
        kv_token = g.kv_heads * g.head_dim * g.kv_bytes  # one tensor (keys or values) per token per layer
        if p.host_tensors == "values":
            r = float(p.key_rank)
            rows.append(Operator(
                "key_reconstruct", "kv_select",
                flops=_vec(decode_context=rho * 2.0 * r * g.kv_heads * g.head_dim),
                bytes=_vec(decode_context=rho * r * g.kv_bytes, decode_seqs=r * kv_token), overlap=group))
        moved = self._host_tensors() * kv_token
        rows.append(Operator(
            "kv_fetch", "transfer", flops=_vec(),
            bytes=_vec(decode_context=rho * moved, decode_seqs=moved, prefill_tokens=moved),
            placement=link.name, overlap=group))
        return rows

    def tiers(self, ctx: BuildContext) -> tuple[str, ...]:
        location = self.params.kv_location
        return () if location in ("hbm", ctx.device.main_tier) else (location,)

    def memory(self, terms: MemoryTerms, ctx: BuildContext) -> MemoryTerms:
        p, dep, m = self.params, ctx.deployment, ctx.model
        g = attention_geometry(ctx.table, self.where) if ctx.table is not None else None
        if g is None:
            return terms
        layers = -(-m.num_layers // dep.pp)  # the most loaded stage
        sparse_share = 1.0 - self._dense_share(m.num_layers)
        per_page = p.summary_vectors / p.page_size
        summaries = layers * sparse_share * per_page * float(p.summary_channels or g.head_dim) * g.kv_heads * g.kv_bytes
        if summaries:
            terms = terms.plus(kv=summaries, note=f"page summaries: {summaries:.0f} B per token per GPU")
        if p.kv_location == "hbm":
            return terms
        kv_token = g.kv_heads * g.head_dim * g.kv_bytes
        host_per_token = layers * self._host_tensors() * kv_token
        host_bytes = p.host_kv_gib * GIB / (dep.tp * dep.pp)
        tier = ctx.device.tier(p.kv_location, where=f"{self.where}.kv_location")
        if tier.capacity_gib is not None and host_bytes > tier.capacity_gib * GIB:
            raise DoesNotFitError(
                f"host_kv_gib sets aside {host_bytes / GIB:.1f} GiB per GPU in tier {tier.name!r}, which holds "
                f"{tier.capacity_gib:g} GiB per device", where=f"{self.where}.host_kv_gib",
                fix=f"set host_kv_gib to at most {tier.capacity_gib * dep.tp * dep.pp:g} (the tier's capacity over "
                "the replica's GPUs)")
        if p.host_tensors == "values":
            factor = layers * float(p.key_rank) * g.kv_bytes
            terms = terms.plus(kv=factor, note=f"rank-{p.key_rank} key factor: {factor:.0f} B per token per GPU")
        where = "host memory" if p.kv_location == "host" else f"tier {p.kv_location!r}"
        return terms.on_host(0.0, host_per_token, host_bytes,
                             note=f"{p.host_tensors} in {where}: {host_per_token:.0f} B per token per GPU, "
                             f"{host_bytes / GIB:.1f} GiB per GPU")


class SparsePrefillParams(TechniqueParams):
    """Parameters of sparse prefill attention."""

    density: float = Field(gt=0, le=1, description="Fraction of the causal query-key pairs prefill attention "
                           "computes (the paper's measured density of its sparse pattern).")
    estimate_queries: Count = Field(
        64, ge=0, description="Queries per chunk scored against every key to estimate the sparse pattern "
        "(MInference estimates from the last queries of the prompt; 0: a static pattern, no estimation)."
    )


@TECHNIQUES.register("sparse-prefill", aliases=("minference",))
class SparsePrefill(Technique):
    Params = SparsePrefillParams
    summary = "Prefill attention computes a fraction of the causal pairs (dynamic sparse patterns)."
    mechanism = __doc__
    sources = (
        "Jiang et al. MInference 1.0: Accelerating Pre-filling for Long-Context LLMs via Dynamic Sparse "
        "Attention. NeurIPS 2024 (arXiv 2407.02490).",
        "Yang et al. LServe: Efficient Long-sequence LLM Serving with Unified Sparse Attention (arXiv 2502.14866).",
    )

    def operators(self, table: OperatorTable, ctx: BuildContext) -> OperatorTable:
        p = self.params
        g = attention_geometry(table, self.where)
        ops: list[Operator] = []
        for op in table.layer_ops:
            if op.op_class == "attention_prefill":
                fl = op.flops.copy()
                fl[F.PREFILL_ATTN_WORK] *= p.density
                ops.append(replace(op, flops=fl))
                if p.estimate_queries:
                    q = float(p.estimate_queries)
                    ops.append(Operator(
                        "sparse_pattern", "kv_select",
                        flops=_vec(prefill_kv_read=2.0 * g.heads * g.head_dim * q),
                        bytes=_vec(prefill_kv_read=g.kv_heads * g.head_dim * g.kv_bytes)))
                continue
            ops.append(op)
        return table.with_ops(layer_ops=tuple(ops))


__all__ = ["SparseAttention", "SparseAttentionParams", "SparsePrefill", "SparsePrefillParams"]
