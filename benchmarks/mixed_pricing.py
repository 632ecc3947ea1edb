"""The price of mixed (chunked-prefill) iterations, isolated from the replica: a replay and bit-identity digests.

Why: ``benchmarks/sim_speed.py`` workload 8 (issue 19) spends a fair share of its wall time in
:meth:`IterationCostModel.iteration_from_totals`, but its wall time also moves with the replica and scheduler.
This script records every call that method gets in one ``simulate()`` of workload 8, then replays the calls
against a fresh cost model: the replay's time is the cost model's own, and a digest of its results (every float's
bits) says whether a change to the pricing kept every number. The ``digests`` command adds whole-simulation
digests (request and iteration tables, token gaps) of scenarios that reach the pricing paths the replay does not:
another device's profile, no engine overheads, a sliding-window model, a mixture of experts, datasheet pricing and
another engine profile.

    PYTHONPATH=. python benchmarks/mixed_pricing.py record --calls /tmp/w8_calls.pkl
    PYTHONPATH=. python benchmarks/mixed_pricing.py replay --calls /tmp/w8_calls.pkl --repeats 5
    PYTHONPATH=. python benchmarks/mixed_pricing.py digests --out /tmp/digests.json [--check old.json]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import pickle
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout this script sits in

from benchmarks.sim_speed import WORKLOADS  # noqa: E402
from simulator.costmodel.exact_mixed import ExactMixed  # noqa: E402
from simulator.costmodel.iteration import IterationCostModel  # noqa: E402

Call = tuple[int, int, float, int, int, int]

_W8 = WORKLOADS[8]
_TRACE_SUBSET = {"arrival": "trace", "trace": {"name": "azure-conv-2023"}}

#: Whole-simulation cases (name -> scenario) whose digests must not move when the mixed pricing changes.
CASES: dict[str, dict] = {
    "w8": _W8,
    "w8-a100": {**_W8, "deployment": {"device": "a100-80gb-sxm", "num_replicas": 4}},
    "w8-engine-none": {**_W8, "deployment": {"device": "h100-sxm", "num_replicas": 4, "engine": "none"}},
    # sglang inherits vllm's terms (the same numbers as w8); tensorrt-llm-2023 adds the GQA re-read term that reads
    # the decode context, vllm-eager the per-step and per-sequence terms.
    "w8-engine-sglang": {**_W8, "deployment": {"device": "h100-sxm", "num_replicas": 4, "engine": "sglang"}},
    "w8-engine-trtllm-2023": {**_W8, "deployment": {"device": "h100-sxm", "num_replicas": 4,
                                                    "engine": "tensorrt-llm-2023"}},
    "sarathi-engine-vllm-eager": {**_W8, "deployment": {"device": "h100-sxm", "num_replicas": 4,
                                                        "engine": "vllm-eager"},
                                  "workload": _TRACE_SUBSET, "simulation": {"num_requests": 3000}},
    "sarathi-mistral-window": {**_W8, "model": "mistral-7b", "workload": _TRACE_SUBSET,
                               "simulation": {"num_requests": 3000}},
    "sarathi-mixtral-tp2": {**_W8, "model": "mixtral-8x7b",
                            "deployment": {"device": "h100-sxm", "tp": 2, "num_replicas": 2},
                            "workload": _TRACE_SUBSET, "simulation": {"num_requests": 2000}},
    "sarathi-l40s-datasheet": {**_W8, "deployment": {"device": "l40s", "num_replicas": 2},
                               "workload": _TRACE_SUBSET, "simulation": {"num_requests": 1500}},
}


def _scenario(case: dict):
    from simulator.config.schema import Scenario

    return Scenario.model_validate({k: v for k, v in case.items() if k != "name"})


def record(case: dict) -> dict:
    """Every ``iteration_from_totals`` call (and lone-prefill priming) of one ``simulate()`` of ``case``."""
    from simulator.engine import simulate

    calls: list[Call] = []
    primes: list = []
    models: set[int] = set()
    inner_totals, inner_prime = IterationCostModel.iteration_from_totals, IterationCostModel.prime_lone_prefills

    def totals(self: IterationCostModel, *args):
        models.add(id(self))
        calls.append(args)
        return inner_totals(self, *args)

    def prime(self: IterationCostModel, prompts):
        primes.append(prompts.copy())
        return inner_prime(self, prompts)

    IterationCostModel.iteration_from_totals = totals
    IterationCostModel.prime_lone_prefills = prime
    try:
        simulate(_scenario(case))
    finally:
        IterationCostModel.iteration_from_totals = inner_totals
        IterationCostModel.prime_lone_prefills = inner_prime
    if len(models) > 1:
        raise SystemExit(f"{len(models)} cost models took calls: the replay assumes one")
    return {"case": case, "calls": calls, "primes": primes}


def fresh_model(recorded: dict) -> IterationCostModel:
    """The cost model the recorded simulation started from, primed as it was."""
    from simulator.system import build_system

    model = build_system(_scenario(recorded["case"])).cost_model()
    for prompts in recorded["primes"]:
        model.prime_lone_prefills(prompts)
    return model


def replay(recorded: dict) -> tuple[float, str, IterationCostModel]:
    """Seconds to price every recorded call on a fresh model, the digest of the results, and the model."""
    model = fresh_model(recorded)
    price = model.iteration_from_totals
    calls = recorded["calls"]
    gc.collect()  # each repeat starts from the same heap (the previous repeat's caches are garbage)
    t0 = time.perf_counter()
    results = [price(*c) for c in calls]
    wall = time.perf_counter() - t0
    h = hashlib.sha256()
    for r in results:
        h.update(struct.pack("<3d", r.time_s, r.flops, r.bytes))
    return wall, h.hexdigest()[:20], model


def simulation_digests(name: str, case: dict) -> dict[str, str]:
    """Digests of one simulation's request and iteration tables and of its token gaps (float bits)."""
    import numpy as np

    from simulator.engine import simulate
    from tests.fingerprint_cases import table_digest

    taken = [0, 0]  # calls of the fast path, and those it priced
    inner = ExactMixed.price

    def counted(self: ExactMixed, *args):
        got = inner(self, *args)
        taken[0] += 1
        taken[1] += got is not None
        return got

    ExactMixed.price = counted
    try:
        out = simulate(_scenario(case)).result
    finally:
        ExactMixed.price = inner
    print(f"{name}: fast path asked {taken[0]}, priced {taken[1]}", file=sys.stderr)
    gaps = out.token_gaps
    h = hashlib.sha256()
    for name in ("first", "step", "count", "weight", "single_values"):
        h.update(np.ascontiguousarray(getattr(gaps, name)).tobytes())
    return {"requests": table_digest(out.requests), "iterations": table_digest(out.iterations),
            "token_gaps": h.hexdigest()[:20]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="record workload 8's iteration_from_totals calls")
    rec.add_argument("--calls", required=True)
    rep = sub.add_parser("replay", help="replay recorded calls on a fresh cost model: best time and digest")
    rep.add_argument("--calls", required=True)
    rep.add_argument("--repeats", type=int, default=5)
    dig = sub.add_parser("digests", help="whole-simulation digests of the CASES")
    dig.add_argument("--out")
    dig.add_argument("--check", help="a digests file to compare with (exit 1 on any difference)")
    dig.add_argument("--only", nargs="*", help="case names (default: all)")
    args = parser.parse_args()

    if args.command == "record":
        recorded = record(_W8)
        Path(args.calls).write_bytes(pickle.dumps(recorded))
        print(f"{len(recorded['calls'])} calls recorded to {args.calls}")
    elif args.command == "replay":
        recorded = pickle.loads(Path(args.calls).read_bytes())
        walls, digests = [], set()
        for _ in range(args.repeats):
            wall, digest, model = replay(recorded)
            walls.append(wall)
            digests.add(digest)
        if len(digests) != 1:
            raise SystemExit(f"replays disagree: {sorted(digests)}")
        fast = model._exact_mixed
        print(json.dumps({"calls": len(recorded["calls"]), "best_s": round(min(walls), 4),
                          "all_s": [round(w, 4) for w in walls], "digest": digests.pop(),
                          "exact_mixed_taken": None if fast is None else fast.taken}))
    else:
        names = args.only or list(CASES)
        got = {name: simulation_digests(name, CASES[name]) for name in names}
        print(json.dumps(got, indent=1))
        if args.out:
            Path(args.out).write_text(json.dumps(got, indent=1))
        if args.check:
            want = json.loads(Path(args.check).read_text())
            bad = [n for n in names if want.get(n) != got[n]]
            print("digests: " + ("MOVED " + ", ".join(bad) if bad else "all unchanged"))
            if bad:
                raise SystemExit(1)


if __name__ == "__main__":
    main()
