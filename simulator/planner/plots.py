"""Plots of a capacity plan: the Pareto front, goodput per candidate, attainment against rate.

* ``pareto.png`` -- cost per hour against the Pareto latency metric at the target
  rate, for every candidate that meets the target; the front is joined by a line
  and the cheapest candidate is marked. This is the trade-off a buyer chooses on.
* ``goodput.png`` -- each candidate's maximum sustainable rate (horizontal bars,
  cheapest first) against the target line, coloured by verdict; pruned
  candidates are listed by reason, since they have no bar.
* ``attainment_vs_rate.png`` -- SLO attainment at every simulated probe of the
  goodput searches, one line per candidate, with the attainment goal: where
  each line crosses the goal is that candidate's goodput.

matplotlib's object API on an Agg canvas, as in :mod:`simulator.metrics.plots`:
no display and no global state, so plotting is safe in any process.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib.figure import Figure

from simulator.metrics.plots import save_figure

if TYPE_CHECKING:
    from simulator.planner.plan import Candidate, PlanResult

#: At most this many candidates get a bar or a line (the cheapest ones); the tables hold them all.
MAX_SHOWN = 40
#: Lines in the attainment plot (more would be unreadable).
MAX_LINES = 12


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


def _by_cost(cands: list[Candidate]) -> list[Candidate]:
    return sorted(cands, key=lambda c: (c.cost_per_hour_usd if math.isfinite(c.cost_per_hour_usd) else math.inf,
                                        c.name))


def plot_pareto(result: PlanResult, path: Path) -> Path:
    metric = result.plan.pareto_metric
    fig = Figure(figsize=(7.5, 5))
    ax = fig.add_subplot()
    ok = [c for c in result.candidates
          if c.meets_target and c.at_target.get(metric) is not None and math.isfinite(result.cost(c))]
    if not ok:
        _empty(ax, f"no candidate meets {result.plan.target_rps:g} req/s")
    else:
        ax.scatter([result.cost(c) for c in ok], [c.at_target[metric] for c in ok], color="tab:blue",
                   alpha=0.5, label="meets target")
        front = result.pareto
        ax.plot([result.cost(c) for c in front], [c.at_target[metric] for c in front], "o-", color="tab:red",
                label="Pareto front")
        for c in front:
            ax.annotate(c.name, (result.cost(c), c.at_target[metric]), fontsize=7, xytext=(4, 4),
                        textcoords="offset points")
        if result.cheapest is not None:
            ch = result.cheapest
            ax.scatter([result.cost(ch)], [ch.at_target[metric]], s=160, facecolors="none",
                       edgecolors="black", label="cheapest")
        ax.set_xlabel("TCO (USD per hour)" if result.objective == "tco" else "cost (USD per hour)")
        ax.set_ylabel(f"{metric} at {result.plan.target_rps:g} req/s (s)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    ax.set_title("cost vs latency of configurations meeting the target")
    return save_figure(fig, path)


def plot_goodput(result: PlanResult, path: Path) -> Path:
    searched = _by_cost([c for c in result.candidates if c.search is not None])[:MAX_SHOWN]
    pruned = [c for c in result.candidates if c.pruned]
    fig = Figure(figsize=(8, max(3.0, 0.28 * len(searched) + 1.8)))
    ax = fig.add_subplot()
    target = result.plan.target_rps
    if not searched:
        _empty(ax, "every candidate was pruned analytically")
    else:
        y = list(range(len(searched)))
        colours = ["tab:green" if c.meets_target else "tab:red" for c in searched]
        ax.barh(y, [c.max_rate for c in searched], color=colours, alpha=0.8)
        for yi, c in zip(y, searched, strict=True):
            label = f"{c.max_rate:.3g}" + ("+" if c.search is not None and c.search.capped else "")
            ax.text(c.max_rate, yi, f" {label}  ${c.cost_per_hour_usd:.2f}/h", va="center", fontsize=7)
        ax.set_yticks(y, [c.name for c in searched], fontsize=7)
        ax.invert_yaxis()
        ax.axvline(target, color="black", linestyle="--", label=f"target {target:g} req/s")
        ax.set_xlabel("maximum sustainable rate within the SLO (req/s)")
        ax.legend(fontsize=8, loc="lower right")
    if pruned:
        reasons: dict[str, int] = {}
        for c in pruned:
            reasons[c.status] = reasons.get(c.status, 0) + 1
        text = "pruned without simulation: " + ", ".join(f"{n} {r}" for r, n in sorted(reasons.items()))
        fig.text(0.01, 0.005, text, fontsize=7, color="grey")
    ax.set_title("goodput per configuration (cheapest first)")
    return save_figure(fig, path)


def plot_attainment(result: PlanResult, path: Path) -> Path:
    fig = Figure(figsize=(10, 5))
    ax = fig.add_subplot()
    searched = [c for c in result.candidates if any(e["status"] == "ok" for e in c.evaluations)]
    shown = _by_cost(searched)[:MAX_LINES]
    if not shown:
        _empty(ax, "no simulated probes")
    else:
        for c in shown:
            points = sorted((e["rate_rps"], e["slo_attainment"]) for e in c.evaluations
                            if e["status"] == "ok" and e["slo_attainment"] is not None)
            ax.plot([p[0] for p in points], [p[1] for p in points], "o-", markersize=3, label=c.name)
        ax.axhline(result.plan.slo.attainment, color="black", linestyle="--", label="attainment goal")
        ax.axvline(result.plan.target_rps, color="grey", linestyle=":", label="target rate")
        ax.set_xscale("log")
        ax.set_xlabel("request rate (req/s)")
        ax.set_ylabel("SLO attainment")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.grid(alpha=0.3)
    ax.set_title("SLO attainment vs request rate (simulated probes)")
    return save_figure(fig, path)


def write_plan_plots(result: PlanResult, out_dir: Path) -> list[Path]:
    return [
        plot_pareto(result, out_dir / "pareto.png"),
        plot_goodput(result, out_dir / "goodput.png"),
        plot_attainment(result, out_dir / "attainment_vs_rate.png"),
    ]
