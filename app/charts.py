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


#: Fixed colours of the categories of the time-breakdown charts (tableau10 hues), so that a class or a bound has
#: the same colour in every chart and every run, whichever categories a run happens to have or list first.
CATEGORY_COLORS: dict[str, str] = {
    OP_CLASS_LABELS["gemm"]: "#4e79a7",
    OP_CLASS_LABELS["attention_prefill"]: "#f28e2b",
    OP_CLASS_LABELS["attention_decode"]: "#e15759",
    OP_CLASS_LABELS["elementwise"]: "#76b7b2",
    OP_CLASS_LABELS["communication"]: "#59a14f",
    "compute": "#b07aa1",
    "memory": "#edc948",
    "communication": "#59a14f",
}
#: Colours for categories without a fixed one (a class added to the cost model later), in order of appearance.
SPARE_COLORS = ("#ff9da7", "#9c755f", "#bab0ac", "#17becf", "#bcbd22")


def palette(values: list[str], fixed: dict[str, str] | None) -> dict[str, str] | None:
    """``value -> colour`` for the values of a chart when its categories have fixed colours, else None."""
    if fixed is None:
        return None
    out = {v: fixed[v] for v in values if v in fixed}
    spare = [v for v in values if v not in fixed]
    out.update({v: SPARE_COLORS[i % len(SPARE_COLORS)] for i, v in enumerate(spare)})
    return out


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
    fixed_colors: dict[str, str] | None = None  # colour per value of ``color`` (default: by order of appearance)

    def colors(self) -> dict[str, str] | None:
        """The fixed colour of each value of ``color`` in this chart, or None (hues by order)."""
        if self.frame.empty or self.color not in self.frame:
            return None
        return palette([str(v) for v in self.frame[self.color].unique()], self.fixed_colors)


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
        fixed_colors=CATEGORY_COLORS,
    )
    by_bound = ChartSpec(
        "breakdown_by_bound", "Share of iteration time compute- vs memory-bound", data, "bar", "time_ms",
        "configuration", "bound", "share of iteration time", "", facet="phase", normalize=True,
        tooltip=("configuration", "operator", "bound", "time_ms"), fixed_colors=CATEGORY_COLORS,
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


def _color(field: str, orient: str = "bottom", order: list[str] | None = None,
           colors: dict[str, str] | None = None) -> alt.Color:
    """Distinct hues (configurations must be told apart at a glance, not shades of one colour); ``colors`` fixes
    the hue of each value (categories such as operator classes keep theirs in every chart).

    A legend below a chart that stretches to the page width eats into its fixed height (Vega-Lite's "fit"
    autosizing), so single-panel line charts put it on the right.
    """
    scale = alt.Scale(domain=list(colors), range=list(colors.values())) if colors else alt.Scale(scheme="tableau10")
    return alt.Color(f"{field}:N", legend=_legend(orient), scale=scale,
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
        color=_color(spec.color, colors=spec.colors()),
        tooltip=list(spec.tooltip),
    )
    if spec.facet:
        chart = chart.encode(row=alt.Row(f"{spec.facet}:N", title=None))
    return chart.properties(width=560)


def altair_chart(spec: ChartSpec) -> alt.Chart:
    """The interactive Altair chart of ``spec`` (line charts zoom and pan along x; tooltips everywhere)."""
    chart = _line(spec) if spec.kind == "line" else _bar(spec)
    return chart.properties(title=spec.title)
