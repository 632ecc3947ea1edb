"""Dataflow operator fusion: a decoder layer runs as one fused kernel whose intermediates stay in on-chip SRAM.

Why: on a kernel-by-kernel accelerator every operator of a layer reads its input activations from device memory
and writes its output back (the norm writes the normalised copy, the QKV projection reads it and writes q, k
and v, ...). For a small model or a small batch those round trips are a large share of a step's bytes, and
each kernel pays a launch. A streaming-dataflow chip (the SambaNova SN40L RDU) maps a whole decoder block
onto its compute and memory units as one pipeline, so the intermediates flow from unit to unit through the
distributed SRAM and never reach HBM (Prabhakar et al., MICRO 2024: "entire decoder blocks" fused into a
single kernel call). That raises the layer's operational intensity: the same FLOPs over fewer HBM bytes.

How capsim models it -- an edit of the operator table, priced by the same pricers as every row:

* **Bytes.** Every per-layer row placed on the device (GEMMs, elementwise operators, attention) loses its
  activation traffic, the coefficients on the per-token features (``prefill_tokens``, ``decode_seqs``): what
  is left is what must stream from HBM -- the weights (the ``one`` and ``experts_hit`` coefficients), the KV
  context an attention row reads (``prefill_kv_read``, ``decode_context``) and the KV each new token writes.
  The attention rows keep that KV write and lose only their query read and output write (``2 h_t d_h``
  activations per token, from the table's attention geometry). FLOPs are unchanged. A memory-bound row
  becomes faster by exactly the bytes removed over the effective bandwidth; a row the edit makes
  compute-bound costs its FLOPs.
* **Launches.** With ``one_kernel`` (the default) the fused rows of a layer carry one launch between them
  (the first row's), as one kernel call per block; without it each keeps its own.
* The embedding and the LM head (once per iteration, outside the decoder blocks) are not fused.

Where it applies: a device with an on-chip SRAM tier (``sram_mib``), priced by its roofline. A calibrated
profile's curves were fitted on unfused kernels (their time is measured, not derived from bytes), so the
technique is refused there (``deployment.calibration: datasheet`` prices the device by its roofline).

Not modelled: the SRAM capacity bounding the tile of tokens one pass of the pipeline holds (Llama-3.1-8B
needs ~336 KiB of intermediates per token and layer, so 520 MiB holds ~1,600 tokens' worth at once; the
compiler tiles larger batches, which this model assumes costs no extra HBM traffic); the spatial pipeline
running a layer's operators concurrently (each row is still priced on its own roofline and the rows add up);
multi-head latent attention (refused).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from pydantic import Field

from capsim.errors import CapsimError
from capsim.types import Flag
from simulator.costmodel import features as F
from simulator.costmodel.operators import Operator, OperatorTable
from simulator.costmodel.precision import bytes_per_element
from simulator.techniques.base import TECHNIQUES, Technique, TechniqueParams
from simulator.techniques.context import BuildContext

FUSED_CLASSES = ("gemm", "elementwise", "attention_prefill", "attention_decode")
"""Operator classes of a decoder layer that the dataflow compiler fuses into the block's one kernel."""

ACTIVATION_FEATURES = (F.PREFILL_TOKENS, F.DECODE_SEQS)
"""Features whose byte coefficients are activation traffic (per token of the iteration)."""


class DataflowFusionParams(TechniqueParams):
    """Parameters of dataflow fusion."""

    one_kernel: Flag = Field(
        True,
        description="The fused rows of a layer pay one kernel launch between them (one kernel call per decoder "
        "block); False: each row keeps its own launch, so only the HBM bytes change.",
    )


def activation_bytes(op: Operator, query_and_output: float) -> np.ndarray:
    """The byte coefficients of ``op`` that fusion keeps in SRAM (per token; zero elsewhere).

    GEMM and elementwise rows: all their per-token bytes (weights sit on ``one``/``experts_hit``). Attention
    rows: ``query_and_output`` bytes per token (they keep the KV write and the KV context read).
    """
    out = np.zeros(F.NUM_FEATURES)
    for f in ACTIVATION_FEATURES:
        if op.op_class in ("gemm", "elementwise"):
            out[f] = op.bytes[f]
        elif op.bytes[f] > 0:
            out[f] = min(op.bytes[f], query_and_output)
    if op.op_class == "attention_prefill":
        out[F.DECODE_SEQS] = 0.0
    elif op.op_class == "attention_decode":
        out[F.PREFILL_TOKENS] = 0.0
    return out


@TECHNIQUES.register("dataflow-fusion", aliases=("operator-fusion", "rdu-fusion"))
class DataflowFusion(Technique):
    Params = DataflowFusionParams
    summary = (
        "A decoder layer runs as one fused dataflow kernel: activations stay in SRAM, only weights and KV use HBM."
    )
    mechanism = __doc__
    sources = (
        "Prabhakar et al. SambaNova SN40L: Scaling the AI Memory Wall with Dataflow and Composition of Experts. "
        "MICRO 2024 (arXiv 2405.07518): streaming dataflow fuses whole decoder blocks, raising operational "
        "intensity; 2x to 13x over an unfused baseline on eight sockets.",
    )
    incompatible = ("nanoflow",)  # nano-batches split and relaunch the layer's rows
    needs_key_value_heads = True  # the attention rows' activation split assumes per-head q and outputs

    def operators(self, table: OperatorTable, ctx: BuildContext) -> OperatorTable:
        dev = ctx.device
        if not dev.sram_mib:
            raise CapsimError(
                f"device {dev.name!r} has no on-chip SRAM tier for the fused layer's intermediates",
                where=self.where,
                fix="use a device with sram_mib (sn40l), or drop dataflow-fusion",
            )
        if ctx.roofline.profile is not None:
            raise CapsimError(
                f"device {dev.name!r} is priced by a calibrated profile, whose curves measured unfused kernels",
                where=self.where,
                fix="set deployment.calibration: datasheet to price it by its roofline, or drop dataflow-fusion",
            )
        geo = table.attention
        ba = bytes_per_element(geo.act_dtype, field="deployment.act_dtype") if geo is not None else 0.0
        query_and_output = 2.0 * geo.heads * geo.head_dim * ba if geo is not None else 0.0
        ops: list[Operator] = []
        launched = False
        for op in table.layer_ops:
            if op.placement != "device" or op.op_class not in FUSED_CLASSES:
                ops.append(op)
                continue
            kept = np.maximum(op.bytes - activation_bytes(op, query_and_output), 0.0)
            launches = op.launches
            if self.params.one_kernel:
                # The block's one launch rides on its first row that works on every token (the norm).
                first = not launched and bool(op.flops[F.PREFILL_TOKENS] > 0 and op.flops[F.DECODE_SEQS] > 0)
                launches = 1.0 if first else 0.0
                launched = launched or first
            ops.append(replace(op, bytes=kept, launches=launches))
        return table.with_ops(layer_ops=tuple(ops), notes=(*table.notes, "dataflow-fusion: layer activations in SRAM"))

    def keeps_planner_bounds(self) -> bool:
        return False


__all__ = ["ACTIVATION_FEATURES", "FUSED_CLASSES", "DataflowFusion", "DataflowFusionParams", "activation_bytes"]
