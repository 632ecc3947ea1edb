"""One flat, JSON-serialisable dictionary of headline numbers for a simulation run.

Why flat: a sweep produces one summary per run, and flat dictionaries become the rows of one tidy table that can be
merged, filtered and plotted; every key is described in :data:`SUMMARY_KEYS` (which the docs and the dashboard
reuse), and a run with nothing to measure gives NaN values rather than an exception.

Metric definitions
------------------
*Measured requests* are those with ``arrival_s ≥ warmup_s``; requests arriving during warm-up (while queues and
batches are still filling from empty) are left out of every latency and SLO statistic. When
``simulation.max_time_s`` stops a run before the workload's last arrival, the requests that had not arrived are not
in the records at all; ``not_arrived`` counts them.

* **TTFT** (time to first token) = first_token − arrival, over measured requests that produced a first token.
* **TBT** (time between tokens) = each gap between consecutive output tokens of a request, one sample per gap, from
  ``token_gaps`` (weighted; percentiles are exact, see :mod:`simulator.metrics.quantiles`). A first gap includes any
  stall, e.g. from preemption or a prefill that shared the batch. The engine records gaps of measured requests
  only (gaps carry no request id, so they cannot be filtered here).
* **TPOT** (time per output token) = (E2E − TTFT) / (output_tokens − 1), over finished measured requests with more
  than one output token: the request's *average* pace after the first token (TBT is the per-gap view).
* **E2E** (end-to-end latency) = finish − arrival, over finished measured requests.
* **Queueing delay** = schedule − arrival (first time scheduled), over measured requests that were scheduled.
* Percentiles are numpy's default linear interpolation (type 7); means are arithmetic.

*Measurement window* = [first arrival among measured requests, last finish among them]. Rates divide by its length:

* **throughput** = finished measured requests / window; **input/output tokens per second** = their prompt/output
  tokens / window.
* **SLO attainment** = fraction of measured requests (finished or not) that meet every set target of the
  :class:`~simulator.metrics.slo.SLOConfig`; unfinished requests count as misses. **slo_met** = attainment ≥ the
  configured attainment target. **Goodput** = measured requests meeting the SLO / window.

*Arrival window* = [first measured arrival a0, last measured arrival a1], of length S; the load the run offered and
the rate it kept up with are measured over it, so that draining the queue after the last arrival (which a slower
configuration needs longer for) does not dilute them:

* **offered_rps** = (measured arrivals − 1) / S: the arrival rate (n arrivals delimit n − 1 gaps).
* **served_rps** = measured requests finishing in [a0 + w, a1 + w] / S, where w is the median E2E of the measured
  requests (unfinished ones count as infinitely late; if that makes w infinite, w = 0). A configuration that keeps
  up finishes requests at the rate they arrive, w later; one that does not finishes at its own capacity, however
  the window is shifted.
* **offered_output_tps** = offered_rps × the mean output tokens of the measured requests: the tokens per second the
  load asks for.
* **served_output_tps** = the output tokens per second the configuration serves in steady state at this load. One
  that keeps up (not overloaded, below) serves what is offered -- in steady state tokens flow out as fast as they
  flow in -- so it is offered_output_tps, the same for every such configuration under the same load. An overloaded
  one has no steady state at this load; it serves its capacity: the output tokens it generated in the shifted
  window [a0 + w, a1 + w] / S (one token at each first-token time, one per decode sequence per iteration from the
  iteration records, runs cut by the window pro rata; every request's tokens, warm-up included), a window in
  which it is still working through its backlog.
* **queue_growth_s** = mean queueing delay of the measured requests arriving in the second half of the arrival
  window minus that of the first half (an unscheduled request waits until the end of the simulation).
* **overloaded** = the configuration does not keep up: it finished more than ``OVERLOAD_SIGMAS`` (2) standard
  deviations of the arrival count (√n for n arrivals) fewer requests than arrived (n − served_rps·S > 2√n), *and*
  its queue grew by more than 2 standard errors of that difference of means (queue_growth_s > 2·√(s₁²/n₁ +
  s₂²/n₂), s and n the standard deviation and count of the queueing delays of each half). A shortfall within the
  noise of the arrival count, or one without a queue that clearly grows, is not overload. An overloaded
  configuration is never called the answer, whatever its latencies.

Iteration statistics use the parts of iteration runs that fall inside the window (a run cut by the window edge
counts pro rata by time):

* **MFU** = model FLOPs / (peak FLOP/s per GPU × window × GPUs); **MBU** = HBM bytes / (bandwidth per GPU × window ×
  GPUs). Both average over the whole window, idle time included.
* **mean batch size** = iteration-weighted mean of prefill_seqs + decode_seqs; **mean decode batch** likewise of
  decode_seqs.
* **KV utilisation** = kv_blocks_used / kv_blocks_total at the start of each run; the mean is weighted by busy time
  (idle stretches are left out), the peak is the largest value seen in the window.
* **Energy and cost** over the window follow :mod:`simulator.metrics.energy`; energy per token divides by the
  output tokens of finished measured requests.
* **Energy per unit and tier, average power, rental and TCO prices per GPU and node** follow
  :mod:`simulator.metrics.energy_cost` (keys ``energy_total_j`` to ``tco_per_million_output_tokens_usd`` and the
  per-unit ``energy.<unit>_j``, ``avg_power.<unit>_w``, after the fixed keys).
* **Cost per million output tokens** = the deployment's price per second / served_output_tps × 10⁶: what a token
  costs at the rate the run offered, in steady state (the drain after the last arrival, which slower hardware needs
  longer for, does not enter it). Every configuration that keeps up with the same load serves the same tokens per
  second, so among them this orders exactly as the price per hour does. (With no arrival window, e.g. a single
  request, it falls back to the window's cost / output tokens of finished measured requests.)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pandas as pd

from simulator.metrics.energy import cost_usd, energy_joules
from simulator.metrics.energy_cost import ENERGY_COST_KEYS, energy_cost_stats
from simulator.metrics.quantiles import token_gap_mean, token_gap_quantiles
from simulator.metrics.result import RunInfo, SimulationResult, request_latencies
from simulator.metrics.slo import SLOConfig
from simulator.metrics.thermal_power import powered_busy_s

#: Latency metrics reported, with their human names.
LATENCY_METRICS: dict[str, str] = {
    "ttft": "time to first token",
    "tbt": "time between consecutive output tokens (every gap)",
    "tpot": "time per output token after the first",
    "e2e": "end-to-end latency",
    "queue": "queueing delay before first scheduled",
}
#: Percentiles reported for each latency metric.
PERCENTILES: tuple[int, ...] = (50, 90, 95, 99)


def _latency_keys() -> dict[str, str]:
    keys: dict[str, str] = {}
    for m, name in LATENCY_METRICS.items():
        keys[f"{m}_mean_s"] = f"mean {name} (s)"
        for p in PERCENTILES:
            keys[f"{m}_p{p}_s"] = f"p{p} {name} (s)"
    return keys


#: Every key of the summary, in order, with its meaning (see the module docstring for the definitions).
SUMMARY_KEYS: dict[str, str] = {
    "num_requests": "measured requests (arrived at or after warm-up)",
    "completed": "measured requests that finished",
    "unfinished": "measured requests not finished when the simulation stopped",
    "warmup_requests": "requests that arrived during warm-up (excluded from statistics)",
    "not_arrived": "requests not yet arrived when simulation.max_time_s stopped the run (not simulated, not measured)",
    **_latency_keys(),
    "window_start_s": "measurement window start: first measured arrival (s)",
    "window_end_s": "measurement window end: last measured finish (s)",
    "window_s": "measurement window length (s)",
    "throughput_rps": "finished measured requests per second",
    "offered_rps": "measured arrivals per second over the arrival window (first to last measured arrival)",
    "served_rps": "measured requests finished per second over the arrival window shifted by the median E2E",
    "offered_output_tps": "output tokens per second the load asks for: offered_rps x mean output tokens",
    "served_output_tps": "output tokens per second served in steady state (offered if it keeps up, else capacity)",
    "queue_growth_s": "mean queueing delay of the arrival window's second half minus its first half (s)",
    "overloaded": "whether the configuration does not keep up with the offered load (see the definitions)",
    "input_tps": "prompt tokens of finished measured requests per second",
    "output_tps": "output tokens of finished measured requests per second",
    "slo_attainment": "fraction of measured requests meeting every SLO target (unfinished ones miss)",
    "slo_met": "whether slo_attainment reaches the SLO's attainment target",
    "goodput_rps": "measured requests meeting the SLO per second",
    "slo_target_attainment": "the SLO's attainment target",
    "slo_ttft_s": "TTFT target (s), null if not set",
    "slo_tpot_s": "TPOT target (s), null if not set",
    "slo_tbt_s": "TBT target on each request's largest gap (s), null if not set",
    "slo_e2e_s": "E2E target (s), null if not set",
    "num_gpus": "GPUs in the deployment (replicas × GPUs per replica)",
    "engine": "serving-engine profile whose terms priced every iteration (deployment.engine, or the default: "
    "vllm, or the device's own); 'none': the kernels alone",
    "mfu": "model FLOPs utilisation over the window",
    "mbu": "memory bandwidth utilisation over the window",
    "mean_batch_size": "iteration-weighted mean of prefill + decode sequences per iteration",
    "mean_decode_batch": "iteration-weighted mean of decode sequences per iteration",
    "kv_util_mean": "busy-time-weighted mean fraction of KV blocks in use",
    "kv_util_peak": "largest fraction of KV blocks in use",
    "preemptions": "preemptions suffered by measured requests",
    "swap_outs": "preempted sequences whose KV was swapped to host memory (preemption_mode: swap; whole run)",
    "swap_ins": "swapped sequences whose KV was copied back to the GPU (whole run)",
    "swap_bytes": "KV bytes copied between GPU and host memory, both directions, all GPUs (whole run)",
    "swap_recompute_fallbacks": "preemptions recomputed because the host swap space was full (whole run)",
    "swap_transfer_s": "seconds of KV copies over PCIe, summed over copies (whole run)",
    "bound_output_tps": "optimal-throughput bound: output tokens/s the hardware could sustain for this workload "
    "with every resource at peak and perfectly overlapped (NanoFlow's analysis; the smallest of the three below)",
    "bound_resource": "the resource that binds the optimal-throughput bound: compute, memory or network",
    "bound_compute_output_tps": "output tokens/s the GPUs' peak FLOP/s allow for this workload",
    "bound_memory_output_tps": "output tokens/s the GPUs' memory bandwidth allows for this workload",
    "bound_network_output_tps": "output tokens/s the collectives' links allow (inf without collectives)",
    "bound_attainment": "output_tps / bound_output_tps: share of the hardware's bound the run reached",
    "iterations": "iterations simulated (whole run)",
    "energy_j": "GPU energy over the window (J)",
    "energy_per_output_token_j": "GPU energy per output token (J)",
    "cost_usd": "GPU rental cost over the window (USD)",
    "cost_per_million_output_tokens_usd": "GPU cost per million output tokens (USD)",
    **ENERGY_COST_KEYS,
    "sim_time_s": "simulated time at the end of the run (s)",
    "wall_time_s": "wall-clock time the simulation took (s)",
    "sim_speed_rps": "requests simulated (warm-up included) per wall-clock second",
}

NAN = float("nan")

#: How many standard deviations of the arrival count (√n) the served shortfall must exceed to count as overload:
#: two is the usual "not explained by chance" line; a Poisson count of n arrivals varies by √n.
OVERLOAD_SIGMAS = 2.0


def _ratio(num: float, den: float) -> float:
    """num / den, NaN when the denominator is zero or undefined (no exceptions on empty runs)."""
    if den is None or not math.isfinite(den) or den <= 0:
        return NAN
    return float(num) / float(den)


def _describe(prefix: str, mean: float, quantiles: np.ndarray) -> dict[str, float]:
    out = {f"{prefix}_mean_s": float(mean)}
    for p, value in zip(PERCENTILES, quantiles, strict=True):
        out[f"{prefix}_p{p}_s"] = float(value)
    return out


def _sample_stats(prefix: str, values: np.ndarray) -> dict[str, float]:
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return _describe(prefix, NAN, np.full(len(PERCENTILES), NAN))
    return _describe(prefix, values.mean(), np.quantile(values, np.array(PERCENTILES) / 100))


UNFINISHED = 1e300
"""Stands for an unfinished request's latency inside a quantile (inf would turn the interpolation into NaN)."""


def _percentile_targets(slo: SLOConfig, req: pd.DataFrame, lat: pd.DataFrame, finished: np.ndarray,
                        result: SimulationResult, out: dict[str, Any]) -> bool:
    """Measure each percentile target into ``out`` (``slo_ttft_p90_s`` and ``slo_ttft_p90_ok``); True when all hold.

    Per-request metrics take unfinished requests as infinitely slow, so an overloaded run cannot pass by leaving
    its slowest requests undone; one-token requests have no TPOT and are left out of it.
    """
    ok_all = True
    for target in slo.percentiles:
        q = target.percentile / 100
        if target.metric == "tbt_s":
            value = float(token_gap_quantiles(result.token_gaps, np.array([q]))[0])
        else:
            column = {"queueing_s": "queue_s"}.get(target.metric, target.metric)
            values = np.where(finished, lat[column].to_numpy(dtype=np.float64), UNFINISHED)
            if target.metric == "tpot_s":
                values = values[~np.isnan(values)]
            value = float(np.quantile(values, q)) if len(values) else NAN
            if value >= UNFINISHED / 2:  # the percentile falls among (or next to) unfinished requests
                value = math.inf
        # NaN: nothing to measure (no gaps, no multi-token request), so nothing can miss the target.
        ok = bool(np.isnan(value) or value <= target.max_s)
        out[target.key] = value
        out[target.key[:-2] + "_ok"] = ok
        ok_all = ok_all and ok
    return ok_all


def _iteration_stats(result: SimulationResult, t0: float, t1: float, window: float) -> dict[str, float]:
    """Utilisation, batch, KV, energy and cost over [t0, t1]; NaN throughout when the window is undefined."""
    info = result.info
    keys = (
        "mfu",
        "mbu",
        "mean_batch_size",
        "mean_decode_batch",
        "kv_util_mean",
        "kv_util_peak",
        "energy_j",
        "cost_usd",
    )
    if not math.isfinite(window) or window <= 0:
        return dict.fromkeys(keys, NAN)
    it = result.iterations

    def col(name: str) -> np.ndarray:
        return it[name].to_numpy(dtype=np.float64)

    start, end = col("start_s"), col("end_s")
    duration = end - start
    overlap = np.clip(np.minimum(end, t1) - np.maximum(start, t0), 0.0, None)
    inside = (start >= t0) & (start <= t1)
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(duration > 0, overlap / duration, inside.astype(np.float64))
        util = col("kv_blocks_used") / col("kv_blocks_total")
    iters = col("num_iterations") * frac
    seen = frac > 0
    num_gpus = info.num_gpus
    busy_gpu_s = powered_busy_s(info, it, t0, t1, float(overlap.sum())) * info.gpus_per_replica
    kv_peak = float(np.nanmax(util[seen])) if seen.any() and np.isfinite(util[seen]).any() else NAN
    kv_weight = overlap * np.isfinite(util)
    return {
        "mfu": _ratio(float(np.dot(col("flops"), frac)), info.peak_flops_per_gpu * window * num_gpus),
        "mbu": _ratio(float(np.dot(col("bytes"), frac)), info.mem_bandwidth_per_gpu * window * num_gpus),
        "mean_batch_size": _ratio(float(np.dot(iters, col("prefill_seqs") + col("decode_seqs"))), float(iters.sum())),
        "mean_decode_batch": _ratio(float(np.dot(iters, col("decode_seqs"))), float(iters.sum())),
        "kv_util_mean": _ratio(float(np.dot(kv_weight, np.nan_to_num(util))), float(kv_weight.sum())),
        "kv_util_peak": kv_peak,
        "energy_j": energy_joules(
            window_s=window, busy_gpu_s=busy_gpu_s, num_gpus=num_gpus, idle_w=info.idle_w, active_w=info.tdp_w
        ) + _extra_energy(info, window, float(overlap.sum())),
        "cost_usd": cost_usd(window_s=window, num_gpus=num_gpus, price_usd_per_gpu_hour=info.price_usd_per_gpu_hour)
        + info.num_replicas * info.extra_usd_per_replica_hour * window / 3600.0,
    }


#: Per-pool keys of a multi-pool run, each reported as ``pool.<name>.<key>`` after the fixed keys.
POOL_KEYS: dict[str, str] = {
    "num_gpus": "GPUs of the pool",
    "busy": "fraction of the window the pool's replicas were running iterations (mean over its replicas)",
    "mfu": "the pool's model FLOPs utilisation",
    "mbu": "the pool's memory-bandwidth utilisation",
    "mean_batch_size": "the pool's sequences per iteration",
    "kv_util_mean": "the pool's mean KV-cache occupancy",
    "kv_util_peak": "the pool's peak KV-cache occupancy",
    "energy_j": "the pool's energy over the window",
    "cost_usd": "the pool's rental cost over the window",
}

#: Hand-off keys of a multi-pool run (KV moved between pools), after the fixed keys.
HANDOFF_KEYS: dict[str, str] = {
    "kv_handoffs": "KV hand-offs between pools (measured requests)",
    "kv_handoff_gib": "KV bytes moved between pools, GiB",
    "kv_transfer_mean_s": "mean time a KV transfer held the link",
    "kv_transfer_p99_s": "P99 time a KV transfer held the link",
    "kv_handoff_wait_mean_s": "mean time from prefill done to transfer start (receiver memory, link queue)",
    "kv_handoff_share_of_e2e": "mean share of a request's E2E latency spent between prefill done and KV arrival",
    "kv_link_bound_output_tps": "output tokens/s the KV hand-offs' link occupancy allows (inf: no hand-offs); "
    "part of bound_output_tps",
}


#: Live-migration keys (a multi-pool run with ``serving.migration``), after the fixed keys.
MIGRATION_KEYS: dict[str, str] = {
    "migrations": "running requests moved live between replicas (measured requests)",
    "migration_gib": "KV bytes those moves copied, GiB",
    "migration_downtime_mean_s": "mean stop-and-copy pause per migration (the migrated request's token gap grows by it)",
}


def migration_stats(req: pd.DataFrame) -> dict[str, Any]:
    """:data:`MIGRATION_KEYS` from the migration columns of the requests."""
    count = int(req["migrations"].sum())
    return {
        "migrations": count,
        "migration_gib": float(req["migration_bytes"].sum()) / 2**30,
        "migration_downtime_mean_s": float(req["migration_downtime_s"].sum()) / count if count else NAN,
    }


#: Priority-class and draining keys (a multi-pool run with ``serving.priorities`` / ``migration.drain``).
PRIORITY_KEYS: dict[str, str] = {
    f"priority.{cls}.{key}": f"{what} of the {cls}-priority requests"
    for cls in ("high", "normal")
    for key, what in (("requests", "count"), ("ttft_p50_s", "TTFT p50"), ("ttft_p99_s", "TTFT p99"),
                      ("tpot_p50_s", "TPOT p50"), ("tpot_p99_s", "TPOT p99"))
}
DRAIN_KEYS: dict[str, str] = {
    "drained_replicas": "replicas marked for scale-down (serving.migration.drain)",
    "drain_emptied": "of those, replicas emptied before the run ended",
    "drain_time_mean_s": "mean time from a drain's start until its replica held no request",
    "drain_migrations": "running requests migrated off draining replicas (measured requests)",
    "drain_reroutes": "queued requests sent from draining replicas to others (measured requests)",
}


def priority_stats(req: pd.DataFrame, lat: pd.DataFrame) -> dict[str, Any]:
    """:data:`PRIORITY_KEYS`: TTFT and TPOT percentiles of each priority class."""
    out: dict[str, Any] = {}
    high = req["priority"].to_numpy() == 1
    for cls, mask in (("high", high), ("normal", ~high)):
        out[f"priority.{cls}.requests"] = int(mask.sum())
        for m in ("ttft", "tpot"):
            values = lat[f"{m}_s"].to_numpy()[mask]
            values = values[np.isfinite(values)]
            for q in (50, 99):
                out[f"priority.{cls}.{m}_p{q}_s"] = float(np.percentile(values, q)) if len(values) else NAN
    return out


def drain_stats(req: pd.DataFrame, info: RunInfo) -> dict[str, Any]:
    """:data:`DRAIN_KEYS` from the run's drains and the drain columns of the requests."""
    emptied = [done - at for _, at, done in info.drains if math.isfinite(done)]
    return {
        "drained_replicas": len(info.drains),
        "drain_emptied": len(emptied),
        "drain_time_mean_s": float(np.mean(emptied)) if emptied else NAN,
        "drain_migrations": int(req["drain_migrations"].sum()),
        "drain_reroutes": int(req["drain_reroutes"].sum()),
    }


def _pools_iteration_stats(result: SimulationResult, t0: float, t1: float, window: float) -> dict[str, Any]:
    """:func:`_iteration_stats` for a multi-pool run: each pool priced with its own hardware, then summed
    (energy, cost) or weighted by capacity (MFU, MBU) into the totals, with per-pool keys beside them."""
    info = result.info
    it = result.iterations
    replica = it["replica"].to_numpy()
    totals: dict[str, float] = {"energy_j": 0.0, "cost_usd": 0.0}
    flops_cap = bytes_cap = mfu_num = mbu_num = 0.0
    per_pool: dict[str, Any] = {}
    for pool in info.pools:
        mine = (replica >= pool.first_replica) & (replica < pool.first_replica + pool.num_replicas)
        view = SimulationResult.__new__(SimulationResult)
        view.iterations = it[mine]
        share = pool.gpu_share  # a pool on a share of shared GPUs pays, draws and peaks at that share
        view.info = RunInfo(
            info.scenario_name, info.seed, info.model, pool.device, pool.num_replicas, pool.gpus_per_replica,
            pool.peak_flops_per_gpu * share, pool.mem_bandwidth_per_gpu * share,
            pool.price_usd_per_gpu_hour * share, pool.tdp_w * share,
            pool.idle_w * share, pool.kv_capacity_tokens_per_replica, info.kv_block_size, pool.weights_bytes_per_gpu,
            pool.gpu_memory_bytes, info.warmup_s, info.wall_time_s, info.sim_end_s,
        )
        stats = _iteration_stats(view, t0, t1, window)
        busy = NAN
        if math.isfinite(window) and window > 0:
            start, end = view.iterations["start_s"].to_numpy(), view.iterations["end_s"].to_numpy()
            overlap = np.clip(np.minimum(end, t1) - np.maximum(start, t0), 0.0, None)
            busy = float(overlap.sum()) / (window * pool.num_replicas)
        prefix = f"pool.{pool.name}."
        per_pool[prefix + "num_gpus"] = pool.gpus_used
        per_pool[prefix + "busy"] = busy
        for key in ("mfu", "mbu", "mean_batch_size", "kv_util_mean", "kv_util_peak", "energy_j", "cost_usd"):
            per_pool[prefix + key] = stats[key]
        per_pool[prefix + "bound_output_tps"] = float(pool.bound_output_tps)  # its phase's bound (pools/bound.py)
        totals["energy_j"] += stats["energy_j"]
        totals["cost_usd"] += stats["cost_usd"]
        fc = pool.peak_flops_per_gpu * pool.gpus_used
        bc = pool.mem_bandwidth_per_gpu * pool.gpus_used
        flops_cap += fc
        bytes_cap += bc
        mfu_num += np.nan_to_num(stats["mfu"]) * fc
        mbu_num += np.nan_to_num(stats["mbu"]) * bc
    # Batch and KV statistics over every iteration (energy, cost, MFU and MBU are replaced by the pools' sums;
    # the view counts every replica as a GPU group of its own so shared GPUs do not look over-busy).
    flat = SimulationResult.__new__(SimulationResult)
    flat.iterations, flat.info = it, dataclasses.replace(info, pools=())
    whole = _iteration_stats(flat, t0, t1, window)
    whole.update(totals)
    whole["mfu"] = _ratio(mfu_num, flops_cap) if math.isfinite(window) else NAN
    whole["mbu"] = _ratio(mbu_num, bytes_cap) if math.isfinite(window) else NAN
    return {**whole, **per_pool}


def handoff_stats(req: pd.DataFrame, lat: pd.DataFrame) -> dict[str, Any]:
    """:data:`HANDOFF_KEYS` from the hand-off columns of a multi-pool run's requests."""
    moved = req["kv_transfers"].to_numpy() > 0
    start = req["kv_transfer_start_s"].to_numpy(dtype=np.float64)[moved]
    end = req["kv_transfer_end_s"].to_numpy(dtype=np.float64)[moved]
    ready = req["kv_ready_s"].to_numpy(dtype=np.float64)[moved]
    e2e = lat["e2e_s"].to_numpy(dtype=np.float64)[moved]
    held = end - start
    share = (end - ready) / e2e
    share = share[np.isfinite(share)]
    return {
        "kv_handoffs": int(req["kv_transfers"].sum()),
        "kv_handoff_gib": float(req["kv_transfer_bytes"].sum()) / 2**30,
        "kv_transfer_mean_s": float(held.mean()) if len(held) else NAN,
        "kv_transfer_p99_s": float(np.quantile(held, 0.99)) if len(held) else NAN,
        "kv_handoff_wait_mean_s": float((start - ready).mean()) if len(held) else NAN,
        "kv_handoff_share_of_e2e": float(share.mean()) if len(share) else NAN,
    }


def _extra_energy(info: RunInfo, window: float, busy_replica_s: float) -> float:
    """Energy of the devices techniques add to each replica (a separate draft device; 0 without). They are
    powered for the whole window and counted active while their replica is busy (an upper bound: a draft
    device works for part of each round)."""
    if not info.extra_tdp_w_per_replica:
        return 0.0
    idle, active = info.extra_idle_w_per_replica, info.extra_tdp_w_per_replica
    return info.num_replicas * idle * window + (active - idle) * busy_replica_s


def output_tokens_between(result: SimulationResult, t0: float, t1: float) -> float:
    """Output tokens the deployment generated in [t0, t1], from the first-token times and the iteration records.

    Why not from the requests' finish times: a request's tokens are produced while it decodes, not when it ends,
    and an interval of prefill-only iterations produces none (the iteration records say exactly how many decode
    sequences each iteration carried). A run of iterations cut by the interval's edge counts pro rata by time.
    """
    first = result.requests["first_token_s"].to_numpy(dtype=np.float64)
    firsts = int(np.count_nonzero((first >= t0) & (first <= t1)))
    it = result.iterations
    start, end = it["start_s"].to_numpy(dtype=np.float64), it["end_s"].to_numpy(dtype=np.float64)
    duration = end - start
    overlap = np.clip(np.minimum(end, t1) - np.maximum(start, t0), 0.0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(duration > 0, overlap / duration, ((end >= t0) & (end <= t1)).astype(np.float64))
    decode = it["decode_seqs"].to_numpy(dtype=np.float64) * it["num_iterations"].to_numpy(dtype=np.float64)
    return float(firsts) + float(np.dot(decode, frac))


def load_stats(result: SimulationResult, req: pd.DataFrame, lat: pd.DataFrame) -> dict[str, Any]:
    """Offered and served rates over the arrival window, queue growth and the overload flag (module doc)."""
    arrival = req["arrival_s"].to_numpy(dtype=np.float64)
    n = len(arrival)
    keys = ("offered_rps", "served_rps", "offered_output_tps", "served_output_tps", "queue_growth_s")
    out: dict[str, Any] = dict.fromkeys(keys, NAN)
    out["overloaded"] = False
    if n < 2:
        return out
    a0, a1 = float(arrival.min()), float(arrival.max())
    span = a1 - a0
    if not span > 0:
        return out
    e2e = np.nan_to_num(lat["e2e_s"].to_numpy(dtype=np.float64), nan=math.inf)
    shift = float(np.median(e2e))
    if not math.isfinite(shift):  # most requests never finished: measure over the arrival window itself
        shift = 0.0
    finish = req["finish_s"].to_numpy(dtype=np.float64)
    served = int(np.count_nonzero((finish >= a0 + shift) & (finish <= a1 + shift)))
    queue = lat["queue_s"].to_numpy(dtype=np.float64)
    queue = np.where(np.isfinite(queue), queue, float(result.info.sim_end_s) - arrival)
    late = arrival > a0 + span / 2
    growth, growth_se = NAN, NAN
    if late.sum() >= 2 and (~late).sum() >= 2:
        growth = float(queue[late].mean() - queue[~late].mean())
        growth_se = math.sqrt(float(queue[late].var(ddof=1)) / late.sum()
                              + float(queue[~late].var(ddof=1)) / (~late).sum())
    overloaded = bool(n - served > OVERLOAD_SIGMAS * math.sqrt(n) and growth > OVERLOAD_SIGMAS * growth_se)
    offered_tps = (n - 1) / span * float(req["output_tokens"].to_numpy(dtype=np.float64).mean())
    out.update(
        {
            "offered_rps": (n - 1) / span,
            "served_rps": served / span,
            "offered_output_tps": offered_tps,
            "served_output_tps": (
                output_tokens_between(result, a0 + shift, a1 + shift) / span if overloaded else offered_tps
            ),
            "queue_growth_s": growth,
            "overloaded": overloaded,
        }
    )
    return out


def measured_requests(result: SimulationResult) -> pd.DataFrame:
    """The requests that count for statistics: those that arrived at or after the warm-up time."""
    req = result.requests
    return req[req["arrival_s"].to_numpy(dtype=np.float64) >= result.info.warmup_s]


def _swap_and_bound(info: RunInfo, output_tps: float) -> dict[str, Any]:
    """Swap counts and the optimal-throughput bound (simulator/throughput_bound.py) from the run's info."""
    per = {"compute": info.bound_compute_tps, "memory": info.bound_memory_tps, "network": info.bound_network_tps}
    known = {k: v for k, v in per.items() if math.isfinite(v) or v == math.inf}
    bound = min(known.values()) if known else NAN
    resource = min(known, key=known.get) if known and math.isfinite(bound) else None
    return {
        "swap_outs": int(info.swap_outs),
        "swap_ins": int(info.swap_ins),
        "swap_bytes": float(info.swap_bytes),
        "swap_recompute_fallbacks": int(info.swap_recompute_fallbacks),
        "swap_transfer_s": float(info.swap_transfer_s),
        "bound_output_tps": bound,
        "bound_resource": resource,
        "bound_compute_output_tps": float(info.bound_compute_tps),
        "bound_memory_output_tps": float(info.bound_memory_tps),
        "bound_network_output_tps": float(info.bound_network_tps),
        "bound_attainment": _ratio(output_tps, bound) if resource is not None else NAN,
    }


def summarise(result: SimulationResult, slo: SLOConfig | None = None) -> dict[str, Any]:
    """The headline numbers of one run; keys and meanings in :data:`SUMMARY_KEYS`, definitions in the module doc.

    Without an ``slo``, attainment counts finished requests (no latency targets) against the default 0.9 goal.
    """
    slo = slo if slo is not None else SLOConfig()
    info = result.info
    req = measured_requests(result)
    lat = request_latencies(req)
    finish = req["finish_s"].to_numpy(dtype=np.float64)
    finished = np.isfinite(finish)
    n, n_done = len(req), int(finished.sum())

    out: dict[str, Any] = {
        "num_requests": n,
        "completed": n_done,
        "unfinished": n - n_done,
        "warmup_requests": len(result.requests) - n,
        "not_arrived": int(info.not_arrived),
    }
    for m in ("ttft", "tpot", "e2e", "queue"):
        out.update(_sample_stats(m, lat[f"{m}_s"].to_numpy()))
    gap_q = token_gap_quantiles(result.token_gaps, np.array(PERCENTILES) / 100)
    out.update(_describe("tbt", token_gap_mean(result.token_gaps), gap_q))

    t0 = float(req["arrival_s"].min()) if n else NAN
    t1 = float(finish[finished].max()) if n_done else NAN
    window = t1 - t0 if n_done and t1 > t0 else NAN
    done = req[finished]
    out_tokens = float(done["output_tokens"].sum())
    meets = slo.meets(req)
    out.update(
        {
            "window_start_s": t0,
            "window_end_s": t1,
            "window_s": window,
            "throughput_rps": _ratio(n_done, window),
            **load_stats(result, req, lat),
            "input_tps": _ratio(float(done["prompt_tokens"].sum()), window),
            "output_tps": _ratio(out_tokens, window),
            "slo_attainment": _ratio(float(meets.sum()), n),
        }
    )
    out["slo_met"] = bool(n > 0 and out["slo_attainment"] >= slo.attainment)
    if slo.percentiles:
        met = _percentile_targets(slo, req, lat, finished, result, out)
        out["slo_met"] = out["slo_met"] and met
    out["goodput_rps"] = _ratio(float(meets.sum()), window)
    out["slo_target_attainment"] = slo.attainment
    for name in ("ttft_s", "tpot_s", "tbt_s", "e2e_s"):
        out[f"slo_{name}"] = getattr(slo, name)
    out["num_gpus"] = info.num_gpus
    out["engine"] = info.engine

    pooled = bool(info.pools)
    out.update(_pools_iteration_stats(result, t0, t1, window) if pooled else _iteration_stats(result, t0, t1, window))
    if pooled:
        out.update(handoff_stats(req, lat))
        out["kv_link_bound_output_tps"] = float(info.bound_link_tps)
        if "migrations" in req.columns:
            out.update(migration_stats(req))
        if "priority" in req.columns:
            out.update(priority_stats(req, lat))
        if "drain_migrations" in req.columns:
            out.update(drain_stats(req, info))
        if info.resplits:
            out["sm_resplits"] = len(info.resplits)
            out["sm_prefill_share_final"] = info.resplits[-1][1]
    out["preemptions"] = int(req["preemptions"].sum()) if n else 0
    out["iterations"] = int(result.iterations["num_iterations"].sum())
    out.update(_swap_and_bound(info, out["output_tps"]))
    out["energy_per_output_token_j"] = _ratio(out["energy_j"], out_tokens)
    price_per_s = info.num_gpus * info.price_usd_per_gpu_hour / 3600.0
    if pooled:
        price_per_s = info.price_usd_per_hour / 3600.0
    elif info.extra_usd_per_replica_hour:
        price_per_s += info.num_replicas * info.extra_usd_per_replica_hour / 3600.0
    steady = _ratio(price_per_s * 1e6, out["served_output_tps"])
    out["cost_per_million_output_tokens_usd"] = (
        steady if math.isfinite(steady) else _ratio(out["cost_usd"] * 1e6, out_tokens)
    )
    out.update(energy_cost_stats(result, out, t0, t1, window, out_tokens, n_done, price_per_s))
    out["sim_time_s"] = float(info.sim_end_s)
    out["wall_time_s"] = float(info.wall_time_s)
    out["sim_speed_rps"] = _ratio(len(result.requests), info.wall_time_s)
    ordered = {key: out[key] for key in SUMMARY_KEYS}
    # The percentile targets the scenario set (their keys depend on it), after the fixed keys.
    ordered.update({k: v for k, v in out.items() if k.startswith("slo_") and k not in ordered})
    ordered.update({k: v for k, v in out.items()
                    if k.startswith(("pool.", "sm_")) or k in HANDOFF_KEYS or k in MIGRATION_KEYS
                    or k in PRIORITY_KEYS or k in DRAIN_KEYS})
    ordered.update({k: v for k, v in out.items() if k.startswith(("energy.", "avg_power."))})
    if "cached_tokens" in req.columns:  # the prefix-caching technique is on
        ordered.update(prefix_cache_stats(req))
    if "expert" in req.columns:  # composition-of-experts is on
        ordered.update(model_switch_stats(req))
    return ordered


def model_switch_stats(req) -> dict[str, Any]:
    """Model switches of a composition of experts, charged to the measured requests that triggered them: how many,
    their total time (s, summed over replicas), and per expert ``model_switches.<expert>``."""
    switch = req["switch_s"].to_numpy(dtype=np.float64)
    count = req["switches"].to_numpy(dtype=np.int64)
    expert = req["expert"].to_numpy()
    out: dict[str, Any] = {
        "model_switches": int(count.sum()),
        "model_switch_time_s": float(switch.sum()),
    }
    for name in sorted(set(expert.tolist())):
        mine = expert == name
        out[f"model_switches.{name}"] = int(count[mine].sum())
        out[f"model_switch_time_s.{name}"] = float(switch[mine].sum())
    return out


def prefix_cache_stats(req) -> dict[str, float]:
    """Prefix-cache hits of the measured requests that were admitted (``cached_tokens`` >= 0, their first
    admission's hit): by tokens (cached prompt tokens / prompt tokens) and by requests (share with a hit)."""
    cached = req["cached_tokens"].to_numpy(dtype=np.int64)
    admitted = cached >= 0
    hit = cached[admitted]
    prompt = req["prompt_tokens"].to_numpy(dtype=np.int64)[admitted]
    return {
        "prefix_hit_rate_tokens": _ratio(float(hit.sum()), float(prompt.sum())),
        "prefix_hit_rate_requests": _ratio(float(np.count_nonzero(hit)), float(len(hit))),
        "prefix_cached_tokens": int(hit.sum()),
    } | (remote_store_stats(req, admitted, float(prompt.sum())) if "remote_found_tokens" in req.columns else {}) | (
        remote_store_stats(req, admitted, float(prompt.sum()), "host") if "host_found_tokens" in req.columns else {}
    ) | (
        chunk_reuse_stats(req, admitted, float(prompt.sum())) if "reused_tokens" in req.columns else {}
    )


def chunk_reuse_stats(req, admitted: np.ndarray, prompt_tokens: float) -> dict[str, float]:
    """Non-prefix chunk reuse (prefix caching's ``reuse``): prompt tokens whose KV came from a cached chunk (the
    recomputed share included), as a share of prompt tokens, and their count."""
    reused = req["reused_tokens"].to_numpy(dtype=np.int64)[admitted]
    return {"chunk_reuse_rate_tokens": _ratio(float(reused.sum()), prompt_tokens), "chunk_reused_tokens": int(reused.sum())}


def remote_store_stats(req, admitted: np.ndarray, prompt_tokens: float, tier: str = "remote") -> dict[str, float]:
    """A KV tier below HBM (prefix caching's ``remote_store``, or ``host_tier`` with ``tier="host"``): prompt
    tokens found there beyond the local hit, as a share of prompt tokens; requests that loaded them vs recomputed
    them; bytes sent over the link."""
    found = req[f"{tier}_found_tokens"].to_numpy(dtype=np.int64)[admitted]
    loaded = req[f"{tier}_loaded_tokens"].to_numpy(dtype=np.int64)[admitted]
    return {
        f"{tier}_hit_rate_tokens": _ratio(float(found.sum()), prompt_tokens),
        f"{tier}_loads": int(np.count_nonzero(loaded)),
        f"{tier}_recomputes": int(np.count_nonzero((found > 0) & (loaded == 0))),
        f"{tier}_loaded_tokens": int(loaded.sum()),
        f"{tier}_bytes_loaded": float(req[f"{tier}_loaded_bytes"].to_numpy(dtype=np.float64)[admitted].sum()),
    }
