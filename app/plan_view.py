"""The "Results folder" half of the page: show what ``capsim plan --out DIR`` found (run and sweep folders: see
:mod:`app.results_folder`).

Why read the output folder instead of planning on the page: a plan runs many
simulations (seconds to minutes) and is usually run from the command line or a
batch job; the page's job is to make its answer readable -- the cheapest
configuration meeting the target rate, the cost/latency Pareto front, each
candidate's maximum sustainable rate and how SLO attainment fell as the probes
raised the rate. The loading half (:func:`load_plan_folder`,
:func:`load_plan_files`) has no Streamlit in it, so it is tested directly; a
missing or malformed file becomes a :class:`~capsim.errors.CapsimError` naming
the file and the fix, drawn inline with ``st.error``.
"""

from __future__ import annotations

import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from app.charts import ChartSpec, altair_chart
from app.export import csv_bytes
from app.results_folder import find_results_folders, folder_kind
from capsim.errors import CapsimError
from simulator.metrics.table import fmt_number, fmt_seconds, fmt_usd

#: Columns the page needs from each file (the planner writes more).
PLAN_KEYS = ("target_rps", "cheapest", "pareto_front")
CANDIDATE_COLUMNS = ("name", "status", "cost_per_hour_usd", "max_rate_rps", "meets_target")
EVALUATION_COLUMNS = ("candidate", "rate_rps", "slo_attainment")

FIX_FOLDER = "give the folder written by `capsim plan FILE --out DIR` (it holds plan.json and candidates.csv)"


@dataclass
class PlanOutput:
    """One plan's answer as the page needs it: the JSON report and the two tables."""

    source: str  # folder or upload names, for captions and error messages
    document: dict[str, Any]
    candidates: pd.DataFrame
    evaluations: pd.DataFrame | None  # None when not given (uploads) -- the attainment chart is then skipped

    @property
    def target(self) -> float:
        return float(self.document["target_rps"])

    @property
    def cheapest(self) -> dict[str, Any] | None:
        return self.document.get("cheapest")


# ---------------------------------------------------------------------------------------------- loading
def find_plan_folders(root: Path, depth: int = 3) -> list[Path]:
    """Folders under ``root`` (at most ``depth`` levels down) that hold a plan.json, newest first.

    Why bounded depth rather than ``rglob``: a plan folder holds a results store with one file per probe,
    and walking all of them on every page redraw would be slow for no gain.
    """
    if not root.is_dir():
        return []
    found = [p for level in range(depth) for p in root.glob("/".join(["*"] * level + ["plan.json"]))]
    found = [p for p in found if p.is_file()]
    found.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return [p.parent for p in found]


def _document(text: str, where: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CapsimError(f"not valid JSON ({exc.msg} at line {exc.lineno})", where=where,
                          fix="run `capsim plan` again to rewrite the file") from None
    if not isinstance(doc, dict) or any(k not in doc for k in PLAN_KEYS):
        missing = [k for k in PLAN_KEYS if not isinstance(doc, dict) or k not in doc]
        raise CapsimError(f"not a capsim plan report (missing {', '.join(missing)})", where=where,
                          fix="pick the plan.json that `capsim plan --out DIR` wrote")
    target = doc["target_rps"]
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not target > 0:
        raise CapsimError(f"target_rps must be a positive number, got {target!r}", where=f"{where} (target_rps)",
                          fix="run `capsim plan` again to rewrite the file")
    return doc


def _table(read: Any, where: str, needed: tuple[str, ...]) -> pd.DataFrame:
    """Read a table with ``read()``, turning any parser failure or missing column into a CapsimError."""
    try:
        frame = read()
    except Exception as exc:  # pandas/pyarrow raise many types for a corrupt file; all mean the same to the user
        raise CapsimError(f"cannot read the table ({type(exc).__name__}: {exc})", where=where,
                          fix="run `capsim plan` again to rewrite the file") from None
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise CapsimError(f"missing column(s) {', '.join(missing)}", where=where,
                          fix="use the file `capsim plan --out DIR` wrote, unchanged")
    return frame


def _folder_table(folder: Path, stem: str, needed: tuple[str, ...], required: bool) -> pd.DataFrame | None:
    """``stem.parquet`` if readable (exact types), else ``stem.csv``."""
    parquet, csv = folder / f"{stem}.parquet", folder / f"{stem}.csv"
    if parquet.is_file():
        try:
            return _table(lambda: pd.read_parquet(parquet), str(parquet), needed)
        except CapsimError:
            if not csv.is_file():
                raise
    if csv.is_file():
        return _table(lambda: pd.read_csv(csv), str(csv), needed)
    if required:
        raise CapsimError(f"no {stem}.csv (or {stem}.parquet) in the folder", where=str(folder), fix=FIX_FOLDER)
    return None


def load_plan_folder(folder: str | Path) -> PlanOutput:
    """Read a ``capsim plan --out`` folder; raises CapsimError naming the file at fault."""
    text = str(folder).strip()
    if not text:
        raise CapsimError("no plan folder given", where="plan output folder", fix=FIX_FOLDER)
    path = Path(text).expanduser()
    if not path.is_dir():
        raise CapsimError("folder not found", where=str(path), fix=FIX_FOLDER)
    report = path / "plan.json"
    if not report.is_file():
        raise CapsimError("no plan.json in the folder", where=str(path), fix=FIX_FOLDER)
    doc = _document(report.read_text(encoding="utf-8", errors="replace"), str(report))
    candidates = _folder_table(path, "candidates", CANDIDATE_COLUMNS, required=True)
    evaluations = _folder_table(path, "evaluations", EVALUATION_COLUMNS, required=False)
    return PlanOutput(str(path), doc, candidates, evaluations)


def load_plan_files(plan_json: bytes, candidates_csv: bytes, evaluations_csv: bytes | None = None,
                    names: tuple[str, str, str] = ("plan.json", "candidates.csv", "evaluations.csv")) -> PlanOutput:
    """The same from uploaded bytes (plan.json, candidates.csv, optionally evaluations.csv)."""
    doc = _document(plan_json.decode("utf-8", errors="replace"), names[0])
    candidates = _table(lambda: pd.read_csv(io.BytesIO(candidates_csv)), names[1], CANDIDATE_COLUMNS)
    evaluations = None
    if evaluations_csv is not None:
        evaluations = _table(lambda: pd.read_csv(io.BytesIO(evaluations_csv)), names[2], EVALUATION_COLUMNS)
    return PlanOutput(f"{names[0]} + {names[1]}", doc, candidates, evaluations)


# ---------------------------------------------------------------------------------------------- tables
def metric_label(key: str) -> str:
    """A summary key as a reader would name it: ``ttft_p90_s`` -> ``TTFT p90``, ``e2e_p99_s`` -> ``E2E p99``."""
    match = re.fullmatch(r"(ttft|tpot|tbt|e2e|queueing)_(p\d+|mean)_s", key)
    if match:
        metric, stat = match.groups()
        return f"{metric.upper() if metric != 'queueing' else 'queueing'} {stat}"
    return key.replace("_", " ")


def pareto_frame(out: PlanOutput) -> pd.DataFrame:
    """The Pareto front of cost against the plan's latency metric, cheapest first (raw numbers, SI units)."""
    metric = str(out.document.get("pareto_metric", "ttft_p90_s"))
    rows = [{
        "configuration": c.get("name"),
        "gpus": c.get("gpus"),
        "cost_per_hour_usd": c.get("cost_per_hour_usd"),
        "usd_per_million_output_tokens": c.get("usd_per_million_output_tokens"),
        metric: c.get(metric),
        "max_rate_rps": c.get("max_rate_rps"),
        "headroom": c.get("headroom"),
        "slo_attainment_at_target": c.get("slo_attainment_at_target"),
        "tco_usd_per_hour": c.get("tco_usd_per_hour"),
        "tco_usd_per_million_output_tokens": c.get("tco_usd_per_million_output_tokens"),
        "energy_per_request_j": c.get("energy_per_request_j"),
    } for c in out.document.get("pareto_front") or [] if isinstance(c, dict)]
    return pd.DataFrame(rows, columns=["configuration", "gpus", "cost_per_hour_usd", "usd_per_million_output_tokens",
                                       metric, "max_rate_rps", "headroom", "slo_attainment_at_target",
                                       "tco_usd_per_hour", "tco_usd_per_million_output_tokens",
                                       "energy_per_request_j"])


def ranks_by_tco(out: PlanOutput) -> bool:
    """Whether the plan ranked its candidates by total cost of ownership (``objective: tco``) rather than rental
    (plans written before the objective existed ranked by rental)."""
    return out.document.get("objective") == "tco"


def goodput_frame(out: PlanOutput) -> pd.DataFrame:
    """Max sustainable rate per candidate; pruned candidates (never simulated) are left out, cheapest first."""
    c = out.candidates
    frame = pd.DataFrame({
        "configuration": c["name"].astype(str),
        "status": c["status"].astype(str),
        "meets_target": c["meets_target"].astype(str).str.lower().isin(["true", "1"]),
        "cost_per_hour_usd": pd.to_numeric(c["cost_per_hour_usd"], errors="coerce"),
        "max_rate_rps": pd.to_numeric(c["max_rate_rps"], errors="coerce"),
    })
    if "headroom" in c.columns:
        frame["headroom"] = pd.to_numeric(c["headroom"], errors="coerce")
    frame = frame.dropna(subset=["max_rate_rps"])
    frame["meets target"] = frame.pop("meets_target").map({True: "meets target", False: "misses target"})
    return frame.sort_values(["cost_per_hour_usd", "configuration"], kind="stable").reset_index(drop=True)


def attainment_frame(out: PlanOutput, names: list[str] | None = None) -> pd.DataFrame:
    """SLO attainment at each probed rate (simulated probes only; analytic probes have no attainment)."""
    if out.evaluations is None:
        return pd.DataFrame(columns=["candidate", "rate_rps", "slo_attainment"])
    e = out.evaluations
    keep = [c for c in ("candidate", "rate_rps", "slo_attainment", "goodput_rps", "ttft_p90_s", "tpot_p90_s", "good")
            if c in e.columns]
    frame = e[keep].copy()
    frame["candidate"] = frame["candidate"].astype(str)
    for col in ("rate_rps", "slo_attainment"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    frame = frame.dropna(subset=["rate_rps", "slo_attainment"])
    if names is not None:
        frame = frame[frame["candidate"].isin(names)]
    return frame.sort_values(["candidate", "rate_rps"], kind="stable").reset_index(drop=True)


#: Why the analytic pre-pass pruned a candidate without simulating it, in words (statuses of
#: :data:`simulator.planner.plan.PRUNED`; see :mod:`simulator.planner.bounds`).
PRUNED_REASONS = {
    "does-not-fit": "does not fit: the weights and reserves leave no GPU memory for the KV cache",
    "invalid": "invalid configuration (e.g. TP does not divide the heads, unknown format)",
    "latency-floor": "latency floor: even served alone on an idle replica too few requests meet the SLO",
    "too-slow": "too slow: the work the SLO-meeting requests need exceeds the replica-time before their deadlines",
    "nothing-measured": "nothing measured: the probes produced no measured requests",
}


def pruned_frame(out: PlanOutput) -> pd.DataFrame:
    """The candidates ruled out without simulation, each with why (in words) and the planner's detail."""
    c = out.candidates
    status = c["status"].astype(str)
    mask = status.isin(PRUNED_REASONS)
    detail = c["detail"].fillna("").astype(str) if "detail" in c.columns else pd.Series("", index=c.index)
    frame = pd.DataFrame({
        "configuration": c.loc[mask, "name"].astype(str),
        "status": status[mask],
        "why": status[mask].map(PRUNED_REASONS),
        "detail": detail[mask],
    })
    return frame.reset_index(drop=True)


# ---------------------------------------------------------------------------------------------- charts
def goodput_chart(frame: pd.DataFrame, target: float) -> alt.LayerChart:
    """Horizontal bars of max sustainable rate per candidate, with the target rate as a dashed rule."""
    order = list(frame["configuration"])
    bars = alt.Chart(frame).mark_bar().encode(
        x=alt.X("max_rate_rps:Q", title="max sustainable rate (req/s) within the SLO"),
        y=alt.Y("configuration:N", title=None, sort=order, axis=alt.Axis(labelLimit=400)),
        color=alt.Color("meets target:N", title=None, legend=alt.Legend(orient="bottom"),
                        scale=alt.Scale(domain=["meets target", "misses target"], range=["#4c78a8", "#bab0ac"])),
        tooltip=[c for c in ("configuration", "max_rate_rps", "headroom", "cost_per_hour_usd", "status")
                 if c in frame.columns],
    )
    rule = alt.Chart(pd.DataFrame({"target_rps": [target]})).mark_rule(strokeDash=[5, 4], color="firebrick").encode(
        x="target_rps:Q", tooltip=["target_rps:Q"]
    )
    return alt.layer(bars, rule).properties(title=f"Max sustainable rate per candidate (target {target:g} req/s)",
                                            width=560)


def pareto_chart(frame: pd.DataFrame, metric: str) -> alt.LayerChart:
    """The Pareto front as a chart: cost per hour against the latency metric, the front as a step line through
    its points (each point a configuration no other beats on both), labelled by configuration."""
    data = frame.dropna(subset=["cost_per_hour_usd", metric]).sort_values("cost_per_hour_usd")
    x = alt.X("cost_per_hour_usd:Q", title="cost ($/h)", scale=alt.Scale(zero=False))
    y = alt.Y(f"{metric}:Q", title=f"{metric_label(metric)} at the target rate", scale=alt.Scale(zero=False))
    base = alt.Chart(data).encode(x=x, y=y)
    line = base.mark_line(interpolate="step-after", color="#4e79a7")
    points = base.mark_point(filled=True, size=70, color="#4e79a7").encode(
        tooltip=[c for c in ("configuration", "gpus", "cost_per_hour_usd", "usd_per_million_output_tokens", metric,
                             "max_rate_rps", "headroom") if c in data.columns])
    labels = base.mark_text(align="left", dx=6, dy=-6, fontSize=10).encode(text="configuration:N")
    return alt.layer(line, points, labels).properties(title=f"Pareto front: cost vs {metric_label(metric)}", width=560, height=280)


def attainment_spec(frame: pd.DataFrame, goal: float | None) -> ChartSpec:
    """SLO attainment against the probed request rate, one line per candidate, the attainment goal as a rule."""
    return ChartSpec(
        "plan_attainment_vs_rate", "SLO attainment vs request rate (goodput search probes)", frame, "line",
        "rate_rps", "slo_attainment", "candidate", "request rate (req/s)", "SLO attainment", rule_y=goal,
        tooltip=tuple(c for c in ("candidate", "rate_rps", "slo_attainment", "ttft_p90_s", "tpot_p90_s")
                      if c in frame.columns),
    )


# ---------------------------------------------------------------------------------------------- page
@st.cache_data(show_spinner=False, max_entries=8)
def _cached_folder(folder: str, stamp: tuple[float, ...]) -> PlanOutput:
    """Loaded once per folder and file time stamps (``stamp``), so redraws do not re-read the tables."""
    return load_plan_folder(folder)


def _stamp(folder: str) -> tuple[float, ...]:
    path = Path(folder.strip()).expanduser()
    files = [path / n for n in ("plan.json", "candidates.parquet", "candidates.csv", "evaluations.parquet",
                                "evaluations.csv")]
    return tuple(f.stat().st_mtime if f.is_file() else -1.0 for f in files)


def _download(frame: pd.DataFrame, stem: str) -> None:
    st.download_button("CSV", csv_bytes(frame), file_name=f"{stem}.csv", mime="text/csv", key=f"plan-csv-{stem}",
                       on_click="ignore")


def _source(results_dir: Path) -> PlanOutput | None:
    """Where the plan comes from (a folder, or uploaded files); None while nothing usable is given."""
    how = st.radio("plan output", ["folder", "upload files"], horizontal=True, key="plan-source",
                   label_visibility="collapsed")
    if how == "folder":
        folders = find_results_folders(results_dir)
        default = str(folders[0]) if folders else ""
        folder = st.text_input("results folder (`capsim plan`, `capsim run` or `capsim sweep` with `--out DIR`)",
                               value=default, key="plan-folder", placeholder="results/plan")
        if not folder.strip():
            st.info("No results under results/ yet. Run `capsim plan scenarios/plan_example.yaml --out "
                    "results/plan` (or `capsim run` / `capsim sweep` with `--out`), then give the folder here "
                    "(or upload a plan's plan.json and candidates.csv).")
            return None
        kind = folder_kind(folder.strip())
        if kind in ("run", "sweep"):
            from app.results import render_run_folder, render_sweep_folder  # the comparison's views

            (render_run_folder if kind == "run" else render_sweep_folder)(folder.strip())
            return None
        return _cached_folder(folder.strip(), _stamp(folder))
    left, mid, right = st.columns(3)
    report = left.file_uploader("plan.json", type=["json"], key="plan-upload-json")
    cands = mid.file_uploader("candidates.csv", type=["csv"], key="plan-upload-candidates")
    evals = right.file_uploader("evaluations.csv (optional)", type=["csv"], key="plan-upload-evaluations")
    if report is None or cands is None:
        st.info("Upload the plan.json and candidates.csv that `capsim plan --out DIR` wrote.")
        return None
    return load_plan_files(report.getvalue(), cands.getvalue(), evals.getvalue() if evals is not None else None,
                           (report.name, cands.name, evals.name if evals is not None else "evaluations.csv"))


def _times(value: Any) -> str:
    """A ratio such as headroom, ``1.04×``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return f"{fmt_number(value)}×" if ok else "–"


def _headline(out: PlanOutput) -> None:
    doc = out.document
    st.caption(f"{out.source} — plan {doc.get('name', '?')!r}: {doc.get('candidates', '?')} candidates, "
               f"{doc.get('pruned_analytically', '?')} pruned without simulation, {doc.get('simulations', '?')} "
               f"simulations, {doc.get('meeting_target', '?')} meet the target.")
    for warning in doc.get("warnings") or []:
        st.warning(str(warning))
    best = out.cheapest
    if not best:
        st.warning(f"No candidate meets the target rate of {out.target:g} req/s within the SLO. Widen the search "
                   "(more replicas, faster devices) or relax the SLO, then run `capsim plan` again.")
        return
    st.success(f"Cheapest configuration meeting {out.target:g} req/s within the SLO: **{best.get('name')}**")
    cols = st.columns(4)
    headroom = best.get("headroom")
    if ranks_by_tco(out):
        cols[0].metric("TCO per hour", fmt_usd(best.get("tco_usd_per_hour")),
                       help=f"rental: {fmt_usd(best.get('cost_per_hour_usd'))}/h")
        cols[1].metric("TCO per million output tokens", fmt_usd(best.get("tco_usd_per_million_output_tokens")))
    else:
        cols[0].metric("cost per hour", fmt_usd(best.get("cost_per_hour_usd")))
        cols[1].metric("cost per million output tokens", fmt_usd(best.get("usd_per_million_output_tokens")))
    capped = " (search cap)" if best.get("max_rate_capped") else ""
    cols[2].metric("max sustainable rate", f"{fmt_number(best.get('max_rate_rps'))} req/s{capped}")
    cols[3].metric("headroom (max rate / target)", _times(headroom))


def _pareto(out: PlanOutput) -> None:
    metric = str(out.document.get("pareto_metric", "ttft_p90_s"))
    st.subheader(f"Pareto front: cost per hour vs {metric_label(metric)} at the target rate")
    frame = pareto_frame(out)
    if frame.empty:
        st.info("The Pareto front is empty: no candidate meets the target rate.")
        return
    shown = pd.DataFrame({
        "configuration": frame["configuration"],
        "GPUs": frame["gpus"],
        "$/h": frame["cost_per_hour_usd"].map(fmt_usd),
        "$/Mtok": frame["usd_per_million_output_tokens"].map(fmt_usd),
        metric_label(metric): frame[metric].map(fmt_seconds if metric.endswith("_s") else fmt_number),
        "max rate (req/s)": frame["max_rate_rps"].map(fmt_number),
        "headroom": frame["headroom"].map(_times),
        "J/request": frame["energy_per_request_j"].map(fmt_number),
    })
    if ranks_by_tco(out):  # the front was drawn on TCO: show it beside rental
        shown.insert(4, "TCO $/h", frame["tco_usd_per_hour"].map(fmt_usd))
        shown.insert(5, "TCO $/Mtok", frame["tco_usd_per_million_output_tokens"].map(fmt_usd))
    st.dataframe(shown, hide_index=True)
    _download(frame, "pareto_front")
    st.altair_chart(pareto_chart(frame, metric))


def _charts(out: PlanOutput) -> None:
    st.subheader("Max sustainable rate (goodput) per candidate")
    frame = goodput_frame(out)
    if frame.empty:
        st.info("No candidate was simulated: the analytic pre-pass ruled all of them out (see candidates.csv).")
    else:
        st.altair_chart(goodput_chart(frame, out.target))
        _download(frame, "max_rate_per_candidate")
    st.subheader("SLO attainment vs request rate")
    if out.evaluations is None:
        st.info("Give the folder (or upload evaluations.csv) to see how attainment fell as the rate rose.")
        return
    searched = list(dict.fromkeys(attainment_frame(out)["candidate"]))
    preferred = [c.get("name") for c in [out.cheapest, *(out.document.get("pareto_front") or [])] if c]
    default = [n for n in dict.fromkeys(preferred) if n in searched] or searched[:8]
    # One picker per plan: a key shared across plans would carry the last plan's picks, which the next plan's
    # options do not contain, so switching folders would leave the chart empty.
    names = st.multiselect("candidates", searched, default=default, key=f"plan-attainment-names-{out.source}")
    data = attainment_frame(out, names)
    if data.empty:
        st.info("Pick one or more candidates to draw.")
        return
    goal = (out.document.get("slo") or {}).get("attainment")
    st.altair_chart(altair_chart(attainment_spec(data, goal if isinstance(goal, (int, float)) else None)))
    _download(data, "attainment_vs_rate")


def _pruned(out: PlanOutput) -> None:
    frame = pruned_frame(out)
    if frame.empty:
        return
    st.subheader(f"Pruned without simulation ({len(frame)})")
    counts = frame["status"].value_counts()
    st.caption("; ".join(f"{n} {status}" for status, n in counts.items()))
    st.dataframe(frame, hide_index=True)
    _download(frame, "pruned_candidates")


def render_plan_view(results_dir: Path) -> None:
    """The whole section; every bad input ends in an inline ``st.error``, never a traceback."""
    st.caption("Show the answer of `capsim plan FILE --out DIR`: the cheapest configuration that serves the "
               "target rate within the SLO, the cost/latency Pareto front and each candidate's goodput.")
    try:
        out = _source(results_dir)
        if out is None:
            return
        _headline(out)
        _pareto(out)
        _charts(out)
        _pruned(out)
        with st.expander("All candidates"):
            st.dataframe(out.candidates, hide_index=True)
            _download(out.candidates, "candidates")
    except CapsimError as exc:
        st.error(exc.render())
