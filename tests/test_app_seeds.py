"""Several seeds per configuration on the dashboard: distinct cached runs, min–max intervals, a verdict that counts
seeds, CDF bands, and the setting kept in the URL."""

from __future__ import annotations

import pytest

pytest.importorskip("streamlit")
import streamlit as st  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

import app.runner  # noqa: E402
from app import permalink  # noqa: E402
from app.charts import altair_chart, latency_cdf_spec  # noqa: E402
from app.export import png_bytes  # noqa: E402
from app.runner import job_for, run_jobs  # noqa: E402
from app.seeds import INTERVAL_KEYS, MAX_SEEDS, combine_outcomes, combine_runs, combined_summary, seed_scenarios  # noqa: E402
from app.setup import default_setup, scenario_data  # noqa: E402
from app.tables import display_table, verdict  # noqa: E402
from capsim.errors import CapsimError  # noqa: E402
from simulator.config.schema import Scenario  # noqa: E402
from tests.test_app_page import PAGE, small, summary_table  # noqa: E402


def tiny_scenario(seed: int = 7) -> Scenario:
    setup = default_setup()
    setup.shared["simulation"] = {"num_requests": 40}
    setup.shared["seed"] = seed
    return Scenario.model_validate(scenario_data(setup)[0])


@pytest.fixture(scope="module")
def seeded_runs():
    """Three seeds of one tiny configuration, run through the page's cache (counting the simulations)."""
    calls: list[int] = []
    real = app.runner.simulate
    app.runner.simulate = lambda sc: calls.append(sc.seed) or real(sc)
    try:
        st.cache_data.clear()
        jobs = [job_for(s) for s in seed_scenarios(tiny_scenario(7), 3)]
        first = run_jobs(jobs)
        again = run_jobs(jobs)
    finally:
        app.runner.simulate = real
    return jobs, first, again, calls


def test_seeds_are_consecutive_distinct_and_each_cached(seeded_runs):
    jobs, first, again, calls = seeded_runs
    assert [s.seed for s in seed_scenarios(tiny_scenario(7), 3)] == [7, 8, 9]
    assert seed_scenarios(tiny_scenario(7), 1) == [tiny_scenario(7)]  # one seed: today's job, unchanged
    assert len({j.digest for j in jobs}) == 3
    assert calls == [7, 8, 9]  # each seed simulated once; the second pass came from the cache
    assert [r.summary for r in again] == [r.summary for r in first]
    # The seeds really are different draws.
    assert len({r.summary["ttft_p99_s"] for r in first}) > 1


def test_the_interval_contains_every_seed_and_the_mean_is_inside_it(seeded_runs):
    _, runs, _, _ = seeded_runs
    combined = combine_runs(runs)
    s = combined.summary
    assert s["seeds"] == 3 and s["seed_values"] == [7, 8, 9]
    for key in INTERVAL_KEYS:
        values = [r.summary[key] for r in runs]
        assert s[f"{key}_lo"] == min(values) and s[f"{key}_hi"] == max(values), key
        assert min(values) - 1e-12 <= s[key] <= max(values) + 1e-12, key
    cdf = combined.cdf
    assert (cdf["latency_lo_s"] <= cdf["latency_s"] + 1e-12).all()
    assert (cdf["latency_s"] <= cdf["latency_hi_s"] + 1e-12).all()
    assert (cdf["latency_hi_s"] > cdf["latency_lo_s"]).any()  # a real band, not a line
    # The table shows mean and (min – max); the chart draws the band, the PNG too.
    table = display_table([s])
    assert " – " in table.iloc[:, 0]["TTFT p99"] and " – " in table.iloc[:, 0]["goodput (req/s)"]
    spec = latency_cdf_spec(cdf.assign(configuration=combined.name), {})
    assert spec.band == ("latency_lo_s", "latency_hi_s")
    assert '"x2"' in altair_chart(spec).to_json()
    assert png_bytes(spec).startswith(b"\x89PNG")
    # One seed: the run itself, no interval anywhere.
    assert combine_runs(runs[:1]) is runs[0]
    assert " – " not in display_table([runs[0].summary]).iloc[:, 0]["TTFT p99"]
    assert combine_outcomes(runs, 1) == runs


def _summary(name: str, met: list[bool], cost: float, overloaded: list[bool] | None = None) -> dict:
    overloaded = overloaded or [False] * len(met)
    return combined_summary(
        [
            {
                "name": name,
                "slo_met": m,
                "overloaded": o,
                "slo_attainment": 0.95 if m else 0.5,
                "cost_per_million_output_tokens_usd": cost,
                "ttft_p90_s": 0.2 + 0.1 * i,
            }
            for i, (m, o) in enumerate(zip(met, overloaded, strict=True))
        ]
    )


def test_the_verdict_meets_the_slo_only_when_every_seed_does():
    cheap_flaky = _summary("cheap", [True, False, True], cost=1.0)
    dear_solid = _summary("dear", [True, True, True], cost=5.0)
    assert not cheap_flaky["slo_met"] and dear_solid["slo_met"]
    met, text = verdict([cheap_flaky, dear_solid], [{}, {}])
    assert met and "**dear** meets the SLO in all 3 seeds" in text
    assert "cheap misses it: it meets it in only 2 of 3 seeds" in text
    assert display_table([cheap_flaky]).iloc[0, 0] == "met in 2 of 3 seeds"
    busy = _summary("busy", [True, True, True], cost=0.5, overloaded=[False, True, False])
    met, text = verdict([busy], [{}])
    assert not met and "busy is overloaded in 1 of 3 seeds (it meets the latency targets in 3 of 3 seeds)" in text


def test_the_seeds_setting_round_trips_through_the_link():
    assert permalink.encode_seeds(1) is None
    assert permalink.decode_seeds(permalink.encode_seeds(4), MAX_SEEDS) == 4
    assert permalink.decode_seeds(None, MAX_SEEDS) == 1
    for bad in ("0", "x", str(MAX_SEEDS + 1)):
        with pytest.raises(CapsimError):
            permalink.decode_seeds(bad, MAX_SEEDS)


def test_the_page_runs_several_seeds_and_keeps_them_in_the_url():
    st.cache_data.clear()
    at = AppTest.from_file(str(PAGE), default_timeout=120)
    at.run()
    assert "seeds" not in at.query_params  # the default leaves the link as it was
    small(at, 40)
    at.number_input(key="seeds-per-config").set_value(2).run()
    assert at.query_params["seeds"] == ["2"] or at.query_params["seeds"] == "2"
    at.button(key="run").click().run()
    assert not at.exception and not at.error
    table = summary_table(at)
    assert all(cell.startswith("met in ") or cell.startswith("met in 0") for cell in table.loc["SLO"])
    assert all(" – " in cell for cell in table.loc["E2E p90"])
    assert len(at.session_state["last_jobs"]) == 2 * len(table.columns)
    # A reload of the link restores the setting.
    link = dict(at.query_params)
    reloaded = AppTest.from_file(str(PAGE), default_timeout=120)
    for key, value in link.items():
        reloaded.query_params[key] = value[0] if isinstance(value, list) else value
    reloaded.run()
    assert not reloaded.exception
    assert reloaded.number_input(key="seeds-per-config").value == 2
