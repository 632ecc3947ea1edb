"""Run scenarios for the page: cached by scenario hash, with progress, errors as values.

Why a hash key: Streamlit re-executes the page on every interaction; a run is
keyed by the SHA-256 of its canonical JSON (plus the size and modification time
of any trace file it reads), so redrawing, switching tabs or re-running an
unchanged comparison never simulates again, and a changed trace file does.

Errors come back as values (:class:`RunFailure`) rather than exceptions so that
the page can show them next to the configuration, never as a traceback.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import streamlit as st
from pydantic import ValidationError

from app.analysis import RunData, analyse, rescore
from app.checks import error_message
from capsim.errors import CapsimError
from simulator.config.loader import validation_error
from simulator.config.schema import Scenario
from simulator.engine import simulate
from simulator.metrics.slo import SLOConfig


@dataclass(frozen=True)
class RunFailure:
    """Why a configuration could not be simulated."""

    name: str
    message: str
    where: str | None = None
    internal: bool = False  # a capsim bug rather than bad input


@dataclass(frozen=True)
class Job:
    """One scenario to run: its hash (the cache key), canonical JSON and the SLO its results are judged against.

    The hash leaves the SLO out: the SLO does not change what is simulated, only how it is scored, so a new SLO
    re-scores the cached run (:func:`app.analysis.rescore`) instead of simulating it again.
    """

    digest: str
    scenario_json: str
    name: str
    slo_json: str = ""


def _trace_stamp(scenario: Scenario) -> list[object]:
    trace = scenario.workload.trace
    if trace is None or trace.path is None:
        return []
    path = Path(trace.path)
    try:
        stat = path.stat()
    except OSError:
        return [str(path), None]
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def job_for(scenario: Scenario) -> Job:
    """The cache key of ``scenario``: a hash of everything that determines its results."""
    data = scenario.model_dump(mode="json")
    text = json.dumps(data, sort_keys=True)
    # Prediction intervals re-run the scenario and score each re-run against the SLO, so with them the SLO is
    # part of what is simulated (a new SLO cannot re-score the stored re-runs).
    scored_later = "slo" if scenario.simulation.intervals is None else None
    simulated = json.dumps({k: v for k, v in data.items() if k != scored_later}, sort_keys=True)
    digest = hashlib.sha256(json.dumps([simulated, _trace_stamp(scenario)]).encode()).hexdigest()[:20]
    return Job(digest, text, scenario.name, json.dumps(data.get("slo") or {}, sort_keys=True))


def run_uncached(scenario_json: str) -> RunData:
    """Simulate one scenario and reduce it (what the cache stores)."""
    scenario = Scenario.model_validate_json(scenario_json)
    data = analyse(simulate(scenario), scenario.slo, scenario.name)
    if scenario.simulation.intervals is not None:
        from simulator.intervals.rerun import simulate_intervals

        # Kept in ``extra`` so a re-score (same SLO: see job_for) carries it into the summary again.
        data.extra["intervals"] = simulate_intervals(scenario, data.summary)
        data.summary["intervals"] = data.extra["intervals"]
    return data


@st.cache_data(show_spinner=False, max_entries=256)
def _cached(digest: str, _scenario_json: str) -> RunData:
    """Keyed by ``digest`` only (Streamlit does not hash arguments starting with an underscore)."""
    return run_uncached(_scenario_json)


def run_job(job: Job) -> RunData | RunFailure:
    """The (cached) result of ``job``, or why it failed."""
    try:
        data = _cached(job.digest, job.scenario_json)
        return rescore(data, SLOConfig.model_validate_json(job.slo_json)) if job.slo_json else data
    except CapsimError as exc:
        return RunFailure(job.name, error_message(exc), exc.where)
    except Exception as exc:  # noqa: BLE001 -- a bug: say so on the page instead of showing a traceback
        return RunFailure(
            job.name, f"internal error: {type(exc).__name__}: {exc}. This is a capsim bug; please report it "
            "with the scenario YAML (download it from the sidebar).", internal=True,
        )


def run_jobs(jobs: Sequence[Job], progress: Callable[[int, int, str], None] | None = None) -> list[RunData | RunFailure]:
    """Run ``jobs`` in order, calling ``progress(done, total, next_name)`` before each and once at the end."""
    out: list[RunData | RunFailure] = []
    for i, job in enumerate(jobs):
        if progress is not None:
            progress(i, len(jobs), job.name)
        out.append(run_job(job))
    if progress is not None:
        progress(len(jobs), len(jobs), "")
    return out


def with_rate(scenario: Scenario, qps: float) -> Scenario:
    """``scenario`` at another mean request rate (``workload.qps``); CapsimError when its workload has no rate."""
    data = scenario.model_dump(mode="json", exclude_unset=True)
    workload = {**data.get("workload", {}), "qps": float(qps)}
    try:
        return Scenario.model_validate({**data, "workload": workload})
    except ValidationError as exc:
        raise validation_error(exc, f"load sweep at {qps:g} req/s", Scenario) from None


def parse_rates(text: str) -> list[float]:
    """``"2, 4, 8"`` -> ``[2.0, 4.0, 8.0]``; positive, sorted, without repeats."""
    rates = []
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise CapsimError(f"{part!r} is not a number", where="load sweep rates",
                              fix="list request rates in req/s separated by commas, e.g. 2, 4, 8") from None
        if not value > 0:
            raise CapsimError(f"rate {part} must be positive", where="load sweep rates", fix="use rates > 0")
        rates.append(value)
    if not rates:
        raise CapsimError("no rates given", where="load sweep rates", fix="list request rates, e.g. 2, 4, 8")
    if len(set(rates)) > 8:
        raise CapsimError("at most 8 rates", where="load sweep rates", fix="list fewer rates")
    return sorted(set(rates))


def sweep_frame(rows: Sequence[tuple[str, float, RunData | RunFailure]]) -> pd.DataFrame:
    """Tidy sweep results: configuration, qps, attainment, goodput, tail latencies, SLO met and overload (failed
    runs left out)."""
    records = []
    for name, qps, data in rows:
        if isinstance(data, RunData):
            s = data.summary
            records.append({
                "configuration": name, "qps": qps, "slo_attainment": s["slo_attainment"],
                "goodput_rps": s["goodput_rps"], "ttft_p99_s": s["ttft_p99_s"], "tpot_p99_s": s["tpot_p99_s"],
                "slo_met": s["slo_met"], "overloaded": bool(s.get("overloaded", False)),
            })
    columns = ["configuration", "qps", "slo_attainment", "goodput_rps", "ttft_p99_s", "tpot_p99_s", "slo_met",
               "overloaded"]
    return pd.DataFrame(records, columns=columns)


def highest_sustained_rate(frame: pd.DataFrame) -> pd.Series:
    """Per configuration (in the sweep's order), the highest rate tried that meets the SLO and keeps up; NaN if none.

    An overloaded run does not sustain its rate however loose the SLO is (see :func:`app.tables.verdict`).
    """
    sustained = frame[frame["slo_met"].astype(bool) & ~frame["overloaded"].astype(bool)]
    best = sustained.groupby("configuration")["qps"].max().reindex(frame["configuration"].unique())
    return best.rename("highest rate tried that meets the SLO and keeps up (req/s)")
