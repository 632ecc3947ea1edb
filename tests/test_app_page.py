"""The dashboard page under Streamlit's AppTest: inputs, inline errors, runs, caching, loading and saving YAML."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
import streamlit as st  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

import app.runner  # noqa: E402
from app.widgets import widget_key  # noqa: E402
from simulator.config.loader import load_scenarios  # noqa: E402
from simulator.schedulers import SCHEDULERS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "app" / "dashboard.py"


def page() -> AppTest:
    at = AppTest.from_file(str(PAGE), default_timeout=60)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def small(at: AppTest, requests: int = 80) -> AppTest:
    """Fewer requests than the default, to keep the suite fast."""
    at.number_input(key=widget_key(0, "simulation.num_requests")).set_value(requests).run()
    return at


def widget_keys(at: AppTest) -> set[str]:
    out: set[str] = set()
    for kind in ("number_input", "selectbox", "text_input", "checkbox", "text_area", "radio"):
        out.update(w.key for w in getattr(at, kind) if w.key)
    return out


def error_below(at: AppTest, key: str) -> str | None:
    """The error shown right below the widget ``key`` (before the next widget), if any."""
    from streamlit.testing.v1.element_tree import Error, Widget

    found = False
    for node in at.sidebar:
        if isinstance(node, Widget):
            if found:
                return None
            found = getattr(node, "key", None) == key
        elif found and isinstance(node, Error):
            return node.value
    return None


def summary_table(at: AppTest):
    tables = [t.value for t in at.table if "TTFT p50" in t.value.index]
    assert tables, "no summary table on the page"
    return tables[0]


def seconds(cell: str) -> float:
    value, unit = re.fullmatch(r"([\d.,]+) (µs|ms|s)", cell).groups()
    return float(value.replace(",", "")) * {"µs": 1e-6, "ms": 1e-3, "s": 1.0}[unit]


def test_default_comparison_renders_and_results_are_cached(monkeypatch):
    calls = []
    real = app.runner.simulate
    monkeypatch.setattr(app.runner, "simulate", lambda sc: calls.append(sc.name) or real(sc))
    st.cache_data.clear()
    at = small(page())
    assert not at.error
    at.button(key="run").click().run()
    assert not at.exception and not at.error
    table = summary_table(at)
    assert list(table.columns) == ["h100-sxm vllm", "a100-80gb-sxm vllm"]
    for name in table.columns:
        assert 1e-3 <= seconds(table.loc["TTFT p50", name]) <= 60
    assert len(at.get("vega_lite_chart")) >= 5
    assert sorted(calls) == ["a100-80gb-sxm vllm", "h100-sxm vllm"]
    # Re-running the same comparison, or redrawing the page, does not simulate again.
    at.button(key="run").click().run()
    at.run()
    assert len(calls) == 2
    assert [s.name for s in at.session_state["last_scenarios"]] == list(table.columns)


def test_an_impossible_configuration_is_explained_next_to_its_field():
    at = small(page())
    at.number_input(key=widget_key(0, "cfg1.deployment.tp")).set_value(3).run()
    assert not at.exception
    assert "does not divide" in error_below(at, widget_key(0, "cfg1.deployment.tp"))
    assert at.button(key="run").disabled
    # A model that does not fit is reported at the deployment of each configuration, not as a traceback.
    at.number_input(key=widget_key(0, "cfg1.deployment.tp")).set_value(1).run()
    at.selectbox(key=widget_key(0, "model.catalog")).set_value("llama-3.1-405b").run()
    assert not at.exception
    assert sum("does not fit" in e.value for e in at.sidebar.error) == 2


def test_scheduler_parameters_are_generated_from_each_registered_params_model():
    at = page()
    for name in SCHEDULERS.names():
        at.selectbox(key=widget_key(0, "cfg0.scheduler.name")).set_value(name).run()
        assert not at.exception
        keys = widget_keys(at)
        for field in SCHEDULERS.get(name).Params.model_fields:
            assert widget_key(0, f"cfg0.scheduler.{name}.{field}") in keys, (name, field)


def test_changed_configuration_round_trips_through_the_downloaded_yaml(tmp_path):
    at = small(page())
    at.selectbox(key=widget_key(0, "cfg1.deployment.device")).set_value("h200").run()
    at.selectbox(key=widget_key(0, "cfg1.scheduler.name")).set_value("sarathi").run()
    at.number_input(key=widget_key(0, "cfg1.scheduler.sarathi.chunk_size")).set_value(1024).run()
    at.button(key="run").click().run()
    assert not at.exception and not at.error
    path = tmp_path / "downloaded.yaml"
    path.write_text(at.code[0].value)  # the YAML the download button offers
    loaded = load_scenarios(path)
    assert loaded == at.session_state["last_scenarios"]
    assert loaded[1].deployment.device == "h200" and loaded[1].scheduler.params == {"chunk_size": 1024}
    assert list(summary_table(at).columns) == ["h100-sxm vllm", "h200 sarathi"]


def test_loading_an_example_scenario_replaces_the_inputs(tmp_path):
    at = page()
    at.selectbox(key="example-file").set_value("compare_schedulers.yaml")
    at.button(key="load-example").click().run()
    assert not at.exception and not at.error
    assert at.number_input(key=widget_key(1, "configurations.count")).value == 4
    assert at.text_input(key=widget_key(1, "cfg2.name")).value == "orca"
    path = tmp_path / "again.yaml"
    path.write_text(at.code[0].value)
    assert load_scenarios(path) == load_scenarios(ROOT / "scenarios" / "compare_schedulers.yaml")


@pytest.fixture
def uploads_supported():
    if not hasattr(AppTest, "file_uploader"):
        pytest.skip("this Streamlit's AppTest cannot drive st.file_uploader (needs a newer streamlit)")


def test_uploaded_scenario_yaml_is_loaded_and_a_bad_one_explained(uploads_supported):
    at = page()
    at.file_uploader(key="yaml-upload").set_value(("bad.yaml", b"model: [unclosed", "application/x-yaml")).run()
    assert not at.exception
    assert any("malformed YAML" in e.value for e in at.sidebar.error)
    good = b"name: up\nmodel: mistral-7b\ndeployment: {device: l40s}\nsimulation: {num_requests: 50}\n"
    at.file_uploader(key="yaml-upload").set_value(("good.yaml", good, "application/x-yaml")).run()
    assert not at.exception and not at.error
    assert at.selectbox(key=widget_key(1, "model.catalog")).value == "mistral-7b"
    assert at.selectbox(key=widget_key(1, "cfg0.deployment.device")).value == "l40s"


def test_uploaded_trace_with_missing_columns_then_mapped(uploads_supported):
    at = small(page(), 60)
    at.radio(key=widget_key(0, "workload.source")).set_value("file").run()
    rows = "\n".join(f"{200 + 10 * i},{20 + i}" for i in range(60))
    at.file_uploader(key=widget_key(0, "workload.trace.upload")).set_value(
        ("mine.csv", f"inp,outp\n{rows}\n".encode(), "text/csv")
    ).run()
    assert not at.exception
    errors = [e.value for e in at.sidebar.error]
    assert any("column" in e for e in errors), errors  # the lengths cannot be found by their usual names
    at.selectbox(key=widget_key(0, "workload.trace.columns.prompt")).set_value("inp")
    at.selectbox(key=widget_key(0, "workload.trace.columns.output")).set_value("outp")
    at.checkbox(key=widget_key(0, "workload.trace.replay")).uncheck().run()  # lengths only, Poisson arrivals
    assert not at.exception and not at.error, [e.value for e in at.error]
    at.button(key="run").click().run()
    assert not at.exception and not at.error
    assert summary_table(at).loc["requests measured (unfinished)"].tolist() == ["60 (0)", "60 (0)"]


def test_load_sweep_plots_attainment_against_rate():
    at = small(page(), 60)
    at.button(key="run").click().run()
    charts = len(at.get("vega_lite_chart"))
    at.text_input(key="sweep-rates").set_value("2, 8")
    at.button(key="run-sweep").click().run()
    assert not at.exception and not at.error
    # attainment vs rate, and the two frontier charts with one point per rate (issue 20)
    assert len(at.get("vega_lite_chart")) == charts + 3
    best = [t.value for t in at.table if "highest rate tried that meets the SLO and keeps up (req/s)" in t.value.columns]
    assert best and list(best[0].index) == ["h100-sxm vllm", "a100-80gb-sxm vllm"]


def test_replaying_a_shipped_trace():
    at = small(page(), 150)
    at.radio(key=widget_key(0, "workload.source")).set_value("replay").run()
    at.selectbox(key=widget_key(0, "workload.trace.name")).set_value("azure-code-2023").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert "arrival: trace" in at.code[0].value and "name: azure-code-2023" in at.code[0].value
    at.button(key="run").click().run()
    assert not at.exception and not at.error
    assert summary_table(at).loc["requests measured (unfinished)"].tolist() == ["150 (0)", "150 (0)"]


def test_a_custom_model_is_typed_field_by_field(tmp_path):
    at = small(page())
    at.radio(key=widget_key(0, "model.mode")).set_value("custom").run()
    assert not at.exception and not at.error
    keys = widget_keys(at)
    for field in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "ffn_size", "vocab_size", "mlp"):
        assert widget_key(0, f"model.custom.llama-3.1-8b.{field}") in keys, field
    at.number_input(key=widget_key(0, "model.custom.llama-3.1-8b.num_layers")).set_value(16).run()
    assert not at.exception and not at.error
    path = tmp_path / "custom.yaml"
    path.write_text(at.code[0].value)
    scenarios = load_scenarios(path)
    assert isinstance(scenarios[0].model, dict) and scenarios[0].model["num_layers"] == 16
    # An impossible architecture is explained at its field.
    at.number_input(key=widget_key(0, "model.custom.llama-3.1-8b.num_heads")).set_value(0).run()
    assert not at.exception
    below = error_below(at, widget_key(0, "model.custom.llama-3.1-8b.num_heads"))
    assert below is not None and "greater than 0" in below


def scenario_yaml(at: AppTest) -> dict:
    import yaml

    texts = [c.value for c in at.code if "workload:" in c.value]
    assert texts, "no scenario YAML on the page"
    return yaml.safe_load(texts[0])


@pytest.mark.filterwarnings("ignore:trace 't.csv' holds only")  # a 3-row file stands in for a trace
@pytest.mark.parametrize("source", ["replay", "file"])
def test_a_replayed_trace_keeps_its_own_timing(source, tmp_path):
    """The synthetic arrivals' 4 req/s must not carry over to a replay (it slowed the Azure trace to 4/5.5 of its
    real speed without a word); rescaling is asked for explicitly."""
    at = page()
    assert scenario_yaml(at)["workload"]["qps"] == 4
    at.radio(key=widget_key(0, "workload.source")).set_value(source).run()
    if source == "file":
        trace = tmp_path / "t.csv"
        trace.write_text("arrival_s,prompt_tokens,output_tokens\n0,100,10\n0.5,120,12\n2,90,9\n")
        at.text_input(key=widget_key(0, "workload.trace.path")).input(str(trace)).run()
    assert not at.exception
    workload = scenario_yaml(at)["workload"]
    assert workload["arrival"] == "trace" and "qps" not in workload
    rescale = at.checkbox(key=widget_key(0, f"workload.{source}.rescale"))
    assert rescale.value is False
    rescale.check().run()
    assert at.button(key="run").disabled  # asked to rescale, but to which rate?
    assert "give the request rate" in error_below(at, widget_key(0, f"workload.{source}.qps"))
    at.number_input(key=widget_key(0, f"workload.{source}.qps")).set_value(2.5).run()
    assert scenario_yaml(at)["workload"]["qps"] == 2.5 and not at.button(key="run").disabled


def test_technique_parameters_come_from_the_registry_and_round_trip(tmp_path):
    from simulator.techniques import TECHNIQUES

    at = small(page(), 40)
    at.multiselect(key=widget_key(0, "cfg1.techniques.names")).select("speculative-decoding").run()
    assert not at.exception
    keys = widget_keys(at)
    for field in TECHNIQUES.get("speculative-decoding").Params.model_fields:
        assert widget_key(0, f"cfg1.techniques.speculative-decoding.{field}") in keys, field
    # The default drafter needs a draft model: the problem is shown at the technique, and nothing runs.
    assert any("draft_model" in e.value for e in at.sidebar.error)
    assert at.button(key="run").disabled
    at.selectbox(key=widget_key(0, "cfg1.techniques.speculative-decoding.drafter")).set_value("ngram").run()
    at.number_input(key=widget_key(0, "cfg1.techniques.speculative-decoding.k")).set_value(3).run()
    at.button(key="run").click().run()
    assert not at.exception and not at.error
    path = tmp_path / "downloaded.yaml"
    path.write_text(at.code[0].value)
    loaded = load_scenarios(path)
    assert loaded == at.session_state["last_scenarios"]
    assert loaded[0].techniques == []
    assert loaded[1].techniques[0].name == "speculative-decoding"
    assert loaded[1].techniques[0].params == {"drafter": "ngram", "k": 3}


def test_engine_profile_is_a_menu_of_the_registered_profiles_and_changes_the_answer(tmp_path):
    """The serving-engine profile is chosen from the registered names ('(not set)': the default), and a second
    configuration that differs only in its engine is a separate, differently priced configuration."""
    from hwmodels.calibration.engines import engine_names

    at = small(page())
    box = at.selectbox(key=widget_key(0, "cfg1.deployment.engine"))
    assert box.options[0] == "(not set)" and set(engine_names()) <= set(box.options)
    at.selectbox(key=widget_key(0, "cfg1.deployment.device")).set_value("h100-sxm").run()
    at.selectbox(key=widget_key(0, "cfg1.deployment.engine")).set_value("none").run()
    at.button(key="run").click().run()
    assert not at.exception and not at.error
    table = summary_table(at)
    assert list(table.columns) == ["h100-sxm vllm", "h100-sxm vllm engine-none"]
    tpot = [seconds(str(c).split(" ")[0] + " " + str(c).split(" ")[1]) for c in table.loc["TPOT p50"]]
    assert tpot[1] < tpot[0]  # the kernels alone are faster than with vLLM's terms
    path = tmp_path / "downloaded.yaml"
    path.write_text(at.code[0].value)
    loaded = load_scenarios(path)
    assert loaded[0].deployment.engine is None and loaded[1].deployment.engine == "none"
