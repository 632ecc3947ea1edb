"""The plan file: a base scenario, a search space, a target rate and how to search rates.

A plan file is a scenario (model, workload shape, ``slo``, simulation length,
and defaults for every deployment field) plus:

* ``search``: the candidate configurations, as ``grid`` (cartesian product)
  and/or ``zip`` (lists varied together) over *any* dotted scenario path --
  ``deployment.device``, ``deployment.tp``, ``scheduler.name``,
  ``scheduler.chunk_size``, ``deployment.weight_dtype``... A field added to the
  scenario schema is searchable the day it exists;
* ``target_rps``: the request rate the deployment must sustain;
* ``rate_search``: the bracket and precision of each candidate's goodput search;
* ``pareto_metric``: the latency (at the target rate) traded against cost.

The SLO is the scenario's own ``slo`` section: its targets and attainment goal
decide whether a rate is sustained. ``workload.qps`` is what the planner
varies; the workload must be open-loop (a rate must mean something).

>>> plan = PlanFile.model_validate({"target_rps": 4, "slo": {"ttft_s": 1},
...     "search": {"grid": {"deployment.device": ["a100", "h100"]}}})
>>> plan.rate_search.rel_tol, plan.candidate_count()
(0.05, 2)
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from capsim.types import Count, Flag
from simulator.config.schema import Scenario
from simulator.metrics.summary import SUMMARY_KEYS
from simulator.sweep.schema import check_zip

STRICT = ConfigDict(extra="forbid")


class SearchSpace(BaseModel):
    """Candidate configurations: ``grid`` x ``zip`` over dotted scenario paths (at least one of them)."""

    model_config = STRICT

    grid: dict[str, list[Any]] | None = Field(
        None, description="Cartesian product of values by dotted path, e.g. {'deployment.tp': [1, 2, 4]}."
    )
    zip: dict[str, list[Any]] | None = Field(
        None,
        description="Lists of equal length varied together, e.g. {'deployment.device': ['a100', 'h100'], "
        "'deployment.num_replicas': [2, 1]}; crossed with grid.",
    )

    @field_validator("grid")
    @classmethod
    def _grid_lists(cls, grid):
        for key, values in (grid or {}).items():
            if not isinstance(values, list) or not values:
                raise ValueError(f"grid entry {key!r} must be a non-empty list of values")
        return grid

    @field_validator("zip")
    @classmethod
    def _zip_lists(cls, zipped):
        return check_zip(zipped)

    @model_validator(mode="after")
    def _rate_is_not_searched(self):
        for section in (self.grid or {}, self.zip or {}):
            for path in section:
                if path == "workload.qps" or path.startswith("workload.qps."):
                    raise ValueError("workload.qps is what the planner varies; set target_rps instead of searching it")
        return self

    def size(self) -> int:
        count = 1
        for values in (self.grid or {}).values():
            count *= len(values)
        if self.zip:
            count *= len(next(iter(self.zip.values())))
        return count


class RateSearch(BaseModel):
    """How each candidate's maximum sustainable rate is searched (see :mod:`simulator.planner.search`)."""

    model_config = STRICT

    low: float | None = Field(
        None, gt=0, description="Lowest rate probed, req/s; a candidate failing here has goodput 0 "
        "(default: target_rps / 16)."
    )
    high: float | None = Field(
        None, gt=0, description="Highest rate probed, req/s; a candidate still good here is reported as "
        "'at least high' (default: target_rps x 16)."
    )
    rel_tol: float = Field(0.05, gt=0, lt=1, description="Stop bisecting when (bad rate / good rate - 1) <= rel_tol.")
    max_sims: Count = Field(12, ge=1, description="Most simulations per candidate (analytically decided rates are free).")
    growth: float = Field(2.0, gt=1, description="Factor between successive rates while bracketing.")
    min_probe_s: float | None = Field(
        60.0,
        gt=0,
        description="Each probe offers at least this many seconds of arrivals: simulation.num_requests is raised to "
        "ceil(rate x min_probe_s) where smaller. An overloaded replica's queue grows by (rate - capacity) requests "
        "a second, so a probe of a few seconds ends before the backlog breaks the SLO and overstates the "
        "sustainable rate; null keeps num_requests as given.",
    )
    below_target: Flag = Field(
        True,
        description="Also search the goodput of candidates that miss the target rate (for the goodput plot); "
        "false stops at the first failing probe, saving simulations.",
    )

    @model_validator(mode="after")
    def _ordered(self):
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"rate_search.low ({self.low}) must not exceed rate_search.high ({self.high})")
        return self


class PlanFile(Scenario):
    """A capacity plan: the base scenario plus ``search``, ``target_rps``, ``rate_search``, ``pareto_metric``."""

    search: SearchSpace = Field(default_factory=SearchSpace, description="The candidate configurations.")
    target_rps: float = Field(gt=0, description="Request rate (req/s) the configuration must sustain within the SLO.")
    rate_search: RateSearch = Field(default_factory=RateSearch, description="Goodput search settings.")
    pareto_metric: str = Field(
        "ttft_p90_s",
        description="Latency metric at the target rate plotted against cost for the Pareto front "
        "(any *_s key of the run summary, e.g. e2e_p99_s, tpot_p90_s).",
    )

    objective: Literal["rental", "tco"] | None = Field(
        None,
        description="Which cost per hour ranks the candidates (cheapest, Pareto front, tables): 'rental' (the "
        "catalog's hourly prices) or 'tco' (capex amortised + electricity at the simulated power + hosting, from "
        "the scenario's cost: section in mode tco; docs/energy-and-cost.md). Default: the cost section's mode, "
        "else rental.",
    )

    @field_validator("pareto_metric")
    @classmethod
    def _metric_known(cls, name: str) -> str:
        latencies = [k for k in SUMMARY_KEYS if k.endswith("_s") and k.split("_")[0] in ("ttft", "tbt", "tpot", "e2e", "queue")]
        if name not in latencies:
            raise ValueError(f"unknown latency metric {name!r}; choose one of {', '.join(latencies)}")
        return name

    @model_validator(mode="after")
    def _slo_bounds_waiting(self):
        if self.slo.ttft_s is None and self.slo.e2e_s is None:
            raise ValueError(
                "the plan's slo needs ttft_s or e2e_s: without one, requests may queue without limit and every "
                "rate 'meets' the SLO, so the highest sustainable rate is undefined"
            )
        return self

    @model_validator(mode="after")
    def _objective_has_inputs(self):
        if self.objective == "tco" and (self.cost is None or not self.cost.tco):
            raise ValueError(
                "objective tco needs the scenario's cost: section in mode tco (capex_usd, amortisation_years, "
                "electricity_usd_per_kwh), e.g. cost: {mode: tco, amortisation_years: 4, electricity_usd_per_kwh: 0.1}"
            )
        return self

    @property
    def ranking(self) -> str:
        """The cost that ranks candidates: ``objective``, else the cost section's mode, else rental."""
        if self.objective is not None:
            return self.objective
        return self.cost.mode if self.cost is not None else "rental"

    def bracket(self) -> tuple[float, float]:
        """(low, high) of the rate search, with defaults around the target."""
        low = self.rate_search.low if self.rate_search.low is not None else self.target_rps / 16
        high = self.rate_search.high if self.rate_search.high is not None else self.target_rps * 16
        return min(low, self.target_rps), max(high, self.target_rps)

    def candidate_count(self) -> int:
        return self.search.size()


#: Plan-only keys of a plan file; the rest is the base scenario.
PLAN_KEYS: tuple[str, ...] = ("search", "target_rps", "rate_search", "pareto_metric", "objective")
