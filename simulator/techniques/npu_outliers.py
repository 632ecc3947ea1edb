"""NPU outlier operators: the float share of each matrix product runs on the SoC's CPU or GPU beside the NPU.

Why: an NPU's matrix engine is INT8, and a few activation channels of an LLM carry outliers far outside the
INT8 range; quantising them costs accuracy, running the whole layer in float on the CPU/GPU costs the NPU's
speed. mllm-NPU (Xu et al., ASPLOS 2025, arXiv 2407.05858, "shadow outlier execution") runs the full INT8
product on the NPU with the outliers clipped and, in parallel, the outlier channels' share in float on the
CPU/GPU, adding the two; the CPU/GPU work is small but has its own processor, bandwidth share and
synchronisation.

How capsim models it -- an edit of the operator table, priced by the same pricers as every row:

* **Rows.** Beside every GEMM row on the device (projections, MLP) a ``<name>_outliers`` row of class
  ``gemm`` does ``fraction`` of that GEMM's FLOPs and moves ``fraction`` of its bytes (the outlier channels'
  inputs and weights), placed on a side processor named ``processor`` (the NPU's own GEMM keeps its full work:
  its shape does not change). The LM head stays as it is.
* **Processor.** The side processor is a roofline of its own: ``processor_tflops`` (the CPU's or GPU's float
  peak: no catalog entry gives one, so it is an input) and the device memory's bandwidth (a phone's CPU, GPU
  and NPU share one LPDDR), at the device's efficiency constants; ``sync_us`` is added to every outlier row,
  the CPU-NPU synchronisation of each product (the processor's launch overhead).
* **Overlap.** With ``overlap`` (the default, mllm-NPU's parallel shadow execution) each GEMM and its outlier
  row form an overlap group costing the longer of the two; without it they add up (float work after the NPU's).

Not modelled: contention of the two processors for the shared LPDDR bandwidth (each reads at the full rate);
finding the outliers at run time (mllm-NPU's profiling is offline); its out-of-order scheduling of blocks
across processors; accuracy.
"""

from __future__ import annotations

from dataclasses import replace

from pydantic import Field

from capsim.errors import CapsimError
from capsim.types import Flag
from hwmodels.roofline import RooflineDevice
from simulator.costmodel.operators import Operator, OperatorTable
from simulator.techniques.base import TECHNIQUES, Technique, TechniqueParams
from simulator.techniques.context import BuildContext

GROUP_PREFIX = "outliers:"
"""Overlap group of one GEMM and its outlier row: the prefix and the GEMM row's name."""


class NPUOutliersParams(TechniqueParams):
    """Parameters of NPU outlier execution (units in each description)."""

    fraction: float = Field(
        gt=0,
        le=0.5,
        description="Share of each GEMM's work (its outlier input channels) computed in float on "
        "the side processor, 0-0.5 (an input: measure it for your model).",
    )
    processor_tflops: float = Field(
        gt=0,
        description="Float peak of the CPU or GPU that computes the outliers, TFLOP/s (not in the catalog: "
        "give your SoC's figure).",
    )
    processor: str = Field("soc-cpu", description="Name of the side processor (a placement in the operator table).")
    sync_us: float = Field(
        0.0, ge=0, description="CPU-NPU synchronisation per GEMM, microseconds (added to every outlier row)."
    )
    overlap: Flag = Field(
        True,
        description="Run the outliers in parallel with the NPU's GEMM (a pair costs the longer of the two); "
        "False: after it (they add up).",
    )


@TECHNIQUES.register("npu-outliers", aliases=("shadow-outliers", "mllm-npu-outliers"))
class NPUOutliers(Technique):
    Params = NPUOutliersParams
    summary = "Outlier channels of each GEMM computed in float on the SoC's CPU/GPU beside the INT8 NPU."
    mechanism = __doc__
    # Each of these puts the layer's rows in overlap groups of its own.
    incompatible = ("nanoflow", "weight-offload", "attention-in-memory")
    sources = (
        "Xu et al. Fast On-device LLM Inference with NPUs (mllm-NPU / llm.npu). ASPLOS 2025 (arXiv 2407.05858): "
        "shadow outlier execution, outlier channels computed on the CPU/GPU in parallel with the NPU.",
    )

    def processor_roofline(self, ctx: BuildContext) -> RooflineDevice:
        """The side processor: its float peak, the device memory's bandwidth, ``sync_us`` per row."""
        dev, p = ctx.device, self.params
        if p.processor == "device" or any(t.name == p.processor for t in dev.tiers):
            raise CapsimError(
                f"processor name {p.processor!r} is already a placement of device {dev.name!r}",
                where=f"{self.where}.processor",
                fix="choose another name, e.g. soc-cpu",
            )
        return RooflineDevice(
            name=p.processor,
            peak_flops=p.processor_tflops * 1e12,
            memory_bandwidth=dev.memory_bandwidth,
            compute_efficiency=dev.efficiency.compute,
            memory_efficiency=dev.efficiency.memory,
            launch_overhead_s=p.sync_us * 1e-6,
            compute_format="fp16",
        )

    def operators(self, table: OperatorTable, ctx: BuildContext) -> OperatorTable:
        proc = self.processor_roofline(ctx)
        f = self.params.fraction
        ops: list[Operator] = []
        grouped = sorted({op.overlap for op in table.layer_ops if op.op_class == "gemm" and op.overlap})
        if grouped:
            raise CapsimError(
                f"npu-outliers pairs each GEMM with its outlier row, but an earlier technique already put the GEMMs "
                f"in overlap groups ({', '.join(grouped)})",
                where=self.where,
                fix="leave one of them out (or list npu-outliers first, if the other keeps existing groups)",
            )
        for op in table.layer_ops:
            if op.op_class != "gemm" or op.placement != "device":
                ops.append(op)
                continue
            group = GROUP_PREFIX + op.name if self.params.overlap else ""
            ops.append(replace(op, overlap=group))
            ops.append(
                replace(
                    op,
                    name=f"{op.name}_outliers",
                    flops=f * op.flops,
                    bytes=f * op.bytes,
                    placement=proc.name,
                    overlap=group,
                )
            )
        return table.with_ops(layer_ops=tuple(ops), processors=(*table.processors, proc))


__all__ = ["NPUOutliers", "NPUOutliersParams"]
