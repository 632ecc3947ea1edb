"""Scenario files: YAML errors, unknown keys, --set overrides, runs/grid expansion, plug-in names."""

from __future__ import annotations

import textwrap

import pytest

from capsim.errors import CapsimError, UnknownNameError
from simulator.config.loader import load_scenarios, parse_override
from simulator.schedulers import SCHEDULERS
from simulator.system import build_system

BASE = """\
name: base
model: llama-3.1-8b
deployment:
  device: h100-sxm
  tp: 1
workload:
  qps: 4
simulation:
  num_requests: 20
"""


def write(tmp_path, text: str, name: str = "s.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_base_scenario_loads(tmp_path):
    [sc] = load_scenarios(write(tmp_path, BASE))
    assert sc.name == "base" and sc.deployment.device == "h100-sxm" and sc.workload.qps == 4.0


def test_unknown_key_names_the_dotted_path_and_suggests(tmp_path):
    path = write(tmp_path, BASE.replace("  tp: 1", "  tpp: 1"))
    with pytest.raises(CapsimError) as info:
        load_scenarios(path)
    err = info.value
    assert "deployment.tpp" in err.where
    assert "did you mean 'tp'" in err.problem
    assert "memory_utilization" in err.problem  # lists what is valid there


def test_unknown_nested_key_in_workload(tmp_path):
    path = write(tmp_path, BASE + "  warmup: 3\n")  # under simulation:
    with pytest.raises(CapsimError) as info:
        load_scenarios(path)
    assert "simulation.warmup" in str(info.value) and "warmup_s" in str(info.value)


def test_malformed_yaml_reports_the_line(tmp_path):
    path = write(tmp_path, "name: x\nmodel: llama-3.1-8b\ndeployment:\n  tp: [1, 2\n  pp: 1\n")
    with pytest.raises(CapsimError) as info:
        load_scenarios(path)
    text = str(info.value)
    assert "malformed YAML" in text
    assert "line 5" in text  # where the unclosed flow sequence is detected


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(CapsimError, match="no such file"):
        load_scenarios(tmp_path / "nope.yaml")
    with pytest.raises(CapsimError, match="expected a mapping"):
        load_scenarios(write(tmp_path, "- just\n- a list\n"))


def test_set_override_parses_values_as_yaml(tmp_path):
    [sc] = load_scenarios(
        write(tmp_path, BASE),
        ["workload.qps=8", "deployment.tp=2", "deployment.device=a100", "simulation.num_requests=7"],
    )
    assert isinstance(sc.workload.qps, float) and sc.workload.qps == 8.0
    assert sc.deployment.tp == 2 and isinstance(sc.deployment.tp, int)
    assert sc.deployment.device == "a100"
    assert sc.simulation.num_requests == 7
    assert parse_override("a.b=0.5") == ("a.b", 0.5)
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])


def test_bad_overrides_are_explained(tmp_path):
    path = write(tmp_path, BASE)
    with pytest.raises(CapsimError, match="has no '='"):
        load_scenarios(path, ["workload.qps"])
    with pytest.raises(CapsimError) as info:
        load_scenarios(path, ["workload.qps=fast"])
    assert "workload.qps" in str(info.value) and "'fast'" in str(info.value)
    with pytest.raises(CapsimError, match="not a section"):
        load_scenarios(path, ["model.layers=3"])  # model is a name here, not a mapping


def test_runs_expand_with_names(tmp_path):
    path = write(
        tmp_path,
        BASE
        + textwrap.dedent(
            """\
            runs:
              - name: small
              - name: big
                set: {deployment.tp: 2}
              - name: a100
                deployment: {device: a100-80gb-sxm}
            """
        ),
    )
    scs = load_scenarios(path)
    assert [s.name for s in scs] == ["small", "big", "a100"]
    assert [s.deployment.tp for s in scs] == [1, 2, 1]
    assert [s.deployment.device for s in scs] == ["h100-sxm", "h100-sxm", "a100-80gb-sxm"]


def test_grid_is_a_cartesian_product(tmp_path):
    path = write(tmp_path, BASE + "grid:\n  workload.qps: [2, 4, 8]\n  deployment.tp: [1, 2]\n")
    scs = load_scenarios(path)
    assert len(scs) == 3 * 2
    assert {(s.workload.qps, s.deployment.tp) for s in scs} == {(q, t) for q in (2, 4, 8) for t in (1, 2)}
    assert scs[0].name == "qps=2,tp=1"
    assert len({s.name for s in scs}) == 6


def test_runs_cross_grid(tmp_path):
    path = write(
        tmp_path,
        BASE + "runs:\n  - name: a\n  - name: b\n    set: {deployment.tp: 2}\ngrid:\n  workload.qps: [1, 3]\n",
    )
    scs = load_scenarios(path)
    assert [s.name for s in scs] == ["a qps=1", "a qps=3", "b qps=1", "b qps=3"]
    assert [s.deployment.tp for s in scs] == [1, 1, 2, 2]


def test_empty_grid_entry_rejected(tmp_path):
    with pytest.raises(CapsimError, match="non-empty list"):
        load_scenarios(write(tmp_path, BASE + "grid:\n  workload.qps: []\n"))


def test_duplicate_run_names_rejected(tmp_path):
    path = write(tmp_path, BASE + "runs:\n  - name: x\n  - name: x\n    set: {deployment.tp: 2}\n")
    with pytest.raises(CapsimError) as info:
        load_scenarios(path)
    assert "unique" in str(info.value) and "x" in str(info.value)


def test_unknown_scheduler_param_lists_valid_params(tmp_path):
    [sc] = load_scenarios(write(tmp_path, BASE + "scheduler:\n  name: vllm\n  max_num_seqz: 8\n"))
    with pytest.raises(CapsimError) as info:
        build_system(sc)
    err = info.value
    assert "max_num_seqz" in str(err)
    assert err.where == "scheduler.max_num_seqz"
    for param in SCHEDULERS.get("vllm").Params.model_fields:
        assert param in err.fix
    assert "max_num_seqs" in err.fix


def test_unknown_scheduler_name_suggests(tmp_path):
    [sc] = load_scenarios(write(tmp_path, BASE + "scheduler:\n  name: vlm\n"))
    with pytest.raises(UnknownNameError) as info:
        build_system(sc)
    assert info.value.where == "scheduler.name"
    assert "did you mean 'vllm'" in info.value.fix


@pytest.mark.parametrize(
    ("override", "where", "suggestion"),
    [
        ("model=lama-2-7b", "model", "llama-2-7b"),
        ("deployment.device=h101", "deployment.device", "h100"),
        ("router.name=rond-robin", "router.name", "round-robin"),
    ],
)
def test_unknown_names_point_at_their_field(tmp_path, override, where, suggestion):
    [sc] = load_scenarios(write(tmp_path, BASE), [override])
    with pytest.raises(UnknownNameError) as info:
        build_system(sc)
    assert info.value.where == where
    assert repr(suggestion) in info.value.fix


def test_negative_qps_is_rejected_with_its_path(tmp_path):
    with pytest.raises(CapsimError) as info:
        load_scenarios(write(tmp_path, BASE), ["workload.qps=-1"])
    assert "workload.qps" in str(info.value) and "-1" in str(info.value)
