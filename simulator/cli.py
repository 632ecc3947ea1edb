"""The ``capsim`` command line.

Results go to stdout, diagnostics to stderr. Bad input ends with a one-
paragraph message naming the field and the fix, and exit status 2; ``--debug``
shows the traceback as well.
"""


import difflib
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from capsim import __version__
from capsim.errors import CapsimError, UnknownNameError
from simulator.cli_common import DebugOpt, SetOpt, _guard, _json_default, err_console, out_console
from simulator.progress import Progress

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="capsim: simulate LLM serving and plan capacity.",
    pretty_exceptions_enable=False,
)


def _load_any(path: Path, overrides: list[str]) -> tuple[str, list]:
    """The configurations of a scenario, sweep (``zip:``) or plan (``search:``/``target_rps``) file."""
    from simulator.config.loader import load_scenarios, read_yaml

    data = read_yaml(path)
    if "search" in data or "target_rps" in data:
        from simulator.planner.plan import load_plan

        return "plan", load_plan(path, overrides)[1]
    if "zip" in data:
        from simulator.sweep.grid import load_sweep

        return "sweep", load_sweep(path, overrides)
    return "scenario", load_scenarios(path, overrides)


def _refuse_other_kinds(path: Path) -> None:
    """``capsim run`` simulates scenario files; point sweep and plan files at their commands."""
    from simulator.config.loader import read_yaml

    data = read_yaml(path)
    if "search" in data or "target_rps" in data:
        raise CapsimError("this is a capacity-plan file (it has search:/target_rps)", where=str(path),
                          fix=f"run it with `capsim plan {path}`")
    if "zip" in data:
        raise CapsimError("this is a sweep file (it has zip:)", where=str(path),
                          fix=f"run it with `capsim sweep {path}`")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", name).strip("_") or "run"


def _run_folders(names: list[str], out: Path) -> list[Path]:
    """The ``--out`` sub-folder of each configuration; refuses two names that would share one.

    Why: a folder name keeps only letters, digits and ``._=-``, so ``a/b`` and ``a_b`` (or ``Fast`` and ``fast`` on a
    case-insensitive disk) map to one folder, and the later run would overwrite the earlier one's results.
    """
    owner: dict[str, str] = {}
    for name in names:
        key = _slug(name).casefold()
        if key in owner:
            raise CapsimError(
                f"configurations {owner[key]!r} and {name!r} would both write their results to {out / _slug(name)}",
                where="runs/grid names",
                fix="rename one of them so the names differ in letters or digits, not only in punctuation, spaces "
                "or case",
            )
        owner[key] = name
    return [out / _slug(name) for name in names]


def _run_one(scenario) -> tuple[dict[str, Any], Any]:
    from simulator.engine import simulate
    from simulator.metrics.summary import summarise

    output = simulate(scenario)
    summary = summarise(output.result, scenario.slo)
    summary = {"name": scenario.name, **summary, "rejected": output.rejected, "workload": output.workload}
    if scenario.simulation.intervals is not None:
        from simulator.intervals.rerun import simulate_intervals

        summary["intervals"] = simulate_intervals(scenario, summary)
    return summary, output


IntervalsOpt = Annotated[
    bool,
    typer.Option("--intervals", help="Prediction intervals from the stored held-out residuals (sets "
                 "simulation.intervals to level 0.9, 20 re-runs where the scenario does not set it; "
                 "docs/engine-profiles.md)."),
]


@app.command()
def run(
    scenario_file: Annotated[Path, typer.Argument(help="Scenario YAML file.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Directory for CSVs, summary.json and plots.")] = None,
    set_: SetOpt = None,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write PNG plots.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summaries as JSON instead of tables.")] = False,
    intervals: IntervalsOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Simulate a scenario (or every configuration it lists) and print the results."""

    def action() -> None:
        from simulator.config.loader import load_scenarios
        from simulator.metrics.table import comparison_table, summary_table
        from simulator.metrics.writers import write_atomically, write_outputs

        _refuse_other_kinds(scenario_file)
        scenarios = load_scenarios(scenario_file, set_ or [])
        if intervals:
            from simulator.intervals.rerun import with_intervals

            scenarios = [with_intervals(sc) for sc in scenarios]
        folders = _run_folders([sc.name for sc in scenarios], out) if out is not None and len(scenarios) > 1 else None
        if out is not None:
            _clear_earlier_run(out, folders)
        summaries: list[dict[str, Any]] = []
        with Progress("simulating", len(scenarios), console=err_console) as progress:
            for i, sc in enumerate(scenarios):
                progress.update(description=f"simulating {sc.name}")
                summary, output = _run_one(sc)
                summaries.append(summary)
                if out is not None:
                    target = folders[i] if folders else out
                    write_outputs(output.result, summary, target, plots=plots)
                progress.advance()
        if out is not None and len(scenarios) > 1:
            import pandas as pd

            out.mkdir(parents=True, exist_ok=True)
            from simulator.intervals.rerun import flat_intervals

            frame = pd.DataFrame([flat_intervals(s) for s in summaries])
            write_atomically(out / "comparison.csv", lambda tmp: frame.to_csv(tmp, index=False))
        for summary in summaries:
            _warn_if_nothing_measured(summary)
            _warn_if_cut(summary)
            _note_interval_coverage(summary)
        if as_json:
            from simulator.metrics.writers import to_json_value

            doc = to_json_value(summaries[0] if len(summaries) == 1 else summaries)
            # Strict JSON (NaN -> null) so that jq and other readers accept it.
            print(json.dumps(doc, indent=2, default=_json_default, allow_nan=False))
        elif len(summaries) == 1:
            out_console.print(summary_table(summaries[0], title=f"{scenarios[0].name}: {_headline(scenarios[0])}"))
        else:
            out_console.print(comparison_table(summaries, title=str(scenario_file)))
        if out is not None:
            err_console.print(f"results written to {out}/")

    _guard(debug, action)


def _clear_earlier_run(out: Path, folders: list[Path] | None) -> None:
    """Remove result files of an earlier run in ``out`` that this run will not replace; name earlier folders.

    A single run writes its files at the top of ``out``; several configurations write one folder each plus
    ``comparison.csv``. Rerunning the other way round, or with other names, would leave the earlier run's files
    beside the new ones as if they belonged together. Files capsim names are removed; folders are never deleted
    (they may hold other things), only named, so nobody reads them as part of this run.
    """
    from simulator.metrics.writers import OUTPUT_FILES

    if not out.is_dir():
        return
    for name in ("comparison.csv",) if folders is None else OUTPUT_FILES:
        (out / name).unlink(missing_ok=True)
    keep = set(folders or ())
    earlier = sorted(f"{p.name}/" for p in out.iterdir() if p.is_dir() and p not in keep and (p / "summary.json").is_file())
    if earlier:
        err_console.print(
            f"[yellow]warning:[/] {escape(str(out))} holds results of an earlier run in {escape(', '.join(earlier))}; "
            "they are left as they are and are not part of this run. Fix: remove them, or use a fresh --out directory",
            highlight=False,
            soft_wrap=True,
        )


def _warn_if_nothing_measured(summary: dict[str, Any]) -> None:
    """Say why every statistic is empty when all requests fell inside the warm-up window."""
    if summary.get("num_requests") == 0 and summary.get("warmup_requests", 0) > 0:
        err_console.print(
            f"[yellow]warning:[/] {summary.get('name', 'run')}: all {summary['warmup_requests']} requests arrived "
            "during simulation.warmup_s, so no statistics were measured. Fix: lower simulation.warmup_s or raise "
            "simulation.num_requests",
            highlight=False,
            soft_wrap=True,
        )


def _warn_if_cut(summary: dict[str, Any]) -> None:
    """Say how many requests simulation.max_time_s cut off before they arrived (they are not in the statistics)."""
    cut = summary.get("not_arrived", 0)
    if cut:
        err_console.print(
            f"[yellow]warning:[/] {escape(str(summary.get('name', 'run')))}: simulation.max_time_s stopped the run before "
            f"{cut} of the workload's requests arrived; they are left out of every statistic "
            f"(sim_time_s {summary.get('sim_time_s', 0):g}). Fix: raise simulation.max_time_s, or lower "
            "simulation.num_requests / duration_s to match it",
            highlight=False,
            soft_wrap=True,
        )


def _note_interval_coverage(summary: dict[str, Any]) -> None:
    """Say on stderr what a prediction interval leaves out (an engine profile without held-out rows)."""
    note = (summary.get("intervals") or {}).get("not_covered")
    if note:
        err_console.print(f"[yellow]note:[/] {escape(str(summary.get('name', 'run')))}: {escape(note)}")


def _headline(sc) -> str:
    model = sc.model if isinstance(sc.model, str) else sc.model.get("name", "inline model")
    dev = sc.deployment.device if isinstance(sc.deployment.device, str) else sc.deployment.device.get("name", "inline")
    d = sc.deployment
    return f"{model} on {d.num_replicas}x{dev} (tp={d.tp}, pp={d.pp}), scheduler {sc.scheduler.name}"


@app.command()
def validate(
    scenario_file: Annotated[Path, typer.Argument(help="Scenario YAML file.")],
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Check a scenario, sweep or plan file: schema, names, memory fit, and that its workload loads and can be served."""

    def action() -> None:
        from capsim.errors import DoesNotFitError
        from simulator.memory_plan import GIB
        from simulator.prepare import prepare  # not simulator.engine: validating runs nothing (no SimPy import)

        kind, scenarios = _load_any(scenario_file, set_ or [])
        for sc in scenarios:
            if sc.pools is not None:
                if sc.simulation.intervals is not None:
                    from simulator.intervals.rerun import check_supported

                    check_supported(sc, None)
                _validate_pools(sc)
                continue
            try:
                prep = prepare(sc)
            except DoesNotFitError as exc:
                if kind != "plan":
                    raise
                out_console.print(f"[yellow]pruned[/] {sc.name}: {exc.problem} (the plan rules it out)", highlight=False)
                continue
            system, m = prep.system, prep.system.memory
            if sc.simulation.intervals is not None:  # the residuals exist and the re-runs can scale this system
                from simulator.intervals.rerun import check_supported
                from simulator.intervals.residuals import residuals_for

                check_supported(sc, system)
                residuals_for(system)
            dropped = int(prep.unservable.sum())
            out_console.print(
                f"[green]ok[/] {sc.name}: {system.model.name} on {sc.deployment.num_replicas}x{system.device.name} "
                f"tp={sc.deployment.tp} pp={sc.deployment.pp}, engine {system.engine_name}; "
                f"weights {m.weights_bytes / GIB:.1f} GiB/GPU"
                + (f" (+{m.offloaded_weight_bytes / GIB:.1f} GiB offloaded)" if m.offloaded_weight_bytes else "")
                + f", KV capacity {m.kv_capacity_tokens:,} tokens/replica; workload {len(prep.stream):,} requests "
                f"({prep.stream.source})" + (f", {dropped:,} unservable will be dropped" if dropped else ""),
                highlight=False,
            )

    _guard(debug, action)


def _validate_pools(sc) -> None:
    """``capsim validate`` of a multi-pool scenario: one line per pool."""
    from simulator.memory_plan import GIB
    from simulator.pools.engine import prepare_pools

    prep = prepare_pools(sc)
    dropped = int(prep.unservable.sum())
    out_console.print(
        f"[green]ok[/] {sc.name}: {sc.serving.name} serving of {prep.pools.pools[0].system.model.name}, "
        f"{prep.pools.num_gpus} GPUs, ${prep.pools.cost_per_hour_usd:.2f}/h; workload {len(prep.stream):,} requests "
        f"({prep.stream.source})" + (f", {dropped:,} unservable will be dropped" if dropped else ""),
        highlight=False,
    )
    for p in prep.pools.pools:
        dep, m = p.system.deployment, p.system.memory
        out_console.print(
            f"   pool {p.name} ({p.role}): {dep.num_replicas}x{p.system.device.name} tp={dep.tp} pp={dep.pp}, "
            f"{p.system.scheduler_cls.__name__}, engine {p.system.engine_name}; weights {m.weights_bytes / GIB:.1f} GiB/GPU, "
            f"KV capacity {m.kv_capacity_tokens:,} tokens/replica",
            highlight=False,
        )


LIST_KINDS = ("models", "devices", "schedulers", "routers", "traces", "arrivals", "lengths", "techniques", "systems",
              "links")


@app.command("list")
def list_(
    kind: Annotated[str, typer.Argument(help=f"One of: {', '.join(LIST_KINDS)}.")],
    debug: DebugOpt = False,
) -> None:
    """List catalog entries and registered plug-ins."""

    def action() -> None:
        from capsim.registry import Registry

        kinds = Registry[Callable[[], Table]]("list kind")
        kinds.add("models", _models_table)
        kinds.add("devices", _devices_table)
        kinds.add("schedulers", _schedulers_table)
        kinds.add("routers", _routers_table)
        kinds.add("traces", _traces_table)
        kinds.add("arrivals", lambda: _registry_table("arrival processes", "traces.arrivals", "ARRIVALS"))
        kinds.add("lengths", lambda: _registry_table("length distributions", "traces.lengths", "LENGTHS"))
        kinds.add("systems", _systems_table)
        kinds.add("links", _links_table)
        kinds.add("techniques", lambda: __import__("simulator.cli_techniques", fromlist=["x"]).techniques_table())
        if kind not in kinds:
            close = difflib.get_close_matches(kind.lower(), LIST_KINDS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise UnknownNameError(
                f"unknown list kind {kind!r}", where="capsim list", fix=f"{hint}use one of {', '.join(LIST_KINDS)}"
            )
        table = kinds.get(kind)()
        if table.columns:
            # Never truncate the ids: they are what the user copies into a scenario (also when piped).
            first = table.columns[0]
            first.no_wrap = True
            first.min_width = max((len(str(c)) for c in first.cells), default=0)
        out_console.print(table)

    _guard(debug, action)


def _models_table() -> Table:
    from simulator.models import MODELS

    t = Table(title="models")
    for col in ("id", "params", "layers", "hidden", "heads/kv", "experts", "context", "aliases"):
        t.add_column(col)
    for name in MODELS.names():
        m = MODELS.get(name)
        t.add_row(
            name, f"{m.total_params() / 1e9:.1f}B", str(m.num_layers), str(m.hidden_size),
            f"{m.num_heads}/{m.num_kv_heads}", f"{m.experts_per_token}/{m.num_experts}" if m.is_moe else "-",
            str(m.max_context), ", ".join(MODELS.aliases_of(name)[:3]),
        )
    return t


def _devices_table() -> Table:
    from hwmodels.device import DEVICES

    t = Table(title="devices")
    for col in ("id", "bf16 TFLOP/s", "fp8", "memory GiB", "GB/s", "NVLink GB/s", "TDP W", "$/h", "aliases"):
        t.add_column(col)
    for name in DEVICES.names():
        d = DEVICES.get(name)
        t.add_row(
            name, f"{d.peak_tflops.get('bf16', 0):g}", f"{d.peak_tflops.get('fp8', 0):g}" if "fp8" in d.peak_tflops else "-",
            f"{d.memory_gib:g}", f"{d.memory_bandwidth_gbs:g}", f"{d.interconnect.nvlink_gbs:g}", f"{d.tdp_w:g}",
            f"{d.price_usd_per_hour:.2f}", ", ".join(DEVICES.aliases_of(name)[:3]),
        )
    return t


def _first_line(obj: Any) -> str:
    doc = (obj.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


def _schedulers_table() -> Table:
    from simulator.schedulers import SCHEDULERS

    t = Table(title="schedulers")
    for col in ("id", "what", "parameters (defaults)", "aliases"):
        t.add_column(col)
    for name in SCHEDULERS.names():
        cls = SCHEDULERS.get(name)
        params = ", ".join(f"{k}={f.default}" for k, f in cls.Params.model_fields.items())
        t.add_row(name, _first_line(cls), params, ", ".join(SCHEDULERS.aliases_of(name)))
    return t


def _routers_table() -> Table:
    from simulator.routers import ROUTERS

    t = Table(title="routers")
    for col in ("id", "what", "aliases"):
        t.add_column(col)
    for name in ROUTERS.names():
        t.add_row(name, _first_line(ROUTERS.get(name)), ", ".join(ROUTERS.aliases_of(name)))
    return t


def _systems_table() -> Table:
    from simulator.pools.build import SERVING_SYSTEMS  # (imports every system module)

    t = Table(title="serving systems (serving.name, with pools:)")
    for col in ("id", "roles", "what", "parameters", "source"):
        t.add_column(col)
    for name in SERVING_SYSTEMS.names():
        cls = SERVING_SYSTEMS.get(name)
        t.add_row(name, ", ".join(cls.roles), cls.summary, ", ".join(cls.Params.model_fields), "; ".join(cls.sources))
    return t


def _links_table() -> Table:
    from hwmodels.network import LINKS

    t = Table(title="links between pools (serving.link.kind)")
    for col in ("id", "lane", "latency", "lanes", "source"):
        t.add_column(col)
    for name in LINKS.names():
        spec = LINKS.get(name)
        lane = f"device {spec.from_device}" if spec.from_device else f"{spec.bandwidth_gbps:g} Gb/s"
        lat = "device" if spec.from_device else f"{spec.latency_us:g} us"
        t.add_row(name, lane, lat, f"one per {spec.per}", spec.source)
    return t


def _traces_table() -> Table:
    from traces.catalog import list_traces

    t = Table(title="shipped traces (any other file: workload.trace.path)")
    for col in ("id", "rows", "arrivals", "licence", "what"):
        t.add_column(col)
    for tr in list_traces():
        t.add_row(tr.id, f"{tr.rows:,}", "yes" if tr.has_arrivals else "lengths only", tr.licence,
                  tr.description.split(";")[0])
    return t


def _registry_table(title: str, module: str, attr: str) -> Table:
    import importlib

    reg = getattr(importlib.import_module(module), attr)
    t = Table(title=title)
    t.add_column("id")
    t.add_column("what")
    for name in reg.names():
        t.add_row(name, _first_line(reg.get(name)))
    return t


@app.command()
def estimate(
    model: Annotated[
        str | None,
        typer.Option(help="Catalog model id, or a YAML file with an inline model (default: the --scenario's, "
                     "else llama-3.1-8b)."),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(help="Catalog device id, or a YAML file with an inline device (default: the --scenario's, "
                     "else h100-sxm)."),
    ] = None,
    scenario: Annotated[
        Path | None,
        typer.Option("--scenario", help="Take the model and deployment from this scenario file (its first "
                     "configuration); the other flags override its fields."),
    ] = None,
    tp: Annotated[int | None, typer.Option(help="Tensor-parallel degree (default 1).")] = None,
    pp: Annotated[int | None, typer.Option(help="Pipeline-parallel degree (default 1).")] = None,
    batch: Annotated[int, typer.Option(help="Requests decoded together.")] = 1,
    prompt: Annotated[int, typer.Option(help="Prompt tokens per request.")] = 1024,
    output: Annotated[int, typer.Option(help="Output tokens per request.")] = 256,
    context: Annotated[
        int | None,
        typer.Option(help="Also price one decode step of the batch with every sequence at this context (tokens)."),
    ] = None,
    weight_dtype: Annotated[str | None, typer.Option(help="Weight format (bf16, fp8, int8, int4; default bf16).")] = None,
    kv_dtype: Annotated[str | None, typer.Option(help="KV-cache format (default bf16).")] = None,
    activation_dtype: Annotated[str | None, typer.Option(help="Activation format (bf16 or fp16).")] = None,
    engine: Annotated[
        str | None,
        typer.Option(help="Serving-engine profile added to every iteration (`capsim calibrate engines`); "
                     "default: the scenario's, else the device's (vllm on GPUs; none prices the kernels alone)."),
    ] = None,
    overheads: Annotated[
        str | None,
        typer.Option(help="Older name of --engine: a Vidur overhead set (vidur-a100, ...)."),
    ] = None,
    calibration: Annotated[
        str | None,
        typer.Option(help="Kernel pricing: 'profile' (the device's calibrated profile, default) or 'datasheet'."),
    ] = None,
    memory_utilization: Annotated[
        float | None, typer.Option(help="Fraction of GPU memory the engine may use (vLLM --gpu-memory-utilization).")
    ] = None,
    activation_reserve_gib: Annotated[
        float | None, typer.Option(help="Activation memory reserved per GPU, GiB (default: from the batch).")
    ] = None,
    intervals: Annotated[
        bool,
        typer.Option("--intervals", help="90 % prediction intervals from the stored held-out residuals (exact: "
                     "one iteration per phase)."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (every breakdown term too).")] = False,
    debug: DebugOpt = False,
) -> None:
    """Steady-state roofline answer for one batch shape, without a trace."""

    def action() -> None:
        from pydantic import ValidationError

        from simulator.config.schema import DeploymentConfig, Scenario
        from simulator.estimate import estimate_fitting, roofline_rows
        from simulator.estimate_inputs import flag_for, resolve
        from simulator.system import build_system

        inputs = resolve(
            scenario_file=scenario, model=model, device=device, tp=tp, pp=pp, weight_dtype=weight_dtype,
            kv_dtype=kv_dtype, activation_dtype=activation_dtype, engine=engine, overheads=overheads,
            calibration=calibration, memory_utilization=memory_utilization,
            activation_reserve_gib=activation_reserve_gib,
        )
        try:
            deployment = DeploymentConfig(**inputs.deployment)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = "deployment." + ".".join(str(p) for p in err.get("loc", ()))
            raise CapsimError(
                f"{err.get('msg', 'invalid value')} (got {err.get('input')!r})",
                where=flag_for(field) or field,
                fix="see `capsim estimate --help` for the valid values",
            ) from None

        def system_for(b: int):
            scheduler = {"name": "vllm", "max_num_seqs": max(b, 1), "max_num_batched_tokens": max(b * prompt, 1)}
            return build_system(Scenario(model=inputs.model, deployment=deployment, scheduler=scheduler))

        try:
            result = estimate_fitting(system_for, batch=batch, prompt=prompt, output=output, context=context)
            block = None
            if intervals:
                from simulator.intervals.analytic import estimate_intervals

                block = estimate_intervals(system_for(batch), result)
        except CapsimError as exc:
            # Name the command-line flag the user typed rather than the scenario field behind it.
            flag = flag_for(exc.where)
            if flag is None:
                raise
            raise type(exc)(exc.problem, where=flag, fix=exc.fix) from None
        if as_json:
            doc = result.as_dict()
            if block is not None:
                doc["intervals"] = block
            print(json.dumps(doc, indent=2))
            return
        iv = (block or {}).get("metrics", {})

        def ms(key: str) -> str:
            text = _ms(getattr(result, key))
            return text if key not in iv else f"{text} [{iv[key][0] * 1e3:.2f}, {iv[key][1] * 1e3:.2f} ms]"

        e2e = f"{result.e2e_s:.3f} s" + (f" [{iv['e2e_s'][0]:.3f}, {iv['e2e_s'][1]:.3f} s]" if iv else "")
        tps = f"{result.output_tokens_per_s:,.0f}" + (
            f" [{iv['output_tokens_per_s'][0]:,.0f}, {iv['output_tokens_per_s'][1]:,.0f}]" if iv else "")
        t = Table(title=f"{result.model} on {result.device} tp={result.tp} pp={result.pp}: batch {batch}, "
                  f"prompt {prompt}, output {output}")
        t.add_column("quantity")
        t.add_column("value", justify="right")
        rows = [
            ("prefill of the batch", f"{ms('prefill_s')} ({result.prefill_bound}-bound)"),
            ("first decode step", ms("first_decode_step_s")),
            ("mean decode step (TPOT)", ms("tpot_s") + (f" ({result.decode_bound}-bound)" if result.decode_bound else "")),
            *([(f"decode step at context {result.context}", ms("decode_step_at_context_s"))]
              if result.context is not None else []),
            *([(f"engine {result.engine}: prefill / first step", f"{result.engine_prefill_s * 1e3:.2f} / "
                f"{_ms(result.engine_first_decode_step_s)}")] if result.engine != "none" else []),
            ("end-to-end", e2e),
            ("output tokens/s", tps),
            ("weights per GPU", f"{result.weights_gib:.2f} GiB"),
            ("KV of the batch per GPU", f"{result.kv_gib:.2f} GiB"),
            ("activation reserve per GPU", f"{result.activation_reserve_gib:.2f} GiB"),
            ("free per GPU", f"{result.free_gib:.2f} GiB"),
            ("decode MFU / MBU", f"{result.mfu_decode:.1%} / {result.mbu_decode:.1%}" if result.mfu_decode is not None else "-"),
            ("overall", f"{result.bound}-bound"),
            ("priced by the roofline", roofline_rows(result.pricing)),
        ]
        for k, v in rows:
            t.add_row(k, v)
        if block is not None:
            t.caption = escape(f"[lo, hi]: {block['level']:.0%} prediction interval, {block['source']}")
        out_console.print(t)
        if block is not None and block.get("not_covered"):
            err_console.print(f"[yellow]note:[/] {escape(block['not_covered'])}")

    _guard(debug, action)


def _ms(seconds: float | None) -> str:
    """Milliseconds, or a dash with the reason for a decode that does not exist (one output token)."""
    return f"{seconds * 1e3:.2f} ms" if seconds is not None else "- (one output token: no decode)"


@app.command()
def version() -> None:
    """Print the capsim version."""
    print(__version__)


# --- sub-command modules: each defines register(app) and is wired here with one line ---
# (begin sub-commands)
from app.cli import register as _register_app  # noqa: E402

_register_app(app)
from simulator.cli_plan import register as _register_plan  # noqa: E402

_register_plan(app)
from hwmodels.calibration.cli import register as _register_calibrate  # noqa: E402

_register_calibrate(app)
from simulator.cli_techniques import register as _register_techniques  # noqa: E402

_register_techniques(app)
# (end sub-commands)


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
