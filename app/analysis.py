"""One simulation run reduced to the small, tidy tables the dashboard shows.

Why reduce: the page caches one :class:`RunData` per scenario hash and redraws
from it on every interaction, so it must be small (a few thousand rows at
most) and picklable; the per-request and per-iteration records of a large run
are neither. Every table is tidy (one row per observation, a ``configuration``
column added by the page), so the same frame feeds the Altair chart, the CSV
download and the matplotlib PNG.

Tables:

* ``cdf``: ``metric`` (TTFT, TPOT, TBT, E2E), ``latency_s``, ``fraction`` -- empirical CDF points from
  :func:`~simulator.metrics.quantiles.ecdf_points` and :func:`~simulator.metrics.quantiles.token_gap_cdf`.
* ``timeline``: per time bin, ``output_tokens_per_s`` (one token at each first-token time, plus one per decode
  sequence per iteration from the iteration records, spread over each run of iterations: a stall -- e.g. a
  stretch of prefill-only iterations -- shows as the dip it is), ``finished_per_s`` (request finish times),
  ``batch_size`` (iteration-weighted mean sequences per iteration) and ``kv_used_fraction`` / ``kv_used_gib``
  (busy-time weighted means over replicas), from the iteration records.
* ``breakdown``: per-operator time of two representative iterations of the run -- the mean decode step (mean
  decode batch and context) and a typical prefill (median prefill tokens per iteration) -- from
  ``System.cost_model().breakdown()``, with each operator's bound (compute, memory, communication; the engine profile's terms as 'overhead').
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from simulator.costmodel.features import BatchShape
from simulator.engine import RunOutput
from simulator.memory_plan import GIB
from simulator.metrics.quantiles import ecdf_points, token_gap_cdf
from simulator.metrics.result import SimulationResult, request_latencies
from simulator.metrics.slo import SLOConfig
from simulator.metrics.summary import measured_requests, summarise

#: Time bins of the time series; enough to show ramps and bursts, few enough to plot instantly.
TIME_BINS = 80
#: Points per CDF curve.
CDF_POINTS = 200


@dataclass
class RunData:
    """What the page needs from one run (picklable, so ``st.cache_data`` can keep it)."""

    name: str
    summary: dict[str, Any]
    cdf: pd.DataFrame
    timeline: pd.DataFrame
    breakdown: pd.DataFrame
    shapes: dict[str, str] = field(default_factory=dict)  # phase -> the batch shape it was priced at
    slo_quantiles: dict[str, float] = field(default_factory=dict)  # metric -> value at the attainment quantile
    result: SimulationResult | None = None  # the run's records, kept so that a new SLO re-scores without simulating
    extra: dict[str, Any] = field(default_factory=dict)  # summary keys that need the system (KV capacity, weights)
    peaks: tuple[float, float] = (math.nan, math.nan)  # the device's peak FLOP/s and HBM bytes/s per GPU (roofline)


def integrate_steps(starts: np.ndarray, ends: np.ndarray, values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Integral over each bin ``[edges[k], edges[k+1])`` of Σ_i values_i · 1[starts_i ≤ t < ends_i].

    Uses ∫_{-∞}^{t} = G(t, starts) − G(t, ends) with G(t, a) = Σ_i values_i · max(t − a_i, 0), evaluated at the
    edges from sorted cumulative sums: O(n log n + bins) time and O(n + bins) memory, for any number of rows.
    """
    def ramp(points: np.ndarray) -> np.ndarray:
        order = np.argsort(points, kind="stable")
        p, v = points[order], values[order]
        cum_v = np.concatenate([[0.0], np.cumsum(v)])
        cum_pv = np.concatenate([[0.0], np.cumsum(p * v)])
        k = np.searchsorted(p, edges, side="right")  # rows with point <= edge
        return edges * cum_v[k] - cum_pv[k]

    if len(starts) == 0:
        return np.zeros(len(edges) - 1)
    area = ramp(np.asarray(starts, float)) - ramp(np.asarray(ends, float))
    return np.diff(area)


def latency_cdfs(output: RunOutput, num_points: int = CDF_POINTS) -> pd.DataFrame:
    """Tidy CDF points of TTFT, TPOT, TBT (every gap) and E2E over the measured requests."""
    req = measured_requests(output.result)
    lat = request_latencies(req)
    parts = []
    for metric, values in (("TTFT", lat["ttft_s"]), ("TPOT", lat["tpot_s"]), ("E2E", lat["e2e_s"])):
        x, f = ecdf_points(values.to_numpy(dtype=float), num_points)
        parts.append(pd.DataFrame({"metric": metric, "latency_s": x, "fraction": f}))
    x, f = token_gap_cdf(output.result.token_gaps, num_points)
    parts.append(pd.DataFrame({"metric": "TBT", "latency_s": x, "fraction": f}))
    frame = pd.concat(parts, ignore_index=True)
    return frame[frame["latency_s"] > 0].reset_index(drop=True)  # log axes need positive values


def timeline(output: RunOutput, bins: int = TIME_BINS) -> pd.DataFrame:
    """Throughput, batch size and KV use per time bin over the whole run (warm-up included)."""
    res = output.result
    end = max(float(res.info.sim_end_s), 1e-9)
    edges = np.linspace(0.0, end, bins + 1)
    width = edges[1] - edges[0]
    req = res.requests
    first = req["first_token_s"].to_numpy(float)
    finish = req["finish_s"].to_numpy(float)
    first_hist = np.histogram(first[np.isfinite(first)], bins=edges)[0]
    finished_hist = np.histogram(finish[np.isfinite(finish)], bins=edges)[0]

    it = res.iterations
    start_s, end_s = it["start_s"].to_numpy(float), it["end_s"].to_numpy(float)
    # Every decode sequence of an iteration emits one token: spread each run's tokens over its time span (a run of
    # zero length puts them at its start), so a stretch of prefill-only iterations shows no decode tokens.
    decode = (it["decode_seqs"] * it["num_iterations"]).to_numpy(float)
    timed = end_s > start_s
    with np.errstate(divide="ignore", invalid="ignore"):
        decode_rate = np.where(timed, decode / (end_s - start_s), 0.0)
    decode_tokens = integrate_steps(start_s[timed], end_s[timed], decode_rate[timed], edges)
    decode_tokens = decode_tokens + np.histogram(start_s[~timed], bins=edges, weights=decode[~timed])[0]
    batch = (it["prefill_seqs"] + it["decode_seqs"]).to_numpy(float)
    total = it["kv_blocks_total"].to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        util = np.where(total > 0, it["kv_blocks_used"].to_numpy(float) / total, 0.0)
    busy = integrate_steps(start_s, end_s, np.ones(len(it)), edges)
    # Batch size is iteration-weighted (as in the summary); a long prefill iteration counts once, not by its length.
    with np.errstate(divide="ignore", invalid="ignore"):
        per_s = np.where(end_s > start_s, it["num_iterations"].to_numpy(float) / (end_s - start_s), 0.0)
        iterations = integrate_steps(start_s, end_s, per_s, edges)
        mean_batch = integrate_steps(start_s, end_s, per_s * batch, edges) / iterations
        mean_util = integrate_steps(start_s, end_s, util, edges) / busy
    mem = output.system.memory
    kv_gib_capacity = mem.kv_capacity_tokens * mem.kv_bytes_per_token / GIB
    return pd.DataFrame(
        {
            "time_s": (edges[:-1] + edges[1:]) / 2,
            "output_tokens_per_s": (first_hist + decode_tokens) / width,
            "finished_per_s": finished_hist / width,
            "batch_size": np.where(iterations > 0, mean_batch, np.nan),
            "kv_used_fraction": np.where(busy > 0, mean_util, np.nan),
            "kv_used_gib": np.where(busy > 0, mean_util * kv_gib_capacity, np.nan),
        }
    )


def representative_shapes(output: RunOutput) -> dict[str, BatchShape]:
    """The mean decode step and a typical prefill iteration of the run (phases with no work are left out)."""
    it = output.result.iterations
    shapes: dict[str, BatchShape] = {}
    k = it["num_iterations"].to_numpy(float)
    seqs = it["decode_seqs"].to_numpy(float)
    dec = (seqs > 0) & (it["prefill_seqs"].to_numpy(float) == 0) & (k > 0)
    if dec.any():
        # Mean context per sequence over every iteration of the run (context grows by one per step).
        ctx = it["context_tokens"].to_numpy(float)[dec] + seqs[dec] * (k[dec] - 1) / 2
        n = max(1, int(round(np.average(seqs[dec], weights=k[dec]))))
        per_seq = float(np.average(ctx / seqs[dec], weights=k[dec]))
        shapes["decode"] = BatchShape(decode_seqs=n, decode_context=int(round(n * per_seq)))
    pre = it["prefill_tokens"].to_numpy(float)
    if (pre > 0).any():
        tokens = max(1, int(np.median(pre[pre > 0])))
        shapes["prefill"] = BatchShape(prefill_chunks=((tokens, 0, True),))
    return shapes


def describe_shape(shape: BatchShape) -> str:
    if shape.decode_seqs:
        return f"decode step: {shape.decode_seqs} sequences, mean context {shape.decode_context // shape.decode_seqs:,}"
    return f"prefill iteration: {shape.prefill_tokens:,} tokens"


def breakdown(output: RunOutput, shapes: dict[str, BatchShape]) -> pd.DataFrame:
    """Per-operator time (s) of each representative iteration, with operator class and bound."""
    cost = output.system.cost_model()
    rows = []
    for phase, shape in shapes.items():
        for op in cost.breakdown(shape):
            rows.append(
                {"phase": phase, "operator": op.name, "op_class": op.op_class, "bound": op.bound,
                 "time_s": op.time_s, "flops": op.flops, "bytes": op.bytes}
            )
    columns = ["phase", "operator", "op_class", "bound", "time_s", "flops", "bytes"]
    return pd.DataFrame(rows, columns=columns)


def slo_quantiles(result: SimulationResult, slo: SLOConfig) -> dict[str, float]:
    """Each targeted latency at the attainment quantile: the value to compare with its target."""
    req = measured_requests(result)
    lat = request_latencies(req)
    columns = {"ttft_s": lat["ttft_s"], "tpot_s": lat["tpot_s"], "e2e_s": lat["e2e_s"], "tbt_s": req["max_tbt_s"]}
    finished = np.isfinite(req["finish_s"].to_numpy(float))
    out = {}
    for name in slo.targets():
        values = columns[name].to_numpy(float)
        # Unfinished requests miss every target (infinitely late); NaN for a finished one means the metric does
        # not apply (one output token: no decode pace, no gap), which always meets the target (counted as 0).
        values = np.where(finished, np.nan_to_num(values, nan=0.0), np.inf)
        out[name] = float(np.quantile(values, slo.attainment)) if len(values) else math.nan
    return out


def scored_summary(result: SimulationResult, slo: SLOConfig, name: str, extra: dict[str, Any]) -> dict[str, Any]:
    """The page's summary of a run under ``slo``: :func:`summarise` plus the system-derived keys."""
    summary = summarise(result, slo)
    capacity = extra.get("kv_capacity_gib_per_gpu", math.nan)
    return {
        "name": name,
        **summary,
        **extra,
        "kv_peak_gib_per_gpu": summary["kv_util_peak"] * capacity,
    }


def rescore(data: RunData, slo: SLOConfig) -> RunData:
    """``data`` judged against another SLO, from its stored records (no simulation): the summary's SLO keys and the
    latencies at the attainment quantile change; the charts' data does not."""
    if data.result is None:
        return data
    return replace(data, summary=scored_summary(data.result, slo, data.name, data.extra),
                   slo_quantiles=slo_quantiles(data.result, slo))


def analyse(output: RunOutput, slo: SLOConfig, name: str) -> RunData:
    """Reduce a finished run to :class:`RunData` (keeping its records for :func:`rescore`)."""
    mem = output.system.memory
    extra = {
        "kv_capacity_gib_per_gpu": mem.kv_capacity_tokens * mem.kv_bytes_per_token / GIB,
        "weights_gib_per_gpu": mem.weights_bytes / GIB,
        "rejected": output.rejected,
        "workload": output.workload,
    }
    shapes = representative_shapes(output)
    return RunData(
        name=name,
        summary=scored_summary(output.result, slo, name, extra),
        cdf=latency_cdfs(output),
        timeline=timeline(output),
        breakdown=breakdown(output, shapes),
        shapes={phase: describe_shape(shape) for phase, shape in shapes.items()},
        slo_quantiles=slo_quantiles(output.result, slo),
        result=output.result,
        extra=extra,
        peaks=(float(output.result.info.peak_flops_per_gpu), float(output.result.info.mem_bandwidth_per_gpu)),
    )
