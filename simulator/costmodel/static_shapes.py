"""Pricing on a device with static graph shapes (an NPU): work is padded up to the compiled shapes.

Why: an NPU's INT8 matrix engine runs graphs compiled ahead of time for fixed tensor shapes. mllm-NPU
(Xu et al., ASPLOS 2025, arXiv 2407.05858) prefills a prompt in fixed 256-token chunks, padding the last one,
because building a graph for each prompt length took seconds; a decode graph is compiled for a fixed batch.
The padded rows are computed like real ones, so their time is part of the price: a prompt of ``chunk + 1``
tokens costs two chunks, and prefill is fast only at whole chunks.

How: :class:`StaticShapeCostModel` is the :class:`~simulator.costmodel.iteration.IterationCostModel` with
the iteration's shape padded before the same pricers run (:class:`hwmodels.device.StaticShapes`):

* the iteration's prefill runs as ``ceil(tokens / chunk)`` graphs of ``chunk`` tokens, one after another,
  each priced as a whole iteration (so each reads the weights again, as a sequence of graph executions
  does); the padded rows go through every per-token operator (projections, MLP, norms). The prompts one
  iteration prefills are assumed packed into shared chunks (exact for one user, whose iterations prefill one
  prompt). Attention and its KV reads are priced on the real tokens (padding is masked out), split evenly
  over the chunks: an approximation where chunks straddle a roofline regime (later chunks attend more);
* the last chunk also computes the logits of the prompts the iteration completes; decode sequences run as
  one more graph (reading the weights again) after the chunks; the decode batch is rounded up to the smallest compiled batch, a padded row computes a logit and reads no
  KV (its context is empty), and the summed context grows by the real batch per step.

Work totals (FLOPs, bytes: MFU) count the padded rows too, because the device does that work.
:meth:`IterationCostModel.breakdown` still shows the unpadded iteration. The class is
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
    """An iteration cost model that runs each batch as the device's compiled graphs: whole prefill chunks one
    after another, then the decode batch padded to a compiled size."""

    def __init__(self, *args, shapes: StaticShapes, **kwargs):
        super().__init__(*args, **kwargs)
        self.shapes = shapes

    def iteration(self, shape: BatchShape) -> IterationCost:
        """As :meth:`iteration_from_totals` of the shape's totals (the graphs see only totals)."""
        x = super().features(shape)
        return self.iteration_from_totals(
            int(x[F.PREFILL_TOKENS]),
            int(x[F.LOGIT_SEQS]),
            float(x[F.PREFILL_ATTN_WORK]),
            int(x[F.PREFILL_KV_READ]),
            int(x[F.DECODE_SEQS]),
            int(x[F.DECODE_CONTEXT]),
        )

    def iteration_from_totals(
        self,
        prefill_tokens: int,
        logit_seqs: int,
        prefill_attn_work: float,
        prefill_kv_read: int,
        decode_seqs: int,
        decode_context: int,
    ) -> IterationCost:
        """``ceil(prefill_tokens / chunk)`` chunk graphs, each reading the weights again and attending an even
        share of the iteration's attention work and KV reads (the last also computes the logits of the prompts
        it completes), then, if there are decodes, one graph for them padded to a compiled batch."""
        sup = super().iteration_from_totals
        if not prefill_tokens:
            n_graphs, rows = self._graphs(decode_seqs)
            if n_graphs == 1:
                return sup(0, logit_seqs + rows - decode_seqs, 0.0, 0, rows, decode_context)
            one = sup(0, rows, 0.0, 0, rows, decode_context // n_graphs)
            return IterationCost(n_graphs * one.time_s, n_graphs * one.flops, n_graphs * one.bytes)
        n = -(-prefill_tokens // self.shapes.prefill_chunk)
        prompts_done = logit_seqs - decode_seqs
        work, kv = prefill_attn_work / n, prefill_kv_read // n
        last = sup(self.shapes.prefill_chunk, prompts_done, work, kv, 0, 0)
        time_s, flops, nbytes = last.time_s, last.flops, last.bytes
        if n > 1:
            chunk = sup(self.shapes.prefill_chunk, 0, work, kv, 0, 0)
            time_s, flops, nbytes = (
                time_s + (n - 1) * chunk.time_s,
                flops + (n - 1) * chunk.flops,
                nbytes + (n - 1) * chunk.bytes,
            )
        if decode_seqs:
            n_graphs, rows = self._graphs(decode_seqs)
            dec = sup(0, rows, 0.0, 0, rows, decode_context // n_graphs)
            time_s, flops, nbytes = (
                time_s + n_graphs * dec.time_s,
                flops + n_graphs * dec.flops,
                nbytes + n_graphs * dec.bytes,
            )
        return IterationCost(time_s, flops, nbytes)

    def prime_lone_prefills(self, prompt_lengths: np.ndarray) -> int:
        """Nothing primed: the vectorised pass prices whole prompts, which never run as one graph here
        (datasheet pricing of a few chunk shapes is cheap anyway)."""
        return 0

    def _graphs(self, batch: int) -> tuple[int, int]:
        """(graphs, rows per graph) a decode batch of ``batch`` sequences runs as."""
        padded = self.shapes.padded_decode(batch)
        top = self.shapes.decode_batches[-1]
        return (1, padded) if padded <= top else (padded // top, top)

    def decode_run(self, batch: int, context0: int, iterations: int, growth: float | None = None) -> DecodeRun:
        """Each step runs ``graphs`` graphs of ``rows`` sequences (one, unless the batch exceeds the largest
        compiled batch), each holding an even share of the context."""
        n, rows = self._graphs(batch)
        g = float(batch) if growth is None else growth
        run = super().decode_run(rows, context0 // n, iterations, g / n)
        return run if n == 1 else _times(run, n)

    def decode_work(
        self, batch: int, context0: int, iterations: int, growth: float | None = None
    ) -> tuple[float, float]:
        n, rows = self._graphs(batch)
        g = float(batch) if growth is None else growth
        flops, nbytes = super().decode_work(rows, context0 // n, iterations, g / n)
        return n * flops, n * nbytes


def _times(run: DecodeRun, n: int) -> DecodeRun:
    """``run`` with every step ``n`` times as long (the same graph executed ``n`` times a step)."""
    pieces = None if run.pieces is None else tuple((c, n * f, n * st) for c, f, st in run.pieces)
    durations = None if run.durations is None else n * run.durations
    return DecodeRun(run.iterations, n * run.first, n * run.step, run.affine, durations, pieces)


__all__ = ["StaticShapeCostModel"]
