"""The measurement schema and the importers: units converted once, bad files refused clearly.

Small synthetic copies of the published tables (same columns, a few rows) test
the conversions without the shared data; the last tests read the real tables
and skip, with the reason, where ``../shared/data`` is absent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from capsim.errors import CapsimError
from hwmodels.calibration.importers import data_dir_available, import_aiconfigurator, import_vidur, resolve_data_dir
from hwmodels.calibration.schema import COLUMNS, check_frame, make_frame, read_measurements, write_measurements


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.strip() + "\n", encoding="utf-8")
    return path


def _aic_tree(root: Path, gemm_rows: str) -> Path:
    base = root / "aiconfigurator" / "perf" / "h100_sxm"
    _write(base / "gemm_bf16.csv", "kernel_source,gemm_dtype,m,n,k,latency\n" + gemm_rows)
    _write(base / "nccl.csv", "op_name,kernel_source,nccl_dtype,num_gpus,message_size,latency\n"
                              "all_reduce,NCCL,half,8,1048576,0.05\nalltoall,NCCL,int8,4,1024,0.01")
    _write(base / "generation_attention_bf16.csv",
           "kernel_source,batch_size,isl,num_heads,num_key_value_heads,head_dim,attn_dtype,kv_cache_dtype,step,"
           "window_size,latency\nfa3,8,1,32,8,128,bfloat16,bfloat16,4095,0,0.06")
    return root


# ---------------------------------------------------------------------------- schema


def test_make_frame_has_every_column_and_refuses_unknown_ones():
    df = make_frame([{"device": "cpu", "op_class": "gemm", "m": 1, "n": 2, "k": 3, "measured_s": 1e-3}])
    assert list(df.columns) == list(COLUMNS)
    with pytest.raises(CapsimError, match="unknown measurement column"):
        make_frame([{"device": "cpu", "op_clas": "gemm"}])


@pytest.mark.parametrize(
    ("row", "column"),
    [
        ({"device": "g", "op_class": "gemm", "m": 1, "n": 1, "k": 1, "measured_s": -1.0}, "measured_s"),
        ({"device": "g", "op_class": "gemm", "m": 1, "n": 1, "k": 1, "measured_s": "fast"}, "measured_s"),
        ({"device": "g", "op_class": "matmul", "measured_s": 1.0}, "op_class"),
        ({"device": "g", "op_class": "gemm", "m": 1, "n": 1, "measured_s": 1.0}, "k"),
    ],
)
def test_check_frame_names_the_row_and_column(row, column):
    good = {"device": "g", "op_class": "gemm", "m": 1, "n": 1, "k": 1, "measured_s": 1.0}
    with pytest.raises(CapsimError) as info:
        check_frame(pd.DataFrame([good, good, row]), where="t.csv")
    assert info.value.where == f"t.csv row 3, column {column}"


def test_measurements_round_trip_through_csv(tmp_path):
    df = make_frame([{"device": "cpu", "op_class": "elementwise", "op": "norm", "nbytes": 4096.0, "measured_s": 2e-6,
                      "source": "measure.py numpy-cpu case 1", "versions": "numpy 2"}])
    back = read_measurements(write_measurements(df, tmp_path / "m.csv"))
    assert back.loc[0, "nbytes"] == 4096.0 and back.loc[0, "measured_s"] == 2e-6
    assert back.loc[0, "op"] == "norm" and back.loc[0, "model"] == ""


# ------------------------------------------------------------------------ importers


def test_aiconfigurator_units_are_converted(tmp_path):
    root = _aic_tree(tmp_path, "torch.nn.functional.linear,bfloat16,4096,4096,4096,1.5")
    df, notes = import_aiconfigurator(root)
    gemm = df[df["op_class"] == "gemm"].iloc[0]
    assert gemm["device"] == "h100-sxm" and gemm["dtype"] == "bf16"
    assert gemm["measured_s"] == pytest.approx(1.5e-3)  # milliseconds -> seconds
    ar = df[df["op_class"] == "all_reduce"].iloc[0]
    assert ar["nbytes"] == 2 * 1048576  # elements of half -> bytes
    assert ar["group_size"] == 8 and ar["op"] == "nccl_all_reduce"
    a2a = df[df["op_class"] == "all_to_all"].iloc[0]
    assert a2a["nbytes"] == 1024 and a2a["dtype"] == "int8"  # int8: one byte per element
    dec = df[df["op_class"] == "attention_decode"].iloc[0]
    assert (dec["batch"], dec["context"], dec["heads"], dec["kv_heads"]) == (8, 4095, 32, 8)
    assert any("gemm: 1 rows" in n for n in notes)


def test_malformed_csv_is_refused_with_file_row_and_column(tmp_path):
    rows = "k,bfloat16,1,2,3,0.1\nk,bfloat16,1,2,3,0.2\nk,bfloat16,1,2,3,n/a"
    root = _aic_tree(tmp_path, rows)
    with pytest.raises(CapsimError) as info:
        import_aiconfigurator(root)
    assert info.value.where == "aiconfigurator/perf/h100_sxm/gemm_bf16.csv row 3, column latency"
    assert "'n/a'" in info.value.problem


def test_missing_column_is_refused_naming_the_header(tmp_path):
    root = tmp_path
    _write(root / "aiconfigurator" / "perf" / "a100_sxm" / "gemm_bf16.csv", "m,n,k,time\n1,2,3,0.1")
    with pytest.raises(CapsimError) as info:
        import_aiconfigurator(root)
    assert info.value.where.endswith("gemm_bf16.csv, header")
    assert "'latency'" in info.value.problem


def test_vidur_network_sizes_are_bytes_and_milliseconds_become_seconds(tmp_path):
    net = tmp_path / "vidur" / "profiling" / "network" / "a100_dgx"
    header = (",time_stats.all_reduce.min,time_stats.all_reduce.max,time_stats.all_reduce.mean,"
              "time_stats.all_reduce.median,time_stats.all_reduce.std,rank,num_workers,size,collective,"
              "devices_per_node,max_devices_per_node")
    _write(net / "all_reduce.csv", header + "\n0,0.03,0.07,0.05,0.043,0.019,0,2,2048,all_reduce,2,8\n"
                                            "1,0.03,0.07,0.05,0.5,0.019,0,16,2048,all_reduce,8,8")
    df, _ = import_vidur(tmp_path)
    assert df["nbytes"].tolist() == [2048.0, 2048.0]
    assert df["measured_s"].tolist() == pytest.approx([0.043e-3, 0.5e-3])
    assert df["link"].tolist() == ["nvswitch", "ib"]  # 16 workers on 8-GPU nodes spans two nodes


def test_data_dir_resolution_prefers_option_then_env(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPSIM_SHARED_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "opt") == tmp_path / "opt"
    assert resolve_data_dir(None) == tmp_path / "env"
    assert not data_dir_available(None)


# ------------------------------------------------------------------ the real tables

# The raw tables: $CAPSIM_SHARED_DATA, else the project's development layout (a shared/data folder beside the
# checkout, as CI lays it out); the shipped tidy table is what a user's clone has instead.
REAL = resolve_data_dir(None) or Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(
    not data_dir_available(REAL),
    reason=f"shared data folder {REAL} absent (set CAPSIM_SHARED_DATA to the folder holding aiconfigurator/ "
    "and vidur/)",
)


@needs_data
def test_real_aiconfigurator_h200_gemm_table_matches_its_source_note():
    from hwmodels.calibration.importers.aiconfigurator import _gemm

    path = REAL / "aiconfigurator" / "perf" / "h200_sxm" / "gemm_bf16.csv"
    df = _gemm(path, REAL, "h200", "vllm 0.24.0")
    assert len(df) == 35_742  # row count stated in SOURCE.md
    # The best achieved throughput is just under the 989 TFLOP/s peak (SOURCE.md: ~940), in seconds.
    best = (2 * df["m"] * df["n"] * df["k"] / df["measured_s"]).max()
    assert 0.85e15 < best < 0.989e15


@needs_data
def test_real_vidur_h100_llama2_7b_up_projection_matches_its_source_note():
    from hwmodels.calibration.importers.vidur import _mlp_table

    path = REAL / "vidur" / "profiling" / "compute" / "h100" / "meta-llama" / "Llama-2-7b-hf" / "mlp.csv"
    df = _mlp_table(path, REAL, "h100-sxm")
    row = df[(df["op"] == "mlp_up_proj") & (df["m"] == 4096) & (df["tp"] == 1)].iloc[0]
    assert (row["n"], row["k"]) == (2 * 11008, 4096)
    assert row["measured_s"] == pytest.approx(0.993e-3, rel=0.01)  # SOURCE.md sanity check: 0.993 ms


# ------------------------------------------------------------------ the shipped tidy table


def test_without_a_data_folder_the_shipped_table_is_used(monkeypatch):
    """A clone has no raw tables: validate, fit and the accuracy benchmark read the shipped table."""
    from capsim.errors import CapsimError
    from hwmodels.calibration.importers import import_all, load_measurements

    monkeypatch.delenv("CAPSIM_SHARED_DATA", raising=False)
    df, notes = load_measurements(None)
    assert {"a100-80gb-sxm", "h100-sxm", "h200"} <= set(df["device"])
    assert {"gemm", "attention_prefill", "attention_decode", "all_reduce"} <= set(df["op_class"])
    assert "shipped" in notes[0]
    with pytest.raises(CapsimError, match="raw-data folder"):
        import_all(None)  # `calibrate import` needs the raw tables it converts
    with pytest.raises(CapsimError, match="no published measurements"):
        load_measurements(Path("/nonexistent"))


@needs_data
def test_the_shipped_table_is_what_import_builds_from_the_raw_tables():
    from hwmodels.calibration.importers import SHIPPED_MEASUREMENTS, import_all
    from hwmodels.calibration.schema import read_measurements

    shipped = read_measurements(SHIPPED_MEASUREMENTS)
    imported, _ = import_all(REAL)
    assert len(shipped) == len(imported)
    key = ["source", "device", "op_class"]
    a = shipped.sort_values(key, kind="stable").reset_index(drop=True)
    b = imported.sort_values(key, kind="stable").reset_index(drop=True)
    assert (a["source"] == b["source"]).all()
    np.testing.assert_allclose(a["measured_s"], b["measured_s"], rtol=1e-8)


def test_validate_answers_from_the_profiles_held_out_records(monkeypatch):
    """`capsim calibrate validate` without --refit prints what each shipped profile recorded when it was fitted
    (seconds, not a refit), row for row."""
    import json as _json

    from typer.testing import CliRunner

    from hwmodels.calibration.profile import shipped_profile
    from simulator.cli import app

    monkeypatch.delenv("CAPSIM_SHARED_DATA", raising=False)
    result = CliRunner().invoke(app, ["calibrate", "validate", "--device", "h200", "--json"])
    assert result.exit_code == 0, result.output
    table = _json.loads(result.stdout[result.stdout.index("{"):])
    doc = shipped_profile("h200").doc
    assert table["h200"]["gemm"]["calibrated"] == doc["operators"]["gemm"]["bf16"]["heldout"]["calibrated"]
    assert any(key.startswith("all_reduce x") for key in table["h200"])
    bad = CliRunner().invoke(app, ["calibrate", "validate", "--device", "l40s"])
    assert bad.exit_code == 2 and "no shipped profile" in bad.output
