"""Capacity-plan speed benchmark (a script, not a timed test).

Plans Llama-3.1-70B chat serving at a target of 6 req/s over 200 candidate configurations:

    5 devices (H100-SXM, A100-80GB, L40S, A10G, L4) x tp (1, 2, 4, 8) x replicas (1..5) x scheduler (vllm, sarathi)

and prints the wall time, the fraction of candidates the analytic pre-pass pruned (by reason), and how many
simulations the goodput searches ran. Every probe simulates ``--requests`` requests (default 200): small on
purpose, so that the whole plan takes minutes on a 2-core machine; a production plan would use more (and
a warm-up) for tighter percentiles. The results store starts empty, so nothing is reused.

    python benchmarks/plan_speed.py                 # every core
    python benchmarks/plan_speed.py --workers 1     # one process
    python benchmarks/plan_speed.py --requests 500  # longer probes
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import yaml

PLAN = {
    "name": "plan-speed-200",
    "seed": 1,
    "model": "llama-3.1-70b",
    "workload": {
        "arrival": "poisson",
        "prompt": {"dist": "lognormal", "mean": 1000, "std": 800, "max": 6000},
        "output": {"dist": "lognormal", "mean": 250, "std": 200, "max": 2000},
    },
    "slo": {"ttft_s": 2.0, "tpot_s": 0.1, "attainment": 0.9},
    "simulation": {"num_requests": 200},
    "search": {
        "grid": {
            "deployment.device": ["h100-sxm", "a100-80gb-sxm", "l40s", "a10g", "l4"],
            "deployment.tp": [1, 2, 4, 8],
            "deployment.num_replicas": [1, 2, 3, 4, 5],
            "scheduler.name": ["vllm", "sarathi"],
        }
    },
    "target_rps": 6,
    "rate_search": {"rel_tol": 0.05, "max_sims": 10},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=None, help="local worker processes (default: every core)")
    parser.add_argument("--requests", type=int, default=200, help="requests simulated per probe")
    args = parser.parse_args()

    from simulator.planner import load_plan, run_plan
    from simulator.planner.plan import prepass
    from simulator.sweep import LocalExecutor

    doc = dict(PLAN, simulation={"num_requests": args.requests})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "plan.yaml"
        path.write_text(yaml.safe_dump(doc))
        t0 = time.perf_counter()
        plan, candidates = load_plan(path)
        t_load = time.perf_counter() - t0
        t0 = time.perf_counter()
        prepass(candidates)
        t_prepass = time.perf_counter() - t0
        executor = LocalExecutor(args.workers)
        t0 = time.perf_counter()
        with executor:
            result = run_plan(plan, candidates, out_dir=Path(tmp) / "out", executor=executor, plots=True)
        wall = time.perf_counter() - t0

    n = len(result.candidates)
    reasons: dict[str, int] = {}
    for c in result.candidates:
        if c.pruned:
            reasons[c.status] = reasons.get(c.status, 0) + 1
    searched = n - result.pruned
    print(f"plan: {n} candidates, target {plan.target_rps:g} req/s, {args.requests} requests per probe, "
          f"{executor.describe()}, {os.cpu_count()} cores")
    print(f"expand + validate:   {t_load:.2f} s")
    print(f"analytic pre-pass:   {t_prepass:.2f} s ({1e3 * t_prepass / n:.1f} ms per candidate)")
    print(f"whole plan (wall):   {wall:.1f} s (pre-pass, searches, tables and plots)")
    print(f"pruned analytically: {result.pruned}/{n} = {result.pruned / n:.0%} "
          f"({', '.join(f'{k}: {v}' for k, v in sorted(reasons.items()))})")
    print(f"goodput searches:    {searched} candidates, {result.sims} simulations "
          f"({result.sims / max(searched, 1):.1f} per candidate), {result.analytic_probes} probes decided analytically")
    print(f"meet the target:     {sum(c.meets_target for c in result.candidates)}")
    best = result.cheapest
    if best is not None:
        print(f"cheapest:            {best.name}: ${best.cost_per_hour_usd:.2f}/h, max {best.max_rate:.3g} req/s "
              f"(headroom {result.headroom(best):.2f}x)")
    for warning in result.warnings():
        print(f"warning: {warning}")


if __name__ == "__main__":
    main()
