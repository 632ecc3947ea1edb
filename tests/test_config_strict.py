"""Scenario files that used to be accepted with a silently wrong meaning, or refused with an unhelpful message."""

from __future__ import annotations

import pytest
import yaml

from capsim.errors import CapsimError
from simulator.config.loader import UniqueKeyLoader, load_scenarios


def write(tmp_path, text: str | bytes, name: str = "s.yaml"):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def test_a_section_given_twice_is_refused_naming_the_key_and_both_lines(tmp_path):
    path = write(tmp_path, "name: x\ndeployment:\n  tp: 1\nworkload: {qps: 2}\ndeployment:\n  tp: 2\n")
    with pytest.raises(CapsimError) as info:
        load_scenarios(path)
    err = info.value
    assert "'deployment' appears twice" in err.problem and "lines 2 and 5" in err.problem
    assert err.where == f"{path} line 5"


def test_a_repeated_field_inside_a_section_or_flow_mapping_is_refused(tmp_path):
    with pytest.raises(CapsimError, match=r"'tp' appears twice .*lines 3 and 4"):
        load_scenarios(write(tmp_path, "name: x\ndeployment:\n  tp: 1\n  tp: 2\n"))
    with pytest.raises(CapsimError, match=r"'qps' appears twice .*lines 1 and 1"):
        load_scenarios(write(tmp_path, "workload: {qps: 2, qps: 4}\n"))


def test_merge_keys_may_still_be_overridden() -> None:
    doc = yaml.load("a: &x {p: 1, q: 2}\nb:\n  <<: *x\n  p: 3\n", Loader=UniqueKeyLoader)  # noqa: S506
    assert doc == {"a": {"p": 1, "q": 2}, "b": {"p": 3, "q": 2}}
