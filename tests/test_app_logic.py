"""The dashboard's logic without a browser: schema-driven fields, set-up <-> YAML, checks, analysis, exports, CLI."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pytest
from pydantic import BaseModel, Field
from typer.testing import CliRunner

from app.analysis import analyse, integrate_steps, representative_shapes
from app.charts import altair_chart, breakdown_specs, latency_cdf_spec, sweep_spec, timeline_spec
from app.checks import check_setup
from app.cli import DEFAULT_HOST, DEFAULT_PORT, streamlit_command
from app.export import csv_bytes, png_bytes
from app.fields import REQUIRED, form_fields, prune_defaults
from app.runner import highest_sustained_rate, job_for, parse_rates, with_rate
from app.setup import (
    Configuration,
    Setup,
    default_setup,
    is_scenario_file,
    resolved_names,
    scenario_data,
    setup_from_text,
    to_yaml,
)
from app.tables import display_table, miss_reason, verdict
from capsim.errors import CapsimError
from simulator.cli import app as cli_app
from simulator.config.loader import load_scenarios
from simulator.config.schema import Scenario
from simulator.engine import simulate
from simulator.schedulers import SCHEDULERS

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"num_requests": 60}


def small_setup() -> Setup:
    setup = default_setup()
    setup.shared["simulation"] = dict(SMALL)
    return setup


@pytest.fixture(scope="module")
def run_output():
    scenario = Scenario.model_validate(scenario_data(small_setup())[0])
    return scenario, simulate(scenario)


# ------------------------------------------------------------------ fields
class _Params(BaseModel):
    size: int = Field(4, description="an int")
    rate: float | None = Field(None, description="optional float")
    mode: Literal["a", "b"] = "a"
    on: bool = True
    label: str = "x"
    values: list[int] = Field(default_factory=list)
    needed: int


def test_form_fields_pick_a_widget_kind_per_annotation():
    kinds = {f.name: (f.kind, f.optional) for f in form_fields(_Params)}
    assert kinds == {
        "size": ("int", False), "rate": ("float", True), "mode": ("choice", False), "on": ("bool", False),
        "label": ("text", False), "values": ("yaml", False), "needed": ("int", False),
    }
    fields = {f.name: f for f in form_fields(_Params)}
    assert fields["mode"].options == ("a", "b")
    assert fields["needed"].default is REQUIRED and fields["size"].help == "an int"


def test_every_registered_scheduler_has_describable_parameters():
    for name in SCHEDULERS.names():
        fields = form_fields(SCHEDULERS.get(name).Params)
        assert fields, name
        assert all(f.kind != "yaml" for f in fields), name  # each gets a real widget, not a YAML box


def test_prune_defaults_keeps_only_changed_and_required_values():
    fields = form_fields(_Params)
    assert prune_defaults({"size": 4, "rate": 2.0, "needed": 3, "on": True}, fields) == {"rate": 2.0, "needed": 3}


# ------------------------------------------------------------- set-up / YAML
def test_downloaded_yaml_round_trips_through_the_loader(tmp_path):
    setup = small_setup()
    setup.configurations[1].deployment.update(tp=2, num_replicas=2)
    setup.configurations[1].scheduler = {"name": "sarathi", "chunk_size": 1024}
    setup.configurations[0].extras = {"workload.qps": 2.5}
    path = tmp_path / "out.yaml"
    path.write_text(to_yaml(setup))
    loaded = load_scenarios(path)
    expected = [Scenario.model_validate(d) for d in scenario_data(setup)]
    assert loaded == expected
    assert [s.name for s in loaded] == ["h100-sxm vllm", "a100-80gb-sxm x2 tp2 sarathi"]
    assert loaded[0].workload.qps == 2.5 and loaded[1].workload.qps == 4


RUN_SCENARIOS = [p for p in sorted((ROOT / "scenarios").glob("*.yaml")) if is_scenario_file(p.read_text())]


def test_example_list_keeps_run_scenarios_only():
    assert (ROOT / "scenarios" / "quickstart.yaml") in RUN_SCENARIOS
    assert not is_scenario_file("search: {target_rps: 3}\nmodel: llama-3.1-8b\n")
    assert not is_scenario_file("- a list")


@pytest.mark.parametrize("path", RUN_SCENARIOS, ids=lambda p: p.name)
def test_every_shipped_scenario_loads_into_the_page_unchanged(path, tmp_path):
    setup, warnings = setup_from_text(path.read_text(), str(path))
    assert not any("could not reproduce" in w for w in warnings)
    out = tmp_path / "again.yaml"
    out.write_text(to_yaml(setup))
    assert load_scenarios(out) == load_scenarios(path)[:4]


def test_unnamed_configurations_get_unique_descriptive_names():
    configs = [Configuration(deployment={"device": "h200", "tp": 2}), Configuration(deployment={"device": "h200", "tp": 2})]
    assert resolved_names(configs) == ["h200 tp2 vllm", "h200 tp2 vllm #2"]


def test_bad_yaml_text_is_a_user_error():
    with pytest.raises(CapsimError, match="malformed YAML"):
        setup_from_text("model: [unclosed", "upload.yaml")
    with pytest.raises(CapsimError, match="deployment.tp"):
        setup_from_text("deployment: {tp: -1}", "upload.yaml")


# -------------------------------------------------------------------- checks
def _paths(setup: Setup) -> dict[str, str]:
    return {i.path: i.message for i in check_setup(setup).issues}


def test_default_setup_is_valid():
    result = check_setup(small_setup())
    assert result.ok and all(s is not None for s in result.scenarios)


def test_problems_are_attached_to_the_field_that_caused_them(tmp_path):
    setup = small_setup()
    setup.configurations[1].deployment["tp"] = 3
    setup.configurations[0].scheduler = {"name": "sarathi", "chunk_size": 0}
    issues = _paths(setup)
    assert "does not divide" in issues["cfg1.deployment.tp"]
    assert "chunk_size" in issues["cfg0.scheduler.chunk_size"]

    setup = small_setup()
    setup.configurations[1].deployment["device"] = "a100x"
    assert "unknown device" in _paths(setup)["cfg1.deployment.device"]

    setup = small_setup()
    setup.shared["model"] = "llama-3.1-405b"
    assert "does not fit" in _paths(setup)["cfg0.deployment"]

    setup = small_setup()
    setup.shared["slo"] = {"ttft_s": -1}
    assert "greater than 0" in _paths(setup)["slo.ttft_s"]
    assert not check_setup(setup).ok


def test_a_trace_file_missing_columns_is_reported_at_the_trace(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("a,b\n1,2\n3,4\n")
    setup = small_setup()
    setup.shared["workload"] = {"arrival": "trace", "trace": {"path": str(trace)}}
    issues = _paths(setup)
    assert set(issues) == {"workload.trace"}
    assert "column" in issues["workload.trace"]


# ------------------------------------------------------------------ analysis
def test_integrate_steps_matches_a_fine_grid():
    rng = np.random.default_rng(1)
    starts = rng.uniform(0, 10, 50)
    ends = starts + rng.uniform(0, 3, 50)
    values = rng.uniform(0, 5, 50)
    edges = np.linspace(0, 14, 8)
    got = integrate_steps(starts, ends, values, edges)
    t = np.linspace(0, 14, 140_001)[:-1] + 0.5e-4
    signal = ((t[:, None] >= starts) & (t[:, None] < ends)) @ values
    expected = [signal[(t >= a) & (t < b)].sum() * 1e-4 for a, b in zip(edges[:-1], edges[1:], strict=True)]
    assert np.allclose(got, expected, rtol=1e-3, atol=1e-3)


def test_analysis_tables_are_consistent_with_the_run(run_output):
    scenario, output = run_output
    data = analyse(output, scenario.slo, scenario.name)
    tl = data.timeline
    width = tl["time_s"].iloc[1] - tl["time_s"].iloc[0]
    total = output.result.requests["output_tokens"][output.result.requests["finish_s"].notna()].sum()
    assert tl["output_tokens_per_s"].sum() * width == pytest.approx(total, rel=1e-6)
    assert tl["kv_used_fraction"].dropna().between(0, 1).all()
    for metric, part in data.cdf.groupby("metric"):
        assert part["fraction"].is_monotonic_increasing and part["fraction"].iloc[-1] == pytest.approx(1.0), metric
    # The breakdown of each representative shape adds up to what the engine charges for that shape.
    cost = output.system.cost_model()
    for phase, shape in representative_shapes(output).items():
        parts = data.breakdown[data.breakdown["phase"] == phase]
        assert parts["time_s"].sum() == pytest.approx(cost.iteration(shape).time_s, rel=1e-9)
        assert set(parts["bound"]) <= {"compute", "memory", "communication", "overhead"}
    assert data.summary["kv_peak_gib_per_gpu"] <= data.summary["kv_capacity_gib_per_gpu"]


def test_charts_and_exports_from_the_same_frames(run_output):
    scenario, output = run_output
    data = analyse(output, scenario.slo, scenario.name)
    cdf = data.cdf.assign(configuration="a")
    timeline = data.timeline.assign(configuration="a")
    breakdown = data.breakdown.assign(configuration="a")
    sweep = pd.DataFrame({"configuration": ["a", "a"], "qps": [1.0, 2.0], "slo_attainment": [1.0, 0.5],
                          "ttft_p99_s": [0.1, 0.2], "tpot_p99_s": [0.01, 0.02]})
    specs = [latency_cdf_spec(cdf), timeline_spec(timeline, "batch_size", "batch", "seqs"),
             *breakdown_specs(breakdown), sweep_spec(sweep, 0.9)]
    for spec in specs:
        assert altair_chart(spec).to_dict()  # a valid Vega-Lite spec
        assert png_bytes(spec, dpi=40).startswith(b"\x89PNG"), spec.key
        back = pd.read_csv(pd.io.common.BytesIO(csv_bytes(spec.frame)))
        assert list(back.columns) == list(spec.frame.columns) and len(back) == len(spec.frame)


def test_operator_classes_and_bounds_keep_their_colours_in_every_chart():
    """A class's colour must not depend on which classes a run happens to have (a decode-only run has no prefill
    attention) or list first, on the page or in the PNG."""
    from app.charts import breakdown_specs
    from app.export import _colors

    def specs(classes: list[str], bounds: list[str]):
        return breakdown_specs(pd.DataFrame({
            "phase": "decode", "operator": classes, "op_class": classes, "bound": bounds, "time_s": 1e-3,
            "flops": 1.0, "bytes": 1.0, "configuration": "a",
        }))

    def page_colors(spec) -> dict[str, str]:
        scale = altair_chart(spec).to_dict()["encoding"]["color"]["scale"]
        return dict(zip(scale["domain"], scale["range"], strict=True))

    full = specs(["gemm", "attention_prefill", "attention_decode", "elementwise"],
                 ["compute", "compute", "memory", "memory"])
    decode = specs(["elementwise", "attention_decode", "gemm"], ["memory", "memory", "compute"])
    for a, b in zip(full, decode, strict=True):
        pa, pb = page_colors(a), page_colors(b)
        shared = set(pa) & set(pb)
        assert shared and all(pa[k] == pb[k] for k in shared), (pa, pb)
        assert len(set(pa.values())) == len(pa)  # distinct hues within a chart
        assert _colors(a) == pa and _colors(b) == pb  # the PNG uses the page's colours


# -------------------------------------------------------------------- tables
def test_verdict_names_the_cheapest_configuration_that_meets_the_slo():
    base = {"slo_target_attainment": 0.9, "slo_ttft_s": 0.5, "unfinished": 0}
    a = {**base, "name": "a", "slo_met": True, "slo_attainment": 0.95, "cost_per_million_output_tokens_usd": 0.8}
    b = {**base, "name": "b", "slo_met": True, "slo_attainment": 0.99, "cost_per_million_output_tokens_usd": 0.5}
    c = {**base, "name": "c", "slo_met": False, "slo_attainment": 0.2, "cost_per_million_output_tokens_usd": 0.1}
    met, text = verdict([a, b, c], [{}, {}, {"ttft_s": 2.0}])
    assert met and text.startswith("**b** meets the SLO") and "c misses it" in text and "TTFT p90 2.00 s" in text
    assert miss_reason(a, {"ttft_s": 0.1}) == ""
    table = display_table([a, b])
    assert list(table.columns) == ["a", "b"] and table.loc["SLO", "b"] == "met"


def test_an_overloaded_configuration_is_flagged_and_never_crowned():
    """A loose TTFT target can be met by a configuration that served 1.78 of 4 req/s offered; cheapest per token
    or not, it is not the answer."""
    base = {"slo_target_attainment": 0.9, "slo_ttft_s": 200.0, "unfinished": 0, "offered_rps": 4.0}
    slow = {**base, "name": "slow", "slo_met": True, "slo_attainment": 0.95, "overloaded": True,
            "served_rps": 1.78, "queue_growth_s": 75.0, "cost_per_million_output_tokens_usd": 0.3}
    fast = {**base, "name": "fast", "slo_met": True, "slo_attainment": 1.0, "overloaded": False,
            "served_rps": 3.98, "queue_growth_s": 0.0, "cost_per_million_output_tokens_usd": 0.5}
    met, text = verdict([slow, fast], [{}, {}])
    assert met and text.startswith("**fast** meets the SLO")
    assert "slow is overloaded" in text and "served 1.78 of 4.00 req/s" in text
    met, text = verdict([slow], [{}])
    assert not met and "**slow**" not in text and "slow is overloaded" in text
    table = display_table([slow, fast])
    assert table.loc["offered / served (req/s)", "slow"] == "4.00 / 1.78 (overloaded)"
    assert table.loc["offered / served (req/s)", "fast"] == "4.00 / 3.98"
    assert table.loc["SLO", "slow"] == "met, but overloaded"


def test_device_menu_rounds_memory_sensibly():
    from app.inputs import _device_label
    from hwmodels.device import DEVICES

    for name in DEVICES.names():
        label = _device_label(name)
        gib = re.search(r"\(([\d.]+) GiB, \$[\d.]+/h\)$", label)
        assert gib is not None, label
        value = float(gib.group(1))
        assert value == pytest.approx(DEVICES.get(name).memory_gib, abs=0.5)
        assert len(gib.group(1).split(".")[-1]) <= 1 or "." not in gib.group(1), label
    assert "44.9883" not in _device_label("l40s") and "(45 GiB, $1.33/h)" in _device_label("l40s")


def test_an_over_long_prompt_is_explained_once_with_fixes_that_apply(tmp_path):
    """A prompt longer than the model's context is the workload's problem, the same in every configuration:
    one message at the workload, not one per configuration tab, and no suggestion of a scheduler that chunks
    prompts (which cannot help, and which a configuration may already use)."""
    trace = tmp_path / "long.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n0.0,100,10\n0.5,200000,10\n")
    setup = default_setup()
    setup.shared["workload"] = {"arrival": "trace", "trace": {"path": str(trace)}}
    setup.shared["simulation"] = {"num_requests": None}
    for cfg in setup.configurations:  # both chunk prompts: no prefill budget to exceed
        cfg.scheduler = {"name": "sarathi"}
    check = check_setup(setup)
    long = [i for i in check.issues if "can never be served" in i.message]
    assert [i.path for i in long] == ["workload"], [(i.path, i.message) for i in long]
    assert "exceed the model context" in long[0].message
    assert "sarathi" not in long[0].message and "max_num_batched_tokens" not in long[0].message
    assert "longer context" in long[0].message and "oversized: drop" in long[0].message
    assert not check.ok


def test_a_prompt_over_the_prefill_budget_suggests_chunking_only_where_it_helps(tmp_path):
    trace = tmp_path / "long.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n0.0,100,10\n0.5,9000,10\n")
    setup = default_setup()
    setup.shared["workload"] = {"arrival": "trace", "trace": {"path": str(trace)}}
    setup.shared["simulation"] = {"num_requests": None}
    setup.configurations[0].scheduler = {"name": "vllm", "max_num_batched_tokens": 8192}
    setup.configurations[1].scheduler = {"name": "sarathi"}
    issues = [i for i in check_setup(setup).issues if "can never be served" in i.message]
    assert [i.path for i in issues] == ["cfg0"], [(i.path, i.message) for i in issues]
    assert "prefill budget" in issues[0].message and "sarathi" in issues[0].message
    assert "longer context" not in issues[0].message


# -------------------------------------------------------------------- runner
def test_cache_key_changes_with_the_scenario_and_only_then():
    sc = Scenario.model_validate(scenario_data(small_setup())[0])
    assert job_for(sc).digest == job_for(Scenario.model_validate(sc.model_dump())).digest
    assert job_for(with_rate(sc, 8)).digest != job_for(sc).digest
    assert with_rate(sc, 8).workload.qps == 8


def test_sweep_rates_are_parsed_or_explained():
    assert parse_rates("4, 2; 8, 2") == [2.0, 4.0, 8.0]
    for bad in ("", "two", "-1"):
        with pytest.raises(CapsimError):
            parse_rates(bad)


def test_the_load_sweep_never_counts_an_overloaded_rate_as_sustained():
    frame = pd.DataFrame({
        "configuration": ["a", "a", "a", "b"], "qps": [2.0, 4.0, 8.0, 2.0],
        "slo_met": [True, True, True, False], "overloaded": [False, False, True, False],
    })
    best = highest_sustained_rate(frame)
    assert best["a"] == 4.0 and np.isnan(best["b"])


# ----------------------------------------------------------------------- CLI
def test_capsim_app_command_is_wired_with_documented_defaults():
    result = CliRunner().invoke(cli_app, ["app", "--help"])
    assert result.exit_code == 0 and "--port" in result.output and "8501" in result.output
    cmd = streamlit_command(DEFAULT_PORT, DEFAULT_HOST)
    assert cmd[cmd.index("--server.port") + 1] == "8501" and cmd[cmd.index("--server.address") + 1] == "127.0.0.1"
    assert cmd[3] == "run" and cmd[4].endswith("dashboard.py") and Path(cmd[4]).is_file()


def test_capsim_app_rejects_a_bad_port_without_a_traceback():
    result = CliRunner().invoke(cli_app, ["app", "--port", "70000"])
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_output_tokens_per_second_come_from_the_iteration_records():
    """Spreading each request's tokens evenly from first token to finish hid stalls: in the default comparison
    the A100 runs 22 prefill-only iterations (no decode token at all) around 42-50 s, which the chart showed at
    700-930 tok/s. Drawn from the iteration records, a stretch without decode iterations shows only its first
    tokens."""
    from app.analysis import timeline

    sc = Scenario.model_validate(scenario_data(default_setup())[1])
    assert sc.deployment.device == "a100-80gb-sxm"
    output = simulate(sc)
    res = output.result
    frame = timeline(output)
    width = float(frame["time_s"].diff().iloc[1])
    edges = np.append(frame["time_s"].to_numpy() - width / 2, frame["time_s"].iloc[-1] + width / 2)
    it = res.iterations
    decoding = it[it["decode_seqs"] > 0]
    first = res.requests["first_token_s"].to_numpy(float)
    firsts = np.histogram(first[np.isfinite(first)], bins=edges)[0]
    tokens = frame["output_tokens_per_s"].to_numpy() * width
    stalled = [k for k in range(len(frame))
               if not ((decoding["start_s"] < edges[k + 1]) & (decoding["end_s"] > edges[k])).any()
               and ((it["start_s"] < edges[k + 1]) & (it["end_s"] > edges[k])).any()]
    assert stalled, "the default A100 run should have a stretch of prefill-only iterations"
    for k in stalled:
        assert tokens[k] == pytest.approx(firsts[k]), (k, edges[k])
    # every token is drawn once: first tokens plus one per decode sequence per iteration
    assert tokens.sum() == pytest.approx(float(res.requests["output_tokens"].sum()))
