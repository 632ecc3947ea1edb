"""Capacity planning: the cheapest configuration that serves a target rate within the SLO.

``capsim plan FILE`` expands a search space (grid/zip over any dotted scenario
path), prunes candidates analytically (memory fit, latency floors, a
roofline work bound: :mod:`simulator.planner.bounds`), finds each survivor's
goodput -- the highest rate at which the SLO attainment goal holds -- with a
bracketing search (:mod:`simulator.planner.search`), and reports the cheapest
configuration, the Pareto front of cost against latency and the headroom
(:mod:`simulator.planner.plan`, plots in :mod:`simulator.planner.plots`).
"""

from simulator.planner.bounds import CostBounds, Verdict, check
from simulator.planner.plan import (
    Candidate,
    PlanResult,
    choose_cheapest,
    load_plan,
    pareto_front,
    plan_document,
    run_plan,
)
from simulator.planner.schema import PlanFile, RateSearch, SearchSpace
from simulator.planner.search import SearchResult, bracket_search, find_max_rate, partial_result

__all__ = [
    "Candidate",
    "CostBounds",
    "PlanFile",
    "PlanResult",
    "RateSearch",
    "SearchResult",
    "SearchSpace",
    "Verdict",
    "bracket_search",
    "check",
    "choose_cheapest",
    "find_max_rate",
    "load_plan",
    "pareto_front",
    "partial_result",
    "plan_document",
    "run_plan",
]
