"""The side-by-side summary table and the one-line verdict above it.

Why metrics as rows and configurations as columns: the page compares two to
four configurations, and reading one metric across them is the question a
capacity engineer asks ("which has the lower TTFT p99, and what does it
cost?"). The CSV download is the tidy transpose -- one row per configuration,
every summary key in SI units -- so it merges with ``capsim run`` output.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd

from simulator.metrics.table import fmt_number, fmt_percent, fmt_seconds, fmt_usd

Summary = Mapping[str, Any]


def _gib(value: Any) -> str:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return "–"
    return "–" if not math.isfinite(x) else f"{x:.1f} GiB"


def _seeds(s: Summary) -> int:
    """How many seeds a (combined) summary stands for; 1 for a single run."""
    try:
        return int(s.get("seeds", 1))
    except (TypeError, ValueError):
        return 1


def _verdict_cell(s: Summary) -> str:
    n = _seeds(s)
    if n > 1:
        text = f"met in {s.get('seeds_met', 0)} of {n} seeds"
        return f"{text}, overloaded in {s.get('seeds_overloaded', 0)}" if s.get("overloaded") else text
    if s.get("overloaded"):
        return "met, but overloaded" if s.get("slo_met") else "missed, overloaded"
    return "met" if s.get("slo_met") else "missed"


def _load_cell(s: Summary) -> str:
    """Offered and served request rates side by side, marked when the configuration does not keep up."""
    text = f"{fmt_number(s.get('offered_rps'))} / {fmt_number(s.get('served_rps'))}"
    return f"{text} (overloaded)" if s.get("overloaded") else text


def with_interval(s: Summary, key: str, fmt: Callable[[Any], str]) -> str:
    """``fmt`` of the value, followed by its min–max across seeds when the summary has one (several seeds), then
    its prediction interval ``[PI lo – hi]`` when prediction intervals are on (two different things: the spread
    of the workload's randomness, and the calibration's error; labelled apart)."""
    text = fmt(s.get(key))
    if f"{key}_lo" in s and _seeds(s) > 1:
        text += f" ({fmt(s.get(f'{key}_lo'))} – {fmt(s.get(f'{key}_hi'))})"
    pair = ((s.get("intervals") or {}).get("metrics") or {}).get(key)
    if pair is not None:
        text += f" [PI {fmt(pair[0])} – {fmt(pair[1])}]"
    return text


def _latency(metric: str, percentile: int) -> Callable[[Summary], str]:
    key = f"{metric}_p{percentile}_s"
    return lambda s: with_interval(s, key, fmt_seconds)


#: Latency rows: label, summary key prefix, percentiles shown.
LATENCY_ROWS = (("TTFT", "ttft", (50, 90, 99)), ("TPOT", "tpot", (50, 90, 99)), ("TBT", "tbt", (50, 99)),
                ("E2E", "e2e", (50, 90, 99)))

#: Rows of the summary table: label and how to render one summary into the cell.
ROWS: list[tuple[str, Callable[[Summary], str]]] = [
    ("SLO", _verdict_cell),
    ("SLO attainment", lambda s: f"{with_interval(s, 'slo_attainment', fmt_percent)} (target {fmt_percent(s.get('slo_target_attainment'))})"),
    ("offered / served (req/s)", _load_cell),
    ("time share: queue / prefill / decode", lambda s: _shares_cell(s)),
    ("goodput (req/s)", lambda s: with_interval(s, "goodput_rps", fmt_number)),
    ("throughput (req/s)", lambda s: with_interval(s, "throughput_rps", fmt_number)),
    ("output tokens/s", lambda s: with_interval(s, "output_tps", lambda v: fmt_number(v, 0))),
    *[(f"{label} p{p}", _latency(metric, p)) for label, metric, ps in LATENCY_ROWS for p in ps],
    ("cost ($ / M output tokens)", lambda s: fmt_usd(s.get("cost_per_million_output_tokens_usd"))),
    ("TCO ($ / M output tokens)", lambda s: fmt_usd(s.get("tco_per_million_output_tokens_usd"))),
    ("$ / h per GPU: rental / TCO", lambda s: _per_gpu_hour_cell(s)),
    ("energy (J / output token)", lambda s: fmt_number(s.get("energy_per_output_token_j"), 3)),
    ("energy (J / request, all units)", lambda s: fmt_number(s.get("energy_per_request_j"), 1)),
    ("average power (W): total / per GPU", lambda s: _power_cell(s)),
    ("peak KV memory (per GPU)", lambda s: f"{_gib(s.get('kv_peak_gib_per_gpu'))} of {_gib(s.get('kv_capacity_gib_per_gpu'))}"),
    ("KV utilisation mean / peak", lambda s: f"{fmt_percent(s.get('kv_util_mean'))} / {fmt_percent(s.get('kv_util_peak'))}"),
    ("MFU / MBU", lambda s: f"{fmt_percent(s.get('mfu'))} / {fmt_percent(s.get('mbu'))}"),
    ("mean batch (decode)", lambda s: f"{fmt_number(s.get('mean_batch_size'), 1)} ({fmt_number(s.get('mean_decode_batch'), 1)})"),
    ("preemptions", lambda s: str(s.get("preemptions", "–"))),
    ("GPUs", lambda s: str(s.get("num_gpus", "–"))),
    ("requests measured (unfinished)", lambda s: f"{s.get('num_requests', '–')} ({s.get('unfinished', '–')})"),
    ("simulated / wall time", lambda s: f"{fmt_seconds(s.get('sim_time_s'))} / {fmt_seconds(s.get('wall_time_s'))}"),
]


def _per_gpu_hour_cell(s: Summary) -> str:
    return f"{fmt_usd(s.get('rental_usd_per_gpu_hour'))} / {fmt_usd(s.get('tco_usd_per_gpu_hour'))}"


def _power_cell(s: Summary) -> str:
    text = f"{fmt_number(s.get('avg_power_w'), 0)} / {fmt_number(s.get('avg_power_per_gpu_w'), 0)}"
    unpowered = s.get("energy_unpowered_units")
    return f"{text} (no power given: {unpowered})" if unpowered else text


def cost_key(summary: Summary) -> str:
    """The $/Mtok key a configuration is ranked by: TCO when its scenario's cost section says mode tco."""
    if summary.get("cost_mode") == "tco":
        return "tco_per_million_output_tokens_usd"
    return "cost_per_million_output_tokens_usd"


def energy_cost_rows(summaries: Sequence[Summary]) -> pd.DataFrame:
    """One row per configuration: energy per request and per output token, average power, and rental and TCO
    prices (per hour per GPU and per million output tokens), raw numbers in SI units, for the energy and cost view.
    The ``ranked by`` column says which cost the verdict compares (docs/energy-and-cost.md)."""
    rows = []
    for i, s in enumerate(summaries):
        rows.append({
            "configuration": str(s.get("name", f"#{i + 1}")),
            "energy_per_request_j": _num(s, "energy_per_request_j"),
            "energy_per_output_token_j": _num(s, "energy_total_per_output_token_j"),
            "avg_power_w": _num(s, "avg_power_w"),
            "rental_usd_per_gpu_hour": _num(s, "rental_usd_per_gpu_hour"),
            "tco_usd_per_gpu_hour": _num(s, "tco_usd_per_gpu_hour"),
            "rental_usd_per_mtok": _num(s, "cost_per_million_output_tokens_usd"),
            "tco_usd_per_mtok": _num(s, "tco_per_million_output_tokens_usd"),
            "ranked_by": "tco" if cost_key(s).startswith("tco") else "rental",
        })
    return pd.DataFrame(rows)


def display_table(summaries: Sequence[Summary]) -> pd.DataFrame:
    """Metrics as rows, one column per configuration (formatted text with units)."""
    columns = {str(s.get("name", f"#{i + 1}")): [render(s) for _, render in ROWS] for i, s in enumerate(summaries)}
    frame = pd.DataFrame(columns, index=pd.Index([label for label, _ in ROWS], name="metric"))
    # A row no summary has data for (e.g. the KV GiB the live page adds, absent from a results folder's
    # summary.json) would only show dashes: leave it out.
    return frame[~frame.apply(lambda row: all(_is_empty_cell(c) for c in row), axis=1)]


def _is_empty_cell(cell: str) -> bool:
    return re.sub(r"[–\s/()]|\bof\b", "", str(cell)) == ""


def csv_table(summaries: Sequence[Summary]) -> pd.DataFrame:
    """One row per configuration with every summary key (SI units: seconds, req/s, USD, J)."""
    return pd.DataFrame([dict(s) for s in summaries])


_TARGET_LABELS = {"ttft_s": "TTFT", "tpot_s": "TPOT", "tbt_s": "worst TBT", "e2e_s": "E2E"}


def miss_reason(summary: Summary, quantiles: Mapping[str, float]) -> str:
    """Which targets a configuration misses at its attainment quantile, e.g. ``TTFT p90 1.8 s > 500 ms``."""
    q = summary.get("slo_target_attainment", 0.9)
    label = f"p{100 * float(q):g}"
    parts = []
    for name, value in quantiles.items():
        target = summary.get(f"slo_{name}")
        if target is not None and value > target:
            parts.append(f"{_TARGET_LABELS.get(name, name)} {label} {fmt_seconds(value)} > {fmt_seconds(target)}")
    if not parts and summary.get("unfinished"):
        parts.append(f"{summary['unfinished']} requests unfinished")
    return ", ".join(parts)


def overload_reason(summary: Summary) -> str:
    """Why a configuration is overloaded, in numbers: served against offered rate, and how the queue grew."""
    text = (f"it served {fmt_number(summary.get('served_rps'))} of {fmt_number(summary.get('offered_rps'))} "
            "req/s offered")
    growth = summary.get("queue_growth_s")
    if growth is not None and math.isfinite(float(growth)):
        text += f"; requests of the run's second half queued {fmt_seconds(growth)} longer than the first half's"
    return text


#: KV occupancy at or above which the cache counts as full (blocks are allocated whole, so a full cache peaks just
#: under 100 %).
KV_FULL = 0.98


def _num(summary: Summary, key: str) -> float:
    try:
        x = float(summary.get(key))
    except (TypeError, ValueError):
        return math.nan
    return x


def time_shares(summary: Summary) -> dict[str, float]:
    """Where a mean request's end-to-end time goes: ``queueing`` (arrival to first scheduled), ``prefill`` (first
    scheduled to first token) and ``decode`` (first token to finish), as fractions of the mean E2E. Empty when the
    run has no finished request."""
    queue, ttft, e2e = (_num(summary, k) for k in ("queue_mean_s", "ttft_mean_s", "e2e_mean_s"))
    if not all(math.isfinite(v) for v in (queue, ttft, e2e)) or e2e <= 0:
        return {}
    parts = {"queueing": max(queue, 0.0), "prefill": max(ttft - queue, 0.0), "decode": max(e2e - ttft, 0.0)}
    total = sum(parts.values()) or 1.0
    return {k: v / total for k, v in parts.items()}


def _shares_cell(summary: Summary) -> str:
    shares = time_shares(summary)
    return " / ".join(fmt_percent(shares[k]) for k in ("queueing", "prefill", "decode")) if shares else "–"


def miss_causes(summary: Summary) -> str:
    """Why a configuration misses or falls behind, from its summary: where the time goes (the largest share of the
    mean E2E), a full KV cache, preemptions, unfinished requests."""
    parts = []
    shares = time_shares(summary)
    if shares:
        top = max(shares, key=shares.get)
        what = {"queueing": "waiting in the queue", "prefill": "prefill (first scheduled to first token)",
                "decode": "decode (first token to finish)"}[top]
        parts.append(f"most of a request's time is {what}, {fmt_percent(shares[top])} of the mean E2E "
                     f"(queue {fmt_percent(shares['queueing'])}, prefill {fmt_percent(shares['prefill'])}, decode "
                     f"{fmt_percent(shares['decode'])})")
    peak = _num(summary, "kv_util_peak")
    if math.isfinite(peak) and peak >= KV_FULL:
        parts.append(f"the KV cache fills up (peak {fmt_percent(peak)}), capping the batch")
    preemptions = _num(summary, "preemptions")
    if math.isfinite(preemptions) and preemptions > 0:
        parts.append(f"{int(preemptions):,} preemptions (requests evicted and recomputed)")
    return "; ".join(parts)


def verdict(summaries: Sequence[Summary], quantiles: Sequence[Mapping[str, float]]) -> tuple[bool, str]:
    """(any configuration is an answer, one paragraph: the cheapest that meets the SLO, and why the others don't).

    An overloaded configuration (it does not keep up with the offered load, its queue grows) is never the answer,
    even when a loose SLO is met: the run ended before its waits grew large enough to miss.
    """
    answers = [s for s in summaries if s.get("slo_met") and not s.get("overloaded")]
    lines = []
    if answers:
        best = min(answers, key=lambda s: _cost(s))
        n = _seeds(best)
        tco = cost_key(best).startswith("tco")
        energy = _num(best, "energy_per_request_j")
        lines.append(
            f"**{best['name']}** meets the SLO{f' in all {n} seeds' if n > 1 else ''} at the lowest cost "
            f"({fmt_usd(best.get(cost_key(best)))} per million output tokens{' (TCO)' if tco else ''}, "
            f"{'mean ' if n > 1 else ''}{with_interval(best, 'slo_attainment', fmt_percent)} attainment"
            + (f", {fmt_number(energy, 0)} J per request" if math.isfinite(energy) else "") + ")."
        )
    else:
        lines.append("No configuration meets the SLO while keeping up with the load.")
    for s, q in zip(summaries, quantiles, strict=True):
        n = _seeds(s)
        if s.get("overloaded"):
            if n > 1:
                met = f" (it meets the latency targets in {s.get('seeds_met', 0)} of {n} seeds)"
                where = f" in {s.get('seeds_overloaded', 0)} of {n} seeds"
            else:
                met = " although it meets the latency targets in this run" if s.get("slo_met") else ""
                where = ""
            causes = miss_causes(s)
            lines.append(f"{s['name']} is overloaded{where}{met}: {overload_reason(s)}."
                         + (f" Why: {causes}." if causes else ""))
        elif not s.get("slo_met"):
            reason = miss_reason(s, q)
            causes = miss_causes(s)
            if n > 1:
                lines.append(f"{s['name']} misses it: it meets it in only {s.get('seeds_met', 0)} of {n} seeds (mean "
                             f"{with_interval(s, 'slo_attainment', fmt_percent)} attainment"
                             + (f"; worst seed: {reason}" if reason else "") + ")."
                             + (f" Why: {causes}." if causes else ""))
            else:
                lines.append(f"{s['name']} misses it ({fmt_percent(s.get('slo_attainment'))} attainment"
                             + (f"; {reason}" if reason else "") + ")." + (f" Why: {causes}." if causes else ""))
    return bool(answers), " ".join(lines)


def _cost(summary: Summary) -> float:
    value = summary.get(cost_key(summary))
    try:
        x = float(value)
    except (TypeError, ValueError):
        return math.inf
    return x if math.isfinite(x) else math.inf


def configuration_overview(scenarios: Sequence[Any]) -> pd.DataFrame:
    """The configurations being compared, one row each (device, GPUs, layout, scheduler, router, techniques), so the
    main area shows what a run will compare without scrolling the sidebar's tabs."""
    rows = []
    for sc in scenarios:
        dep = sc.deployment
        device = dep.device if isinstance(dep.device, str) else str(dep.device.get("name", "custom"))
        pools = getattr(sc, "pools", None)
        if pools:
            device = " + ".join(f"{p.name}: {p.num_replicas}× {p.device if isinstance(p.device, str) else 'custom'}"
                                for p in pools)
        rows.append({
            "configuration": sc.name,
            "device": device,
            "replicas × TP × PP": f"{dep.num_replicas} × {dep.tp} × {dep.pp}" if not pools else "per pool",
            "weights / KV": f"{dep.weight_dtype} / {dep.kv_dtype}",
            "scheduler": sc.scheduler.name,
            "router": sc.router.name,
            "techniques": ", ".join(t.name for t in sc.techniques) or "none",
        })
    return pd.DataFrame(rows)
