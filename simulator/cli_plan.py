"""``capsim sweep`` and ``capsim plan``: many simulations, locally or on Ray.

Wired into :mod:`simulator.cli` by ``register(app)``. As everywhere in the
CLI: results on stdout, progress and diagnostics on stderr, bad input ends
in a one-paragraph message and exit status 2 (the ``_guard`` helper).
"""


import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from simulator.cli_common import DebugOpt, SetOpt, _guard, _json_default, err_console, out_console
from simulator.progress import Progress

OutOpt = Annotated[
    Path | None,
    typer.Option("--out", "-o", help="Output directory (tables, plots, and the results store that makes reruns "
                 "resume). Default: results/<file name>."),
]
WorkersOpt = Annotated[
    int | None, typer.Option("--workers", "-w", help="Local worker processes (default: every core; 1 runs in-process).")
]
RayOpt = Annotated[
    str | None,
    typer.Option("--ray", help="Run on a Ray cluster at ADDRESS ('auto' on a cluster node, 'local' for a new local "
                 "instance); needs the ray extra: pip install 'capsim\\[ray]'."),  # help is console markup: "\\[" prints "["
]


def _out_dir(out: Path | None, source: Path) -> Path:
    return out if out is not None else Path("results") / source.stem


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "–" if not math.isfinite(x) else f"{x:.{digits}g}"


def register(app: typer.Typer) -> None:
    """Add the ``sweep`` and ``plan`` commands to ``app``."""

    @app.command()
    def sweep(
        sweep_file: Annotated[Path, typer.Argument(help="Scenario file with runs:, grid: and/or zip: sections.")],
        out: OutOpt = None,
        workers: WorkersOpt = None,
        ray: RayOpt = None,
        set_: SetOpt = None,
        debug: DebugOpt = False,
    ) -> None:
        """Simulate every configuration of a grid; one tidy table (Parquet + CSV), resumable."""

        def action() -> None:
            from simulator.metrics.table import comparison_table
            from simulator.sweep import load_sweep, make_executor, run_sweep

            scenarios = load_sweep(sweep_file, set_ or [])
            target = _out_dir(out, sweep_file)
            with make_executor(workers, ray) as executor, \
                    Progress(f"sweep on {executor.describe()}", len(scenarios), console=err_console) as bar:
                result = run_sweep(
                    scenarios, out_dir=target, executor=executor,
                    progress=lambda done, total, name, cached: bar.update(completed=done),
                )
            rows = result.table.to_dict("records")
            out_console.print(comparison_table(rows, title=f"{sweep_file} ({len(rows)} configurations)"))
            errors = [r for r in rows if r["status"] != "ok"]
            for row in errors:
                err_console.print(f"[yellow]{row['status']}:[/] {row['name']}: {row['error']}", highlight=False,
                                  soft_wrap=True)
            err_console.print(
                f"{result.computed} simulated, {result.reused} reused from the store; "
                f"table: {target / 'results.parquet'} and {target / 'results.csv'}",
                highlight=False, soft_wrap=True,
            )
            if result.failed:
                err_console.print(f"[bold red]internal error[/] in {len(result.failed)} configuration(s); "
                                  "rerun with --workers 1 --debug and report it")
                raise typer.Exit(1)

        _guard(debug, action)

    @app.command()
    def plan(
        plan_file: Annotated[Path, typer.Argument(help="Plan file: base scenario, search:, target_rps:, rate_search:.")],
        out: OutOpt = None,
        workers: WorkersOpt = None,
        ray: RayOpt = None,
        set_: SetOpt = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object.")] = False,
        plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write pareto.png, goodput.png, "
                                            "attainment_vs_rate.png.")] = True,
        intervals: Annotated[bool, typer.Option(
            "--intervals", help="Headroom with a prediction interval: each simulated candidate's max rate searched "
            "again at both ends of the interval (sets simulation.intervals where the plan does not).")] = False,
        debug: DebugOpt = False,
    ) -> None:
        """Find the cheapest configuration that sustains the target rate within the SLO."""

        def action() -> None:
            from simulator.planner import load_plan, plan_document, run_plan
            from simulator.sweep import make_executor

            plan_cfg, candidates = load_plan(plan_file, set_ or [])
            if intervals:
                from simulator.intervals.rerun import with_intervals

                plan_cfg = with_intervals(plan_cfg)
            target = _out_dir(out, plan_file)
            with make_executor(workers, ray) as executor, \
                    Progress("analytic pre-pass", len(candidates), console=err_console) as bar:

                def progress(phase: str, done: int, total: int) -> None:
                    bar.update(description=phase, completed=done, total=total)

                result = run_plan(plan_cfg, candidates, out_dir=target, executor=executor, progress=progress,
                                  plots=plots)
            doc = plan_document(result)
            if as_json:
                print(json.dumps(doc, indent=2, default=_json_default, allow_nan=False))
            else:
                _print_plan(result, doc)
            for warning in result.warnings():
                err_console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
            err_console.print(f"results written to {target}/", highlight=False)

        _guard(debug, action)


def _capped(candidate) -> str:
    """'+' when the search hit rate_search.high while still meeting the SLO (the true maximum is higher)."""
    return "+" if candidate.search is not None and candidate.search.capped else ""


def _overload_note(summary: dict[str, Any]) -> str:
    """Why a simulated candidate that may meet the latency targets still does not sustain the target rate."""
    if not summary.get("overloaded"):
        return ""
    return (f"overloaded at the target: served {_fmt(summary.get('served_rps'))} of "
            f"{_fmt(summary.get('offered_rps'))} req/s offered, queue growing")


def _print_plan(result, doc: dict[str, Any]) -> None:
    from simulator.planner.intervals import headroom_text

    plan = result.plan
    metric = plan.pareto_metric
    n = len(result.candidates)
    out_console.print(
        f"[bold]{plan.name}[/]: {n} candidates, {result.pruned} pruned analytically "
        f"({result.pruned / max(n, 1):.0%}), {doc['meeting_target']} meet {plan.target_rps:g} req/s; "
        f"{result.sims} simulations + {result.analytic_probes} analytic probes, {result.wall_s:.1f} s",
        highlight=False,
    )
    best = result.cheapest
    obj = result.objective
    per_hour = "TCO $/h" if obj == "tco" else "$/h"  # the cost the plan ranks by (plan objective)
    per_mtok = "TCO $/Mtok" if obj == "tco" else "$/Mtok"
    if best is None:
        out_console.print(f"[red]No candidate sustains {plan.target_rps:g} req/s within the SLO.[/] "
                          "Widen the search space (more replicas, faster devices) or relax the SLO.")
    else:
        capped = _capped(best)
        out_console.print(
            f"[green]Cheapest:[/] {best.name} -- {best.gpus} GPU(s), ${result.cost(best):.2f}/h"
            f"{' TCO' if obj == 'tco' else ''}, "
            f"${_fmt(best.cost_per_mtok(obj))}/M output tokens at the target; "
            f"max rate {_fmt(best.max_rate)}{capped} req/s (headroom {_fmt(result.headroom(best))}{capped}x"
            f"{headroom_text(best)})",
            highlight=False,
        )
        if best.interval.get("crosses_target"):
            out_console.print(
                f"[yellow]Caution:[/] the {best.interval['level']:.0%} prediction interval of its max rate "
                f"({_fmt(best.interval['max_rate_rps'][0])}-{_fmt(best.interval['max_rate_rps'][1])} req/s) contains "
                "the target: within the calibration's error it may miss the SLO there.",
                highlight=False,
            )
    front = Table(title=f"Pareto front: cost vs {metric} at {plan.target_rps:g} req/s", header_style="bold")
    for col in ("configuration", "GPUs", per_hour, per_mtok, metric, "max req/s", "headroom"):
        front.add_column(col, justify="left" if col == "configuration" else "right")
    for c in result.pareto:
        plus = _capped(c)
        front.add_row(c.name, str(c.gpus), f"{result.cost(c):.2f}",
                      _fmt(c.cost_per_mtok(obj)), _fmt(c.at_target.get(metric)),
                      _fmt(c.max_rate) + plus, _fmt(result.headroom(c)) + plus + headroom_text(c))
    out_console.print(front)
    table = Table(title="all candidates (cheapest first)", header_style="bold")
    for col in ("configuration", "status", per_hour, "max req/s", "headroom", "sims", "why"):
        table.add_column(col, justify="left" if col in ("configuration", "status", "why") else "right")
    ordered = sorted(result.candidates, key=lambda c: (c.pruned, result.cost(c)
                                                       if math.isfinite(result.cost(c)) else math.inf, c.name))
    for c in ordered:
        status = ("[green]meets target[/]" if c.meets_target else "[red]below target[/]") if c.search else c.status
        why = c.detail if c.pruned else _overload_note(c.at_target)
        if c.interval.get("crosses_target"):
            why = "; ".join(x for x in (why, "interval of max rate crosses the target") if x)
        elif c.interval.get("error"):
            why = "; ".join(x for x in (why, "no prediction interval: " + c.interval["error"]) if x)
        plus = _capped(c)
        table.add_row(c.name, status, _fmt(result.cost(c)), _fmt(c.max_rate) + plus,
                      _fmt(result.headroom(c)) + plus + headroom_text(c), str(c.sims), why)
    out_console.print(table)
    if any(c.interval.get("headroom") for c in result.candidates):
        out_console.print(escape(
            f"[lo, hi] after a headroom: its {plan.simulation.intervals.level:.0%} prediction interval (max rate "
            "searched again with every iteration at the slow and the fast end of the interval)"), highlight=False)
