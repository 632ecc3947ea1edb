"""A clone without the raw published tables can still run the whole accuracy benchmark and refit everything.

Why: the kernel profiles are refit from the shipped tidy table, but the whole-layer check of
``benchmarks/accuracy.py`` and the per-layer term of the engine-overhead fit read Vidur's raw layer tables and
model configs. The compact extract shipped beside the tidy table must stand in for them exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from hwmodels.calibration import layer_tables
from hwmodels.calibration.importers import load_measurements
from hwmodels.calibration.overheads import fit_overheads

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT.parent / "shared" / "data"


@pytest.mark.skipif(not (RAW / "vidur" / "profiling").is_dir(), reason="raw Vidur tables (../shared/data) absent")
def test_the_shipped_extract_holds_the_raw_tables_values_unaltered():
    raw_layers, raw_attention = layer_tables.extract_from_raw(RAW)
    layers, attention = layer_tables.shipped_tables()
    pd.testing.assert_frame_equal(layers, raw_layers, check_exact=True)
    pd.testing.assert_frame_equal(attention, raw_attention, check_exact=True)
    assert layer_tables.model_layers(None) == layer_tables.model_layers(RAW)


def test_the_extract_covers_what_the_whole_layer_check_reads():
    layers, attention = layer_tables.shipped_tables()
    assert set(layers["gpu"]) == {"a100", "h100"}
    llama70 = layers[(layers["gpu"] == "a100") & (layers["model"] == "meta-llama/Llama-2-70b-hf")]
    assert (llama70["num_tensor_parallel_workers"] == 2).sum() > 100
    assert attention["is_prefill"].dtype == bool and attention["is_prefill"].any() and (~attention["is_prefill"]).any()
    assert layer_tables.model_layers(None)["meta-llama/Llama-2-70b-hf"] == 80


def test_refitting_the_engine_overheads_from_the_shipped_table_reproduces_the_shipped_sets():
    df, _ = load_measurements(None)
    refit = fit_overheads(df, None)
    shipped = yaml.safe_load((ROOT / "hwmodels" / "calibration" / "profiles" / "overheads.yaml").read_text())
    assert json.dumps(refit["sets"], sort_keys=True) == json.dumps(shipped["sets"], sort_keys=True)


def test_the_accuracy_benchmarks_whole_layer_check_runs_without_raw_data(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CAPSIM_SHARED_DATA"}
    env["PYTHONPATH"] = str(ROOT)
    out = tmp_path / "acc.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "accuracy.py"), "--skip-heldout", "--json", str(out)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    e2e = json.loads(out.read_text())["end_to_end"]
    assert e2e["a100-80gb-sxm"]["layer_without_attention"]["n"] > 1000
    assert e2e["h100-sxm"]["layer_without_attention"]["n"] > 500
    assert e2e["a100-80gb-sxm"]["layer_70b_tp2_decode"]["n"] == 36
    # The calibrated whole layer is priced within a band a broken pairing of rows would leave.
    assert e2e["a100-80gb-sxm"]["layer_70b_tp2_decode"]["calibrated_median_ape"] < 15
