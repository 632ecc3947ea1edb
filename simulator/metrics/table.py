"""Terminal tables (rich) for one summary or a comparison of several.

Why two tables: after one run a user wants everything about it; after a sweep or a capacity search they want the
few numbers that decide between configurations side by side, with the SLO verdict coloured. Missing or NaN values
show as "–" so partial summaries (e.g. a run with no finished requests) still print.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rich.table import Table

from simulator.metrics.summary import PERCENTILES

DASH = "–"


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def fmt_seconds(value: Any) -> str:
    """Latency with a unit that keeps 2–3 significant digits: ``0.0123`` → ``12.3 ms``."""
    x = _number(value)
    if x is None:
        return DASH
    if abs(x) < 1e-3:
        return f"{x * 1e6:.0f} µs"
    if abs(x) < 0.01:
        return f"{x * 1e3:.2f} ms"
    if abs(x) < 1:
        return f"{x * 1e3:.1f} ms" if abs(x) < 0.1 else f"{x * 1e3:.0f} ms"
    return f"{x:.2f} s"


def fmt_number(value: Any, digits: int = 2) -> str:
    x = _number(value)
    if x is None:
        return DASH
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.{digits}f}"


def fmt_percent(value: Any) -> str:
    x = _number(value)
    return DASH if x is None else f"{100 * x:.1f}%"


def fmt_usd(value: Any) -> str:
    x = _number(value)
    if x is None:
        return DASH
    return f"${x:,.3f}" if abs(x) < 1 else f"${x:,.2f}"


def fmt_attainment(summary: Mapping[str, Any]) -> str:
    """Attainment in green when the SLO is met, red when not."""
    text = fmt_percent(summary.get("slo_attainment"))
    if text == DASH or "slo_met" not in summary:
        return text
    return f"[green]{text}[/]" if summary["slo_met"] else f"[red]{text}[/]"


def fmt_served(summary: Mapping[str, Any]) -> str:
    """The served rate (req/s), in red and marked when the run is overloaded (it did not keep up with the load)."""
    text = fmt_number(summary.get("served_rps"))
    return f"[red]{text} overloaded[/]" if summary.get("overloaded") and text != DASH else text


#: Columns of the comparison table after the name: header, and how to render a summary into the cell.
COMPARISON_COLUMNS: list[tuple[str, Callable[[Mapping[str, Any]], str]]] = [
    ("TTFT p50", lambda s: fmt_seconds(s.get("ttft_p50_s"))),
    ("TTFT p99", lambda s: fmt_seconds(s.get("ttft_p99_s"))),
    ("TPOT p50", lambda s: fmt_seconds(s.get("tpot_p50_s"))),
    ("TPOT p99", lambda s: fmt_seconds(s.get("tpot_p99_s"))),
    ("E2E p99", lambda s: fmt_seconds(s.get("e2e_p99_s"))),
    ("offered", lambda s: fmt_number(s.get("offered_rps"))),
    ("served", lambda s: fmt_served(s)),
    ("req/s", lambda s: fmt_number(s.get("throughput_rps"))),
    ("goodput", lambda s: fmt_number(s.get("goodput_rps"))),
    ("SLO att.", fmt_attainment),
    ("MFU", lambda s: fmt_percent(s.get("mfu"))),
    ("$/Mtok", lambda s: fmt_usd(s.get("cost_per_million_output_tokens_usd"))),
    ("J/tok", lambda s: fmt_number(s.get("energy_per_output_token_j"))),
]


#: Columns shown only when some row has the key (a technique's own report, e.g. prefix-cache hits).
OPTIONAL_COLUMNS: list[tuple[str, str, Callable[[Mapping[str, Any]], str]]] = [
    ("prefix_hit_rate_tokens", "hit tok", lambda s: fmt_percent(s.get("prefix_hit_rate_tokens"))),
    ("prefix_hit_rate_requests", "hit req", lambda s: fmt_percent(s.get("prefix_hit_rate_requests"))),
]


#: Columns added when a row is priced in mode tco (docs/energy-and-cost.md).
TCO_COLUMNS: list[tuple[str, Callable[[Mapping[str, Any]], str]]] = [
    ("TCO $/Mtok", lambda s: fmt_usd(s.get("tco_per_million_output_tokens_usd"))),
    ("J/req", lambda s: fmt_number(s.get("energy_per_request_j"))),
]


def comparison_table(rows: Sequence[Mapping[str, Any]], *, title: str | None = None) -> Table:
    """One row per summary; the first column is the row's ``name`` (or ``scenario_name``, or its position)."""
    table = Table(title=title, header_style="bold")
    table.add_column("name", no_wrap=True)
    columns = COMPARISON_COLUMNS + [(h, r) for key, h, r in OPTIONAL_COLUMNS if any(key in row for row in rows)]
    if any(row.get("cost_mode") == "tco" for row in rows):  # a cost: {mode: tco} section: the cost it ranks by
        columns += TCO_COLUMNS
    for header, _ in columns:
        table.add_column(header, justify="right")
    for i, row in enumerate(rows):
        name = row.get("name", row.get("scenario_name", f"#{i + 1}"))
        table.add_row(str(name), *(render(row) for _, render in columns))
    return table


#: Row labels of the latency table (definitions in :mod:`simulator.metrics.summary`).
LATENCY_LABELS: dict[str, str] = {
    "ttft": "TTFT",
    "tbt": "TBT (every gap)",
    "tpot": "TPOT",
    "e2e": "E2E",
    "queue": "queueing",
}


def _latency_table(summary: Mapping[str, Any]) -> Table:
    table = Table(title="Latency", header_style="bold", title_justify="left")
    table.add_column("metric")
    table.add_column("mean", justify="right")
    for p in PERCENTILES:
        table.add_column(f"p{p}", justify="right")
    for key, label in LATENCY_LABELS.items():
        cells = [with_interval(summary, f"{key}_mean_s", fmt_seconds)]
        cells += [with_interval(summary, f"{key}_p{p}_s", fmt_seconds) for p in PERCENTILES]
        table.add_row(label, *cells)
    if summary.get("intervals"):
        iv = summary["intervals"]
        table.caption = (f"\\[lo, hi]: {iv['level']:.0%} prediction interval from {iv['samples']} re-runs with "
                         f"iteration times drawn from {iv['source']}")
        table.caption_justify = "left"
    return table


def with_interval(summary: Mapping[str, Any], key: str, fmt: Callable[[Any], str]) -> str:
    """``fmt`` of the value, then its prediction interval ``[lo, hi]`` when the summary has one."""
    text = fmt(summary.get(key))
    pair = ((summary.get("intervals") or {}).get("metrics") or {}).get(key)
    return text if pair is None else f"{text} [{fmt(pair[0])}, {fmt(pair[1])}]"


def _totals_table(summary: Mapping[str, Any]) -> Table:
    table = Table(title="Throughput, SLO, utilisation, cost", header_style="bold", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    g = summary.get
    rows = [
        ("requests (finished / unfinished)", f"{g('completed', DASH)} / {g('unfinished', DASH)}"
         + (f" ({g('not_arrived')} not arrived by max_time_s, left out)" if g("not_arrived") else "")),
        ("offered / served (req/s)", f"{fmt_number(g('offered_rps'))} / {fmt_served(summary)}"),
        ("throughput (req/s)", with_interval(summary, "throughput_rps", fmt_number)),
        ("input / output tokens/s", f"{with_interval(summary, 'input_tps', fmt_number)} / "
         f"{with_interval(summary, 'output_tps', fmt_number)}"),
        ("output tokens/s bound (binding; reached)",
         f"{fmt_number(g('bound_output_tps'))} ({g('bound_resource') or DASH}; {fmt_percent(g('bound_attainment'))})"),
        ("SLO attainment (target)", f"{fmt_attainment(summary)} ({fmt_percent(g('slo_target_attainment'))})"),
        ("goodput (req/s)", with_interval(summary, "goodput_rps", fmt_number)),
        ("MFU / MBU", f"{fmt_percent(g('mfu'))} / {fmt_percent(g('mbu'))}"),
        ("mean batch (decode)", f"{fmt_number(g('mean_batch_size'), 1)} ({fmt_number(g('mean_decode_batch'), 1)})"),
        ("KV utilisation mean / peak", f"{fmt_percent(g('kv_util_mean'))} / {fmt_percent(g('kv_util_peak'))}"),
        ("preemptions", fmt_number(g("preemptions"), 0)
         + (f" ({g('swap_outs')} swapped, {fmt_number(g('swap_bytes', 0) / 1e9, 2)} GB)" if g("swap_outs") else "")),
        ("energy (J/output token)", fmt_number(g("energy_per_output_token_j"), 3)),
        ("cost ($ / M output tokens)", fmt_usd(g("cost_per_million_output_tokens_usd"))),
        ("serving-engine profile", str(g("engine", DASH))),
        ("simulated / wall time", f"{fmt_seconds(g('sim_time_s'))} / {fmt_seconds(g('wall_time_s'))}"),
        ("simulation speed (req/wall s)", fmt_number(g("sim_speed_rps"), 0)),
    ]
    if summary.get("cost_mode") == "tco" or any(k.startswith("energy.") for k in summary):
        rows += _energy_cost_rows(summary)
    if "prefix_hit_rate_tokens" in summary:
        rows.append(("prefix-cache hits (tokens / requests)",
                     f"{fmt_percent(g('prefix_hit_rate_tokens'))} / {fmt_percent(g('prefix_hit_rate_requests'))}"))
    for label, value in rows:
        table.add_row(label, value)
    return table


def _energy_cost_rows(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Energy of every unit and the TCO, shown when the run uses more than its GPUs or is priced in mode tco."""
    g = summary.get
    rows = [
        ("energy, all units (J/request; avg W)", f"{fmt_number(g('energy_per_request_j'), 1)}; "
         f"{fmt_number(g('avg_power_w'), 0)}"),
    ]
    rows += [(f"  {k[len('energy.'):-2]} (J)", fmt_number(v, 0)) for k, v in summary.items()
             if k.startswith("energy.")]
    if g("energy_unpowered_units"):
        rows.append(("no power given (not counted)", str(g("energy_unpowered_units"))))
    if g("cost_mode") == "tco":
        rows += [
            ("TCO ($/h: capex + energy + hosting)", f"{fmt_usd(g('tco_usd_per_hour'))}: "
             f"{fmt_usd(g('tco_capex_usd_per_hour'))} + {fmt_usd(g('tco_energy_usd_per_hour'))} + "
             f"{fmt_usd(g('tco_hosting_usd_per_hour'))}"),
            ("TCO ($ / M output tokens)", fmt_usd(g("tco_per_million_output_tokens_usd"))),
            ("rental / TCO per node ($/h)", f"{fmt_usd(g('rental_usd_per_node_hour'))} / "
             f"{fmt_usd(g('tco_usd_per_node_hour'))}"),
        ]
    return rows


def summary_table(summary: Mapping[str, Any], *, title: str | None = None) -> Table:
    """Everything in one summary: a latency table (mean and percentiles) above a table of the other metrics."""
    grid = Table.grid(padding=(1, 0))
    if title:
        grid.title = title
    grid.add_column()
    grid.add_row(_latency_table(summary))
    grid.add_row(_totals_table(summary))
    return grid
