"""Trace loaders: the shipped files, generic CSV/JSONL with mappings, and every bad-file error."""

import json

import numpy as np
import pytest

from capsim.errors import TraceFormatError, UnknownNameError
from traces import TRACE_FORMATS, detect_format, list_traces, load_file, shipped_trace
from traces.catalog import DATA_DIR


def test_shipped_azure_conv():
    t = shipped_trace("azure-conv-2023")
    df = load_file(t.path, t.format)
    assert len(df) == 19_366 == t.rows
    assert df["prompt_tokens"].mean() == pytest.approx(1155, abs=1)
    assert df["output_tokens"].mean() == pytest.approx(211, abs=1)
    assert df["arrival_s"].iloc[0] == 0.0
    assert df["arrival_s"].max() / 60 == pytest.approx(58.4, abs=0.05)
    # 7 fractional digits: row 2 is 18:15:50.9951690 - 18:15:46.6805900 = 4.314579 s (vidur's value).
    assert df["arrival_s"].iloc[1] == pytest.approx(4.314579, abs=1e-6)


def test_shipped_azure_code_and_sharegpt():
    code = load_file(shipped_trace("azure-code-2023").path)
    assert len(code) == 8_819
    assert code["prompt_tokens"].mean() == pytest.approx(2048, abs=1)
    share = load_file(shipped_trace("sharegpt-lengths").path)
    assert len(share) == 30_731 and share["arrival_s"].isna().all()


def test_shipped_mooncake_timestamps_are_converted_from_ms():
    t = shipped_trace("mooncake-conversation")
    df = load_file(t.path)
    assert len(df) == 12_031
    assert df["arrival_s"].max() == pytest.approx(3537, abs=1)
    hashes = df["prefix_block_hashes"]
    assert all(len(h) == -(-p // 512) for h, p in zip(hashes[:500], df["prompt_tokens"][:500], strict=True))
    assert hashes.iloc[0].dtype == np.int64 and hashes.iloc[1][0] == 0


def test_catalog_lists_every_shipped_file_with_licence():
    ids = [t.id for t in list_traces()]
    assert ids == ["azure-code-2023", "azure-conv-2023", "mooncake-conversation", "sharegpt-lengths"]
    for t in list_traces():
        assert t.path.is_file() and t.licence and t.description and t.citation
    for licence in ("LICENSE-CC-BY-4.0.txt", "LICENSE-APACHE-2.0.txt", "LICENSE-MIT-vidur.txt", "README.md"):
        assert (DATA_DIR / licence).is_file()
    assert sum(p.stat().st_size for p in DATA_DIR.iterdir()) < 8 * 2**20


def test_unknown_shipped_trace_suggests_names():
    with pytest.raises(UnknownNameError) as err:
        shipped_trace("mooncake-conversations")
    assert "mooncake-conversation" in err.value.fix


def test_auto_detection(tmp_path):
    assert [
        detect_format(shipped_trace(i).path) for i in ("azure-conv-2023", "mooncake-conversation", "sharegpt-lengths")
    ] == ["azure", "mooncake", "vidur"]
    other = tmp_path / "mine.csv"
    other.write_text("t,in,out\n0,1,2\n")
    assert detect_format(other) == "csv"
    lines = tmp_path / "mine.jsonl"
    lines.write_text('{"t": 0, "in": 1, "out": 2}\n')
    assert detect_format(lines) == "jsonl"
    assert TRACE_FORMATS.names() == ["azure", "csv", "jsonl", "mooncake", "vidur"]


def test_generic_csv_with_column_mapping_and_ms_arrivals(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("ts_ms,in_tok,out_tok,user\n1000,10,5,a\n1500,20,6,b\n3000,30,7,c\n")
    df = load_file(path, "csv", {"arrival": "ts_ms", "prompt": "in_tok", "output": "out_tok", "arrival_unit": "ms"})
    np.testing.assert_allclose(df["arrival_s"], [0.0, 0.5, 2.0])
    assert df["prompt_tokens"].tolist() == [10, 20, 30] and df["output_tokens"].tolist() == [5, 6, 7]


def test_generic_csv_finds_common_names_and_parses_datetimes(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("timestamp,input_tokens,output_tokens\n2024-01-01 00:00:01.5,10,5\n2024-01-01 00:00:00,20,6\n")
    df = load_file(path)
    np.testing.assert_allclose(df["arrival_s"], [1.5, 0.0])  # re-based to the earliest, file order kept


def test_generic_jsonl_with_mapping_and_length_only(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"p": 10, "o": 3}\n\n{"p": 11, "o": 4}\n')
    df = load_file(path, columns={"prompt": "p", "output": "o"})
    assert df["prompt_tokens"].tolist() == [10, 11] and df["arrival_s"].isna().all()


# ----------------------------------------------------------------------------------- errors


def error_of(tmp_path, name, text, fmt="auto", columns=None) -> TraceFormatError:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(TraceFormatError) as err:
        load_file(path, fmt, columns)
    return err.value


def test_missing_columns_lists_what_exists_and_suggests_mapping(tmp_path):
    err = error_of(tmp_path, "a.csv", "when,size\n0,1\n")
    assert "'when', 'size'" in str(err) and "prompt" in str(err) and "columns" in err.fix
    err = error_of(tmp_path, "b.csv", "TIMESTAMP,ContextTokens\n2023-01-01 00:00:00,1\n", fmt="azure")
    assert "'GeneratedTokens'" in str(err) and "columns:" in err.fix


def test_mapping_to_an_absent_column(tmp_path):
    err = error_of(tmp_path, "a.csv", "a,b,c\n0,1,2\n", columns={"prompt": "b", "output": "zz"})
    assert "'zz'" in str(err) and "'a', 'b', 'c'" in str(err)


def test_negative_tokens_name_the_row_and_value(tmp_path):
    err = error_of(tmp_path, "a.csv", "arrival_s,prompt_tokens,output_tokens\n0,5,5\n1,5,5\n2,-7,5\n")
    assert err.where.endswith("a.csv row 3") and "-7" in str(err) and "negative" in str(err)
    assert "negative value: -7" in str(err) and "np." not in str(err)  # the value, not numpy's repr of it


def test_non_numeric_and_fractional_tokens(tmp_path):
    err = error_of(tmp_path, "a.csv", "prompt_tokens,output_tokens\n5,5\nabc,5\n")
    assert err.where.endswith("row 2") and "'abc'" in str(err)
    err = error_of(tmp_path, "b.csv", "prompt_tokens,output_tokens\n5,5.5\n")
    assert err.where.endswith("row 1") and "fractional" in str(err)
    err = error_of(tmp_path, "c.csv", "prompt_tokens,output_tokens\n5,\n")
    assert err.where.endswith("row 1") and "missing" in str(err)


def test_zero_output_rows_are_reported_not_dropped(tmp_path):
    rows = "".join(f"{i},10,{0 if i in (2, 4) else 3}\n" for i in range(6))
    err = error_of(tmp_path, "a.csv", "arrival_s,prompt_tokens,output_tokens\n" + rows)
    assert "2 row(s) have 0 output tokens" in str(err) and "rows 3, 5" in str(err)


def test_bad_json_line_is_named(tmp_path):
    good = json.dumps({"timestamp": 0, "input_length": 5, "output_length": 2, "hash_ids": [0]})
    err = error_of(tmp_path, "m.jsonl", f"{good}\n{good}\n{{'timestamp': 3}}\n")
    assert err.where.endswith("m.jsonl line 3") and "not valid JSON" in str(err)
    err = error_of(tmp_path, "n.jsonl", f"{good}\n[1, 2]\n")
    assert err.where.endswith("line 2") and "JSON object" in str(err)


def test_mooncake_bad_values_name_the_line(tmp_path):
    good = json.dumps({"timestamp": 0, "input_length": 5, "output_length": 2, "hash_ids": [0]})
    bad = json.dumps({"timestamp": 10, "input_length": 0, "output_length": 2, "hash_ids": [0]})
    err = error_of(tmp_path, "m.jsonl", f"{good}\n\n{bad}\n")
    assert err.where.endswith("line 3") and "0 prompt tokens" in str(err)
    missing = json.dumps({"timestamp": 10, "output_length": 2})
    err = error_of(tmp_path, "n.jsonl", f"{good}\n{missing}\n", fmt="mooncake")
    assert err.where.endswith("line 2") and "'input_length'" in str(err)


def test_bad_datetime_and_empty_files(tmp_path):
    err = error_of(
        tmp_path, "a.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,1,1\nyesterday,1,1\n"
    )
    assert err.where.endswith("row 2") and "'yesterday'" in str(err)
    assert "empty" in str(error_of(tmp_path, "e.csv", ""))
    assert "no data rows" in str(error_of(tmp_path, "h.csv", "prompt_tokens,output_tokens\n"))
    assert "empty" in str(error_of(tmp_path, "e.jsonl", "\n\n"))


def test_missing_file():
    with pytest.raises(TraceFormatError, match="file not found"):
        load_file("/nonexistent/trace.csv")
