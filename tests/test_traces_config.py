"""WorkloadConfig: defaults, arrival-specific checks and trace settings."""

import pytest
from pydantic import ValidationError

from traces import ARRIVALS, TraceConfig, WorkloadConfig


def test_defaults_are_fixed_512_and_128_without_a_trace():
    cfg = WorkloadConfig(qps=2.0)
    assert cfg.arrival == "poisson"
    assert cfg.length_config("prompt").describe() == "fixed(512)"
    assert cfg.length_config("output").describe() == "fixed(128)"
    # With a trace, unset sides come from the trace, also after a dump/reload round trip.
    traced = WorkloadConfig.model_validate({**cfg.model_dump(), "trace": {"name": "sharegpt-lengths"}})
    assert traced.length_config("prompt") is None


def test_names_are_normalised():
    assert WorkloadConfig(arrival="Closed_Loop", concurrency=2).arrival == "closed-loop"
    assert ARRIVALS.names() == ["closed-loop", "constant", "gamma", "offline", "poisson", "servegen", "trace"]


@pytest.mark.parametrize(
    ("cfg", "needle"),
    [
        ({"arrival": "trace"}, "needs workload.trace"),
        ({"arrival": "closed-loop"}, "needs 'concurrency'"),
        ({"arrival": "poisson", "qps": 1, "cv": 2.0}, "'cv' is not used by arrival 'poisson'"),
        ({"arrival": "closed-loop", "concurrency": 4, "qps": 3}, "'qps' is not used by arrival 'closed-loop'"),
        ({"arrival": "poisson", "qps": -1}, "qps"),
        ({"arrival": "poison", "qps": 1}, "did you mean 'poisson'"),
        (
            {"arrival": "trace", "qps": 3, "trace": {"name": "azure-conv-2023", "time_scale": 0.5}},
            "either qps or trace.time_scale",
        ),
        ({"trace": {"name": "azure-conv-2032"}}, "did you mean 'azure-conv-2023'"),
        ({"trace": {}}, "exactly one of 'name'"),
        ({"trace": {"path": "x.csv", "format": "azur"}}, "did you mean 'azure'"),
        ({"trace": {"path": "x.csv", "format": "vidur", "columns": {"prompt": "p"}}}, "generic csv/jsonl"),
        ({"trace": {"path": "x.csv", "columns": {"promt": "p"}}}, "trace.columns.promt"),
        ({"trace": {"name": "azure-conv-2023", "sample_fraction": 0}}, "sample_fraction"),
    ],
)
def test_bad_workloads_are_rejected_with_a_clear_message(cfg, needle):
    with pytest.raises(ValidationError) as err:
        WorkloadConfig.model_validate(cfg)
    assert needle in str(err.value)


def test_trace_label():
    assert TraceConfig(name="azure-code-2023").label() == "azure-code-2023"
    assert TraceConfig(path="/tmp/some/dir/my.csv").label() == "my.csv"


def test_max_total_tokens_clips_output_first_or_drops_and_says_how_many():
    import warnings

    import numpy as np

    from traces.build import build_requests

    cfg = WorkloadConfig.model_validate({
        "arrival": "poisson", "qps": 2, "max_total_tokens": 1000,
        "prompt": {"dist": "uniform", "low": 10, "high": 1500}, "output": {"dist": "uniform", "low": 1, "high": 400},
    })
    plain = build_requests(WorkloadConfig.model_validate({**cfg.model_dump(), "max_total_tokens": None}), seed=3,
                           num_requests=400, duration_s=None)
    over = plain.prompt_tokens + plain.output_tokens > 1000
    assert over.any() and not over.all()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clipped = build_requests(cfg, seed=3, num_requests=400, duration_s=None)
    assert f"{int(over.sum())} of 400" in str(caught[0].message)
    total = clipped.prompt_tokens + clipped.output_tokens
    assert (total <= 1000).all() and (clipped.output_tokens >= 1).all()
    # Output is cut first: a prompt under the cap is kept whole.
    short = over & (plain.prompt_tokens < 1000)
    assert np.array_equal(clipped.prompt_tokens[short], plain.prompt_tokens[short])
    assert np.array_equal(clipped.arrival_s, plain.arrival_s)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dropped = build_requests(WorkloadConfig.model_validate({**cfg.model_dump(), "length_cap": "drop"}), seed=3,
                                 num_requests=400, duration_s=None)
    assert len(dropped.prompt_tokens) == int((~over).sum())
    assert np.array_equal(dropped.arrival_s, plain.arrival_s[~over])


def test_a_bare_count_is_a_fixed_length_and_other_scalars_are_refused():
    cfg = WorkloadConfig.model_validate({"qps": 1.0, "prompt": 300, "output": 20})
    assert cfg.length_config("prompt").describe() == "fixed(300)"
    assert cfg.length_config("output").describe() == "fixed(20)"
    for bad, where in ((0, "prompt.value"), (True, "prompt"), (1.5, "prompt"), ("300", "prompt")):
        with pytest.raises(ValidationError) as err:
            WorkloadConfig.model_validate({"qps": 1.0, "prompt": bad})
        assert where in str(err.value)
        if not isinstance(bad, int) or isinstance(bad, bool):  # the message says what a length may be
            assert "whole number of tokens" in str(err.value)
