"""The pandas-free trace readers (traces/loaders/fast.py) against the pandas loaders they stand in for.

The claim that keeps one set of checks: for any file, a format's ``read`` either returns None (and the pandas
``load`` reads the file), or returns exactly the columns ``load`` returns, or raises exactly the error ``load``
raises. Checked on every shipped trace, on the corrupt files of tests/test_traces_loaders.py, and on generated
CSV and JSONL files built from valid, corrupt and odd cells.
"""

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capsim.errors import CapsimError
from traces import TraceConfig, list_traces
from traces.loaders import TRACE_FORMATS, read_table
from traces.loaders.fast import csv_header
from traces.loaders.table import TraceTable
from traces.replay import load_trace_source, prepare_trace


def outcome(call):
    """What a reader did: ("table", TraceTable), ("none",) or ("error", type, message, where, fix)."""
    try:
        result = call()
    except (CapsimError, ValueError, TypeError, OverflowError) as exc:
        return ("error", type(exc).__name__, str(exc), getattr(exc, "where", None), getattr(exc, "fix", None))
    if result is None:
        return ("none",)
    return ("table", result if isinstance(result, TraceTable) else TraceTable.from_frame(result))


def assert_same_table(fast: TraceTable, slow: TraceTable) -> None:
    assert fast.columns == slow.columns and fast.attrs == slow.attrs and len(fast) == len(slow)
    for name in slow.columns:
        a, b = fast[name], slow[name]
        assert a.dtype == b.dtype, name
        if a.dtype == object:
            assert all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(a, b, strict=True)), name
        else:
            assert np.array_equal(a, b, equal_nan=True), name  # bit for bit: no tolerance


def check_agreement(path, fmt: str, columns=None) -> str:
    """Compare the fast reader with the pandas loader on one file; returns what the fast reader did."""
    entry = TRACE_FORMATS.get(fmt)
    fast = outcome(lambda: entry.read(path, columns))
    if fast[0] == "none":
        return "none"
    slow = outcome(lambda: entry.load(path, columns))
    assert fast[0] == slow[0], (fast, slow)
    if fast[0] == "table":
        assert_same_table(fast[1], slow[1])
    else:
        assert fast == slow
    return fast[0]


@pytest.mark.parametrize("trace", list_traces(), ids=lambda t: t.id)
def test_every_shipped_trace_is_read_without_pandas_to_the_same_bits(trace):
    assert check_agreement(trace.path, trace.format) == "table"
    assert list(read_table(trace.path).columns) == TRACE_FORMATS.get(trace.format).load(trace.path).columns.tolist()


#: The corrupt and edge files of tests/test_traces_loaders.py (and a few more): (name, text, format, columns).
CASES = [
    ("a.csv", "when,size\n0,1\n", "csv", None),
    ("b.csv", "TIMESTAMP,ContextTokens\n2023-01-01 00:00:00,1\n", "azure", None),
    ("c.csv", "a,b,c\n0,1,2\n", "csv", {"prompt": "b", "output": "zz"}),
    ("d.csv", "arrival_s,prompt_tokens,output_tokens\n0,5,5\n1,5,5\n2,-7,5\n", "csv", None),
    ("e.csv", "prompt_tokens,output_tokens\n5,5\nabc,5\n", "csv", None),
    ("f.csv", "prompt_tokens,output_tokens\n5,5.5\n", "csv", None),
    ("g.csv", "prompt_tokens,output_tokens\n5,\n", "csv", None),
    ("h.csv", "arrival_s,prompt_tokens,output_tokens\n" + "".join(f"{i},10,{i % 2}\n" for i in range(6)), "csv", None),
    (
        "i.csv",
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,1,1\nyesterday,1,1\n",
        "azure",
        None,
    ),
    ("j.csv", "", "csv", None),
    ("k.csv", "prompt_tokens,output_tokens\n", "csv", None),
    ("l.csv", "num_prefill_tokens,num_decode_tokens\n3,0\n", "vidur", None),
    ("m.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n0.5,3,1\n0.25,4,2\n", "vidur", None),
    ("n.csv", "ts,p,o\n1,2,3\n", "csv", {"arrival": "ts", "prompt": "p", "output": "o", "arrival_unit": "hours"}),
    ("o.csv", "ts,p,o\n1,2,3\n", "csv", {"prompt": "p", "output": "o", "bogus": "x"}),
    ("p.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-02-30 00:00:00,1,1\n", "azure", None),
    ("q.csv", "\ufeffprompt_tokens,output_tokens\n1,2\n", "csv", None),
    ("r.csv", 'prompt_tokens,output_tokens\n"1",2\n', "csv", None),
    ("s.csv", "prompt_tokens,output_tokens\n1,2\n\n3,4\n", "csv", None),
    ("t.csv", "prompt_tokens,output_tokens\n1,2,3\n", "csv", None),
]
_GOOD = json.dumps({"timestamp": 0, "input_length": 5, "output_length": 2, "hash_ids": [0]})
JSONL_CASES = [
    ("a.jsonl", f"{_GOOD}\n{_GOOD}\n{{'timestamp': 3}}\n", "mooncake", None),
    ("b.jsonl", f"{_GOOD}\n[1, 2]\n", "mooncake", None),
    (
        "c.jsonl",
        f"{_GOOD}\n\n" + json.dumps({"timestamp": 1, "input_length": 0, "output_length": 2}) + "\n",
        "mooncake",
        None,
    ),
    ("d.jsonl", f"{_GOOD}\n" + json.dumps({"timestamp": 10, "output_length": 2}) + "\n", "mooncake", None),
    ("e.jsonl", "\n\n", "jsonl", None),
    ("f.jsonl", '{"p": 10, "o": 3}\n\n{"p": 11, "o": 4}\n', "jsonl", {"prompt": "p", "output": "o"}),
    (
        "g.jsonl",
        f"{_GOOD}\n" + json.dumps({"timestamp": 1, "input_length": 3, "output_length": 2, "hash_ids": [True]}),
        "mooncake",
        None,
    ),
    (
        "h.jsonl",
        '{"t": "2024-01-01 00:00:01.5", "p": 1, "o": 2}\n{"t": "2024-01-01 00:00:00", "p": 1, "o": 2}\n',
        "jsonl",
        {"arrival": "t", "prompt": "p", "output": "o"},
    ),
    ("i.jsonl", '{"t": 1.5, "p": 1.0, "o": 2}\n', "jsonl", {"arrival": "t", "prompt": "p", "output": "o"}),
    (
        "j.jsonl",
        '{"t": 1, "p": 1, "o": 2}\n{"p": 2, "o": 2}\n',
        "jsonl",
        {"arrival": "t", "prompt": "p", "output": "o"},
    ),
]


@pytest.mark.parametrize("name,text,fmt,columns", CASES + JSONL_CASES, ids=[c[0] for c in CASES + JSONL_CASES])
def test_corrupt_and_odd_files_give_the_pandas_loaders_result(tmp_path, name, text, fmt, columns):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    check_agreement(path, fmt, columns)
    # read_table, what replay uses, reports exactly what the pandas loader reports
    slow = outcome(lambda: TRACE_FORMATS.get(fmt).load(path, columns))
    table = outcome(lambda: read_table(path, fmt, columns))
    assert table[0] == slow[0]
    if slow[0] == "error":
        assert table == slow


def test_plain_files_of_every_kind_take_the_fast_path(tmp_path):
    """Not vacuous: whole numbers, integer times in each unit, date-times, CRLF line ends and spaces after commas."""
    files = {
        "ms.csv": (
            "ts_ms, in_tok, out_tok, user\r\n1000, 10, 5, a\r\n1500, 20, 6, b\r\n",
            "csv",
            {"arrival": "ts_ms", "prompt": "in_tok", "output": "out_tok", "arrival_unit": "ms"},
        ),
        "dt.csv": (
            "timestamp,input_tokens,output_tokens\n2024-01-01 00:00:01.5,10,5\n2024-01-01T00:00:00,20,6\n",
            "csv",
            None,
        ),
        "len.csv": ("prompt_len,output_len\n7,8\n", "csv", None),
        "v.csv": ("arrived_at,num_prefill_tokens,num_decode_tokens\n3,4,5\n-1,6,7\n", "vidur", None),
        "m.jsonl": (
            _GOOD
            + "\n"
            + json.dumps({"timestamp": 2.5, "input_length": 600, "output_length": 1, "hash_ids": [0, 1]})
            + "\n",
            "mooncake",
            None,
        ),
        "g.jsonl": (
            '{"time": 3, "prompt_tokens": 1, "output_tokens": 2}\n{"time": 1.25, "prompt_tokens": 4, '
            '"output_tokens": 5}\n',
            "jsonl",
            None,
        ),
    }
    for name, (text, fmt, columns) in files.items():
        path = tmp_path / name
        path.write_text(text, encoding="utf-8", newline="")
        assert check_agreement(path, fmt, columns) == "table", name


# ------------------------------------------------------------------------------ generated files

CELLS = [
    "0",
    "1",
    "7",
    "42",
    "007",
    "123456789012345",
    "1234567890123456",
    "-3",
    "-0",
    "1.5",
    "2.0",
    "1e3",
    "",
    " 5",
    "5 ",
    "abc",
    "NaN",
    "nan",
    "NA",
    "null",
    "inf",
    "+4",
    "2024-01-01 00:00:00",
    "2024-01-01T00:00:01.5",
    "2023-11-16 18:15:46.6805900",
    "2024-02-30 00:00:00",
    "2024-01-01 24:00:00",
    "2024-01-01",
    "1699-01-01 00:00:00",
    "2024-01-01 00:00:00+01:00",
    "\u0661\u0662",
    "x\u2028y",
]
NAMES = [
    "arrival_s",
    "timestamp",
    "TIMESTAMP",
    "ContextTokens",
    "GeneratedTokens",
    "arrived_at",
    "num_prefill_tokens",
    "num_decode_tokens",
    "prompt_tokens",
    "output_tokens",
    "Prompt_Tokens",
    "other",
    "",
]
UNITS = [None, "s", "ms", "us", "datetime"]
FORMATS = st.sampled_from(["csv", "vidur", "azure"])


LAYOUTS = [
    ["arrived_at", "num_prefill_tokens", "num_decode_tokens", "other"],
    ["num_prefill_tokens", "num_decode_tokens"],
    ["TIMESTAMP", "ContextTokens", "GeneratedTokens"],
    ["timestamp", "prompt_tokens", "output_tokens"],
    ["arrival_s", "Prompt_Tokens", "output_tokens"],
]
#: Valid cells by the role a column name suggests (a file is mostly these, so the fast path is exercised).
VALID = {
    "time": ["0", "12", "-3", "1000"],
    "stamp": ["2024-01-01 00:00:00", "2023-11-16 18:15:46.6805900", "2024-01-01T00:00:01.5"],
    "tokens": ["1", "7", "42", "007", "123456789012345"],
    "other": ["1", "x", "0.25", ""],
}


def _role(name: str, stamps: bool) -> str:
    if name.lower() in ("arrived_at", "timestamp", "arrival_s"):
        return "stamp" if stamps else "time"
    return "tokens" if "token" in name.lower() else "other"


@st.composite
def csv_texts(draw):
    """A format and a file: a header (a known layout, shuffled, or random names) and rows of mostly valid cells,
    sometimes with odd cells, ragged rows, spaces after commas, CRLF line ends or a missing final newline."""
    layout = draw(st.integers(0, len(LAYOUTS)))
    if layout < len(LAYOUTS):
        names = draw(st.permutations(LAYOUTS[layout]))
        fmt = ["vidur", "vidur", "azure", "csv", "csv"][layout] if draw(st.integers(0, 3)) else draw(FORMATS)
    else:
        names, fmt = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=5)), draw(FORMATS)
    stamps = fmt == "azure" or (fmt == "csv" and draw(st.booleans()))
    ragged = draw(st.integers(0, 9)) == 0
    rows = []
    for _ in range(draw(st.integers(0, 6))):
        width = len(names) + (draw(st.integers(-1, 1)) if ragged else 0)
        cells = []
        for i in range(max(width, 0)):
            pool = VALID[_role(names[i], stamps)] if i < len(names) and draw(st.integers(0, 14)) else CELLS
            cells.append(draw(st.sampled_from(pool)))
        rows.append(",".join(cells))
    sep = ", " if draw(st.booleans()) else ","
    end = "\r\n" if draw(st.integers(0, 4)) == 0 else "\n"
    return fmt, end.join([sep.join(names), *rows]) + (end if draw(st.booleans()) else "")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(file=csv_texts(), unit=st.sampled_from(UNITS), mapped=st.booleans())
def test_generated_csv_files_agree_with_pandas(tmp_path, file, unit, mapped):
    fmt, text = file
    path = tmp_path / "g.csv"
    path.write_text(text, encoding="utf-8", newline="")
    columns = None
    if fmt == "csv" and mapped:
        columns = {"arrival": "timestamp", "prompt": "prompt_tokens", "output": "output_tokens", "arrival_unit": unit}
        columns = {k: v for k, v in columns.items() if v is not None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas' date-time inference warnings
        check_agreement(path, fmt, columns)
        names = csv_header(path)
        if names is not None:  # format: auto sniffs the header pandas would read
            assert names == [str(c).strip() for c in pd.read_csv(path, nrows=0, skipinitialspace=True).columns]


JSON_VALUES = [
    0,
    1,
    5,
    2**53 + 1,
    -4,
    1.5,
    2.0,
    float("nan"),
    True,
    None,
    "3",
    "2024-01-01 00:00:00",
    "2024-01-01T00:00:00.25",
    [0, 1],
    [],
    [1.5],
    [2**64],
    "x",
]


@st.composite
def jsonl_files(draw):
    """A format, a column mapping and records holding that format's keys, mostly with valid values."""
    generic = draw(st.booleans())
    keys = ["t", "prompt_tokens", "o"] if generic else ["timestamp", "input_length", "output_length", "hash_ids"]
    unit = draw(st.sampled_from(UNITS)) if generic else "ms"
    fmt = "jsonl" if generic or not draw(st.integers(0, 3)) else "mooncake"
    columns = {"arrival": "t", "prompt": "prompt_tokens", "output": "o", "arrival_unit": unit} if generic else None
    if generic and unit is None:
        del columns["arrival_unit"]
    stamps = unit == "datetime" or (unit is None and draw(st.booleans()))
    records = []
    for _ in range(draw(st.integers(1, 5))):
        record = {}
        for key in draw(st.permutations(keys)):
            if draw(st.integers(0, 19)) == 0:
                continue  # a record without the key
            if draw(st.integers(0, 14)) == 0:
                record[key] = draw(st.sampled_from(JSON_VALUES))
            elif key == "hash_ids":
                record[key] = draw(st.lists(st.integers(0, 2**40), max_size=3))
            elif key in ("timestamp", "t") and stamps:
                record[key] = draw(st.sampled_from(["2024-01-01 00:00:00", "2024-01-01T00:00:00.25"]))
            elif key in ("timestamp", "t"):
                record[key] = draw(st.integers(-(2**40), 2**40) | st.floats(-1e9, 1e9))
            else:
                record[key] = draw(st.integers(1, 10**6))
        records.append(record)
    return fmt, columns, records


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(file=jsonl_files())
def test_generated_jsonl_files_agree_with_pandas(tmp_path, file):
    fmt, columns, records = file
    path = tmp_path / "g.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_agreement(path, fmt, columns)


# ------------------------------------------------------------------------------ the table downstream


def test_cached_tables_are_read_only_and_prepare_makes_new_arrays():
    table, label = load_trace_source("azure-conv-2023")
    assert label == "azure-conv-2023" and not table["prompt_tokens"].flags.writeable
    with pytest.raises(ValueError):
        table["prompt_tokens"][0] = 1
    prepared = prepare_trace(
        table, TraceConfig(name="azure-conv-2023", max_prompt_tokens=100), np.random.default_rng(0)
    )
    assert prepared["prompt_tokens"].max() == 100 and table["prompt_tokens"].max() > 100


def test_to_frame_is_the_pandas_loaders_frame():
    trace = next(t for t in list_traces() if t.id == "mooncake-conversation")
    frame = read_table(trace.path).to_frame()
    expected = TRACE_FORMATS.get("mooncake").load(trace.path)
    assert list(frame.columns) == list(expected.columns) and frame.attrs == expected.attrs
    assert (frame.dtypes == expected.dtypes).all()
    assert_same_table(TraceTable.from_frame(frame), TraceTable.from_frame(expected))
