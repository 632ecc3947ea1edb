"""The optimal-throughput bound of a run: output tokens per second the hardware could sustain, per resource.

Why: a simulated throughput says little on its own -- is the configuration near what the hardware allows,
or is scheduling leaving half of it idle? NanoFlow (Zhu et al. 2024, Sec. 3) answers with the throughput an
ideal serving engine would reach if every resource ran flat out and the work on different resources
overlapped perfectly: for each resource ``r`` (compute, memory bandwidth, network), the time ``T_r`` the
workload's work needs on it alone at the hardware's peak; the binding resource is the one with the largest
``T_r``, and no schedule can beat ``output tokens / max_r T_r``.

The work is the workload's own, through the cost model's operator table (FLOPs, bytes and collective
seconds are linear in the batch features, :mod:`simulator.costmodel.features`). Summed over the run's
requests of prompt ``P`` and output ``O``: ``P`` prefill tokens and ``P^2/2`` causal pairs, ``O - 1`` decode
steps over contexts ``P + 1 ... P + O - 1``, ``O`` logits. Weights are read once per iteration, and an
iteration holds at most ``S`` sequences -- the scheduler's cap, or the KV cache's capacity divided by a
sequence's mean context, whichever is smaller (NanoFlow's "maximum batch size that fits in memory") -- so the
workload needs at least ``sum O / S`` decode iterations. Rates are the device's peaks (datasheet FLOP/s of the
compute format and HBM bandwidth); network time is the operator table's link model of its collectives
(tensor-parallel all-reduces, pipeline sends). With ``E`` replicas-times-stages engines (a pipeline keeps one
batch per stage in flight) the bound is ``E x sum O / max_r T_r``.

What it is not: a prediction. It ignores queueing, arrival rate (an under-loaded run sits far below it by
design), kernel efficiency below peak, prefill/decode interference and the per-iteration overheads; the
simulated ``served_output_tps`` beside it shows how far a configuration is from its hardware's limit, and
which resource to buy more of.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from simulator.costmodel import features as F

if TYPE_CHECKING:
    from simulator.system import System

RESOURCES = ("compute", "memory", "network")


@dataclass(frozen=True)
class ThroughputBound:
    """Output tokens per second each resource alone allows, and the binding (smallest) one."""

    compute_tps: float
    memory_tps: float
    network_tps: float  # inf when the deployment has no collectives (one GPU, one stage)

    @property
    def output_tps(self) -> float:
        return min(self.compute_tps, self.memory_tps, self.network_tps)

    @property
    def resource(self) -> str:
        values = (self.compute_tps, self.memory_tps, self.network_tps)
        return RESOURCES[int(np.argmin(values))]


PHASES = ("both", "prefill", "decode")


def workload_features(
    prompt: np.ndarray,
    output: np.ndarray,
    max_seqs: int,
    kv_tokens: int,
    num_experts: int = 1,
    experts_per_token: int = 1,
    window: F.PrefillWindow | None = None,
    phase: str = "both",
    max_batch_tokens: int | None = None,
) -> np.ndarray:
    """Summed batch features of serving every request once (see the module docstring).

    ``phase`` keeps one phase's work, for a pool that runs only that phase: ``prefill`` (the prompts and each
    request's first token; an iteration takes at most ``max_batch_tokens`` prompt tokens, or the longest prompt
    alone, so weights are read at least ``sum P / that`` times) or ``decode`` (the ``O - 1`` later tokens over
    KV that arrived from elsewhere)."""
    P = np.asarray(prompt, dtype=np.float64)
    Q = np.asarray(output, dtype=np.float64)
    x = np.zeros(F.NUM_FEATURES)
    if not len(P):
        return x
    if window is None:
        attn_work, kv_read = (P * P / 2.0).sum(), P.sum()
    else:  # a sliding-window model's layers attend fewer pairs
        work, read = window.whole_prompts(P)
        attn_work, kv_read = work.sum(), read.sum()
    if phase == "prefill":
        x[F.PREFILL_TOKENS] = P.sum()
        x[F.PREFILL_ATTN_WORK] = attn_work
        x[F.PREFILL_KV_READ] = kv_read
        x[F.LOGIT_SEQS] = float(len(P))
        per_iteration = max(float(max_batch_tokens or 0), float(P.max()), 1.0)
        iterations = P.sum() / per_iteration
        x[F.ONE] = iterations
        x[F.EXPERTS_HIT] = iterations * float(F.expected_experts_hit(per_iteration, num_experts, experts_per_token))
        return x
    if phase == "both":
        x[F.PREFILL_TOKENS] = P.sum()
        x[F.PREFILL_ATTN_WORK] = attn_work
        x[F.PREFILL_KV_READ] = kv_read
    x[F.DECODE_SEQS] = (Q - 1.0).sum()
    x[F.LOGIT_SEQS] = Q.sum() if phase == "both" else (Q - 1.0).sum()
    x[F.DECODE_CONTEXT] = ((Q - 1.0) * P + (Q - 1.0) * Q / 2.0).sum()
    mean_context = float(P.mean() + Q.mean() / 2.0)
    batch = max(1.0, min(float(max_seqs), kv_tokens / max(mean_context, 1.0)))
    iterations = (Q.sum() if phase == "both" else (Q - 1.0).sum()) / batch
    x[F.ONE] = iterations
    x[F.EXPERTS_HIT] = iterations * float(F.expected_experts_hit(batch, num_experts, experts_per_token))
    return x


def throughput_bound(
    system: System, prompt: np.ndarray, output: np.ndarray, engines: int, kv_tokens_per_engine: int,
    phase: str = "both",
) -> ThroughputBound:
    """The bound for serving ``prompt``/``output`` on ``system`` with ``engines`` batches in flight; with a
    ``phase``, the bound of a pool that runs only that phase, in output tokens of the whole requests per second
    (the rate at which it lets the system finish them)."""
    table, dev = system.table, system.roofline
    total_out = float(np.sum(output))
    x = workload_features(
        prompt,
        output,
        system.scheduler_params.max_batch_seqs(),
        kv_tokens_per_engine,
        table.num_experts,
        table.experts_per_token,
        table.prefill_window,
        phase=phase,
        max_batch_tokens=system.scheduler_params.max_batch_tokens(),
    )
    L = float(table.num_layers)
    flops = L * sum(float(op.flops @ x) for op in table.layer_ops) + sum(
        float(op.flops @ x) for op in table.iteration_ops
    )
    nbytes = L * sum(float(op.bytes @ x) for op in table.layer_ops if op.placement == "device") + sum(
        float(op.bytes @ x) for op in table.iteration_ops if op.placement == "device"
    )
    network = L * sum(float(c.time @ x) for c in table.layer_comms) + sum(
        float(c.time @ x) for c in table.iteration_comms
    )

    def tps(seconds: float) -> float:
        return float("inf") if seconds <= 0 else engines * total_out / seconds

    return ThroughputBound(tps(flops / dev.peak_flops), tps(nbytes / dev.memory_bandwidth), tps(network))


__all__ = ["PHASES", "RESOURCES", "ThroughputBound", "throughput_bound", "workload_features"]
