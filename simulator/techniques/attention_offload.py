"""Attention offloading (Lamina): decode attention runs on a pool of memory-optimised devices holding the KV cache.

Why: a decode step's linear layers (QKV, output projection, MLP) read the weights once for the whole batch and
grow compute-bound as the batch grows, while decode attention reads every sequence's KV cache and stays bound
by memory bandwidth and capacity whatever the batch. A compute GPU (H100) spends its HBM on the KV cache and
its FLOPs idle during attention. Lamina (Chen et al. 2024) moves decode attention, and the KV cache with it,
to cheaper devices with much memory bandwidth and little compute (H20), and keeps the linear layers on the
compute GPUs: every decode step each layer sends its queries, keys and values to the attention devices and
receives the attention output back, over a network link per GPU.

How capsim models it -- an edit of the operator table and the memory plan, priced by the same pricers:

* **Memory.** The whole KV cache lives on the attention devices: ``count`` devices per replica, their full
  memory (nothing else lives there), shared evenly by the replica's ``tp x pp`` GPUs. The compute GPUs keep
  the weights, activations and workspace and no KV (:meth:`MemoryTerms.on_host` with ``gpu_kv_fraction`` 0:
  the KV capacity is the attention pool's memory over the bytes per token).
* **Attention.** Each layer's ``attention_decode`` row is placed on the attention pool and priced on the
  attention device's roofline (its datasheet peaks and constant efficiencies; no calibrated curve, which a
  profile of the compute GPU does not provide for another device), scaled to each GPU's share of the pool
  (``count / (tp x pp)`` devices): the KV bytes it reads over the pool's bandwidth.
* **Transfers.** A ``attention_io`` row of class ``transfer`` per layer on ``link``: per decode sequence the
  GPU's share of the query, key, value and output widths (``2 x heads x head_dim + 2 x kv_heads x head_dim``
  elements per GPU) at the activation width. Both directions are charged to one lane (a full-duplex link could
  carry the output back beside the next queries: conservative). Prefill attention stays on the compute GPUs
  (Lamina offloads decode attention only); the prompt's keys and values are then written to the attention
  devices over the same link (``prefill_tokens x 2 x kv_heads x head_dim`` KV bytes per layer).
* **Overlap.** With ``overlap`` (Lamina's rotational staggered pipelining: micro-batches rotate so one's
  attention runs while another's linear layers run and a third's activations travel), the layer's GPU rows,
  its attention row and its transfer join one overlap group: a layer costs the longest of the three lanes.
  Without it they add up (one batch waits for each in turn).

Not modelled: the micro-batching that rotational pipelining needs to fill the three lanes (the maximum is the
ideal it approaches); a prefill chunk's reads of its earlier chunks' KV (assumed kept on the compute GPU until
the prompt is written out); contention between replicas on a shared attention pool; attention-device
calibration curves; the attention devices' activation workspace.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from capsim.errors import CapsimError
from capsim.types import Count, Flag
from hwmodels.device import DeviceSpec
from hwmodels.links import Link
from hwmodels.roofline import RooflineDevice
from simulator.costmodel import features as F
from simulator.costmodel.operators import AttentionGeometry, Operator, OperatorTable
from simulator.costmodel.precision import bytes_per_element
from simulator.costmodel.pricers import PRICERS, PricingContext, RooflinePricer, RowPricer
from simulator.costmodel.sharding import kv_elements_per_layer_per_gpu
from simulator.memory_plan import GIB
from simulator.techniques.base import (
    TECHNIQUES,
    ExtraDevice,
    MemoryTerms,
    Technique,
    TechniqueParams,
    attention_geometry,
)
from simulator.techniques.context import BuildContext

OVERLAP_GROUP = "attention_offload"
"""The overlap group of a layer's GPU rows, its offloaded attention and its activation transfer."""

POOL_PLACEMENT = "attention-pool"
"""Placement (and link kind) of decode-attention rows that run on the attention devices."""

LINK_NAME = "attention-link"
"""Name of the link between a compute GPU and the attention pool (its own lane, apart from other PCIe rows)."""


@dataclass(frozen=True)
class AttentionPool(Link):
    """The attention devices as a placement of the operator table: carries the roofline of each GPU's share of
    the pool, which prices the rows placed there (``bandwidth`` is that share's effective memory bandwidth)."""

    roofline: RooflineDevice | None = None


@PRICERS.register("attention_decode", placement=POOL_PLACEMENT)
def pool_attention_pricer(op: Operator, ctx: PricingContext) -> RowPricer:
    """Decode attention on the attention pool: the pool device's roofline at each GPU's share of it."""
    pool = ctx.link(op)
    if not isinstance(pool, AttentionPool) or pool.roofline is None:
        raise CapsimError(
            f"row {op.name!r} is placed on {op.placement!r}, which carries no attention device",
            where=f"operator table row {op.name!r}",
            fix="add it with the attention-offload technique",
        )
    pricer = RooflinePricer(op, pool.roofline)
    pricer.source = f"roofline ({pool.roofline.name} attention pool)"
    return pricer


class LinkParams(BaseModel):
    """An inline link between each compute GPU and the attention pool (a network NIC per GPU)."""

    model_config = ConfigDict(extra="forbid")

    gbs: float = Field(gt=0, description="Bandwidth per compute GPU, GB/s per direction (a 400 Gb/s NIC: 50).")
    latency_us: float = Field(5.0, ge=0, description="Fixed cost of one message, microseconds.")


class AttentionOffloadParams(TechniqueParams):
    """Parameters of attention offloading (units in each description)."""

    device: str | dict[str, Any] = Field(
        "h20",
        description="The attention devices: a catalog id (capsim list devices) or an inline device "
        "(the fields of a catalog entry, or base: ID plus overrides).",
    )
    count: Count = Field(ge=1, description="Attention devices per replica (they hold the replica's whole KV cache).")
    link: str | LinkParams = Field(
        "pcie",
        description="Link from each compute GPU to the attention pool: 'pcie' or 'nvlink' (the compute "
        "device's own interconnect figures), or inline {gbs, latency_us} (e.g. a 400 Gb/s RDMA NIC per GPU: gbs 50).",
    )
    overlap: Flag = Field(
        True,
        description="Rotational pipelining (Lamina): a layer costs the longest of its GPU work, its offloaded "
        "attention and its transfers; False: the three add up.",
    )


@TECHNIQUES.register("attention-offload", aliases=("lamina",))
class AttentionOffload(Technique):
    Params = AttentionOffloadParams
    needs_key_value_heads = True  # the transfer widths and the KV per token assume keys and values per KV head
    summary = "Decode attention and the KV cache on a pool of memory-optimised devices; linear layers on the GPUs."
    mechanism = __doc__
    # Each of these also decides where the KV lives or puts every layer row in an overlap group of its own.
    incompatible = ("sparse-attention", "weight-offload", "nanoflow")
    sources = (
        "Chen et al. Efficient and Economic Large Language Model Inference with Attention Offloading (Lamina). "
        "arXiv 2405.01814, 2024: attention on memory-optimised devices holding the KV cache, linear layers on "
        "compute devices, rotational staggered pipelining to overlap them.",
    )

    # -- parts ----------------------------------------------------------------------------------------
    def attention_device(self) -> DeviceSpec:
        from hwmodels.device import device_from_dict
        from simulator.system import resolve_device

        dev = self.params.device
        if isinstance(dev, dict):
            return device_from_dict(dev, where=f"{self.where}.device")
        try:
            return resolve_device(dev)
        except CapsimError as exc:
            raise CapsimError(exc.problem, where=f"{self.where}.device", fix=exc.fix) from None

    def share(self, ctx: BuildContext) -> float:
        """Attention devices per compute GPU of the replica."""
        return self.params.count / (ctx.deployment.tp * ctx.deployment.pp)

    def pool_roofline(self, ctx: BuildContext, act_dtype: str) -> RooflineDevice:
        """Roofline of one GPU's share of the attention pool (peaks scaled by the share)."""
        dev, s = self.attention_device(), self.share(ctx)
        fmt = act_dtype if act_dtype in dev.dtypes else "bf16"
        eff = dev.efficiency
        return RooflineDevice(
            dev.name,
            dev.peak_flops(fmt) * s,
            dev.memory_bandwidth * s,
            eff.compute,
            eff.memory,
            eff.launch_overhead_us * 1e-6,
            compute_format=fmt,
            compute_share=s,
            bandwidth_share=s,
        )

    def link(self, ctx: BuildContext) -> Link:
        p, dev = self.params, ctx.device
        lat = dev.interconnect.link_latency_us * 1e-6
        if isinstance(p.link, LinkParams):
            return Link(LINK_NAME, p.link.gbs * 1e9, p.link.latency_us * 1e-6, kind="network")
        if p.link == "pcie":
            return Link(LINK_NAME, dev.pcie_bandwidth, lat, kind="pcie")
        if p.link == "nvlink" and dev.nvlink_bandwidth > 0:
            return Link(LINK_NAME, dev.nvlink_bandwidth, lat, kind="nvlink")
        raise CapsimError(
            f"link {p.link!r} is not 'pcie', 'nvlink' (where {dev.name} has NVLink) or an inline link",
            where=f"{self.where}.link",
            fix="use 'pcie', 'nvlink' or {gbs: 50, latency_us: 5}",
        )

    @staticmethod
    def io_bytes(g: AttentionGeometry, act_bytes: float) -> tuple[float, float]:
        """(bytes per decode sequence, KV bytes per prefill token) moved per layer per GPU."""
        decode = (2.0 * g.heads + 2.0 * g.kv_heads) * g.head_dim * act_bytes  # q and o, k and v
        prefill = 2.0 * g.kv_heads * g.head_dim * g.kv_bytes  # the prompt's keys and values, written out
        return decode, prefill

    # -- hooks ----------------------------------------------------------------------------------------
    def operators(self, table: OperatorTable, ctx: BuildContext) -> OperatorTable:
        g = attention_geometry(table, self.where)
        ab = bytes_per_element(ctx.deployment.activation_dtype, field="deployment.activation_dtype")
        roof = self.pool_roofline(ctx, g.act_dtype)
        pool = AttentionPool(POOL_PLACEMENT, roof.effective_bandwidth, 0.0, kind=POOL_PLACEMENT, roofline=roof)
        link = self.link(ctx)
        group = OVERLAP_GROUP if self.params.overlap else ""
        ops: list[Operator] = []
        for op in table.layer_ops:
            if op.op_class == "attention_decode":
                ops.append(replace(op, placement=POOL_PLACEMENT, overlap=group))
            elif group and op.placement == "device" and not op.overlap:
                ops.append(replace(op, overlap=group))
            else:
                ops.append(op)
        decode, prefill = self.io_bytes(g, ab)
        moved = np.zeros(F.NUM_FEATURES)
        moved[F.DECODE_SEQS] = decode
        moved[F.PREFILL_TOKENS] = prefill
        ops.append(
            Operator(
                "attention_io",
                "transfer",
                flops=np.zeros(F.NUM_FEATURES),
                bytes=moved,
                placement=LINK_NAME,
                overlap=group,
            )
        )
        return table.with_ops(layer_ops=tuple(ops), links=(*table.links, link, pool))

    def memory(self, terms: MemoryTerms, ctx: BuildContext) -> MemoryTerms:
        dep, m = ctx.deployment, ctx.model
        layers = -(-m.num_layers // dep.pp)  # the most loaded stage
        kb = bytes_per_element(dep.kv_dtype, field="deployment.kv_dtype")
        per_token = layers * kv_elements_per_layer_per_gpu(m, dep.tp) * kb * terms.kv_bytes_scale
        dev = self.attention_device()
        pool_bytes = dev.memory_bytes * self.share(ctx)
        return terms.on_host(
            0.0,
            per_token,
            pool_bytes,
            note=f"KV cache on {self.params.count} x {dev.name} ({self.params.count * dev.memory_bytes / GIB:.0f} GiB, "
            f"{pool_bytes / GIB:.1f} GiB per GPU's share, {per_token:.0f} B per token per GPU)",
        )

    def devices(self, ctx: BuildContext) -> tuple[ExtraDevice, ...]:
        dev = self.attention_device()
        return (ExtraDevice(dev.name, self.params.count, dev.price_usd_per_hour, dev.idle_w, dev.tdp_w),)


__all__ = ["AttentionOffload", "AttentionOffloadParams", "AttentionPool", "LinkParams"]
