"""Downloadable files: CSV of any table, PNG of any chart.

Why matplotlib for the PNG: Altair needs the optional ``vl-convert`` package
to rasterise, which capsim does not depend on; matplotlib is already a
dependency, and drawing from the same :class:`~app.charts.ChartSpec` (the same
tidy frame and column roles) keeps the PNG faithful to the chart on the page.
Figures use matplotlib's object API on an Agg canvas (no pyplot global state),
so this is safe inside Streamlit's script threads.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from app.charts import METRIC_ORDER, ChartSpec


def csv_bytes(frame: pd.DataFrame) -> bytes:
    """UTF-8 CSV without the index (every frame here is tidy)."""
    return frame.to_csv(index=False).encode("utf-8")


def _panels(spec: ChartSpec) -> list[tuple[str | None, pd.DataFrame]]:
    if spec.facet is None:
        return [(None, spec.frame)]
    groups = dict(list(spec.frame.groupby(spec.facet, sort=True)))
    order = [m for m in METRIC_ORDER if m in groups] + [k for k in groups if k not in METRIC_ORDER]
    return [(str(k), groups[k]) for k in order]


def _colors(spec: ChartSpec) -> dict[str, str]:
    """One colour per series for the whole figure (the same configuration or class in every panel); categories
    with fixed colours (operator classes, bounds) get the same ones as on the page."""
    fixed = spec.colors()
    if fixed is not None:
        return fixed
    return {str(v): f"C{i % 10}" for i, v in enumerate(spec.frame[spec.color].unique())}


def _draw_lines(ax: Axes, spec: ChartSpec, data: pd.DataFrame, colors: dict[str, str]) -> None:
    for series, part in data.groupby(spec.color, sort=False):
        part = part.sort_values(spec.x)
        color = colors[str(series)]
        if spec.band is not None:  # min–max across seeds, as on the page
            ax.fill_betweenx(part[spec.y], part[spec.band[0]], part[spec.band[1]], color=color, alpha=0.2, lw=0)
        if spec.facet and spec.facet != spec.color:  # empirical CDFs are step functions
            ax.step(part[spec.x], part[spec.y], where="post", label=str(series), color=color)
        else:
            ax.plot(part[spec.x], part[spec.y], label=str(series), color=color,
                    marker="o" if spec.rule_y is not None else None)
    if spec.log_x and (data[spec.x] > 0).any():
        ax.set_xscale("log")
    if spec.rule_y is not None:
        ax.axhline(spec.rule_y, color="grey", linestyle="--", label=f"target {spec.rule_y:g}")
    for column, draw in ((spec.rule_x_column, ax.axvline), (spec.rule_y_column, ax.axhline)):
        values = data[column].dropna() if column and column in data.columns else pd.Series(dtype=float)
        if not values.empty:
            draw(float(values.max()), color="black", linestyle="--", linewidth=1.2, label=spec.rule_label or column)


def _draw_bars(ax: Axes, spec: ChartSpec, data: pd.DataFrame, colors: dict[str, str]) -> None:
    categories = [str(v) for v in spec.frame[spec.y].unique()]  # the order the user set them up in
    table = data.assign(**{spec.y: data[spec.y].astype(str), spec.color: data[spec.color].astype(str)}).pivot_table(
        index=spec.y, columns=spec.color, values=spec.x, aggfunc="sum", fill_value=0.0
    ).reindex(index=categories, fill_value=0.0)
    if spec.normalize:
        totals = table.sum(axis=1).replace(0, np.nan)
        table = table.div(totals, axis=0)
    left = np.zeros(len(table))
    positions = np.arange(len(table))
    for column in [c for c in colors if c in table.columns]:
        values = table[column].fillna(0.0).to_numpy(float)
        ax.barh(positions, values, left=left, label=column, color=colors[column])
        left += values
    ax.set_yticks(positions, categories)
    ax.invert_yaxis()
    if spec.normalize:
        ax.set_xlim(0, 1)


def figure(spec: ChartSpec) -> Figure:
    """The matplotlib figure of ``spec``."""
    panels = _panels(spec)
    colors = _colors(spec)
    cols = 2 if spec.kind == "line" and len(panels) > 1 else 1
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(5.2 * cols if cols > 1 else 9, 3.2 * rows + 0.9))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    legend: dict[str, object] = {}
    ncol = 1
    for ax, (title, data) in zip(axes.flat, panels, strict=False):
        (_draw_lines if spec.kind == "line" else _draw_bars)(ax, spec, data, colors)
        ax.set_title(title or "")
        ax.set_xlabel(spec.x_title)
        ax.set_ylabel(spec.y_title)
        ax.grid(alpha=0.3)
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    if legend:
        order = [k for k in colors if k in legend] + [k for k in legend if k not in colors]
        ncol = min(len(order), 4 if max(len(k) for k in order) < 20 else 2)
        fig.legend([legend[k] for k in order], order, loc="lower center", ncol=ncol, frameon=False)
    fig.suptitle(spec.title)
    rows_of_legend = -(-len(legend) // ncol) if legend else 0
    fig.tight_layout(rect=(0, 0.05 + 0.04 * rows_of_legend if legend else 0, 1, 1))
    return fig


def png_bytes(spec: ChartSpec, dpi: int = 110) -> bytes:
    """The chart as PNG bytes."""
    buffer = io.BytesIO()
    figure(spec).savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
