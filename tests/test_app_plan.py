"""The dashboard's "Capacity plan" tab: a real (tiny) plan output is read and shown; bad input is explained inline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from app.plan_view import (  # noqa: E402
    find_plan_folders,
    goodput_frame,
    load_plan_files,
    load_plan_folder,
    pruned_frame,
)
from capsim.errors import CapsimError  # noqa: E402
from simulator.planner import load_plan, run_plan  # noqa: E402
from simulator.sweep import LocalExecutor  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "app" / "dashboard.py"

# Two candidates that fit and one the analytic pre-pass rules out (L4's decode step misses a 50 ms TPOT).
PLAN = """\
name: tiny-plan
seed: 3
model: llama-3.1-8b
workload:
  arrival: poisson
  prompt: {dist: uniform, low: 100, high: 600}
  output: {dist: uniform, low: 10, high: 80}
slo: {ttft_s: 1.0, tpot_s: 0.05, attainment: 0.9}
simulation: {num_requests: 60, warmup_s: 0}
search:
  grid:
    deployment.device: [h100-sxm, a100-80gb-sxm, l4]
target_rps: 4
rate_search: {rel_tol: 0.25, max_sims: 3}
"""


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    base = tmp_path_factory.mktemp("plan")
    (base / "plan.yaml").write_text(PLAN)
    plan, candidates = load_plan(base / "plan.yaml")
    out = base / "out"
    result = run_plan(plan, candidates, out_dir=out, executor=LocalExecutor(max_workers=1), plots=False)
    assert result.cheapest is not None
    return out, result


def plan_tab(folder: Path | str) -> AppTest:
    at = AppTest.from_file(str(PAGE), default_timeout=60)
    at.run()
    at.text_input(key="plan-folder").set_value(str(folder)).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_plan_tab_shows_cheapest_pareto_and_charts(planned):
    out, result = planned
    at = plan_tab(out)
    assert not at.error, [e.value for e in at.error]
    headline = " ".join(s.value for s in at.success)
    assert result.cheapest.name in headline and "4 req/s" in headline
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["cost per hour"] != "–" and "req/s" in metrics["max sustainable rate"]
    pareto = next(d.value for d in at.dataframe if "$/h" in d.value.columns)
    assert list(pareto["configuration"]) == [c.name for c in result.pareto]
    # the goodput bars and the attainment lines are drawn (each with a CSV download)
    charts = [json.loads(el.proto.spec) for el in at.get("vega_lite_chart")]
    assert len(charts) == 3
    front, goodput, attainment = (json.dumps(c) for c in charts)
    assert '"point"' in front and "cost_per_hour_usd" in front  # the Pareto front as a chart (issue 20)
    assert '"bar"' in goodput and '"rule"' in goodput and "max_rate_rps" in goodput  # bars and the target rule
    assert '"line"' in attainment and "slo_attainment" in attainment and "rate_rps" in attainment
    keys = {b.proto.id for b in at.get("download_button")}
    assert any("plan-csv-max_rate_per_candidate" in k for k in keys)
    assert any("plan-csv-attainment_vs_rate" in k for k in keys)


def test_goodput_frame_leaves_out_pruned_candidates(planned):
    out, result = planned
    frame = goodput_frame(load_plan_folder(out))
    searched = {c.name for c in result.candidates if c.search is not None}
    assert set(frame["configuration"]) == searched and len(searched) < len(result.candidates)
    assert frame["cost_per_hour_usd"].is_monotonic_increasing
    cheapest = frame.loc[frame["configuration"] == result.cheapest.name].iloc[0]
    assert cheapest["meets target"] == "meets target" and cheapest["max_rate_rps"] >= 4


def test_uploaded_files_load_like_the_folder(planned):
    out, result = planned
    loaded = load_plan_files((out / "plan.json").read_bytes(), (out / "candidates.csv").read_bytes())
    assert loaded.cheapest["name"] == result.cheapest.name and loaded.evaluations is None
    with pytest.raises(CapsimError, match="candidates.csv.*missing column"):
        load_plan_files((out / "plan.json").read_bytes(), b"a,b\n1,2\n")


def test_bad_folders_are_explained_inline(tmp_path):
    at = plan_tab(tmp_path / "nowhere")
    assert [e.value for e in at.error] and "folder not found" in at.error[0].value
    assert "capsim plan" in at.error[0].value  # the fix
    (tmp_path / "plan.json").write_text("{not json")
    at.text_input(key="plan-folder").set_value(str(tmp_path)).run()
    assert not at.exception
    assert "plan.json" in at.error[0].value and "not valid JSON" in at.error[0].value
    (tmp_path / "plan.json").write_text(json.dumps({"target_rps": 4, "cheapest": None, "pareto_front": []}))
    at.text_input(key="plan-folder").set_value(str(tmp_path) + "/").run()
    assert not at.exception and "no candidates.csv" in at.error[0].value


def test_find_plan_folders_newest_first(tmp_path):
    import os

    for i, name in enumerate(["a", "b/c"]):
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "plan.json").write_text("{}")
        os.utime(tmp_path / name / "plan.json", (1000 + i, 1000 + i))
    (tmp_path / "d").mkdir()
    assert find_plan_folders(tmp_path) == [tmp_path / "b" / "c", tmp_path / "a"]
    assert find_plan_folders(tmp_path / "missing") == []


def test_switching_plan_folders_keeps_the_attainment_chart(planned, tmp_path):
    """The attainment picker is per plan: after viewing one plan, another plan's folder (other candidates) still
    opens with its candidates picked and its chart drawn (a picker shared across plans came up empty)."""
    first, _ = planned
    plan_file = tmp_path / "other.yaml"
    plan_file.write_text(PLAN.replace("deployment.device: [h100-sxm, a100-80gb-sxm, l4]",
                                      "deployment.num_replicas: [1, 2]").replace("name: tiny-plan", "name: other"))
    plan, candidates = load_plan(plan_file)
    run_plan(plan, candidates, out_dir=tmp_path / "out", executor=LocalExecutor(max_workers=1), plots=False)
    at = plan_tab(first)
    assert len(at.get("vega_lite_chart")) == 3
    at.text_input(key="plan-folder").set_value(str(tmp_path / "out")).run()
    assert not at.exception, [e.value for e in at.exception]
    picked = [m.value for m in at.multiselect if m.label == "candidates"]
    assert picked and picked[0] and all("num_replicas" in name for name in picked[0])
    assert len(at.get("vega_lite_chart")) == 3


def test_pruned_candidates_are_shown_with_their_reason(planned):
    """Issue 20: a candidate the analytic pre-pass rules out is listed with why, in words, not only as a raw row."""
    out, result = planned
    pruned = [c for c in result.candidates if c.pruned]
    assert pruned, "the tiny plan prunes L4"
    frame = pruned_frame(load_plan_folder(out))
    assert set(frame["configuration"]) == {c.name for c in pruned}
    assert frame["why"].str.len().gt(20).all() and frame["detail"].str.len().gt(0).all()
    at = plan_tab(out)
    assert any(h.value.startswith("Pruned without simulation") for h in at.subheader)
    shown = [d.value for d in at.dataframe if "why" in d.value.columns]
    assert shown and set(shown[0]["configuration"]) == {c.name for c in pruned}


@pytest.fixture(scope="module")
def cli_outputs(tmp_path_factory):
    """A one-configuration and a two-configuration `capsim run --out`, and a `capsim sweep --out` (2 rates x 2
    devices), each tiny."""
    from typer.testing import CliRunner

    from simulator.cli import app as cli_app

    base = tmp_path_factory.mktemp("folders")
    body = PLAN.split("search:")[0].replace("name: tiny-plan", "name: tiny")
    (base / "one.yaml").write_text(body + "deployment: {device: h100-sxm}\n")
    (base / "two.yaml").write_text(body + "runs:\n  - {name: fast, deployment: {device: h100-sxm}}\n"
                                   "  - {name: slow, deployment: {device: l4}}\n")
    (base / "pools.yaml").write_text(body + "serving: {name: disaggregated, link: {kind: nvlink}}\npools:\n"
                                     "  - {name: prefill, role: prefill, device: h100-sxm, num_replicas: 1}\n"
                                     "  - {name: decode, role: decode, device: h100-sxm, num_replicas: 1}\n")
    (base / "sweep.yaml").write_text(body + "grid:\n  workload.qps: [2, 6]\n  deployment.device: [h100-sxm, l4]\n")
    for args in (["run", str(base / "one.yaml"), "--out", str(base / "one"), "--set", "workload.qps=4"],
                 ["run", str(base / "two.yaml"), "--out", str(base / "two"), "--set", "workload.qps=4"],
                 ["run", str(base / "pools.yaml"), "--out", str(base / "pools"), "--set", "workload.qps=4"],
                 ["sweep", str(base / "sweep.yaml"), "--out", str(base / "sweep")]):
        result = CliRunner().invoke(cli_app, args)
        assert result.exit_code == 0, (args, result.output)
    return base


def test_a_run_or_sweep_folder_opens_like_a_plan_folder(cli_outputs):
    """Issue 20: `capsim run --out` and `capsim sweep --out` folders open in the same tab as plan folders."""
    from app.results_folder import folder_kind

    assert [folder_kind(cli_outputs / n) for n in ("one", "two", "sweep")] == ["run", "run", "sweep"]
    at = plan_tab(cli_outputs / "two")
    assert not at.error, [e.value for e in at.error]
    tables = [t.value for t in at.table if "TTFT p50" in t.value.index]
    assert tables and list(tables[0].columns) == ["fast", "slow"]
    assert " ".join(w.value for w in [*at.success, *at.warning])  # the verdict
    at.text_input(key="plan-folder").set_value(str(cli_outputs / "one")).run()
    assert not at.exception and not at.error
    assert [list(t.value.columns) for t in at.table if "TTFT p50" in t.value.index] == [["tiny"]]
    at.text_input(key="plan-folder").set_value(str(cli_outputs / "sweep")).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    best = [t.value for t in at.table if any("keeps up" in str(c) for c in t.value.columns)]
    assert best and sorted(best[0].index) == ["device=h100-sxm", "device=l4"]
    specs = [el.proto.spec for el in at.get("vega_lite_chart")]
    assert any("slo_attainment" in s and '"line"' in s for s in specs)
    assert any("tokens_per_s_per_user" in s for s in specs)


def test_a_multi_pool_run_shows_a_table_per_pool(cli_outputs):
    """Issue 20: the summary's pool.<name>.<key> entries of a multi-pool run are shown as one row per pool."""
    at = plan_tab(cli_outputs / "pools")
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any(h.value == "Per pool" for h in at.subheader)
    pools = [d.value for d in at.dataframe if "pool" in d.value.columns]
    assert pools and list(pools[0]["pool"]) == ["prefill", "decode"]
    assert (pools[0]["num_gpus"] == 1).all() and pools[0]["busy"].between(0, 1).all()
    # a single-pool run has no such table
    at.text_input(key="plan-folder").set_value(str(cli_outputs / "one")).run()
    assert not any(h.value == "Per pool" for h in at.subheader)
