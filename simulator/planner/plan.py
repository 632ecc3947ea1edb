"""Capacity planning: which configuration serves the target rate within the SLO at the lowest cost?

The flow of ``capsim plan``:

1. **Expand** the search space into candidate scenarios (the sweep expansion:
   grid x zip over dotted paths), each at the target rate.
2. **Pre-pass** (:mod:`simulator.planner.bounds`): drop candidates that do not
   fit in memory, whose latency floors miss the SLO, or that provably lack the
   throughput for the target rate. Milliseconds per candidate, no simulation.
3. **Goodput search** (:mod:`simulator.planner.search`) for every survivor: the
   first probe is the target rate itself, then bracketing and bisection. The
   searches advance in rounds; each round's probes (one per active candidate)
   run in parallel on the executor, through the same results store as sweeps,
   so an interrupted plan resumes where it stopped. Probes that the analytic
   rules rule out cost no simulation.
4. **Report**: the cheapest candidate meeting the target (cost per hour =
   replicas x GPUs x hourly price, or with ``objective: tco`` the total cost of
   ownership per hour at the target rate, docs/energy-and-cost.md; and cost per
   million output tokens at the target rate), the Pareto front of cost against a latency metric at the
   target rate, and each candidate's headroom (its maximum rate / the target).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from capsim import __version__
from capsim.errors import CapsimError, DoesNotFitError
from simulator.config.loader import parse_override, read_yaml, set_path, validate_as
from simulator.config.schema import Scenario
from simulator.planner.bounds import NOTHING_MEASURED, check, unbounded_pools
from simulator.planner.schema import PLAN_KEYS, PlanFile
from simulator.planner.search import SearchResult, bracket_search, partial_result
from simulator.planner.worker import BOUND, evaluate_rate, is_good
from simulator.sweep.executors import Executor, LocalExecutor
from simulator.sweep.grid import expand_sweep
from simulator.sweep.runner import evaluate_all
from simulator.sweep.store import ResultStore, scenario_key, scenario_payload
from simulator.sweep.table import arrow_safe, flatten, write_table
from simulator.sweep.worker import OK
from simulator.system import build_system
from traces.arrivals import ARRIVALS

# Candidate statuses.
DOES_NOT_FIT = "does-not-fit"
INVALID = "invalid"
SIMULATED = "simulated"
#: Pre-pass statuses that mean "pruned without simulation".
PRUNED = (DOES_NOT_FIT, INVALID, "latency-floor", "too-slow", "nothing-measured")

#: Metrics at the target rate copied into the candidate table (besides the Pareto metric).
TARGET_METRICS = ("slo_attainment", "goodput_rps", "throughput_rps", "ttft_p90_s", "ttft_p99_s", "tpot_p90_s",
                  "tbt_p99_s", "e2e_p90_s", "e2e_p99_s", "output_tps", "cost_per_million_output_tokens_usd",
                  "energy_per_output_token_j", "mfu", "kv_util_peak", "energy_per_request_j", "avg_power_w",
                  "tco_usd_per_hour", "tco_per_million_output_tokens_usd")


# ---------------------------------------------------------------------------------------------- loading
def load_plan(path: str | Path, overrides: list[str] | None = None) -> tuple[PlanFile, list[Scenario]]:
    """Read a plan file; return it and the candidate scenarios (each with ``workload.qps`` = the target)."""
    source = str(path)
    data = read_yaml(path)
    for text in overrides or []:
        key, value = parse_override(text)
        set_path(data, key, value)
    target = data.get("target_rps")
    workload = data.get("workload")
    arrival = workload.get("arrival", "poisson") if isinstance(workload, dict) else "poisson"
    if isinstance(arrival, str) and arrival in ARRIVALS and "qps" not in ARRIVALS.get(arrival).uses:
        raise CapsimError(
            f"arrival process {arrival!r} has no request rate to search",
            where=f"{source} (workload.arrival)",
            fix="plan with an open-loop arrival process that takes qps: poisson, gamma, constant or trace",
        )
    if not (isinstance(target, (int, float)) and not isinstance(target, bool) and math.isfinite(target) and target > 0):
        # Reported here, once: the target becomes every candidate's workload.qps, so validating the file with a bad
        # target would blame workload.qps as well (or say that the workload lacks a rate).
        raise CapsimError(
            "a plan needs target_rps, a positive finite request rate (req/s)"
            + (f", got {target!r}" if target is not None else ""),
            where=f"{source} (target_rps)",
            fix="set target_rps to the rate the deployment must sustain, e.g. target_rps: 12 (or --set target_rps=12)",
        )
    if workload is None or (isinstance(workload, dict) and workload.get("qps") is None):
        set_path(data, "workload.qps", target)  # the rate is the planner's to set
    plan = validate_as(PlanFile, data, source)
    base = {k: v for k, v in data.items() if k not in PLAN_KEYS}
    set_path(base, "workload.qps", plan.target_rps)
    space = plan.search
    sweep = dict(base)
    if space.grid:
        sweep["grid"] = space.grid
    if space.zip:
        sweep["zip"] = space.zip
    return plan, expand_sweep(sweep, source)


def at_rate(scenario: Scenario, rate: float, min_probe_s: float | None = None) -> Scenario:
    """``scenario`` with its request rate set to ``rate`` (validated again: rate-dependent checks apply).

    With ``min_probe_s``, a request-count-limited probe is lengthened to offer at
    least that many seconds of arrivals (see :class:`RateSearch`).
    """
    dump = scenario_payload(scenario)
    dump["workload"]["qps"] = float(rate)
    sim = dump.setdefault("simulation", {})
    if min_probe_s is not None and sim.get("num_requests") is not None:
        sim["num_requests"] = max(int(sim["num_requests"]), math.ceil(rate * min_probe_s))
    return validate_as(Scenario, dump, f"{scenario.name} at {rate:g} req/s")


# ---------------------------------------------------------------------------------------------- results
@dataclass
class Candidate:
    """One configuration of the search space and everything the plan learnt about it."""

    index: int
    scenario: Scenario  # at the target rate
    status: str = SIMULATED
    detail: str = ""
    gpus: int | None = None
    cost_per_hour_usd: float = math.nan
    verdict: dict[str, Any] = field(default_factory=dict)  # analytic verdict at the target rate
    search: SearchResult | None = None
    evaluations: list[dict[str, Any]] = field(default_factory=list)  # one per probed rate
    at_target: dict[str, Any] = field(default_factory=dict)  # summary of the simulation at the target rate
    sims: int = 0  # probes that were simulations (now or earlier, from the store)
    # simulation.intervals only: max rate and headroom at both ends of the prediction interval
    # (simulator/planner/intervals.py); empty otherwise, and then no report gains a key.
    interval: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.scenario.name

    @property
    def pruned(self) -> bool:
        return self.status in PRUNED

    @property
    def max_rate(self) -> float:
        return self.search.max_rate if self.search is not None else math.nan

    @property
    def meets_target(self) -> bool:
        return bool(self.search is not None and self.search.probes and self.search.probes[0][1])

    @property
    def tco_per_hour_usd(self) -> float:
        """TCO per hour at the target rate (from its simulation: electricity follows the simulated power); NaN
        when the candidate was not simulated there or the scenario has no cost section in mode tco."""
        value = self.at_target.get("tco_usd_per_hour")
        return float(value) if _finite(value) else math.nan

    def cost(self, objective: str) -> float:
        """Cost per hour under ``objective``: ``rental`` (the catalog's prices) or ``tco``."""
        return self.tco_per_hour_usd if objective == "tco" else self.cost_per_hour_usd

    def cost_per_mtok(self, objective: str) -> float | None:
        """$/Mtok at the target rate under ``objective``."""
        key = "tco_per_million_output_tokens_usd" if objective == "tco" else "cost_per_million_output_tokens_usd"
        return self.at_target.get(key)


@dataclass
class PlanResult:
    plan: PlanFile
    candidates: list[Candidate]
    cheapest: Candidate | None
    pareto: list[Candidate]
    probes_computed: int  # (configuration, rate) probes evaluated in this run
    probes_reused: int  # probes read back from the results store
    wall_s: float
    files: list[Path] = field(default_factory=list)

    @property
    def pruned(self) -> int:
        return sum(c.pruned for c in self.candidates)

    @property
    def sims(self) -> int:
        """Probes that were simulations (whether run now or read from the store)."""
        return sum(c.sims for c in self.candidates)

    @property
    def analytic_probes(self) -> int:
        """Probes of the goodput searches decided by the analytic rules alone."""
        return sum(1 for c in self.candidates for e in c.evaluations if e["status"] == BOUND)

    def warnings(self) -> list[str]:
        """Things the user should know about the measurements behind the answer."""
        out = []
        empty = sorted({c.name for c in self.candidates
                        if c.status == NOTHING_MEASURED or any(e["reason"] == NOTHING_MEASURED for e in c.evaluations)})
        if empty:
            out.append(
                f"{len(empty)} candidate(s) had probes where every request arrived during simulation.warmup_s, "
                "so nothing was measured and the probe counted as a miss (first: "
                f"{empty[0]}). Fix: raise simulation.num_requests or lower simulation.warmup_s"
            )
        unconverged = [c.name for c in self.candidates if c.search is not None and not c.search.converged]
        if unconverged:
            out.append(
                f"{len(unconverged)} goodput search(es) stopped at rate_search.max_sims before reaching rel_tol "
                f"(first: {unconverged[0]}); their max_rate is the best rate verified, not the bracket's end"
            )
        return out

    @property
    def objective(self) -> str:
        """The cost ranking the candidates (the plan's ``objective``; :attr:`PlanFile.ranking`)."""
        return self.plan.ranking

    def cost(self, c: Candidate) -> float:
        """``c``'s cost per hour under the plan's objective."""
        return c.cost(self.objective)

    def headroom(self, c: Candidate) -> float:
        return c.max_rate / self.plan.target_rps if c.search is not None else math.nan


# ---------------------------------------------------------------------------------------------- running
ProgressFn = Callable[[str, int, int], None]  # (phase text, done, total)


def _build(sc: Scenario):
    """The candidate's system (one pool) or pool set (several): both say ``num_gpus`` and ``cost_per_hour_usd``."""
    if sc.pools is not None:
        from simulator.pools.build import build_pools

        return build_pools(sc)
    return build_system(sc)


def prepass(candidates: Sequence[Scenario], min_probe_s: float | None = None) -> list[Candidate]:
    """Rule 1 (memory) and rules 2-3 (latency floors, work) at the target rate for every candidate.

    ``min_probe_s`` lengthens the checked stream as the probes at the target are (see :func:`at_rate`),
    so the verdict is about the same requests a simulation there would see.
    """
    out = []
    for i, sc in enumerate(candidates):
        cand = Candidate(i, sc)
        if min_probe_s is not None:
            sc = at_rate(sc, float(sc.workload.qps), min_probe_s)
        try:
            system = _build(sc)
        except DoesNotFitError as exc:
            cand.status, cand.detail = DOES_NOT_FIT, exc.render()
            out.append(cand)
            continue
        except CapsimError as exc:
            cand.status, cand.detail = INVALID, exc.render()
            out.append(cand)
            continue
        cand.gpus = system.num_gpus
        cand.cost_per_hour_usd = system.cost_per_hour_usd
        try:
            verdict = unbounded_pools() if sc.pools is not None else check(sc, system)
        except CapsimError as exc:
            cand.status, cand.detail = INVALID, exc.render()
            out.append(cand)
            continue
        cand.verdict = verdict.as_dict()
        if not verdict.possible:
            cand.status, cand.detail = verdict.reason, verdict.detail
        out.append(cand)
    return out


def run_plan(
    plan: PlanFile,
    candidates: Sequence[Scenario],
    *,
    out_dir: str | Path | None = None,
    executor: Executor | None = None,
    progress: ProgressFn | None = None,
    plots: bool = True,
) -> PlanResult:
    """Pre-pass, goodput searches, report; writes tables, ``plan.json`` and plots when ``out_dir`` is given."""
    wall0 = time.perf_counter()
    executor = executor or LocalExecutor()
    store = ResultStore(Path(out_dir) / "store") if out_dir is not None else None
    cands = prepass(candidates, plan.rate_search.min_probe_s)
    if progress:
        progress("pre-pass", len(cands), len(cands))
    live = [c for c in cands if not c.pruned]
    low, high = plan.bracket()
    rs = plan.rate_search
    gens = {}
    pending: dict[int, float] = {}
    for c in live:
        gen = bracket_search(start=plan.target_rps, low=low, high=high, rel_tol=rs.rel_tol, max_evals=10_000,
                             growth=rs.growth)
        gens[c.index] = gen
        pending[c.index] = next(gen)
    by_index = {c.index: c for c in cands}
    probes: dict[int, list[tuple[float, bool]]] = {c.index: [] for c in live}
    computed = reused = 0
    finished = 0
    rounds = 0
    while pending:
        order = sorted(pending)
        rounds += 1
        scenarios = [at_rate(by_index[i].scenario, pending[i], rs.min_probe_s) for i in order]
        payloads = [scenario_payload(s) for s in scenarios]
        keys = [scenario_key(p) for p in payloads]
        on_done = None
        if progress:
            # Report every probe as it lands (a round of probes can take minutes), counting candidates done.
            landed = [0]

            def on_done(_i, _result, _from_store, landed=landed, total=len(order), r=rounds, done=finished):
                landed[0] += 1
                progress(f"goodput search round {r} ({landed[0]}/{total} probes); candidates done", done, len(live))

        results, n_new = evaluate_all(payloads, keys, store, executor, evaluate_rate, on_done=on_done)
        computed += n_new
        reused += len(order) - n_new
        nxt: dict[int, float] = {}
        for i, key, result in zip(order, keys, results, strict=True):
            cand, rate = by_index[i], pending[i]
            good = is_good(result)
            probes[i].append((rate, good))
            if result.get("status") == OK:
                cand.sims += 1
            cand.evaluations.append(_evaluation_row(cand, rate, key, result, good))
            if not cand.evaluations[:-1]:  # the first probe is the target rate
                cand.at_target = result.get("summary") or {}
                if result.get("status") not in (OK, BOUND):
                    cand.status, cand.detail = INVALID, result.get("error", "")
            stop_early = (cand.status == INVALID or cand.sims >= rs.max_sims
                          or (not rs.below_target and len(probes[i]) == 1 and not good))
            try:
                if stop_early:
                    raise StopIteration(partial_result(probes[i]))
                nxt[i] = gens[i].send(good)
            except StopIteration as stop:
                cand.search = stop.value if isinstance(stop.value, SearchResult) else partial_result(probes[i])
                finished += 1
        pending = nxt
        if progress:
            progress(f"goodput search ({computed + reused} probes in {rounds} rounds); candidates done", finished,
                     len(live))
    cheapest = choose_cheapest(cands, plan.ranking)
    front = pareto_front(cands, plan.pareto_metric, plan.ranking)
    result = PlanResult(plan, cands, cheapest, front, computed, reused, time.perf_counter() - wall0)
    if plan.simulation.intervals is not None:
        from simulator.planner.intervals import add_intervals

        if progress:
            progress("prediction intervals (max rate at both ends)", 0, len(live))
        add_intervals(result, plan.simulation.intervals.level)
        result.wall_s = time.perf_counter() - wall0
    if out_dir is not None:
        result.files = write_plan(result, Path(out_dir), plots=plots)
    return result


def _evaluation_row(cand: Candidate, rate: float, key: str, result: dict[str, Any], good: bool) -> dict[str, Any]:
    summary = result.get("summary") or {}
    verdict = result.get("verdict") or {}
    return {
        "candidate": cand.name,
        "candidate_index": cand.index,
        "rate_rps": rate,
        "status": result.get("status"),
        "good": good,
        "reason": result.get("reason") or result.get("error"),
        "slo_attainment": summary.get("slo_attainment"),
        "goodput_rps": summary.get("goodput_rps"),
        "throughput_rps": summary.get("throughput_rps"),
        "ttft_p90_s": summary.get("ttft_p90_s"),
        "tpot_p90_s": summary.get("tpot_p90_s"),
        "e2e_p90_s": summary.get("e2e_p90_s"),
        "attainment_bound": verdict.get("attainment_bound"),
        "throughput_bound_rps": verdict.get("throughput_bound_rps"),
        "run_key": key,
    }


# ---------------------------------------------------------------------------------------------- report
def choose_cheapest(cands: Sequence[Candidate], objective: str = "rental") -> Candidate | None:
    """Lowest cost per hour under ``objective`` (rental or tco) among candidates meeting the target; ties: lower
    $/Mtok, then more headroom. A candidate whose cost is unknown (NaN) ranks after every known one."""
    ok = [c for c in cands if c.meets_target]
    if not ok:
        return None

    def key(c: Candidate):
        cost, mtok = c.cost(objective), c.cost_per_mtok(objective)
        return (cost if _finite(cost) else math.inf, mtok if _finite(mtok) else math.inf, -c.max_rate, c.name)

    return min(ok, key=key)


def pareto_front(cands: Sequence[Candidate], metric: str, objective: str = "rental") -> list[Candidate]:
    """Candidates meeting the target that no other beats on both cost per hour (under ``objective``) and
    ``metric`` (at the target)."""
    points = [c for c in cands if c.meets_target and _finite(c.at_target.get(metric)) and _finite(c.cost(objective))]
    points.sort(key=lambda c: (c.cost(objective), c.at_target[metric], c.name))
    front: list[Candidate] = []
    best = math.inf
    for c in points:
        latency = c.at_target[metric]
        if latency < best:
            front.append(c)
            best = latency
    return front


def _finite(value: Any) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def candidate_rows(result: PlanResult) -> list[dict[str, Any]]:
    """One row per candidate: inputs (dotted), verdicts, goodput, cost and metrics at the target rate."""
    rows = []
    front = {c.index for c in result.pareto}
    for c in result.candidates:
        s = c.search
        inputs = flatten(scenario_payload(c.scenario))
        inputs.pop("name", None)
        row: dict[str, Any] = {
            "name": c.name,
            "status": c.status,
            "detail": c.detail,
            "meets_target": c.meets_target,
            "cheapest": result.cheapest is not None and c.index == result.cheapest.index,
            "pareto": c.index in front,
            "gpus": c.gpus,
            "cost_per_hour_usd": c.cost_per_hour_usd,
            "tco_per_hour_usd": c.tco_per_hour_usd,
            "objective": result.objective,
            "objective_cost_per_hour_usd": result.cost(c),
            "max_rate_rps": s.max_rate if s is not None else math.nan,
            "failing_rate_rps": s.upper if s is not None and s.upper is not None else math.nan,
            "max_rate_capped": bool(s is not None and s.capped),
            "search_converged": bool(s is not None and s.converged),
            "headroom": result.headroom(c),
            "sims": c.sims,
            "probes": s.evaluations if s is not None else 0,
            "attainment_bound": c.verdict.get("attainment_bound", math.nan),
            "throughput_bound_rps": c.verdict.get("throughput_bound_rps", math.nan),
        }
        if c.interval.get("headroom"):
            row["headroom_lo"], row["headroom_hi"] = c.interval["headroom"]
            row["interval_crosses_target"] = c.interval["crosses_target"]
        for m in dict.fromkeys((result.plan.pareto_metric, *TARGET_METRICS)):
            value = c.at_target.get(m)
            row[f"target.{m}"] = math.nan if value is None else value
        row.update({k: v for k, v in inputs.items() if k not in row})
        rows.append(row)
    return rows


def plan_document(result: PlanResult) -> dict[str, Any]:
    """The JSON report (``plan.json``, ``capsim plan --json``)."""
    from simulator.metrics.writers import to_json_value

    plan = result.plan

    def brief(c: Candidate | None) -> dict[str, Any] | None:
        if c is None:
            return None
        return {
            "name": c.name,
            "status": c.status,
            "gpus": c.gpus,
            "cost_per_hour_usd": c.cost_per_hour_usd,
            "usd_per_million_output_tokens": c.at_target.get("cost_per_million_output_tokens_usd"),
            "tco_usd_per_hour": c.tco_per_hour_usd,
            "tco_usd_per_million_output_tokens": c.at_target.get("tco_per_million_output_tokens_usd"),
            "objective_cost_per_hour_usd": result.cost(c),
            "energy_per_request_j": c.at_target.get("energy_per_request_j"),
            "avg_power_w": c.at_target.get("avg_power_w"),
            "max_rate_rps": c.max_rate,
            "max_rate_capped": bool(c.search is not None and c.search.capped),
            "headroom": result.headroom(c),
            plan.pareto_metric: c.at_target.get(plan.pareto_metric),
            "slo_attainment_at_target": c.at_target.get("slo_attainment"),
            "sims": c.sims,
            **({"interval": c.interval} if c.interval else {}),
        }

    statuses: dict[str, int] = {}
    for c in result.candidates:
        statuses[c.status] = statuses.get(c.status, 0) + 1
    doc = {
        "name": plan.name,
        "capsim_version": __version__,
        "target_rps": plan.target_rps,
        "slo": plan.slo.model_dump(),
        "pareto_metric": plan.pareto_metric,
        "objective": result.objective,
        "candidates": len(result.candidates),
        "pruned_analytically": result.pruned,
        "pruned_fraction": result.pruned / max(len(result.candidates), 1),
        "statuses": statuses,
        "meeting_target": sum(c.meets_target for c in result.candidates),
        "simulations": result.sims,
        "analytic_probes": result.analytic_probes,
        "probes_computed": result.probes_computed,
        "probes_reused_from_store": result.probes_reused,
        "warnings": result.warnings(),
        "wall_time_s": result.wall_s,
        "cheapest": brief(result.cheapest),
        "pareto_front": [brief(c) for c in result.pareto],
        "all": [brief(c) for c in result.candidates],
    }
    return to_json_value(doc)


def write_plan(result: PlanResult, out: Path, *, plots: bool = True) -> list[Path]:
    """``candidates.{parquet,csv}``, ``evaluations.{parquet,csv}``, ``plan.json`` and the plots."""
    import json

    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    cand = arrow_safe(pd.DataFrame(candidate_rows(result)))
    files += write_table(cand, out, "candidates")
    evals = [e for c in result.candidates for e in c.evaluations]
    files += write_table(arrow_safe(pd.DataFrame(evals)), out, "evaluations")
    path = out / "plan.json"
    path.write_text(json.dumps(plan_document(result), indent=2, allow_nan=False))
    files.append(path)
    if plots:
        from simulator.planner.plots import write_plan_plots

        files += write_plan_plots(result, out)
    return files

