"""Length distributions: moments and bounds of each, and the config errors that name the parameter."""

import numpy as np
import pytest
from pydantic import ValidationError

from capsim.errors import UnknownNameError
from traces import LENGTHS, LengthConfig, WorkloadConfig, sample_lengths
from traces.lengths import LogNormal

N = 200_000


def draw(role="prompt", seed=0, n=N, **cfg):
    out = sample_lengths(LengthConfig(**cfg), np.random.default_rng(seed), n, role=role)
    assert out.dtype == np.int64 and len(out) == n and out.min() >= 1
    return out


def test_fixed():
    assert set(draw(dist="fixed", value=77, n=100)) == {77}


def test_uniform_is_inclusive_and_flat():
    x = draw(dist="uniform", low=10, high=19)
    assert x.min() == 10 and x.max() == 19
    counts = np.bincount(x - 10)
    assert counts.min() / counts.max() > 0.95
    assert x.mean() == pytest.approx(14.5, abs=0.05)


def test_normal_moments_and_truncation():
    x = draw(dist="normal", mean=512, std=128)
    assert x.mean() == pytest.approx(512, rel=0.01)
    assert x.std() == pytest.approx(128, rel=0.02)
    y = draw(dist="normal", mean=512, std=400, min=100, max=600)
    assert y.min() >= 100 and y.max() <= 600
    # Truncation resamples instead of clipping: no spike of mass on the bounds.
    assert (y == 600).mean() < 0.01 and (y == 100).mean() < 0.01


def test_lognormal_mean_and_std_are_of_the_lengths():
    x = draw(dist="lognormal", mean=1000, std=800)
    assert x.mean() == pytest.approx(1000, rel=0.02)
    assert x.std() == pytest.approx(800, rel=0.05)
    mu, sigma = LogNormal.log_params(1000, 800)
    assert np.median(x) == pytest.approx(np.exp(mu), rel=0.02)
    assert sigma == pytest.approx(np.sqrt(np.log(1 + 0.64)))
    capped = draw(dist="lognormal", mean=1000, std=800, max=1500)
    assert capped.max() <= 1500 and capped.mean() < 1000


def test_zipf_follows_the_power_law_on_its_support():
    x = draw(dist="zipf", a=1.5, min=1, max=1000)
    assert x.min() == 1 and x.max() <= 1000
    k = np.arange(1, 1001)
    p = k**-1.5 / (k**-1.5).sum()
    counts = np.bincount(x, minlength=1001)[1:]
    assert counts[0] / N == pytest.approx(p[0], rel=0.02)
    assert counts[1] / N == pytest.approx(p[1], rel=0.04)
    assert x.mean() == pytest.approx((k * p).sum(), rel=0.03)
    shifted = draw(dist="zipf", a=1.0, min=100, max=200)
    assert shifted.min() == 100 and shifted.max() == 200


def test_empirical_values_with_weights():
    x = draw(dist="empirical", values=[100, 2000], weights=[3, 1])
    assert set(np.unique(x)) == {100, 2000}
    assert (x == 100).mean() == pytest.approx(0.75, abs=0.01)


def test_empirical_from_a_shipped_trace_uses_the_role_column_by_default():
    prompts = draw(dist="empirical", trace="azure-conv-2023", role="prompt")
    outputs = draw(dist="empirical", trace="azure-conv-2023", role="output")
    assert prompts.mean() == pytest.approx(1155, rel=0.03)
    assert outputs.mean() == pytest.approx(211, rel=0.03)
    explicit = draw(dist="empirical", trace="azure-conv-2023", column="output", role="prompt")
    assert explicit.mean() == pytest.approx(211, rel=0.03)


def test_empirical_unknown_trace_suggests_shipped_ids():
    with pytest.raises(UnknownNameError) as err:
        draw(dist="empirical", trace="azure-conv-2032")
    assert "azure-conv-2023" in str(err.value)


def test_registry_lists_all_distributions():
    assert LENGTHS.names() == ["empirical", "fixed", "lognormal", "normal", "uniform", "zipf"]


@pytest.mark.parametrize(
    ("cfg", "needles"),
    [
        (
            {"dist": "normall", "mean": 5, "std": 1},
            ["prompt.dist", "unknown length distribution 'normall'", "'normal'"],
        ),
        ({"dist": "normal", "mean": 5}, ["prompt", "needs parameter 'std'"]),
        ({"dist": "uniform", "low": 5}, ["needs parameter 'high'"]),
        ({"dist": "fixed"}, ["needs parameter 'value'"]),
        ({"dist": "zipf", "a": 1.2}, ["needs parameter 'max'"]),
        (
            {"dist": "uniform", "low": 5, "high": 9, "value": 3},
            ["'value' is not used by length distribution 'uniform'"],
        ),
        ({"dist": "uniform", "low": 9, "high": 5}, ["high (5) must be >= low (9)"]),
        ({"dist": "fixed", "value": 0}, ["prompt.value", "greater than or equal to 1"]),
        ({"dist": "empirical"}, ["exactly one of 'values'"]),
        ({"dist": "empirical", "values": [1, 2], "weights": [1]}, ["weights has 1 entries"]),
        ({"dist": "fixed", "value": 3, "mena": 4}, ["prompt.mena", "Extra inputs"]),
    ],
)
def test_bad_length_configs_name_the_field(cfg, needles):
    with pytest.raises(ValidationError) as err:
        WorkloadConfig(qps=1.0, prompt=cfg)
    text = str(err.value)
    for needle in needles:
        assert needle in text


def test_every_field_has_a_description():
    from traces import ColumnMap, TraceConfig

    for model in (WorkloadConfig, LengthConfig, TraceConfig, ColumnMap):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
