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


@pytest.mark.parametrize(
    ("field", "text", "expected"),
    [
        ("deployment.tp", "deployment: {tp: true}", "true/false is not a count"),
        ("simulation.num_requests", "simulation: {num_requests: '10'}", "write the number without quotes"),
        ("scheduler.max_num_seqs", "scheduler: {name: vllm, max_num_seqs: yes}", "true/false is not a count"),
        ("workload.prompt.value", "workload: {qps: 1, prompt: {dist: fixed, value: true}}", "not a count"),
    ],
)
def test_a_flag_or_text_where_a_count_belongs_is_refused(tmp_path, field, text, expected):
    from simulator.system import build_system

    with pytest.raises(CapsimError) as info:
        for sc in load_scenarios(write(tmp_path, text + "\n")):
            build_system(sc)  # scheduler parameters are checked against the plug-in here
    assert field.split(".")[-1] in str(info.value) and expected in str(info.value)
    assert "Value error" not in str(info.value)


def test_whole_numbers_are_still_counts(tmp_path):
    import numpy as np

    from simulator.config.schema import DeploymentConfig

    [sc] = load_scenarios(write(tmp_path, "deployment: {tp: 2.0, num_replicas: 3}\n"))
    assert sc.deployment.tp == 2 and isinstance(sc.deployment.tp, int)
    assert DeploymentConfig(tp=np.int64(4)).tp == 4  # configurations built in code may carry numpy integers


def test_a_number_where_a_flag_belongs_is_refused():
    from simulator.models.spec import ModelSpec

    fields = dict(name="m", num_layers=2, hidden_size=64, num_heads=2, num_kv_heads=2, ffn_size=128, vocab_size=100,
                  mlp="gated", max_context=4096, norm="rmsnorm")
    assert ModelSpec(**fields, rotary=False).rotary is False
    with pytest.raises(ValueError, match="expected true or false"):
        ModelSpec(**fields, rotary=1)


def test_an_inline_model_reports_every_problem_at_once_with_the_required_fields():
    from simulator.models import model_from_dict

    with pytest.raises(CapsimError) as info:
        model_from_dict({"num_layers": 2, "hidden_size": True, "num_head": 4}, where="model")
    err = info.value
    assert "missing required field(s) name, num_heads, num_kv_heads, ffn_size, vocab_size, mlp, max_context, norm" in (
        err.problem
    )
    assert "hidden_size: expected a whole number" in err.problem
    assert "num_head: unknown field (did you mean 'num_heads'?)" in err.problem
    assert "head_dim" not in err.problem  # derived from hidden_size / num_heads, not missing in its own right
    assert err.where == "model"
    assert "needs name, num_layers, hidden_size, num_heads, num_kv_heads, ffn_size, vocab_size, mlp" in err.fix


def test_an_inline_device_reports_every_problem_at_once(tmp_path):
    text = "model: llama-3.1-8b\ndeployment:\n  device: {memory_gib: -1, name: card}\nworkload: {qps: 1}\n"
    from simulator.system import build_system

    with pytest.raises(CapsimError) as info:
        for sc in load_scenarios(write(tmp_path, text)):
            build_system(sc)
    err = info.value
    assert err.where == "deployment.device"
    assert "missing required field(s) vendor, peak_tflops, memory_bandwidth_gbs" in err.problem
    assert "memory_gib: " in err.problem and "got -1" in err.problem
    assert "an inline device needs name, vendor, peak_tflops, memory_gib" in err.fix


def test_an_infinite_rate_is_refused_saying_how_to_send_everything_at_once(tmp_path):
    with pytest.raises(CapsimError) as info:
        load_scenarios(write(tmp_path, "workload: {qps: .inf}\n"))
    assert "workload.qps" in info.value.where
    assert "finite" in info.value.problem and "arrival: closed-loop with concurrency" in info.value.problem


@pytest.mark.parametrize("field", ["duration_s", "warmup_s", "max_time_s"])
def test_an_infinite_simulation_time_names_its_section(tmp_path, field):
    with pytest.raises(CapsimError) as info:
        load_scenarios(write(tmp_path, f"workload: {{qps: 1}}\nsimulation: {{{field}: .inf}}\n"))
    assert f"simulation.{field}" in info.value.where and "finite" in info.value.problem


def test_optional_counts_keep_a_number_widget_in_the_dashboard():
    """Strict optional counts still read as ``int | None``, which the dashboard turns into a number input."""
    from app.fields import describe_field
    from simulator.config.schema import SimulationConfig
    from traces.config import WorkloadConfig

    for model, name in ((SimulationConfig, "num_requests"), (WorkloadConfig, "concurrency")):
        field = describe_field(name, model.model_fields[name])
        assert field.kind == "int" and field.optional, (name, field)
