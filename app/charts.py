"""Chart descriptions, and the interactive Altair charts drawn from them.

Why a description (:class:`ChartSpec`) between the data and the drawing: the
same tidy frame must give the interactive chart on the page, the CSV download
and the PNG download (:mod:`app.export` draws the PNG with matplotlib from the
same spec), so the three can never disagree. The project standardises on
Altair for interactive plots (Streamlit ships it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import altair as alt
import pandas as pd

#: Plain names for the operator classes of the cost model.
OP_CLASS_LABELS = {
    "gemm": "GEMM (projections, MLP, LM head)",
    "attention_prefill": "attention (prefill)",
    "attention_decode": "attention (decode)",
    "elementwise": "elementwise (norms, RoPE, activation, residual adds, embedding)",
    "communication": "communication (TP/PP)",
}


@dataclass
class ChartSpec:
    """A chart: one tidy frame plus which columns go where.

    ``line``: ``x`` and ``y`` are numeric, one line per value of ``color``. ``bar``: horizontal stacked bars,
    ``y`` is the category, ``x`` the numeric value summed per (category, ``color``); ``normalize`` shows shares.
    ``facet`` splits the chart into panels by that column.
    """

    key: str  # file stem for downloads
    title: str
    frame: pd.DataFrame
    kind: Literal["line", "bar"]
    x: str
    y: str
    color: str
    x_title: str
    y_title: str
    facet: str | None = None
    log_x: bool = False
    rule_y: float | None = None
    normalize: bool = False
    tooltip: tuple[str, ...] = ()


def latency_cdf_spec(frame: pd.DataFrame) -> ChartSpec:
    """Overlaid latency CDFs, one panel per metric (log latency axis)."""
    return ChartSpec(
        "latency_cdfs", "Latency CDFs", frame, "line", "latency_s", "fraction", "configuration",
        "latency (s, log scale)", "fraction of requests (TBT: of gaps) ≤ x", facet="metric", log_x=True,
        tooltip=("configuration", "metric", "latency_s", "fraction"),
    )


def timeline_spec(frame: pd.DataFrame, column: str, title: str, y_title: str) -> ChartSpec:
    """One time series of the run (throughput, batch size, KV memory)."""
    data = frame[["configuration", "time_s", column]].dropna()
    return ChartSpec(
        column, title, data, "line", "time_s", column, "configuration", "simulated time (s)", y_title,
        tooltip=("configuration", "time_s", column),
    )


def breakdown_specs(frame: pd.DataFrame) -> tuple[ChartSpec, ChartSpec]:
    """Per-iteration time by operator class, and the compute- vs memory-bound share of that time."""
    data = frame.assign(
        time_ms=frame["time_s"] * 1e3,
        op_class=frame["op_class"].map(lambda c: OP_CLASS_LABELS.get(c, c)),
    )
    by_class = ChartSpec(
        "breakdown_by_operator", "Time per iteration by operator class", data, "bar", "time_ms", "configuration",
        "op_class", "time per iteration (ms)", "", facet="phase", tooltip=("configuration", "operator", "bound", "time_ms"),
    )
    by_bound = ChartSpec(
        "breakdown_by_bound", "Share of iteration time compute- vs memory-bound", data, "bar", "time_ms",
        "configuration", "bound", "share of iteration time", "", facet="phase", normalize=True,
        tooltip=("configuration", "operator", "bound", "time_ms"),
    )
    return by_class, by_bound


def sweep_spec(frame: pd.DataFrame, target: float | None) -> ChartSpec:
    """SLO attainment against request rate, with the attainment target as a dashed line."""
    return ChartSpec(
        "load_sweep", "SLO attainment vs request rate", frame, "line", "qps", "slo_attainment", "configuration",
        "request rate (req/s)", "SLO attainment", rule_y=target,
        tooltip=("configuration", "qps", "slo_attainment", "ttft_p99_s", "tpot_p99_s"),
    )


#: Order of the latency panels: the user's journey through a request.
METRIC_ORDER = ["TTFT", "TPOT", "TBT", "E2E"]


def _legend(orient: str) -> alt.Legend:
    return alt.Legend(orient=orient, title=None, labelLimit=400)


def _color(field: str, orient: str = "bottom", order: list[str] | None = None) -> alt.Color:
    """Distinct hues (configurations must be told apart at a glance, not shades of one colour).

    A legend below a chart that stretches to the page width eats into its fixed height (Vega-Lite's "fit"
    autosizing), so single-panel line charts put it on the right.
    """
    return alt.Color(f"{field}:N", legend=_legend(orient), scale=alt.Scale(scheme="tableau10"),
                     sort=order if order is not None else "ascending")


def _line(spec: ChartSpec) -> alt.Chart:
    x_scale = alt.Scale(type="log") if spec.log_x else alt.Scale(zero=False)
    base = alt.Chart(spec.frame).mark_line(interpolate="step-after" if spec.facet else "linear").encode(
        x=alt.X(f"{spec.x}:Q", title=spec.x_title, scale=x_scale),
        y=alt.Y(f"{spec.y}:Q", title=spec.y_title),
        color=_color(spec.color, "bottom" if spec.facet else "right", _appearance(spec.frame, spec.color)),
        tooltip=list(spec.tooltip),
    )
    if spec.rule_y is not None:
        rule = alt.Chart(pd.DataFrame({"target": [spec.rule_y]})).mark_rule(strokeDash=[5, 4], color="grey").encode(
            y="target:Q"
        )
        base = alt.layer(base.mark_line(point=True), rule)
    else:
        base = base.interactive(bind_y=False)
    if spec.facet:
        return base.properties(width=330, height=210).facet(
            facet=alt.Facet(f"{spec.facet}:N", title=None, sort=_order(spec)), columns=2
        ).resolve_scale(x="independent")
    return base.properties(height=260)


def _appearance(frame: pd.DataFrame, column: str) -> list[str]:
    """Values of ``column`` in order of first appearance (configurations in the order the user set them up)."""
    return [str(v) for v in frame[column].unique()]


def _order(spec: ChartSpec) -> list[str] | str:
    values = list(spec.frame[spec.facet].unique()) if spec.facet else []
    known = [m for m in METRIC_ORDER if m in values]
    return known + [v for v in values if v not in known] if known else "ascending"


def _bar(spec: ChartSpec) -> alt.Chart:
    stack = "normalize" if spec.normalize else "zero"
    x_axis = alt.Axis(format="%") if spec.normalize else alt.Axis()
    chart = alt.Chart(spec.frame).mark_bar().encode(
        x=alt.X(f"sum({spec.x}):Q", stack=stack, title=spec.x_title, axis=x_axis),
        y=alt.Y(f"{spec.y}:N", title=None, axis=alt.Axis(labelLimit=300), sort=_appearance(spec.frame, spec.y)),
        color=_color(spec.color),
        tooltip=list(spec.tooltip),
    )
    if spec.facet:
        chart = chart.encode(row=alt.Row(f"{spec.facet}:N", title=None))
    return chart.properties(width=560)


def altair_chart(spec: ChartSpec) -> alt.Chart:
    """The interactive Altair chart of ``spec`` (line charts zoom and pan along x; tooltips everywhere)."""
    chart = _line(spec) if spec.kind == "line" else _bar(spec)
    return chart.properties(title=spec.title)
