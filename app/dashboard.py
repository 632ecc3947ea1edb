"""capsim what-if dashboard: compare 1-4 serving configurations of one model under one workload.

Run with ``capsim app`` (or ``streamlit run app/dashboard.py``). The sidebar
holds the inputs; the main area the verdict, the summary table and the charts.
The page only composes the modules of :mod:`app`; see its docstring for who
does what.

Flow of one script run (Streamlit re-runs the page on every interaction):
read the widgets into a :class:`~app.setup.Setup`, validate it and write any
problem next to its field, offer it as YAML, and -- when "Run comparison" is
clicked -- simulate each configuration (cached by scenario hash) with a
progress bar. The last results stay on the page until the next run.

The main area has two tabs: *Compare configurations* (the above) and
*Results folder*, which reads the output folder of ``capsim plan``, ``capsim run`` or ``capsim sweep`` (see
:mod:`app.plan_view`); the sidebar belongs to the comparison.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

try:  # `streamlit run app/dashboard.py` puts app/ on sys.path, not the repository root
    import app  # noqa: F401
except ImportError:  # pragma: no cover -- only without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app import permalink  # noqa: E402
from app.checks import CheckResult, Issue, check_setup  # noqa: E402
from app.fields import describe_field  # noqa: E402
from app.inputs import configuration_inputs, model_input, simulation_input, slo_input, workload_input  # noqa: E402
from app.plan_view import render_plan_view  # noqa: E402
from app.results import progress_callback, render_results  # noqa: E402
from app.runner import job_for, run_jobs  # noqa: E402
from app.seeds import MAX_SEEDS, combine_outcomes, seed_scenarios  # noqa: E402
from app.setup import Setup, default_setup, is_scenario_file, setup_from_text, to_yaml  # noqa: E402
from app.tables import configuration_overview  # noqa: E402
from app.widgets import Form, clear_widget_state, render_issues  # noqa: E402
from capsim.errors import CapsimError  # noqa: E402
from simulator.config.schema import Scenario  # noqa: E402

SCENARIO_DIR = Path(__file__).resolve().parents[1] / "scenarios"
RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"  # where the plan tab looks for `capsim plan` output


def _state() -> tuple[Setup, int]:
    """The set-up the widgets start from (default, or the last loaded file) and the widget generation."""
    if "loaded" not in st.session_state:
        st.session_state["loaded"] = default_setup()
        st.session_state["generation"] = 0
    return st.session_state["loaded"], st.session_state["generation"]


def _load(text: str, source: str) -> None:
    """Replace the inputs with a scenario file's configurations (errors are shown by the caller)."""
    setup, warnings = setup_from_text(text, source)
    clear_widget_state()
    st.session_state["loaded"] = setup
    st.session_state["generation"] = st.session_state.get("generation", 0) + 1
    st.session_state["load_notes"] = [f"loaded {source}"] + [f"note: {w}" for w in warnings]


def file_section() -> object:
    """Load a scenario (example or upload); returns a placeholder for the download button."""
    ui = st.sidebar
    ui.header("Scenario file")
    examples = sorted(p.name for p in SCENARIO_DIR.glob("*.yaml") if is_scenario_file(p.read_text())) \
        if SCENARIO_DIR.is_dir() else []
    if examples:
        left, right = ui.columns([2, 1], vertical_alignment="bottom")
        pick = left.selectbox("example from scenarios/", examples, key="example-file")
        if right.button("Load", key="load-example"):
            try:
                _load((SCENARIO_DIR / pick).read_text(), f"scenarios/{pick}")
                st.rerun()
            except CapsimError as exc:
                ui.error(exc.render())
    upload = ui.file_uploader("or upload a scenario YAML", type=["yaml", "yml"], key="yaml-upload")
    if upload is not None:
        data = upload.getvalue()
        stamp = (upload.name, len(data), hash(data))
        if st.session_state.get("applied-upload") != stamp:
            try:
                _load(data.decode("utf-8", errors="replace"), upload.name)
                st.session_state["applied-upload"] = stamp
                st.rerun()
            except CapsimError as exc:
                ui.error(exc.render())
    for note in st.session_state.get("load_notes", []):
        ui.caption(note)
    return ui.container()


def inputs(loaded: Setup, form: Form) -> Setup:
    ui = st.sidebar
    ui.header("Model")
    model = model_input(form, ui, loaded.shared.get("model", "llama-3.1-8b"))
    ui.header("Workload")
    workload = workload_input(form, ui, loaded.shared.get("workload") or {})
    ui.header("SLO")
    slo = slo_input(form, ui, loaded.shared.get("slo") or {})
    ui.header("Simulation")
    name = ui.text_input("scenario name", value=str(loaded.shared.get("name", "what-if")), key=form.key("name"))
    seed = form.field(ui, describe_field("seed", Scenario.model_fields["seed"]), "seed", loaded.shared.get("seed", 0))
    simulation = simulation_input(form, ui, loaded.shared.get("simulation") or {})
    ui.header("Configurations")
    configurations = configuration_inputs(form, ui, loaded.configurations)
    ui.header("Uncertainty")  # last, so the control does not move the sections above it
    seeds_input(ui)
    shared = {"name": name.strip() or "what-if", "seed": seed, "model": model, "workload": workload, "slo": slo,
              "simulation": simulation}
    if loaded.shared.get("description"):
        shared["description"] = loaded.shared["description"]
    return Setup(shared, configurations)


#: Widget key of the seeds-per-configuration control (a page setting, not a scenario field: kept across loads).
SEEDS_KEY = "seeds-per-config"


def seeds_input(ui: object) -> int:
    """The sidebar's seeds-per-configuration control (its state comes from the URL or the last choice)."""
    st.session_state.setdefault(SEEDS_KEY, 1)
    return int(ui.number_input(  # type: ignore[attr-defined]
        "seeds per configuration", min_value=1, max_value=MAX_SEEDS, step=1, key=SEEDS_KEY,
        help="Simulate each configuration at seeds s, s+1, ..., s+k-1 (s = the seed under Simulation); the summary then shows "
             "the mean and the min–max across seeds, the CDFs a min–max band, and the verdict counts the seeds "
             "that meet the SLO. Each seed is a full simulation (cached).",
    ))


def restore_seeds_from_url() -> None:
    """Set the seeds control from the link's ``seeds`` parameter, once per distinct value."""
    value = st.query_params.get(permalink.SEEDS_PARAM)
    if value == st.session_state.get("url-seeds"):
        return
    st.session_state["url-seeds"] = value
    try:
        st.session_state[SEEDS_KEY] = permalink.decode_seeds(value, MAX_SEEDS)
    except CapsimError as exc:
        st.session_state.setdefault("load_notes", []).append(f"could not restore the seeds from the link: "
                                                             f"{exc.render()}")


def save_seeds_to_url(seeds: int) -> None:
    value = permalink.encode_seeds(seeds)
    st.session_state["url-seeds"] = value
    if value is None:
        if permalink.SEEDS_PARAM in st.query_params:
            del st.query_params[permalink.SEEDS_PARAM]
    elif st.query_params.get(permalink.SEEDS_PARAM) != value:
        st.query_params[permalink.SEEDS_PARAM] = value


def restore_from_url() -> None:
    """Load the set-up held in the page's URL (a reload or a shared link), once per distinct link."""
    value = st.query_params.get(permalink.PARAM)
    if not value or value == st.session_state.get("url-state"):
        return
    st.session_state["url-state"] = value
    try:
        _load(permalink.decode(value), "the page's link")
    except CapsimError as exc:
        st.session_state["load_notes"] = [f"could not restore the set-up from the link: {exc.render()}"]


def save_to_url(setup: Setup) -> None:
    """Keep the current set-up in the URL (reload restores it; the address bar is a shareable link)."""
    value = permalink.encode(to_yaml(setup))
    st.session_state["url-state"] = value
    if st.query_params.get(permalink.PARAM) != value:
        st.query_params[permalink.PARAM] = value


def main() -> None:
    st.set_page_config(page_title="capsim what-if", layout="wide")
    restore_from_url()
    restore_seeds_from_url()
    loaded, generation = _state()
    form = Form(generation)
    download_slot = file_section()
    setup = inputs(loaded, form)

    check = check_setup(setup)
    unplaced = render_issues(form, [*form.issues, *check.issues])
    ok = check.ok and not form.issues
    seeds = int(st.session_state.get(SEEDS_KEY, 1))
    save_seeds_to_url(seeds)
    if ok:
        save_to_url(setup)
    download_slot.download_button(
        "Download scenario YAML", to_yaml(setup), file_name=f"{setup.shared['name']}.yaml", mime="application/x-yaml",
        key="download-yaml", disabled=not ok, on_click="ignore",
        help="A file `capsim run` accepts unchanged." if ok else "Fix the problems marked in red first.",
    )

    st.title("capsim: what-if comparison")
    compare, plan = st.tabs(["Compare configurations", "Results folder (plan, run, sweep)"])
    with plan:  # drawn first: the comparison's run button then still marks the end of a page load
        render_plan_view(RESULTS_DIR)
    with compare:
        comparison(setup, check, ok, unplaced, seeds)


def comparison(setup: Setup, check: CheckResult, ok: bool, unplaced: list[Issue], seeds: int = 1) -> None:
    """The comparison tab: problems, the scenario YAML, the run button and the last results."""
    st.caption("Pick a model, a workload, SLOs and up to four configurations in the sidebar, then run the "
               "comparison. Every run is cached by its scenario hash.")
    for issue in unplaced:
        st.error(f"{issue.path}: {issue.message}")
    if not ok:
        st.warning("Fix the problems marked in red in the sidebar to run the comparison.")
    with st.expander("Scenario YAML"):
        st.code(to_yaml(setup), language="yaml")

    scenarios = [s for s in check.scenarios if s is not None]
    if scenarios:
        st.dataframe(configuration_overview(scenarios), hide_index=True, key="overview")
    # Each configuration's seeds are consecutive jobs (one seed: exactly today's jobs).
    jobs = [job_for(x) for s in scenarios for x in seed_scenarios(s, seeds)] if ok else []
    if st.button("Run comparison", type="primary", key="run", disabled=not ok):
        bar = st.progress(0.0, text="starting")
        run_jobs(jobs, progress_callback(bar))  # fills the cache; drawn below from it
        bar.empty()
        st.session_state["last_jobs"] = jobs
        st.session_state["last_scenarios"] = scenarios
        st.session_state["last_seeds"] = seeds
        st.session_state.pop("sweep", None)
    last = st.session_state.get("last_jobs")
    if not last:
        st.info("Click **Run comparison** to simulate the configurations.")
        return
    if [j.digest for j in last] != [j.digest for j in jobs]:
        st.info("The inputs changed since these results; click **Run comparison** to update them.")
    else:
        # Same simulations: judge them against the SLO now set (a new SLO re-scores the stored runs, no re-run).
        last = jobs
        st.session_state["last_jobs"] = jobs
        st.session_state["last_scenarios"] = scenarios
    last_seeds = int(st.session_state.get("last_seeds", 1))
    if last_seeds > 1:
        st.caption(f"Each configuration simulated at {last_seeds} seeds; the summary shows the mean and (min – max) "
                   "across them, the CDFs a min–max band; the time series, breakdown and roofline are the first "
                   "seed's.")
    if any(sc.simulation.intervals is not None for sc in st.session_state.get("last_scenarios") or []):
        # Set under Simulation ("set intervals"): a scenario field, so the downloaded YAML keeps it.
        st.caption("[PI lo – hi]: prediction interval at simulation.intervals.level, from the stored held-out "
                   "errors of the engine profile or the device calibration (re-runs with drawn iteration times"
                   + ("; the first seed's" if last_seeds > 1 else "") + "). It is the model's error, not the "
                   "workload's randomness" + (" that the (min – max) across seeds shows" if last_seeds > 1 else "")
                   + ".")
    render_results(last, combine_outcomes(run_jobs(last), last_seeds))


main()
