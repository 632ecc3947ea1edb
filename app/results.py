"""The results half of the page: verdict, summary table, charts, load sweep, each with CSV/PNG downloads.

Why tabs: the summary table answers "which one?" at a glance; the charts answer
"why?" and are only opened when needed, which keeps the page short on a laptop
screen. Everything drawn here comes from cached :class:`~app.analysis.RunData`,
so redrawing is instant.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import pandas as pd
import streamlit as st

from app.analysis import RunData
from app.charts import (
    SLO_TARGET_KEYS,
    ChartSpec,
    altair_chart,
    breakdown_specs,
    latency_cdf_spec,
    sweep_spec,
    timeline_spec,
)
from app.export import csv_bytes, png_bytes
from app.frontiers import COLUMNS as FRONTIER_COLUMNS
from app.frontiers import cost_latency_chart, frontier_frame, frontier_row, throughput_interactivity_chart
from app.pools_table import pool_frame
from app.results_folder import RATE, SweepView, load_run_folder, load_sweep_folder, sweep_summaries
from app.roofline import roofline_chart, roofline_frame
from app.runner import (
    Job,
    RunFailure,
    highest_sustained_rate,
    job_for,
    parse_rates,
    run_jobs,
    sweep_frame,
    with_rate,
)
from app.tables import csv_table, display_table, energy_cost_rows, verdict
from capsim.errors import CapsimError
from simulator.config.schema import Scenario
from traces.arrivals import ARRIVALS


@st.cache_data(show_spinner=False, max_entries=64)
def _png(digest: str, _spec: ChartSpec) -> bytes:
    """PNG of a chart, cached by the hash of the runs it shows and the chart's name."""
    return png_bytes(_spec)


def _combined(datas: Sequence[RunData], attr: str) -> pd.DataFrame:
    frames = [getattr(d, attr).assign(configuration=d.name) for d in datas]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return frame[["configuration", *[c for c in frame.columns if c != "configuration"]]]


def slo_targets(summary: dict[str, Any]) -> dict[str, float | None]:
    """The SLO targets a summary was scored against (``slo_ttft_s`` ...; None where no target is set)."""
    return {key: summary.get(key) for key in SLO_TARGET_KEYS.values()}


def chart_with_downloads(spec: ChartSpec, digest: str) -> None:
    """The interactive chart, and its data as CSV and PNG."""
    if spec.frame.empty:
        st.info(f"{spec.title}: no data (nothing was measured).")
        return
    st.altair_chart(altair_chart(spec))
    left, right, _ = st.columns([1, 1, 4])
    left.download_button("CSV", csv_bytes(spec.frame), file_name=f"{spec.key}.csv", mime="text/csv",
                         key=f"csv-{spec.key}", on_click="ignore")
    right.download_button("PNG", _png(f"{digest}-{spec.key}", spec), file_name=f"{spec.key}.png", mime="image/png",
                          key=f"png-{spec.key}", on_click="ignore")


def progress_callback(bar: Any):
    def update(done: int, total: int, name: str) -> None:
        text = f"simulating {name} ({done + 1}/{total})" if name else f"done: {total} simulated"
        bar.progress(done / max(total, 1), text=text)

    return update


def show_failures(failures: Sequence[RunFailure]) -> None:
    for f in failures:
        where = f" ({f.where})" if f.where else ""
        st.error(f"**{f.name}** could not be simulated{where}: {f.message}")


def render_results(jobs: Sequence[Job], outcomes: Sequence[RunData | RunFailure]) -> None:
    """Everything below the run button, for one set of finished runs."""
    datas = [o for o in outcomes if isinstance(o, RunData)]
    show_failures([o for o in outcomes if isinstance(o, RunFailure)])
    if not datas:
        return
    # The SLO is not in a job's digest (a new SLO re-scores the same runs), but the CDF chart draws its targets.
    slo_tag = hashlib.sha256("".join(j.slo_json for j in jobs).encode()).hexdigest()[:8]
    digest = "-".join(j.digest[:8] for j in jobs) + "-" + slo_tag
    met, text = verdict([d.summary for d in datas], [d.slo_quantiles for d in datas])
    (st.success if met else st.warning)(text)

    st.subheader("Summary")
    st.table(display_table([d.summary for d in datas]))
    st.download_button("Download summary (CSV)", csv_bytes(csv_table([d.summary for d in datas])),
                       file_name="summary.csv", mime="text/csv", key="download-summary-csv", on_click="ignore")
    render_pools([d.summary for d in datas])
    render_energy_cost([d.summary for d in datas])

    tabs = st.tabs(["Latency CDFs", "Throughput & batch", "KV memory", "Time breakdown", "Roofline", "Frontiers"])
    with tabs[0]:
        chart_with_downloads(latency_cdf_spec(_combined(datas, "cdf"), slo_targets(datas[0].summary)), digest)
    timeline = _combined(datas, "timeline")
    capacity = {d.name: d.summary.get("kv_capacity_gib_per_gpu") for d in datas}
    timeline["kv_capacity_gib"] = timeline["configuration"].map(capacity).astype(float)
    with tabs[1]:
        chart_with_downloads(timeline_spec(timeline, "output_tokens_per_s", "Output tokens per second",
                                           "output tokens/s"), digest)
        chart_with_downloads(timeline_spec(timeline, "batch_size", "Batch size (mean sequences per iteration)",
                                           "sequences per iteration"), digest)
    with tabs[2]:
        chart_with_downloads(timeline_spec(timeline, "kv_used_gib", "KV cache in use (per GPU, mean over replicas; "
                                           "dashed: KV capacity)", "GiB per GPU", rule_column="kv_capacity_gib",
                                           rule_label="KV capacity (GiB per GPU)"), digest)
    with tabs[3]:
        render_breakdown(datas, digest)
    with tabs[4]:
        render_roofline(datas)
    with tabs[5]:
        render_frontiers(frontier_frame([d.summary for d in datas]), "frontiers")
    # A plain section, not a tab or expander: its button re-runs the page, which would switch tabs back to the
    # first one (or fold an expander) and hide the sweep just run.
    st.subheader("Load sweep")
    st.caption("SLO attainment of every configuration at several request rates (same workload otherwise).")
    render_sweep_controls()


def render_breakdown(datas: Sequence[RunData], digest: str) -> None:
    st.caption(
        "Roofline time of one representative iteration per configuration, by operator class: the run's mean "
        "decode step (mean decode batch and context) and a typical prefill (median prefill tokens per iteration). "
        "Each operator is compute-bound or memory-bound, whichever of FLOPs/peak and bytes/bandwidth is larger."
    )
    shapes = pd.DataFrame([{"configuration": d.name, **d.shapes} for d in datas]).set_index("configuration")
    st.table(shapes)
    by_class, by_bound = breakdown_specs(_combined(datas, "breakdown"))
    chart_with_downloads(by_class, digest)
    chart_with_downloads(by_bound, digest)


def render_pools(summaries: Sequence[dict[str, Any]], key: str = "pools") -> None:
    """The per-pool table of multi-pool runs (nothing for single-pool runs)."""
    frame = pool_frame(summaries)
    if frame.empty:
        return
    st.subheader("Per pool")
    st.caption("Each pool of a multi-pool deployment: its GPUs, how busy it was, its MFU/MBU, batch, KV occupancy, "
               "energy and cost over the measurement window.")
    st.dataframe(frame, hide_index=True)
    st.download_button("CSV", csv_bytes(frame), file_name=f"{key}.csv", mime="text/csv", key=f"csv-{key}",
                       on_click="ignore")


def render_frontiers(frame: pd.DataFrame, key: str) -> None:
    """Cost against latency and tokens/s per GPU against tokens/s per user (see :mod:`app.frontiers`)."""
    st.caption("Each configuration at the compared load (shape: meets the SLO, misses it, or overloaded). Tokens/s "
               "per GPU is the served output rate per GPU; tokens/s per user is 1 / mean TPOT. The load sweep below "
               "adds one point per rate.")
    st.altair_chart(cost_latency_chart(frame))
    st.altair_chart(throughput_interactivity_chart(frame))
    st.download_button("CSV", csv_bytes(frame), file_name=f"{key}.csv", mime="text/csv", key=f"csv-{key}",
                       on_click="ignore")


def render_roofline(datas: Sequence[RunData]) -> None:
    st.caption(
        "Each operator of the representative prefill and decode iterations (the shapes above) on its device's "
        "roofline: x is FLOPs per HBM byte, y the FLOP/s the cost model prices it at (FLOPs / time); the line is "
        "min(peak FLOP/s, bandwidth × intensity) from the device's datasheet for the deployment's compute format. "
        "Points left of the ridge are memory-bound. Communication and overheads have no place on a roofline."
    )
    frame = roofline_frame(_combined(datas, "breakdown"), [(d.name, *d.peaks) for d in datas])
    if frame.empty or not (frame["kind"] == "operator").any():
        st.info("Roofline: no operators to place (nothing was measured).")
        return
    st.altair_chart(roofline_chart(frame))
    st.download_button("CSV", csv_bytes(frame), file_name="roofline.csv", mime="text/csv", key="csv-roofline",
                       on_click="ignore")


def sweep_supported(scenario: Scenario) -> bool:
    return "qps" in ARRIVALS.get(scenario.workload.arrival).uses


def render_sweep_controls() -> None:
    """Rates to try and a button; results stay in the session until the inputs change."""
    scenarios: list[Scenario] = st.session_state.get("last_scenarios", [])
    if not scenarios:
        return
    if not sweep_supported(scenarios[0]):
        st.info("The load sweep varies workload.qps; it needs an open-loop arrival process (not closed-loop).")
        return
    base = scenarios[0].workload.qps
    default = ", ".join(f"{base * m:g}" for m in (0.5, 1, 1.5, 2)) if base else "1, 2, 4, 8"
    rates_text = st.text_input("request rates to try (req/s)", value=default, key="sweep-rates",
                               help="Every configuration is simulated at each rate (cached by scenario hash).")
    if st.button("Run load sweep", key="run-sweep"):
        try:
            rates = parse_rates(rates_text)
            jobs = [(sc.name, r, job_for(with_rate(sc, r))) for r in rates for sc in scenarios]
        except CapsimError as exc:
            st.error(exc.render())
            return
        bar = st.progress(0.0, text="load sweep")
        outcomes = run_jobs([j for _, _, j in jobs], progress_callback(bar))
        bar.empty()
        st.session_state["sweep"] = [(name, r, job) for (name, r, job) in jobs]
        show_failures([o for o in outcomes if isinstance(o, RunFailure)])
    sweep = st.session_state.get("sweep")
    if sweep:
        outcomes = run_jobs([j for _, _, j in sweep])
        frame = sweep_frame([(name, r, o) for (name, r, _), o in zip(sweep, outcomes, strict=True)])
        if frame.empty:
            return
        target = scenarios[0].slo.attainment
        chart_with_downloads(sweep_spec(frame, target), "sweep-" + "-".join(j.digest[:6] for _, _, j in sweep))
        st.table(highest_sustained_rate(frame).to_frame().fillna("none"))
        rows = [frontier_row(o.summary, r) for (_, r, _), o in zip(sweep, outcomes, strict=True)
                if isinstance(o, RunData)]
        render_frontiers(pd.DataFrame(rows, columns=FRONTIER_COLUMNS), "sweep-frontiers")


def render_energy_cost(summaries: list[dict], key: str = "energy-cost") -> None:
    """Energy per request and average power beside rental and TCO prices, one row per configuration
    (docs/energy-and-cost.md); TCO columns are empty unless a scenario sets cost: {mode: tco}."""
    with st.expander("Energy and cost (rental and TCO)"):
        st.dataframe(energy_cost_rows(summaries), hide_index=True, key=key)


def render_run_folder(folder: str) -> None:
    """A ``capsim run --out`` folder: the verdict, the summary table, per-pool table and frontiers from its
    summary.json files (the records are not re-analysed; run the comparison on the page for the charts)."""
    summaries = load_run_folder(folder)
    st.caption(f"{folder} — `capsim run` output: {len(summaries)} configuration(s), read from summary.json.")
    met, text = verdict(summaries, [{} for _ in summaries])
    (st.success if met else st.warning)(text)
    st.table(display_table(summaries))
    st.download_button("Download summary (CSV)", csv_bytes(csv_table(summaries)), file_name="summary.csv",
                       mime="text/csv", key="folder-summary-csv", on_click="ignore")
    render_pools(summaries, "folder-pools")
    render_energy_cost(summaries, "folder-energy")
    render_frontiers(frontier_frame(summaries), "folder-frontiers")


def render_sweep_folder(folder: str) -> None:
    """A ``capsim sweep --out`` folder: attainment against rate per configuration, the highest rate each sustains,
    the frontiers with one point per run, and the whole table."""
    frame = load_sweep_folder(folder)
    st.caption(f"{folder} — `capsim sweep` output: {len(frame)} runs, "
               f"{frame['configuration'].nunique() if len(frame) else 0} configurations.")
    attainment = SweepView(frame).attainment()
    if not attainment.empty:
        target = frame["slo.attainment"].iloc[0] if "slo.attainment" in frame.columns else None
        chart_with_downloads(sweep_spec(attainment, float(target) if target is not None else None),
                             f"folder-sweep-{abs(hash(folder))}")
        st.table(highest_sustained_rate(attainment).to_frame().fillna("none"))
    summaries = sweep_summaries(frame)
    rows = [frontier_row(s, s.get(RATE)) for s in summaries]
    render_frontiers(pd.DataFrame(rows, columns=FRONTIER_COLUMNS), "folder-sweep-frontiers")
    render_pools(summaries, "folder-sweep-pools")
    with st.expander("All runs"):
        st.dataframe(frame, hide_index=True)
