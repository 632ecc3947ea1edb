"""Pricing on a device with static graph shapes (an NPU): work is padded up to the compiled shapes.

Why: an NPU's INT8 matrix engine runs graphs compiled ahead of time for fixed tensor shapes. mllm-NPU
(Xu et al., ASPLOS 2025, arXiv 2407.05858) prefills a prompt in fixed 256-token chunks, padding the last one,
because building a graph for each prompt length took seconds; a decode graph is compiled for a fixed batch.
The padded rows are computed like real ones, so their time is part of the price: a prompt of ``chunk + 1``
tokens costs two chunks, and prefill is fast only at whole chunks.

How: :class:`StaticShapeCostModel` is the :class:`~simulator.costmodel.iteration.IterationCostModel` with
the iteration's shape padded before the same pricers run (:class:`hwmodels.device.StaticShapes`):

* the iteration's prefill tokens are rounded up to whole chunks. The prompts one iteration prefills are
  assumed packed into shared chunks (exact for one user, whose iterations prefill one prompt); the padded
  rows go through every per-token operator (projections, MLP, norms) while attention and the KV read are
  priced on the real tokens (padding is masked out of attention);
* the decode sequences are rounded up to the smallest compiled batch; a padded row computes a logit and
  reads no KV (its context is empty), and the summed context grows by the real batch per step.

Work totals (FLOPs, bytes: MFU) count the padded rows too, because the device does that work. The class is
chosen by :meth:`simulator.system.System.cost_model` from the device; a device without ``static_shapes``
keeps the plain model (every GPU entry).
"""

from __future__ import annotations

import numpy as np

from hwmodels.device import StaticShapes
from simulator.costmodel import features as F
from simulator.costmodel.features import BatchShape
from simulator.costmodel.iteration import DecodeRun, IterationCost, IterationCostModel


class StaticShapeCostModel(IterationCostModel):
    """An iteration cost model that pads each batch to the device's compiled graph shapes first."""

    def __init__(self, *args, shapes: StaticShapes, **kwargs):
        super().__init__(*args, **kwargs)
        self.shapes = shapes

    def features(self, shape: BatchShape) -> np.ndarray:
        x = super().features(shape)
        real = int(x[F.PREFILL_TOKENS]), int(x[F.DECODE_SEQS])
        ptok = self.shapes.padded_prefill(real[0])
        dseq = self.shapes.padded_decode(real[1])
        x[F.PREFILL_TOKENS] = ptok
        x[F.DECODE_SEQS] = dseq
        x[F.LOGIT_SEQS] += dseq - real[1]
        x[F.EXPERTS_HIT] = F.expected_experts_hit(ptok + dseq * self.decode_tokens_per_seq, self._E, self._k)
        return x

    def iteration_from_totals(
        self,
        prefill_tokens: int,
        logit_seqs: int,
        prefill_attn_work: float,
        prefill_kv_read: int,
        decode_seqs: int,
        decode_context: int,
    ) -> IterationCost:
        dseq = self.shapes.padded_decode(decode_seqs)
        return super().iteration_from_totals(
            self.shapes.padded_prefill(prefill_tokens), logit_seqs + dseq - decode_seqs, prefill_attn_work,
            prefill_kv_read, dseq, decode_context,
        )

    def prime_lone_prefills(self, prompt_lengths: np.ndarray) -> int:
        """Nothing primed: a lone prefill's key here is its padded length, which the vectorised pass does not
        build (datasheet pricing of a handful of chunk counts is cheap anyway)."""
        return 0

    def decode_run(self, batch: int, context0: int, iterations: int, growth: float | None = None) -> DecodeRun:
        return super().decode_run(self.shapes.padded_decode(batch), context0, iterations,
                                  float(batch) if growth is None else growth)

    def decode_work(self, batch: int, context0: int, iterations: int, growth: float | None = None) -> tuple[float, float]:
        return super().decode_work(self.shapes.padded_decode(batch), context0, iterations,
                                   float(batch) if growth is None else growth)


__all__ = ["StaticShapeCostModel"]
