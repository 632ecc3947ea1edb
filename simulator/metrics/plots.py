"""PNG plots of one run: latency CDFs, batch size and KV use over time, throughput over time.

Why these three: the CDFs show whether the SLO targets are met and how heavy the tails are; the time series show
*why* (batches that stop growing, a KV cache that fills and forces preemptions, throughput that lags arrivals).

Plots are drawn with matplotlib's object API on an Agg canvas: no display, no pyplot global state, safe in worker
processes. Everything is reduced before drawing (CDFs to ≤ 512 points, time series to ≤ 500 bins), so a run of a
million requests plots in about a second.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from simulator.metrics.quantiles import ecdf_points, token_gap_cdf
from simulator.metrics.result import SimulationResult, request_latencies

#: Above this many replicas the time series show the mean over replicas and a min–max band, not one line each.
MAX_REPLICA_LINES = 4
#: Bins of the batch/KV time series and of the throughput series (fewer: request counts per bin are small).
TIME_BINS = 300
THROUGHPUT_BINS = 120


def save_figure(fig: Figure, path: Path) -> Path:
    """Render ``fig`` off-screen (Agg, no pyplot state) and write it as a PNG."""
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _no_data(ax: Axes) -> None:
    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")


def _cdf_panel(ax: Axes, x: np.ndarray, f: np.ndarray, title: str, target: float | None) -> None:
    ax.set_title(title)
    ax.set_ylabel("fraction ≤ x")
    ax.set_xlabel("seconds")
    ax.grid(alpha=0.3)
    if len(x) == 0:
        _no_data(ax)
        return
    ax.step(x, f, where="post")
    ax.set_ylim(0, 1.02)
    if x[0] > 0 and x[-1] / x[0] > 100:
        ax.set_xscale("log")
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6))
    if target is not None:
        ax.axvline(target, color="tab:red", linestyle="--", label=f"SLO {target:g} s")
        ax.legend(loc="lower right")


def plot_latency_cdfs(result: SimulationResult, path: Path, summary: Mapping[str, Any] | None = None) -> Path:
    """2×2 CDFs of TTFT, TPOT, E2E (measured requests) and TBT (every gap), with SLO targets from ``summary``."""
    summary = summary or {}
    req = result.requests
    lat = request_latencies(req[req["arrival_s"] >= result.info.warmup_s])
    fig = Figure(figsize=(10, 7))
    axes = fig.subplots(2, 2)
    panels = [("ttft", "TTFT"), ("tpot", "TPOT"), ("e2e", "E2E latency")]
    for ax, (key, title) in zip(axes.flat, panels, strict=False):
        x, f = ecdf_points(lat[f"{key}_s"].to_numpy())
        _cdf_panel(ax, x, f, title, summary.get(f"slo_{key}_s"))
    x, f = token_gap_cdf(result.token_gaps)
    _cdf_panel(axes[1, 1], x, f, "TBT (every inter-token gap)", summary.get("slo_tbt_s"))
    return save_figure(fig, path)


def _integral(t: np.ndarray, start: np.ndarray, end: np.ndarray, value: np.ndarray) -> np.ndarray:
    """∫_0^t of the piecewise-constant signal Σ_runs value·1[start, end), at every t (vectorised, O((R+T) log R)).

    Uses ∫ = Σ_{start<t} v·(t − start) − Σ_{end<t} v·(t − end), each term from cumulative sums over runs sorted by
    start (resp. end).
    """

    def part(edge: np.ndarray) -> np.ndarray:
        order = np.argsort(edge, kind="stable")
        e, v = edge[order], value[order]
        cum_v = np.concatenate([[0.0], np.cumsum(v)])
        cum_ve = np.concatenate([[0.0], np.cumsum(v * e)])
        i = np.searchsorted(e, t, side="left")
        return t * cum_v[i] - cum_ve[i]

    return part(start) - part(end)


def binned_mean(start: np.ndarray, end: np.ndarray, value: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Time-weighted mean per bin of Σ_runs value·1[start, end) (time outside every run counts as zero)."""
    g = _integral(edges, start, end, value)
    return np.diff(g) / np.diff(edges)


def _time_edges(result: SimulationResult, bins: int = TIME_BINS) -> np.ndarray:
    it = result.iterations
    t_end = max(
        float(result.info.sim_end_s),
        float(it["end_s"].max()) if len(it) else 0.0,
        float(np.nanmax(result.requests["finish_s"])) if result.requests["finish_s"].notna().any() else 0.0,
    )
    return np.linspace(0.0, max(t_end, 1e-9), bins + 1)


def _mark_warmup(ax: Axes, warmup_s: float) -> None:
    if warmup_s > 0:
        ax.axvspan(0, warmup_s, color="grey", alpha=0.15, label="warm-up")


def _series(ax: Axes, result: SimulationResult, edges: np.ndarray, value: np.ndarray, ylabel: str) -> None:
    """One step line per replica, or the mean over replicas when there are many."""
    it = result.iterations
    start, end = it["start_s"].to_numpy(np.float64), it["end_s"].to_numpy(np.float64)
    replica = it["replica"].to_numpy()
    replicas = np.unique(replica)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(it) == 0:
        _no_data(ax)
        return
    order = np.argsort(replica, kind="stable")
    bounds = np.searchsorted(replica[order], replicas)
    rows = np.split(order, bounds[1:])
    per_replica = np.array([binned_mean(start[i], end[i], value[i], edges) for i in rows])
    if len(replicas) <= MAX_REPLICA_LINES:
        for r, series in zip(replicas, per_replica, strict=True):
            ax.stairs(series, edges, label=f"replica {r}")
    else:
        n = max(len(replicas), int(result.info.num_replicas))  # replicas that never ran count as zero
        ax.stairs(per_replica.sum(axis=0) / n, edges, label=f"mean over {n} replicas")
        ax.stairs(
            per_replica.max(axis=0),
            edges,
            baseline=per_replica.min(axis=0),
            fill=True,
            alpha=0.25,
            label="min–max over replicas",
        )
    _mark_warmup(ax, result.info.warmup_s)
    ax.legend(loc="upper right", fontsize="small")


def plot_batch_and_kv(result: SimulationResult, path: Path) -> Path:
    """Batch size (prefill + decode sequences) and KV-cache block utilisation over time."""
    it = result.iterations
    edges = _time_edges(result)
    fig = Figure(figsize=(10, 6))
    ax_batch, ax_kv = fig.subplots(2, 1, sharex=True)
    batch = (it["prefill_seqs"] + it["decode_seqs"]).to_numpy(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        util = np.nan_to_num((it["kv_blocks_used"] / it["kv_blocks_total"]).to_numpy(np.float64))
    _series(ax_batch, result, edges, batch, "sequences per iteration")
    ax_batch.set_title("Batch size")
    _series(ax_kv, result, edges, util, "KV blocks in use (fraction)")
    ax_kv.set_title("KV-cache utilisation")
    ax_kv.set_xlabel("simulated time (s)")
    return save_figure(fig, path)


def plot_throughput(result: SimulationResult, path: Path) -> Path:
    """Completed requests per second and generated tokens per second over time, in bins."""
    edges = _time_edges(result, THROUGHPUT_BINS)
    width = np.diff(edges)
    req = result.requests
    finish = req["finish_s"].to_numpy(np.float64)
    done = np.isfinite(finish)
    fig = Figure(figsize=(10, 6))
    ax_req, ax_tok = fig.subplots(2, 1, sharex=True)
    counts, _ = np.histogram(finish[done], bins=edges)
    ax_req.stairs(counts / width, edges, label="completed")
    arrivals, _ = np.histogram(req["arrival_s"].to_numpy(np.float64), bins=edges)
    ax_req.stairs(arrivals / width, edges, label="arrived", alpha=0.6)
    ax_req.set_ylabel("requests / s")
    ax_req.set_title("Request throughput")
    it = result.iterations
    start, end = it["start_s"].to_numpy(np.float64), it["end_s"].to_numpy(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(
            end > start, (it["decode_seqs"] * it["num_iterations"]).to_numpy(np.float64) / (end - start), 0.0
        )
    ax_tok.stairs(binned_mean(start, end, rate, edges), edges, label="all replicas")
    ax_tok.set_ylabel("tokens / s")
    ax_tok.set_title("Output tokens from decode steps")
    ax_tok.set_xlabel("simulated time (s)")
    for ax in (ax_req, ax_tok):
        _mark_warmup(ax, result.info.warmup_s)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize="small")
    return save_figure(fig, path)


def write_plots(result: SimulationResult, out_dir: Path, summary: Mapping[str, Any] | None = None) -> list[Path]:
    """All plots of one run into ``out_dir``; returns the files written."""
    out_dir = Path(out_dir)
    return [
        plot_latency_cdfs(result, out_dir / "latency_cdfs.png", summary),
        plot_batch_and_kv(result, out_dir / "batch_and_kv.png"),
        plot_throughput(result, out_dir / "throughput.png"),
    ]
