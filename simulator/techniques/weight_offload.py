"""Weight offload: a share of the layers' weights lives in a slower memory tier and is streamed in every pass.

Why: a model whose weights do not fit the device memory (Llama-3.1-70B in bf16 on one 80 GB GPU) is served
today only by adding GPUs. FlexGen and DeepSpeed ZeRO-Inference serve it on one GPU by keeping weights in
host DRAM (or on NVMe) and fetching each layer's weights over the link just before the layer runs,
prefetching layer ``i + 1`` while layer ``i`` computes. The layer then costs the longer of its compute and
its fetch; a decode step of a small batch is bound by the link, slow and IO-bound, while a long prefill can
hide the fetch behind its compute.

How capsim models it -- an edit of the operator table, priced by the same pricers as every row:

* **Memory.** ``fraction`` of the transformer blocks' weights per GPU (the embedding and LM head stay) leave
  device memory for the tier named by ``tier`` (a tier of the device's memory hierarchy,
  :attr:`hwmodels.device.DeviceSpec.tiers`; every GPU has an implied ``host`` tier over its PCIe link). The
  freed bytes go to the KV cache. When the tier gives a capacity, the offloaded bytes must fit in it.
* **Fetch.** A ``weight_fetch`` row of class ``transfer`` per layer, placed on the link between the device
  memory and the tier (``DeviceSpec.link_between``): ``fraction`` of the layer's weight bytes per GPU once per
  pass (the ``one`` feature, whatever the batch), priced ``bytes / bandwidth + latency``. An MoE layer's fetch
  moves the offloaded share of all its experts (which ones the router picks is not known before the layer runs).
* **Overlap.** With ``overlap`` (ZeRO-Inference's prefetch), the layer's device rows and its fetch join one
  overlap group: a layer costs ``max(device work, fetch)``. Without it (fetch, then compute) they add up.

Not modelled: pinned-buffer double-buffering memory on the device (one layer's weights, small beside the
KV cache); PCIe reads and writes of other techniques sharing the link (each technique's rows take their own
lane); FlexGen's choice of placement by a linear program (the fraction is an input); CPU compute of
attention (FlexGen's CPU delegation).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from pydantic import Field

from capsim.errors import DoesNotFitError
from capsim.types import Flag
from simulator.costmodel import features as F
from simulator.costmodel.operators import Operator, OperatorTable
from simulator.costmodel.precision import bytes_per_element
from simulator.memory_plan import GIB, layer_weights_per_gpu
from simulator.techniques.base import TECHNIQUES, MemoryTerms, Technique, TechniqueParams
from simulator.techniques.context import BuildContext

OVERLAP_GROUP = "weight_fetch"
"""The overlap group of a layer's device rows and the fetch of its offloaded weights."""


class WeightOffloadParams(TechniqueParams):
    """Parameters of weight offload (units in each description)."""

    fraction: float = Field(
        gt=0,
        le=1,
        description="Share of the transformer blocks' weights kept in the slower tier and streamed "
        "in every pass (1: all layers' weights, as ZeRO-Inference; the embedding and LM head stay on the device).",
    )
    tier: str = Field(
        "host",
        description="Memory tier holding the offloaded weights, by name (the device's tiers: capsim "
        "list devices; every GPU has 'host', host DRAM over its PCIe link).",
    )
    overlap: Flag = Field(
        True,
        description="Prefetch the next layer's weights while the current one computes (a layer costs the "
        "longer of compute and fetch); False: fetch then compute, the two add up.",
    )


@TECHNIQUES.register("weight-offload", aliases=("zero-inference", "flexgen-weights"))
class WeightOffload(Technique):
    Params = WeightOffloadParams
    summary = "A share of the weights lives in a slower tier (host DRAM, NVMe) and is streamed in per layer."
    mechanism = __doc__
    incompatible = ("nanoflow",)  # both put every layer row in an overlap group of their own
    sources = (
        "Sheng et al. FlexGen: High-Throughput Generative Inference of Large Language Models with a Single GPU. "
        "ICML 2023 (arXiv 2303.06865): weights, KV and activations placed across GPU, CPU and disk, "
        "per-layer loads overlapped with compute.",
        "Aminabadi et al. DeepSpeed-Inference: Enabling Efficient Inference of Transformer Models at Unprecedented "
        "Scale. SC 2022 (arXiv 2207.00032): ZeRO-Inference keeps weights in CPU or NVMe memory and streams "
        "them layer by layer, prefetching the next layer.",
    )

    def _offloaded_per_layer(self, ctx: BuildContext) -> float:
        """Offloaded weight bytes of one layer per GPU (the blocks' bytes of one pipeline stage, over its layers)."""
        dep = ctx.deployment
        wb = bytes_per_element(dep.weight_dtype, field="deployment.weight_dtype")
        return self.params.fraction * layer_weights_per_gpu(ctx.model, dep.tp, 1, wb) / ctx.model.num_layers

    def operators(self, table: OperatorTable, ctx: BuildContext) -> OperatorTable:
        dev = ctx.device
        link = dev.transfer_link(dev.main_tier, self.params.tier, where=f"{self.where}.tier")
        group = OVERLAP_GROUP if self.params.overlap else ""
        fetch = np.zeros(F.NUM_FEATURES)
        fetch[F.ONE] = self._offloaded_per_layer(ctx)
        ops = [
            replace(op, overlap=group) if group and not op.overlap and op.placement == "device" else op
            for op in table.layer_ops
        ]
        ops.append(
            Operator(
                "weight_fetch",
                "transfer",
                flops=np.zeros(F.NUM_FEATURES),
                bytes=fetch,
                placement=link.name,
                overlap=group,
            )
        )
        links = table.links if any(ln.name == link.name for ln in table.links) else (*table.links, link)
        return table.with_ops(layer_ops=tuple(ops), links=links)

    def tiers(self, ctx: BuildContext) -> tuple[str, ...]:
        return (self.params.tier,)

    def memory(self, terms: MemoryTerms, ctx: BuildContext) -> MemoryTerms:
        dep = ctx.deployment
        layers = -(-ctx.model.num_layers // dep.pp)  # the most loaded stage keeps this many layers
        wb = bytes_per_element(dep.weight_dtype, field="deployment.weight_dtype")
        offloaded = self.params.fraction * layer_weights_per_gpu(ctx.model, dep.tp, dep.pp, wb)
        tier = ctx.device.tier(self.params.tier, where=f"{self.where}.tier")
        if tier.capacity_gib is not None and offloaded > tier.capacity_gib * GIB:
            raise DoesNotFitError(
                f"{offloaded / GIB:.1f} GiB of weights per GPU offloaded to tier {tier.name!r}, which holds "
                f"{tier.capacity_gib:g} GiB per device",
                where=f"{self.where}.fraction",
                fix="lower fraction, raise tp or pp, or offload to a larger tier",
            )
        return terms.offload_weights(
            offloaded,
            note=f"{offloaded / GIB:.1f} GiB of weights per GPU in tier "
            f"{tier.name!r} ({self.params.fraction:g} of {layers} layers' weights)",
        )


__all__ = ["WeightOffload", "WeightOffloadParams"]
