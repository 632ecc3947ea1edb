"""The roofline view: each operator of a configuration's representative prefill and decode iterations placed on its
device's roofline (operational intensity against FLOP/s), as LLM-Viewer and GenZ draw it.

Why from the breakdown: :func:`app.analysis.breakdown` already prices every operator of the cost model's operator
table at the run's own mean decode step and typical prefill (FLOPs, bytes and time per GPU, all layers), so the
points move with the model, the batch the run reached, TP/PP and the numeric formats. The roof is the device's
datasheet peaks for the compute format the deployment uses: ``min(peak FLOP/s, bandwidth × intensity)``. A point's
height is the FLOP/s the cost model prices the operator at (FLOPs / time); it sits below the roof by the
efficiencies (or the calibrated profile) the cost model applies. Communication and engine overhead move no HBM
bytes with FLOPs, so they have no place on a roofline and are left out.
"""

from __future__ import annotations

from collections.abc import Sequence

import altair as alt
import numpy as np
import pandas as pd

from app.charts import CATEGORY_COLORS, OP_CLASS_LABELS, palette

#: Operational intensities the roof is drawn over (FLOP per byte).
ROOF_INTENSITIES = np.logspace(-1, 4, 60)


def operator_points(breakdown: pd.DataFrame) -> pd.DataFrame:
    """The operators with both FLOPs and bytes: intensity (FLOP/B) and priced FLOP/s, per configuration and phase."""
    data = breakdown[(breakdown["flops"] > 0) & (breakdown["bytes"] > 0) & (breakdown["time_s"] > 0)]
    data = data[data["op_class"] != "communication"]
    return pd.DataFrame({
        "configuration": data["configuration"],
        "phase": data["phase"],
        "operator": data["operator"],
        "op_class": data["op_class"].map(lambda c: OP_CLASS_LABELS.get(c, c)),
        "bound": data["bound"],
        "intensity_flop_per_byte": data["flops"] / data["bytes"],
        "flops_per_s": data["flops"] / data["time_s"],
        "time_s": data["time_s"],
    }).reset_index(drop=True)


def roof(configuration: str, peak_flops: float, bandwidth: float) -> pd.DataFrame:
    """The device's roofline: attainable FLOP/s = min(peak, bandwidth × intensity), and the ridge point."""
    attainable = np.minimum(peak_flops, bandwidth * ROOF_INTENSITIES)
    return pd.DataFrame({"configuration": configuration, "intensity_flop_per_byte": ROOF_INTENSITIES,
                         "attainable_flops_per_s": attainable, "ridge_flop_per_byte": peak_flops / bandwidth})


def roofline_frame(breakdowns: pd.DataFrame, devices: Sequence[tuple[str, float, float]]) -> pd.DataFrame:
    """One tidy frame for the chart: operator points (``kind`` = operator) and each configuration's roof
    (``kind`` = roof); ``devices`` holds (configuration, peak FLOP/s per GPU, HBM bytes/s per GPU)."""
    points = operator_points(breakdowns).assign(kind="operator")
    roofs = [roof(name, peak, bw).assign(kind="roof") for name, peak, bw in devices if peak > 0 and bw > 0]
    return pd.concat([points, *roofs], ignore_index=True)


def roofline_chart(frame: pd.DataFrame) -> alt.FacetChart:
    """Log-log roofline, one panel per configuration: the roof as a line, the operators as points coloured by
    operator class (the same colours as the time-breakdown charts) and shaped by phase."""
    classes = [str(v) for v in frame["op_class"].dropna().unique()]
    colors = palette(classes, CATEGORY_COLORS) or {}
    x = alt.X("intensity_flop_per_byte:Q", title="operational intensity (FLOP / byte, log)",
              scale=alt.Scale(type="log"))
    roof_layer = alt.Chart().transform_filter("datum.kind == 'roof'").mark_line(color="black").encode(
        x=x, y=alt.Y("attainable_flops_per_s:Q", title="FLOP/s per GPU (log)", scale=alt.Scale(type="log")),
        tooltip=["intensity_flop_per_byte:Q", "attainable_flops_per_s:Q", "ridge_flop_per_byte:Q"],
    )
    points = alt.Chart().transform_filter("datum.kind == 'operator'").mark_point(filled=True, size=60).encode(
        x=x, y=alt.Y("flops_per_s:Q", scale=alt.Scale(type="log")),
        color=alt.Color("op_class:N", title=None, legend=alt.Legend(orient="bottom", labelLimit=400, columns=2),
                        scale=alt.Scale(domain=list(colors), range=list(colors.values()))),
        shape=alt.Shape("phase:N", title="phase"),
        tooltip=["configuration:N", "phase:N", "operator:N", "bound:N", "intensity_flop_per_byte:Q",
                 "flops_per_s:Q", "time_s:Q"],
    )
    order = [str(v) for v in frame["configuration"].unique()]
    return alt.layer(roof_layer, points, data=frame).properties(width=330, height=260).facet(
        facet=alt.Facet("configuration:N", title=None, sort=order), columns=2,
    ).properties(title="Roofline: each operator of the representative prefill and decode iterations")
