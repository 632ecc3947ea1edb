"""The dashboard views of issue 20 under Streamlit's AppTest: SLO re-scoring, state in the URL, the explained
verdict, the roofline, frontiers, results folders and per-pool tables."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("streamlit")
import streamlit as st  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

import app.runner  # noqa: E402
from app.widgets import widget_key  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "app" / "dashboard.py"


def page(query: dict[str, str] | None = None) -> AppTest:
    at = AppTest.from_file(str(PAGE), default_timeout=60)
    for key, value in (query or {}).items():
        at.query_params[key] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def small(at: AppTest, requests: int = 60) -> AppTest:
    at.number_input(key=widget_key(0, "simulation.num_requests")).set_value(requests).run()
    return at


def summary_table(at: AppTest):
    tables = [t.value for t in at.table if "TTFT p50" in t.value.index]
    assert tables, "no summary table on the page"
    return tables[0]


def test_changing_an_slo_rescores_the_stored_runs_without_simulating(monkeypatch):
    calls = []
    real = app.runner.simulate
    monkeypatch.setattr(app.runner, "simulate", lambda sc: calls.append(sc.name) or real(sc))
    st.cache_data.clear()
    at = small(page())
    at.button(key="run").click().run()
    assert len(calls) == 2
    before = summary_table(at).loc["SLO attainment"].tolist()
    specs = [el.proto.spec for el in at.get("vega_lite_chart")]
    assert any("slo_target_s" in s and '"rule"' in s for s in specs), "the CDFs draw the SLO targets"
    assert any("kv_capacity_gib" in s and '"rule"' in s for s in specs), "the KV chart draws the capacity"
    assert any('"independent"' in s and "time_s" in s for s in specs), "time series get their own time axes"
    assert any("attainable_flops_per_s" in s for s in specs), "the roofline view is drawn"
    assert any("tokens_per_s_per_user" in s for s in specs), "tokens/s per GPU vs per user is drawn"
    assert any("usd_per_million_output_tokens" in s and "ttft_p90_s" in s for s in specs), "cost vs latency"
    # A TTFT target no request can meet: every configuration now misses, from the same stored runs.
    at.number_input(key=widget_key(0, "slo.ttft_s")).set_value(1e-6).run()
    assert not at.exception
    assert len(calls) == 2, "a new SLO must not simulate again"
    after = summary_table(at).loc["SLO attainment"].tolist()
    assert after != before
    assert all(cell.startswith("0") for cell in after), after
    assert not [i for i in at.info if "inputs changed" in i.value]


def test_the_whole_set_up_lives_in_the_url_and_a_reload_restores_it():
    at = small(page())
    at.number_input(key=widget_key(0, "configurations.count")).set_value(3).run()
    at.number_input(key=widget_key(0, "slo.ttft_s")).set_value(0.75).run()
    assert not at.exception
    link = at.query_params["setup"]
    link = link[0] if isinstance(link, list) else link
    assert link
    # A fresh session (a reload, or the link opened by someone else) comes back with the same set-up.
    again = page({"setup": link})
    keys = {w.key for w in again.number_input}
    count_key = next(k for k in keys if k.endswith("configurations-count"))
    assert again.number_input(key=count_key).value == 3
    ttft_key = next(k for k in keys if k.endswith("slo-ttft_s"))
    assert again.number_input(key=ttft_key).value == pytest.approx(0.75)
    requests_key = next(k for k in keys if k.endswith("simulation-num_requests"))
    assert again.number_input(key=requests_key).value == 60
    assert not again.error


def test_a_damaged_link_is_explained_not_a_traceback():
    at = page({"setup": "not-a-capsim-link!!"})
    assert not at.exception
    notes = " ".join(c.value for c in at.sidebar.caption)
    assert "could not restore the set-up from the link" in notes and "damaged" in notes


def test_the_configurations_are_listed_in_the_main_area_before_any_run():
    at = page()
    at.number_input(key=widget_key(0, "configurations.count")).set_value(3).run()
    overview = [d.value for d in at.dataframe if "scheduler" in d.value.columns]
    assert overview and len(overview[0]) == 3
    assert list(overview[0]["device"][:2]) == ["h100-sxm", "a100-80gb-sxm"]
