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
    "overhead": "serving engine (host work, launch gaps, all-reduce floor)",
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
    OP_CLASS_LABELS["overhead"]: "#9c755f",
    "overhead": "#9c755f",
}
#: Colours for categories without a fixed one (a class added to the cost model later), in order of appearance.
SPARE_COLORS = ("#ff9da7", "#bab0ac", "#17becf", "#bcbd22", "#86bcb6")


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
    rule_x_column: str | None = None  # a dashed vertical line per panel at this column's value (an SLO target)
    rule_y_column: str | None = None  # a dashed horizontal line per panel at this column's value (a capacity)
    rule_label: str = ""  # what the dashed per-panel line is, for tooltips and the PNG legend
    band: tuple[str, str] | None = None  # columns of a shaded x-interval around each line (min–max across seeds)

    def colors(self) -> dict[str, str] | None:
        """The fixed colour of each value of ``color`` in this chart, or None (hues by order)."""
        if self.frame.empty or self.color not in self.frame:
            return None
        return palette([str(v) for v in self.frame[self.color].unique()], self.fixed_colors)


#: The SLO target key of each latency panel (TBT's target applies to each request's largest gap).
SLO_TARGET_KEYS = {"TTFT": "slo_ttft_s", "TPOT": "slo_tpot_s", "TBT": "slo_tbt_s", "E2E": "slo_e2e_s"}


def latency_cdf_spec(frame: pd.DataFrame, targets: dict[str, float | None] | None = None) -> ChartSpec:
    """Overlaid latency CDFs, one panel per metric (log latency axis), each SLO target a dashed vertical line.

    ``targets`` maps a summary's SLO keys (``slo_ttft_s``, ...) to seconds or None (no target on that metric).
    """
    targets = targets or {}
    data = frame.assign(slo_target_s=frame["metric"].map(
        lambda m: targets.get(SLO_TARGET_KEYS.get(str(m), ""))).astype(float))
    band = ("latency_lo_s", "latency_hi_s") if {"latency_lo_s", "latency_hi_s"} <= set(frame.columns) else None
    title = ("Latency CDFs (mean across seeds, shaded: min–max across seeds; dashed: SLO target)" if band
             else "Latency CDFs (dashed: SLO target)")
    return ChartSpec(
        "latency_cdfs", title, data, "line", "latency_s", "fraction", "configuration",
        "latency (s, log scale)", "fraction of requests (TBT: of gaps) ≤ x", facet="metric", log_x=True,
        tooltip=("configuration", "metric", "latency_s", "fraction"), rule_x_column="slo_target_s",
        rule_label="SLO target", band=band,
    )


def timeline_spec(frame: pd.DataFrame, column: str, title: str, y_title: str,
                  rule_column: str | None = None, rule_label: str = "") -> ChartSpec:
    """One time series of the run (throughput, batch size, KV memory).

    With several configurations each gets its own panel and its own time axis: runs of very different lengths
    (one slow configuration taking 1,000 s, the others 100 s) would otherwise squeeze the short ones into a sliver
    of a shared axis. ``rule_column`` draws a dashed line per panel (the KV capacity).
    """
    keep = ["configuration", "time_s", column, *([rule_column] if rule_column else [])]
    data = frame[[c for c in keep if c in frame.columns]].dropna(subset=[column])
    several = data["configuration"].nunique() > 1 if not data.empty else False
    return ChartSpec(
        column, title, data, "line", "time_s", column, "configuration", "simulated time (s)", y_title,
        tooltip=("configuration", "time_s", column), facet="configuration" if several else None,
        rule_y_column=rule_column if rule_column in data.columns else None, rule_label=rule_label,
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
    cdf = spec.facet is not None and spec.facet != spec.color  # step lines for empirical CDFs
    base = alt.Chart().mark_line(interpolate="step-after" if cdf else "linear").encode(
        x=alt.X(f"{spec.x}:Q", title=spec.x_title, scale=x_scale),
        y=alt.Y(f"{spec.y}:Q", title=spec.y_title),
        color=_color(spec.color, "bottom" if spec.facet else "right", _appearance(spec.frame, spec.color)),
        tooltip=list(spec.tooltip),
    )
    layers: list[alt.Chart] = []
    if spec.rule_y is not None:
        rule = alt.Chart(pd.DataFrame({"target": [spec.rule_y]})).mark_rule(strokeDash=[5, 4], color="grey").encode(
            y="target:Q"
        )
        return alt.layer(base.mark_line(point=True), rule, data=spec.frame).properties(height=260)
    if spec.band is not None:  # drawn first, under the lines: at each y the x-interval the seeds span
        lo, hi = spec.band
        layers.append(alt.Chart().mark_area(opacity=0.2, orient="horizontal").encode(
            y=alt.Y(f"{spec.y}:Q"), x=alt.X(f"{lo}:Q", scale=x_scale), x2=alt.X2(f"{hi}:Q"),
            color=_color(spec.color, "bottom" if spec.facet else "right", _appearance(spec.frame, spec.color)),
            tooltip=list(spec.tooltip) + [lo, hi],
        ))
    layers.append(base if spec.facet else base.interactive(bind_y=False))
    for column, channel in ((spec.rule_x_column, "x"), (spec.rule_y_column, "y")):
        if column and column in spec.frame.columns and spec.frame[column].notna().any():
            rule = alt.Chart().transform_filter(f"isValid(datum['{column}'])").mark_rule(
                strokeDash=[6, 4], color="black", strokeWidth=1.5
            ).encode(**{channel: alt.X(f"max({column}):Q") if channel == "x" else alt.Y(f"max({column}):Q")},
                     tooltip=[alt.Tooltip(f"max({column}):Q", title=spec.rule_label or column)])
            layers.append(rule)
    chart = alt.layer(*layers, data=spec.frame)
    if spec.facet:
        panel = spec.facet == spec.color  # one panel per configuration: as wide as the page allows, stacked
        return chart.properties(width=560 if panel else 330, height=160 if panel else 210).facet(
            facet=alt.Facet(f"{spec.facet}:N", title=None, sort=_order(spec)), columns=1 if panel else 2
        ).resolve_scale(x="independent")
    return chart.properties(height=260)


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
