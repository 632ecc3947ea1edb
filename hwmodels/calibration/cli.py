"""``capsim calibrate ...``: measure, import, fit, validate, and list overhead sets.

Wired into the main CLI by ``simulator/cli.py`` (``register(app)``). Results
on stdout, progress and notes on stderr; bad input ends with the CapsimError
paragraph and exit status 2, like every capsim command.

    capsim calibrate measure --device cpu --quick --out results/calibration/cpu.csv
    capsim calibrate import --data-dir DIR --out results/calibration/imported.csv   # raw tables -> one CSV
    capsim calibrate fit --measurements results/calibration/cpu.csv
    capsim calibrate fit --device h100-sxm --install        # refit a shipped profile from the shipped table
    capsim calibrate validate --device h100-sxm --json
"""


import json
from pathlib import Path
from typing import Annotated

import typer

DEFAULT_DIR = Path("results") / "calibration"

DataDirOpt = Annotated[
    str | None,
    typer.Option("--data-dir", help="Folder of the raw published tables (aiconfigurator/, vidur/) to import; default: "
                 "$CAPSIM_SHARED_DATA, else the tidy table shipped in hwmodels/calibration/data/."),
]
MeasOpt = Annotated[
    list[Path] | None,
    typer.Option("--measurements", "-m", help="Measurement CSV(s) in the calibration schema; default: the "
                 "published measurements (shipped, or imported from --data-dir)."),
]
DeviceOpt = Annotated[
    list[str] | None,
    typer.Option("--device", "-d", help="Only these devices (repeatable); default: every device in the data."),
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show the Python traceback on errors.")]


def _load_reporting_gaps(measurements: list[Path] | None, data_dir: str | None, devices: list[str] | None):
    """:func:`_load`, printing to stderr which sources were skipped or missing (row counts are for
    `capsim calibrate import`)."""
    from simulator.cli_common import err_console

    df, notes = _load(measurements, data_dir, devices)
    for note in notes:
        if "skipped" in note or "not found" in note:
            err_console.print(note, highlight=False)
    return df


def _load(measurements: list[Path] | None, data_dir: str | None, devices: list[str] | None):
    """Measurements from CSVs, else imported from the shared data folder; filtered to ``devices``."""
    import pandas as pd

    from capsim.errors import CapsimError
    from hwmodels.calibration.importers import load_measurements
    from hwmodels.calibration.schema import read_measurements

    notes: list[str] = []
    if measurements:
        df = pd.concat([read_measurements(p) for p in measurements], ignore_index=True)
    else:
        df, notes = load_measurements(data_dir)
    if devices:
        from capsim.registry import normalise_name

        wanted = {normalise_name(d) for d in devices}
        known = sorted(df["device"].unique())
        df = df[df["device"].map(normalise_name).isin(wanted)]
        if df.empty:
            raise CapsimError(f"no measurements for {', '.join(devices)}", where="--device",
                              fix=f"devices in the data: {', '.join(known)}")
    return df, notes


def _ticker(bar, phase: str):
    """A ``progress(done, total, what)`` callback that shows ``phase: what done/total`` on ``bar``
    (a :class:`simulator.progress.Progress`: a bar on a terminal, a line every few seconds in logs)."""

    def tick(done: int, total: int, what: str) -> None:
        bar.update(description=f"{phase}: {what}", completed=done, total=total)

    return tick


def register(app: typer.Typer) -> None:
    """Add the ``calibrate`` command group to ``app``."""
    from simulator.cli_common import _guard, err_console, out_console
    from simulator.progress import Progress

    cal = typer.Typer(help="Fit the hardware models to measured kernels and report their accuracy.",
                      no_args_is_help=True)
    app.add_typer(cal, name="calibrate")

    @cal.command("measure")
    def measure_cmd(
        device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
        quick: Annotated[bool, typer.Option("--quick", help="Tiny sweep (< 1 minute on a laptop CPU).")] = False,
        backend: Annotated[str, typer.Option(help="auto (torch when installed, else numpy), numpy (CPU only) or "
                                             "torch (pip install 'capsim\\[torch]'; a CUDA build for --device "  # markup escape for "["
                                             "cuda).")] = "auto",
        label: Annotated[str | None, typer.Option(help="Device id to record (e.g. h100-sxm); default: "
                                                  "'cpu' or 'cuda:<GPU name>'.")] = None,
        out: Annotated[Path | None, typer.Option("--out", "-o", help="CSV to write.")] = None,
        debug: DebugOpt = False,
    ) -> None:
        """Time the kernels of transformer layers on this machine; write the schema CSV."""

        def action() -> None:
            from hwmodels.calibration.measure import run_sweep
            from hwmodels.calibration.schema import write_measurements

            with Progress(f"measuring kernels on {device}", 0, console=err_console) as bar:
                df = run_sweep(device, quick=quick, backend=backend, label=label,
                               progress=lambda i, n: bar.update(completed=i, total=n))
            skipped = df.attrs.get("skipped", [])
            if skipped:
                err_console.print(f"skipped {len(skipped)} cases too large for this machine's memory, e.g. "
                                  f"{skipped[-1]}", highlight=False)
            path = write_measurements(df, out or DEFAULT_DIR / f"measured-{device}.csv")
            out_console.print(f"{len(df)} measurements of {df['device'].iat[0]} written to {path}", highlight=False)

        _guard(debug, action)

    @cal.command("import")
    def import_cmd(
        data_dir: DataDirOpt = None,
        out: Annotated[Path | None, typer.Option("--out", "-o", help="CSV to write.")] = None,
        debug: DebugOpt = False,
    ) -> None:
        """Convert the published GPU tables (aiconfigurator, vidur) into one schema CSV."""

        def action() -> None:
            from hwmodels.calibration.importers import import_all
            from hwmodels.calibration.schema import write_measurements

            df, notes = import_all(data_dir)
            for note in notes:
                err_console.print(note, highlight=False)
            path = write_measurements(df, out or DEFAULT_DIR / "imported.csv")
            out_console.print(f"{len(df):,} measurements written to {path}", highlight=False)

        _guard(debug, action)

    @cal.command("fit")
    def fit_cmd(
        measurements: MeasOpt = None,
        data_dir: DataDirOpt = None,
        device: DeviceOpt = None,
        out_dir: Annotated[Path, typer.Option("--out-dir", help="Folder for the profile YAMLs.")] = DEFAULT_DIR,
        install: Annotated[bool, typer.Option("--install", help="Write into the shipped profiles "
                                              "(hwmodels/calibration/profiles/) instead of --out-dir.")] = False,
        heldout: Annotated[bool, typer.Option("--heldout/--no-heldout", help="Also cross-validate and record "
                                              "held-out errors in the profile (slower).")] = True,
        debug: DebugOpt = False,
    ) -> None:
        """Fit efficiency curves per device and write calibrated profile YAMLs."""

        def action() -> None:
            from hwmodels.calibration.fit import build_profile, write_profile
            from hwmodels.calibration.folds import SPLIT_SUMMARY
            from hwmodels.calibration.importers import resolve_data_dir
            from hwmodels.calibration.overheads import fit_overheads, write_overheads
            from hwmodels.calibration.validate import cross_validate
            from hwmodels.device import DEVICES

            df = _load_reporting_gaps(measurements, data_dir, device)
            shipped = Path(__file__).parent / "profiles"
            for dev in sorted(df["device"].unique()):
                rows = df[df["device"] == dev]
                if (rows["op_class"] == "cpu_overhead").all():
                    continue
                err_console.print(f"fitting {dev} ({len(rows):,} rows)...", highlight=False)
                with Progress(dev, 0, console=err_console) as bar:
                    held = None
                    if heldout:
                        held = cross_validate(rows, cross_source=False, progress=_ticker(bar, f"{dev} held-out folds"))
                        held = held.per_dataset
                    doc = build_profile(df, dev, heldout=held, split_note=SPLIT_SUMMARY,
                                        progress=_ticker(bar, f"{dev} fit"))
                # Only catalog devices are installed: a shipped profile is found by the device's catalog id.
                target = shipped if install and dev in DEVICES else out_dir
                path = write_profile(doc, target / f"{dev.replace(':', '_').replace(' ', '_')}.yaml")
                out_console.print(f"{dev}: {len(doc['operators'])} operator curves, "
                                  f"{sum(len(v) for v in doc['collectives'].values())} collective fits -> {path}",
                                  highlight=False)
            if (df["op_class"] == "cpu_overhead").any():
                doc = fit_overheads(df, resolve_data_dir(data_dir))
                path = write_overheads(doc, (shipped if install else out_dir) / "overheads.yaml")
                out_console.print(f"overhead sets {', '.join(doc['sets'])} -> {path}", highlight=False)

        _guard(debug, action)

    @cal.command("validate")
    def validate_cmd(
        measurements: MeasOpt = None,
        data_dir: DataDirOpt = None,
        device: DeviceOpt = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the error table as JSON.")] = False,
        plots: Annotated[Path | None, typer.Option("--plots", help="Folder for the log-log scatter PNGs "
                                                   "(default results/calibration/plots).")] = None,
        no_plots: Annotated[bool, typer.Option("--no-plots", help="Do not write plots.")] = False,
        min_us: Annotated[float, typer.Option("--min-us", help="Error statistics over kernels measured at or "
                                              "above this many microseconds.")] = 20.0,
        refit: Annotated[bool, typer.Option("--refit", help="Refit every curve on each fold and predict the "
                                            "other (minutes on a 2-core machine); default: the held-out errors "
                                            "the shipped profiles recorded when they were fitted.")] = False,
        debug: DebugOpt = False,
    ) -> None:
        """Held-out error per device and operator class, calibrated vs datasheet-only."""

        def action() -> None:
            from capsim.errors import CapsimError
            from hwmodels.calibration.validate import cross_validate, format_table, plot_scatter, stored_table

            if not refit and not measurements and data_dir is None:
                table = stored_table(device)
                if not table:
                    raise CapsimError(f"no shipped profile for {', '.join(device or [])}", where="--device",
                                      fix="name a device with a shipped profile (a100-80gb-sxm, h100-sxm, h200), "
                                      "or pass --measurements/--data-dir with --refit")
                err_console.print("held-out errors recorded in the shipped profiles (2-fold split, kernels >= 20 us); "
                                  "--refit recomputes them", highlight=False)
                print(json.dumps(table, indent=2) if as_json else format_table(table))
                return
            df = _load_reporting_gaps(measurements, data_dir, device)
            with Progress("held-out validation", 0, console=err_console) as bar:
                v = cross_validate(df, min_time_s=min_us * 1e-6, progress=_ticker(bar, "held-out validation"))
            for note in v.notes:
                err_console.print(note, highlight=False)
            if not no_plots:
                for path in plot_scatter(v.rows, plots or DEFAULT_DIR / "plots"):
                    err_console.print(f"plot written to {path}", highlight=False)
            if as_json:
                print(json.dumps(v.to_json(), indent=2))
            else:
                print(format_table(v.table))

        _guard(debug, action)

    @cal.command("engines")
    def engines_cmd(
        tp: Annotated[int, typer.Option(help="TP degree to resolve each profile's terms at.")] = 1,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
        debug: DebugOpt = False,
    ) -> None:
        """List the serving-engine profiles (deployment.engine): terms at --tp, what they were fitted on, held-out error."""

        def action() -> None:
            from rich.table import Table

            from hwmodels.calibration.engines import DEFAULT_ENGINE, describe, engine_names, engine_terms

            rows = []
            for name in engine_names():
                entry, terms = describe(name), engine_terms(name, tp, where="--tp")
                rows.append({"name": name, "terms": terms, "inherits": entry.get("inherits"),
                             "fitted_on": entry.get("fitted_on", entry.get("source", "")),
                             "held_out_error": entry.get("held_out_error"), "default": name == DEFAULT_ENGINE})
            if as_json:
                print(json.dumps(rows, indent=2, default=str))
                return
            t = Table(title=f"engine profiles (deployment.engine) at tp={tp}",
                      caption="* the default where deployment.engine is unset, unless the device's catalog entry "
                      "names its own (serving_engine; none for NPUs, CPUs and the SN40L)")
            for col in ("name", "per step", "per seq", "per token", "per layer", "per coll.", "gqa re-read",
                        "inherits"):
                t.add_column(col)
            for r in rows:
                x = r["terms"]
                t.add_row(x["name"] + (" *" if r["default"] else ""), f"{x['per_step_s'] * 1e3:.3f} ms", f"{x['per_sequence_s'] * 1e6:.1f} us",
                          f"{x['per_token_s'] * 1e6:.2f} us", f"{x['per_layer_s'] * 1e6:.1f} us",
                          f"{x['per_collective_s'] * 1e6:.1f} us", f"{x['gqa_reread']:.3g}", str(r["inherits"] or "-"))
            out_console.print(t)

        _guard(debug, action)

    @cal.command("overheads")
    def overheads_cmd(debug: DebugOpt = False) -> None:
        """List the serving-engine overhead sets (deployment.overheads) and their terms."""

        def action() -> None:
            from rich.table import Table

            from hwmodels.calibration.overheads import overhead_sets

            t = Table(title="overhead sets (deployment.overheads)")
            for col in ("name", "tp", "per iteration", "per sequence", "per layer", "what"):
                t.add_column(col)
            for name, entry in overhead_sets().items():
                for tp, terms in sorted((entry.get("by_tp") or {}).items()):
                    t.add_row(name, str(tp), f"{terms['per_iteration_s'] * 1e3:.3f} ms",
                              f"{terms['per_sequence_s'] * 1e6:.1f} us", f"{terms['per_layer_s'] * 1e6:.1f} us",
                              entry.get("description", "")[:70])
            out_console.print(t)

        _guard(debug, action)
