"""Frontier charts of the compare tab: cost against latency, and tokens/s per GPU against tokens/s per user.

Why these two: a capacity engineer trades money for latency (cheaper hardware, fewer replicas, a slower answer)
and, in the AIConfigurator / InferenceMAX style, a deployment's throughput per GPU against the speed each user
sees -- batching more raises the first and lowers the second. Each configuration is a point at the run's load; the
load sweep adds one point per rate and draws each configuration's curve.

Definitions (from the summary keys, :mod:`simulator.metrics.summary`):

* **tokens/s per GPU** = ``served_output_tps / num_gpus``: the steady-state output tokens per second the deployment
  serves at this load, per GPU.
* **tokens/s per user** = ``1 / tpot_mean_s``: the decode speed one request sees after its first token.
* **cost** = ``cost_per_million_output_tokens_usd`` (steady state, the same definition as the summary table).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import altair as alt
import pandas as pd

COLUMNS = ["configuration", "qps", "usd_per_million_output_tokens", "ttft_p90_s", "e2e_p90_s", "tokens_per_s_per_gpu",
           "tokens_per_s_per_user", "slo_met", "overloaded"]


def _f(summary: Mapping[str, Any], key: str) -> float:
    try:
        return float(summary.get(key))
    except (TypeError, ValueError):
        return math.nan


def frontier_row(summary: Mapping[str, Any], qps: float | None = None) -> dict[str, Any]:
    """One configuration at one load, in the frontier charts' terms."""
    gpus, tpot = _f(summary, "num_gpus"), _f(summary, "tpot_mean_s")
    return {
        "configuration": str(summary.get("name", "?")),
        "qps": _f(summary, "offered_rps") if qps is None else qps,
        "usd_per_million_output_tokens": _f(summary, "cost_per_million_output_tokens_usd"),
        "ttft_p90_s": _f(summary, "ttft_p90_s"),
        "e2e_p90_s": _f(summary, "e2e_p90_s"),
        "tokens_per_s_per_gpu": _f(summary, "served_output_tps") / gpus if gpus > 0 else math.nan,
        "tokens_per_s_per_user": 1.0 / tpot if tpot > 0 else math.nan,
        "slo_met": bool(summary.get("slo_met")),
        "overloaded": bool(summary.get("overloaded")),
    }


def frontier_frame(summaries: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per configuration at the compared load."""
    return pd.DataFrame([frontier_row(s) for s in summaries], columns=COLUMNS)


def _status(frame: pd.DataFrame) -> pd.Series:
    return frame.apply(lambda r: "overloaded" if r["overloaded"] else ("meets SLO" if r["slo_met"] else "misses SLO"),
                       axis=1)


_SHAPES = alt.Scale(domain=["meets SLO", "misses SLO", "overloaded"], range=["circle", "triangle-up", "cross"])


def cost_latency_chart(frame: pd.DataFrame, latency: str = "ttft_p90_s") -> alt.LayerChart:
    """$ per million output tokens against a tail latency, one point per configuration (shape: SLO verdict)."""
    data = frame.assign(verdict=_status(frame)).dropna(subset=["usd_per_million_output_tokens", latency])
    base = alt.Chart(data).encode(
        x=alt.X(f"{latency}:Q", title=f"{latency.replace('_s', '').replace('_', ' ')} (s)", scale=alt.Scale(zero=False)),
        y=alt.Y("usd_per_million_output_tokens:Q", title="$ per million output tokens", scale=alt.Scale(zero=False)),
    )
    points = base.mark_point(filled=True, size=120).encode(
        color=alt.Color("configuration:N", legend=alt.Legend(orient="right", title=None, labelLimit=300),
                        scale=alt.Scale(scheme="tableau10")),
        shape=alt.Shape("verdict:N", scale=_SHAPES, title=None),
        tooltip=COLUMNS,
    )
    labels = base.mark_text(align="left", dx=8, dy=-6, fontSize=10).encode(text="configuration:N")
    return alt.layer(points, labels).properties(title="Cost vs latency", width=420, height=300)


def throughput_interactivity_chart(frame: pd.DataFrame) -> alt.LayerChart:
    """Tokens/s per GPU against tokens/s per user; with several rates per configuration (a load sweep), each
    configuration's points are joined in order of rate, tracing its trade-off curve."""
    data = frame.assign(verdict=_status(frame)).dropna(subset=["tokens_per_s_per_gpu", "tokens_per_s_per_user"])
    data = data.sort_values(["configuration", "qps"], kind="stable")
    base = alt.Chart(data).encode(
        x=alt.X("tokens_per_s_per_user:Q", title="output tokens/s per user (1 / mean TPOT)", scale=alt.Scale(zero=False)),
        y=alt.Y("tokens_per_s_per_gpu:Q", title="output tokens/s per GPU (served, steady state)"),
        color=alt.Color("configuration:N", legend=alt.Legend(orient="right", title=None, labelLimit=300),
                        scale=alt.Scale(scheme="tableau10")),
    )
    line = base.mark_line(opacity=0.6).encode(order="qps:Q")
    points = base.mark_point(filled=True, size=90).encode(shape=alt.Shape("verdict:N", scale=_SHAPES, title=None),
                                                          tooltip=COLUMNS)
    return alt.layer(line, points).properties(title="Throughput per GPU vs speed per user", width=420, height=300)
