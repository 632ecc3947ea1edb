"""Simulation speed benchmark (not a timed test).

Prints, for each workload, wall seconds, simulated requests per wall second,
iterations per wall second and peak RSS. Each workload runs in a fresh
subprocess so peak RSS is its own.

    python benchmarks/sim_speed.py            # all five workloads
    python benchmarks/sim_speed.py --only 1 2 # some of them
    python benchmarks/sim_speed.py --only 3 8 --price-floor  # diagnostic: prices looked up, not computed

Workloads (issue #2):
1. Llama-2-7B on one A100-80GB, vLLM (max 128 seqs, 4,096 batched tokens), Poisson 2 req/s, 512/128 tokens, 10k requests.
2. The same at 4 req/s.
3. The Azure 2023 conversation trace (19,366 requests, one hour) on 4 replicas of Llama-3.1-8B on H100
   (Llama-3.1-8B: the Llama-3-8B architecture with the 128k context the trace's longest prompts need).
4. 1,000,000 requests with ShareGPT lengths (the shipped Vidur ShareGPT length trace), Poisson 60 req/s,
   16 replicas of Llama-3.1-8B on H100.
5. Workload 3 on A100-80GB instead of H100 (not an issue target): small grouped-query batches, where the A100
   profile's FlashAttention-2 split count changes with the context, so many decode runs are piecewise affine.
6. Workload 1 with speculative decoding (a LLaMA-68M draft model, K = 4): compare with workload 1.
7. Workload 3 with an EAGLE-style head, goodput-driven K <= 6 and per-request acceptance: compare with 3.
8. Workload 3 with the ``sarathi`` scheduler (chunked prefill, the vLLM v1 default; 512-token budget):
   compare with 3 (issue 19's target: at most 1.3x its wall time, measured in one run).
9. The Mooncake conversation trace (12,031 requests, one hour, 512-token prefix block ids) on 8 replicas of
   Llama-3.1-8B on H100 with prefix caching and the cache-aware router (issue 16).
10. Workload 9 without prefix caching (least-outstanding router): compare with 9.
11. Workload 3 on two prefill and two decode replicas (disaggregated, KV over NVLink): compare with 3.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

WORKLOADS: dict[int, dict] = {
    1: {
        "name": "llama2-7b a100 poisson 2/s 10k",
        "model": "llama-2-7b",
        "deployment": {"device": "a100-80gb-sxm"},
        "scheduler": {"name": "vllm", "max_num_seqs": 128, "max_num_batched_tokens": 4096},
        "workload": {"arrival": "poisson", "qps": 2, "prompt": {"dist": "fixed", "value": 512},
                     "output": {"dist": "fixed", "value": 128}},
        "simulation": {"num_requests": 10_000},
    },
    2: {
        "name": "llama2-7b a100 poisson 4/s 10k",
        "model": "llama-2-7b",
        "deployment": {"device": "a100-80gb-sxm"},
        "scheduler": {"name": "vllm", "max_num_seqs": 128, "max_num_batched_tokens": 4096},
        "workload": {"arrival": "poisson", "qps": 4, "prompt": {"dist": "fixed", "value": 512},
                     "output": {"dist": "fixed", "value": 128}},
        "simulation": {"num_requests": 10_000},
    },
    3: {
        "name": "azure conv 2023 on 4x llama3-8b h100",
        "model": "llama-3.1-8b",
        "deployment": {"device": "h100-sxm", "num_replicas": 4},
        "scheduler": {"name": "vllm", "max_num_batched_tokens": 16384},
        "router": {"name": "least-outstanding"},
        "workload": {"arrival": "trace", "trace": {"name": "azure-conv-2023"}},
        "simulation": {"num_requests": None},
    },
    4: {
        "name": "1M sharegpt on 16x llama3-8b h100",
        "model": "llama-3.1-8b",
        "deployment": {"device": "h100-sxm", "num_replicas": 16},
        "scheduler": {"name": "vllm", "max_num_batched_tokens": 8192},
        "workload": {"arrival": "poisson", "qps": 60, "trace": {"name": "sharegpt-lengths"}},
        "simulation": {"num_requests": 1_000_000},
    },
}
WORKLOADS[5] = {**WORKLOADS[3], "name": "azure conv 2023 on 4x llama3-8b a100",
                "deployment": {"device": "a100-80gb-sxm", "num_replicas": 4}}
# Speculative decoding (issue 14): the same workloads with a technique on; the target is at most 2x the
# wall time of the workload without it, measured in one run.
WORKLOADS[6] = {**WORKLOADS[1], "name": "workload 1 + draft llama-68m, k=4",
                "techniques": [{"name": "speculative-decoding", "drafter": "model", "draft_model": "llama-68m",
                                "k": 4, "acceptance": 0.7}]}
WORKLOADS[7] = {**WORKLOADS[3], "name": "workload 3 + eagle head, goodput k<=6",
                "techniques": [{"name": "speculative-decoding", "drafter": "eagle", "k": 6, "acceptance": 0.75,
                                "policy": "goodput", "acceptance_concentration": 4.0}]}

# Chunked prefill (issue 19): mixed prefill + decode iterations while prompts are chunked.
WORKLOADS[8] = {**WORKLOADS[3], "name": "workload 3 with sarathi, chunk 512",
                "scheduler": {"name": "sarathi", "chunk_size": 512}}

# Prefix caching (issue 16): the Mooncake trace's block ids drive each replica's prefix cache.
WORKLOADS[9] = {
    "name": "mooncake 8x llama3-8b h100, prefix cache",
    "model": "llama-3.1-8b",
    "deployment": {"device": "h100-sxm", "num_replicas": 8},
    "scheduler": {"name": "vllm", "max_num_batched_tokens": 131072},
    "router": {"name": "cache-aware"},
    "workload": {"arrival": "trace", "trace": {"name": "mooncake-conversation"}},
    "simulation": {"num_requests": None},
    "techniques": [{"name": "prefix-caching"}],
}
WORKLOADS[10] = {**WORKLOADS[9], "name": "workload 9 without prefix caching", "router": {"name": "least-outstanding"},
                 "techniques": []}

# Pools (issue 15): workload 3 served by two prefill and two decode replicas, KV handed off over NVLink;
# compare with 3 (every request now has a hand-off, a transfer process and two schedulers).
WORKLOADS[11] = {**{k: v for k, v in WORKLOADS[3].items() if k != "deployment"},
                "name": "workload 3 disaggregated 2P+2D nvlink",
                "serving": {"name": "disaggregated", "link": {"kind": "nvlink"}},
                "pools": [{"name": "prefill", "role": "prefill", "device": "h100-sxm", "num_replicas": 2},
                          {"name": "decode", "role": "decode", "device": "h100-sxm", "num_replicas": 2}]}


def replay_mixed_prices(scenario) -> None:
    """Price every later run's iterations from a table of the prices a first run computed (a dict lookup).

    A diagnostic, not a mode: the wall time that remains is the replay's without the cost model's work on
    iterations that carry prefill (chunked or whole), so it bounds what any speed-up of that pricing can give
    (issue 19: how much of workload 8's time over workload 3's is pricing, how much the replica's bookkeeping of
    its extra iterations). The outputs are those of the normal path (the same prices, looked up).
    """
    from simulator.costmodel.iteration import IterationCostModel
    from simulator.engine import simulate

    price = IterationCostModel.iteration_from_totals
    table: dict[tuple, object] = {}

    def recording(self, *key):
        cost = table[key] = price(self, *key)
        return cost

    IterationCostModel.iteration_from_totals = recording
    simulate(scenario)
    IterationCostModel.iteration_from_totals = lambda self, *key: table[key]


def run_one(index: int, price_floor: bool = False) -> dict:
    from simulator.config.schema import Scenario
    from simulator.engine import simulate
    from simulator.metrics.summary import summarise

    scenario = Scenario.model_validate(WORKLOADS[index])
    if price_floor:
        replay_mixed_prices(scenario)
    # Like timeit: the best of a few runs in one process (the first also pays one-off costs such as
    # loading a trace file and filling the cost model's caches). The 1M-request workload runs once.
    repeats = 3 if (WORKLOADS[index]["simulation"]["num_requests"] or 0) < 100_000 else 1
    sim_wall = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = simulate(scenario)
        sim_wall = min(sim_wall, time.perf_counter() - t0)
    t1 = time.perf_counter()
    summary = summarise(out.result, scenario.slo)
    summary_wall = time.perf_counter() - t1
    iters = int(out.result.iterations["num_iterations"].sum())
    n = len(out.result.requests)
    return {
        "workload": index,
        "name": WORKLOADS[index]["name"],
        "requests": n,
        "wall_s": sim_wall,
        "repeats": repeats,
        "summary_wall_s": summary_wall,
        "req_per_wall_s": n / sim_wall,
        "iterations": iters,
        "iter_per_wall_s": iters / sim_wall,
        "iteration_runs": len(out.result.iterations),
        "sim_time_s": out.result.info.sim_end_s,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "ttft_p50_s": summary.get("ttft_p50_s"),
        "tpot_p50_s": summary.get("tpot_p50_s"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", type=int, nargs="*", default=sorted(WORKLOADS))
    parser.add_argument("--price-floor", action="store_true",
                        help="diagnostic: price iterations that carry prefill from a table a first run recorded "
                             "(the time left is the run's without that pricing work)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(run_one(args.child, args.price_floor)))
        return
    rows = []
    for i in args.only:
        cmd = [sys.executable, __file__, "--child", str(i)] + (["--price-floor"] if args.price_floor else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            raise SystemExit(f"workload {i} failed")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    header = f"{'#':>2} {'workload':40} {'requests':>9} {'wall s':>8} {'req/wall s':>11} {'iter/wall s':>12} {'runs':>9} {'RSS MiB':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['workload']:>2} {r['name']:40} {r['requests']:>9,} {r['wall_s']:>8.2f} {r['req_per_wall_s']:>11,.0f} "
            f"{r['iter_per_wall_s']:>12,.0f} {r['iteration_runs']:>9,} {r['peak_rss_mib']:>8.0f}"
        )
    print("\n(wall s = simulate() only, best of", "/".join(str(r["repeats"]) for r in rows),
          "runs; summary statistics took", ", ".join(f"{r['summary_wall_s']:.2f}" for r in rows), "s)")


if __name__ == "__main__":
    main()
