"""The views of issue 20 without Streamlit: per-chart fixes, verdict causes, roofline, frontiers, results folders,
per-pool tables and the set-up in the URL."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from app.charts import altair_chart, latency_cdf_spec, timeline_spec
from app.export import png_bytes


def _timeline() -> pd.DataFrame:
    """Two configurations, one ten times slower than the other."""
    fast = pd.DataFrame({"configuration": "fast", "time_s": np.linspace(0, 100, 20), "kv_used_gib": 1.0,
                         "kv_capacity_gib": 40.0})
    slow = pd.DataFrame({"configuration": "slow", "time_s": np.linspace(0, 1000, 20), "kv_used_gib": 2.0,
                         "kv_capacity_gib": 20.0})
    return pd.concat([fast, slow], ignore_index=True)


def _walk(node, found):
    if isinstance(node, dict):
        found.append(node)
        for v in node.values():
            _walk(v, found)
    elif isinstance(node, list):
        for v in node:
            _walk(v, found)
    return found


def test_time_series_give_each_configuration_its_own_time_axis():
    spec = timeline_spec(_timeline(), "kv_used_gib", "KV", "GiB", rule_column="kv_capacity_gib", rule_label="cap")
    vl = altair_chart(spec).to_dict()
    assert vl["facet"]["field"] == "configuration"
    assert vl["resolve"]["scale"]["x"] == "independent"
    # One configuration alone keeps a single panel.
    one = timeline_spec(_timeline().query("configuration == 'fast'"), "kv_used_gib", "KV", "GiB")
    assert "facet" not in altair_chart(one).to_dict()


def test_kv_chart_draws_each_configurations_capacity():
    spec = timeline_spec(_timeline(), "kv_used_gib", "KV", "GiB", rule_column="kv_capacity_gib", rule_label="cap")
    marks = [n for n in _walk(altair_chart(spec).to_dict(), []) if n.get("mark") in ("rule", {"type": "rule"})
             or (isinstance(n.get("mark"), dict) and n["mark"].get("type") == "rule")]
    assert marks and "kv_capacity_gib" in json.dumps(marks[0]["encoding"])
    assert png_bytes(spec, dpi=40).startswith(b"\x89PNG")


def test_latency_cdfs_carry_the_slo_targets_as_lines():
    cdf = pd.DataFrame({"configuration": "a", "metric": ["TTFT", "TTFT", "TPOT", "TPOT"],
                        "latency_s": [0.1, 0.2, 0.01, 0.02], "fraction": [0.5, 1.0, 0.5, 1.0]})
    spec = latency_cdf_spec(cdf, {"slo_ttft_s": 0.5, "slo_tpot_s": None})
    assert spec.frame.loc[spec.frame["metric"] == "TTFT", "slo_target_s"].eq(0.5).all()
    assert spec.frame.loc[spec.frame["metric"] == "TPOT", "slo_target_s"].isna().all()
    text = json.dumps(altair_chart(spec).to_dict())
    assert '"rule"' in text and "slo_target_s" in text
    assert png_bytes(spec, dpi=40).startswith(b"\x89PNG")


def _summary(**over):
    base = {"name": "x", "slo_met": False, "overloaded": False, "slo_attainment": 0.5, "slo_target_attainment": 0.9,
            "queue_mean_s": 8.0, "ttft_mean_s": 9.0, "e2e_mean_s": 10.0, "kv_util_peak": 0.5, "preemptions": 0,
            "offered_rps": 4.0, "served_rps": 1.8, "cost_per_million_output_tokens_usd": 1.0}
    return {**base, **over}


def test_time_shares_split_the_mean_request_into_queue_prefill_and_decode():
    from app.tables import time_shares

    shares = time_shares(_summary())
    assert shares == pytest.approx({"queueing": 0.8, "prefill": 0.1, "decode": 0.1})
    assert time_shares(_summary(e2e_mean_s=float("nan"))) == {}


def test_the_verdict_explains_why_a_configuration_misses():
    from app.tables import display_table, verdict

    queued = _summary(name="queued")
    kv_bound = _summary(name="kv", queue_mean_s=0.1, ttft_mean_s=0.3, e2e_mean_s=10.0, kv_util_peak=0.995,
                        preemptions=12)
    overloaded = _summary(name="slow", overloaded=True, slo_met=True)
    _, text = verdict([queued, kv_bound, overloaded], [{}, {}, {}])
    assert "queued misses it" in text and "waiting in the queue, 80.0%" in text
    assert "decode (first token to finish)" in text and "KV cache fills up" in text and "12 preemptions" in text
    assert "slow is overloaded" in text and "served 1.80 of 4.00 req/s offered. Why: most" in text
    table = display_table([queued])
    assert table.loc["time share: queue / prefill / decode", "queued"] == "80.0% / 10.0% / 10.0%"


@pytest.fixture(scope="module")
def small_run():
    from app.analysis import analyse
    from app.setup import default_setup, scenario_data
    from simulator.config.schema import Scenario
    from simulator.engine import simulate

    setup = default_setup()
    setup.shared["simulation"] = {"num_requests": 60}
    scenario = Scenario.model_validate(scenario_data(setup)[0])
    return analyse(simulate(scenario), scenario.slo, scenario.name)


def test_roofline_places_every_priced_operator_under_its_devices_roof(small_run):
    from app.roofline import roofline_chart, roofline_frame

    peak, bandwidth = small_run.peaks
    assert peak > 1e14 and bandwidth > 1e12  # the H100's datasheet figures, not placeholders
    frame = roofline_frame(small_run.breakdown.assign(configuration="a"), [("a", peak, bandwidth)])
    ops = frame[frame["kind"] == "operator"]
    assert set(ops["phase"]) == {"prefill", "decode"}
    roof_at = np.minimum(peak, bandwidth * ops["intensity_flop_per_byte"])
    assert (ops["flops_per_s"] <= roof_at * (1 + 1e-9)).all()  # nothing beats the hardware
    # A decode step's projections read every weight for a few tokens; a prefill's reuse them across the prompt.
    mlp = ops[ops["operator"] == "mlp"].set_index("phase")["intensity_flop_per_byte"]
    assert mlp["prefill"] > 20 * mlp["decode"]
    assert "communication" not in set(ops["op_class"])
    text = json.dumps(roofline_chart(frame).to_dict())
    assert '"log"' in text and "attainable_flops_per_s" in text


def test_frontier_points_come_from_the_summary(small_run):
    from app.frontiers import cost_latency_chart, frontier_frame, throughput_interactivity_chart

    s = small_run.summary
    frame = frontier_frame([s, {**s, "name": "b", "overloaded": True}])
    row = frame.iloc[0]
    assert row["tokens_per_s_per_gpu"] == pytest.approx(s["served_output_tps"] / s["num_gpus"])
    assert row["tokens_per_s_per_user"] == pytest.approx(1 / s["tpot_mean_s"])
    assert row["usd_per_million_output_tokens"] == s["cost_per_million_output_tokens_usd"]
    for chart in (cost_latency_chart(frame), throughput_interactivity_chart(frame)):
        text = json.dumps(chart.to_dict())
        assert "overloaded" in text and '"point"' in text


def test_per_pool_keys_become_a_table_and_single_pool_runs_have_none(small_run):
    from app.pools_table import pool_frame

    assert pool_frame([small_run.summary]).empty
    summary = {"name": "disagg", "num_gpus": 3, "pool.prefill.num_gpus": 1, "pool.prefill.busy": 0.9,
               "pool.decode.num_gpus": 2, "pool.decode.busy": 0.4, "pool.decode.kv_util_peak": 0.7}
    frame = pool_frame([summary, {**summary, "name": "other"}])
    assert list(frame["pool"]) == ["prefill", "decode", "prefill", "decode"]
    decode = frame[(frame["configuration"] == "disagg") & (frame["pool"] == "decode")].iloc[0]
    assert decode["num_gpus"] == 2 and decode["busy"] == 0.4 and decode["kv_util_peak"] == 0.7


def test_labels_are_plain_words_and_no_deploy_button():
    from pathlib import Path

    from app.cli import streamlit_command
    from app.widgets import _label

    assert _label("ttft_s") == "TTFT (s)"
    assert _label("max_num_batched_tokens") == "max num batched tokens"
    assert _label("kv_dtype") == "KV dtype" and _label("tp") == "TP"
    command = streamlit_command(Path("app/dashboard.py"), 8501, "127.0.0.1")
    assert command[command.index("--client.toolbarMode") + 1] == "minimal"
