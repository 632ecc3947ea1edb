"""ServeGen arrival process on a small hand-made folder (and the real data when it is present)."""

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from capsim.errors import CapsimError, TraceFormatError
from traces import WorkloadConfig, build_requests

REAL = Path("/work/shared/data/servegen_alibaba/reason/deepseek-r1")


@pytest.fixture
def folder(tmp_path):
    """Client 'a': gamma gaps (cv 2) at 2 req/s for the first hour; client 'b': Weibull at 0.5 req/s, hour 2."""
    rows_a = [f"{w * 600},2.0,2.0,Gamma,0.25,4.0" if w < 6 else f"{w * 600},0,0,,0,0" for w in range(144)]
    rows_b = [f"{w * 600},0.5,1.0,Weibull,1.0,3.0" if 6 <= w < 12 else f"{w * 600},0,0,,0,0" for w in range(144)]
    (tmp_path / "chunk-a-trace.csv").write_text("\n".join(rows_a) + "\n")
    (tmp_path / "chunk-b-trace.csv").write_text("\n".join(rows_b) + "\n")
    tables = {"input_tokens": "{100: 0.5, 300: 0.5}", "output_tokens": "{5000: 1.0}", "reason_ratio": "{0.5: 1.0}"}
    empty = {"input_tokens": "{}", "output_tokens": "{}", "reason_ratio": "{}"}
    for client in ("a", "b"):
        (tmp_path / f"chunk-{client}-dataset.json").write_text(json.dumps({"0": tables, "21600": empty}))
    return tmp_path


def test_rates_burstiness_and_lengths(folder):
    cfg = WorkloadConfig(arrival="servegen", servegen={"path": str(folder), "clients": ["a"]})
    s = build_requests(cfg, seed=1)
    assert len(s) == pytest.approx(2.0 * 3600, rel=0.1)
    gaps = np.diff(s.arrival_s)
    assert gaps.std() / gaps.mean() == pytest.approx(2.0, rel=0.15)
    assert s.prompt_tokens.mean() == pytest.approx(200, rel=0.05) and set(s.output_tokens) == {5000}
    assert s.arrival_s[0] == 0.0


def test_start_time_and_qps_rescale(folder):
    cfg = WorkloadConfig(arrival="servegen", qps=4.0, servegen={"path": str(folder), "start_s": 3600})
    s = build_requests(cfg, seed=2, duration_s=3600)
    assert len(s) == pytest.approx(4.0 * 3600, rel=0.1)  # only client b is active then, scaled x8
    n = build_requests(cfg, seed=2, num_requests=1000)
    assert len(n) == 1000 and n.mean_rate == pytest.approx(4.0, rel=0.15)


def test_explicit_output_overrides_the_client_tables(folder):
    cfg = WorkloadConfig(arrival="servegen", servegen={"path": str(folder)}, output={"dist": "fixed", "value": 7})
    s = build_requests(cfg, seed=0, num_requests=100)
    assert set(s.output_tokens) == {7} and set(s.prompt_tokens) <= {100, 300}


def test_errors(folder, tmp_path_factory):
    with pytest.raises(ValidationError, match="needs workload.servegen"):
        WorkloadConfig(arrival="servegen")
    with pytest.raises(ValidationError, match="'servegen' is not used by arrival 'poisson'"):
        WorkloadConfig(qps=1.0, servegen={"path": str(folder)})
    with pytest.raises(CapsimError, match="client"):
        build_requests(WorkloadConfig(arrival="servegen", servegen={"path": str(folder), "clients": [9]}), seed=0)
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(TraceFormatError, match="no chunk"):
        build_requests(WorkloadConfig(arrival="servegen", servegen={"path": str(empty)}), seed=0)
    (empty / "chunk-x-trace.csv").write_text("0,1.0,1.0,Lognormal,1,1\n")
    with pytest.raises(TraceFormatError, match="row 1"):
        build_requests(WorkloadConfig(arrival="servegen", servegen={"path": str(empty)}), seed=0)


@pytest.mark.skipif(not REAL.is_dir(), reason="ServeGen data not present")
def test_real_deepseek_r1_clients():
    cfg = WorkloadConfig(arrival="servegen", servegen={"path": str(REAL), "start_s": 43200, "clients": [0, 1, 2]})
    s = build_requests(cfg, seed=0, duration_s=1800)
    assert len(s) > 0 and s.output_tokens.max() > 2000
