"""What prefix caching gives in capsim (derived, not fitted): the figures of docs/techniques/prefix-caching.md.

    PYTHONPATH=. python benchmarks/prefix_caching.py            # all five tables (a few minutes)
    PYTHONPATH=. python benchmarks/prefix_caching.py --only a b

a. The Mooncake conversation trace (12,031 requests, one hour, prompts of 12k tokens on average, 512-token block
   ids) on 8 replicas of Llama-3.1-8B on H100: no cache; prefix caching with least-outstanding routing; with the
   cache-aware router (guard 16 and guard 2).
b. The same trace, request by request: each request's TTFT with the cache (cache-aware router) over its TTFT
   without, grouped by the share of its prompt that hit.
c. The sustainable rate: the trace replayed faster (``workload.qps``), with and without the cache, on 8
   replicas: the highest rate whose TTFT p90 stays within 2 s.
d. A hand-checkable sweep: a system prompt of S tokens before 2,048 tokens of each request's own, one replica,
   light load: TTFT over the no-cache TTFT against the token hit rate.
e. Shared-prefix attention (Hydragen): throughput with it over without, by shared-prefix length and batch.

Every figure is a simulation of the stated scenario; nothing is tuned to a paper's number.
"""

from __future__ import annotations

import argparse

import numpy as np

from simulator.config.schema import Scenario
from simulator.engine import simulate
from simulator.metrics.summary import summarise

PC = [{"name": "prefix-caching"}]


def mooncake(techniques=(), router="least-outstanding", replicas=8, qps=None, **router_params) -> Scenario:
    workload = {"arrival": "trace", "trace": {"name": "mooncake-conversation"}}
    if qps is not None:
        workload["qps"] = qps
    return Scenario.model_validate({
        "seed": 1, "model": "llama-3.1-8b", "deployment": {"engine": "none", "device": "h100-sxm", "num_replicas": replicas},
        "scheduler": {"name": "vllm", "max_num_batched_tokens": 131072},
        "router": {"name": router, **router_params}, "workload": workload,
        "simulation": {"num_requests": None}, "techniques": list(techniques),
    })


def ttft(out) -> np.ndarray:
    r = out.result.requests
    return (r["first_token_s"] - r["arrival_s"]).to_numpy()


def table_a() -> None:
    print("a. Mooncake conversation trace, 8 x Llama-3.1-8B on H100, vLLM scheduler")
    runs = {
        "no cache": mooncake(),
        "prefix caching, least-outstanding": mooncake(PC),
        "prefix caching, cache-aware (guard 16)": mooncake(PC, "cache-aware"),
        "prefix caching, cache-aware (guard 2)": mooncake(PC, "cache-aware", max_imbalance=2),
    }
    base = None
    print(f"{'setting':42} {'tok hit':>8} {'req hit':>8} {'TTFT mean':>10} {'p50':>7} {'p90':>7} {'p99':>7} "
          f"{'x mean':>7}")
    for name, sc in runs.items():
        s = summarise(simulate(sc).result)
        base = base or s["ttft_mean_s"]
        hit_t = s.get("prefix_hit_rate_tokens", 0.0)
        hit_r = s.get("prefix_hit_rate_requests", 0.0)
        print(f"{name:42} {hit_t:8.3f} {hit_r:8.3f} {s['ttft_mean_s']:10.3f} {s['ttft_p50_s']:7.3f} "
              f"{s['ttft_p90_s']:7.3f} {s['ttft_p99_s']:7.3f} {s['ttft_mean_s'] / base:7.3f}")


def table_b() -> None:
    print("\nb. Per request (same trace and fleet): TTFT with the cache (cache-aware) / TTFT without, by hit share")
    off, on = simulate(mooncake()), simulate(mooncake(PC, "cache-aware"))
    req = on.result.requests
    share = (req["cached_tokens"] / req["prompt_tokens"]).to_numpy()
    t_off, t_on = ttft(off), ttft(on)
    print(f"{'hit share':>14} {'requests':>9} {'1 - share':>10} {'TTFT off':>9} {'TTFT on':>8} {'on/off':>7}")
    edges = [0.0, 0.0001, 0.25, 0.5, 0.75, 1.0]
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (share >= lo) & (share < hi) if lo > 0 else share < hi
        if not m.any():
            continue
        label = "0" if lo == 0 else f"[{lo:.2f}, {hi:.2f})"
        print(f"{label:>14} {int(m.sum()):9d} {1 - share[m].mean():10.3f} {t_off[m].mean():9.3f} "
              f"{t_on[m].mean():8.3f} {t_on[m].mean() / t_off[m].mean():7.3f}")


def table_c(rates=(3.4, 5.0, 6.0, 7.0, 8.0, 9.0), target=2.0) -> None:
    print(f"\nc. Sustainable rate on 8 replicas: TTFT p90 (s) as the trace is replayed faster; target {target} s")
    print(f"{'req/s':>6} {'no cache':>9} {'cache-aware':>12} {'tok hit':>8}")
    best = {"off": 0.0, "on": 0.0}
    for q in rates:
        off = summarise(simulate(mooncake(qps=q)).result)
        on = summarise(simulate(mooncake(PC, "cache-aware", qps=q)).result)
        for key, s in (("off", off), ("on", on)):
            if s["ttft_p90_s"] <= target and s["unfinished"] == 0:
                best[key] = max(best[key], q)
        print(f"{q:6.1f} {off['ttft_p90_s']:9.3f} {on['ttft_p90_s']:12.3f} {on['prefix_hit_rate_tokens']:8.3f}")
    print(f"highest rate within target: no cache {best['off']:g} req/s, prefix caching {best['on']:g} req/s")


def table_d(shared=(0, 512, 1024, 2048, 4096, 8192)) -> None:
    print("\nd. System prompt of S tokens + 2,048 own tokens, 128 out; 1 x Llama-3.1-8B on H100, 0.5 req/s")
    print(f"{'S':>6} {'tok hit':>8} {'1 - hit':>8} {'TTFT off':>9} {'TTFT on':>8} {'on/off':>7}")
    for s_tokens in shared:
        data = {
            "seed": 2, "model": "llama-3.1-8b", "deployment": {"engine": "none", "device": "h100-sxm"},
            "scheduler": {"name": "vllm", "max_num_batched_tokens": 16384},
            "workload": {"arrival": "poisson", "qps": 0.5, "prompt": {"dist": "fixed", "value": 2048},
                         "output": {"dist": "fixed", "value": 128}},
            "simulation": {"num_requests": 200},
        }
        if s_tokens:
            data["workload"]["sharing"] = {"pattern": "system-prompt", "shared_tokens": s_tokens}
            on = summarise(simulate(Scenario.model_validate({**data, "techniques": PC})).result)
            hit = on["prefix_hit_rate_tokens"]
        else:
            on, hit = None, 0.0
        data["workload"].pop("sharing", None)
        data["workload"]["prompt"]["value"] = 2048 + s_tokens  # the same prompts without block ids
        off = summarise(simulate(Scenario.model_validate(data)).result)
        t_on = on["ttft_mean_s"] if on else off["ttft_mean_s"]
        print(f"{s_tokens:6d} {hit:8.3f} {1 - hit:8.3f} {off['ttft_mean_s']:9.4f} {t_on:8.4f} "
              f"{t_on / off['ttft_mean_s']:7.3f}")


def table_e(shared=(1024, 4096, 16384), batches=(32, 128, 512)) -> None:
    print("\ne. Shared-prefix attention (Hydragen): a system prompt of S tokens + 256 own, 256 out, closed loop of B "
          "users; 1 x Llama-3.1-8B on H100; output tokens/s with it over without")
    print(f"{'S':>6} " + " ".join(f"{'B=' + str(b):>8}" for b in batches))
    for s_tokens in shared:
        cells = []
        for b in batches:
            tps = []
            for flag in (False, True):
                sc = Scenario.model_validate({
                    "seed": 3, "model": "llama-3.1-8b", "deployment": {"engine": "none", "device": "h100-sxm"},
                    "scheduler": {"name": "vllm", "max_num_seqs": 512, "max_num_batched_tokens": 32768},
                    "workload": {"arrival": "closed-loop", "concurrency": b,
                                 "prompt": {"dist": "fixed", "value": 256}, "output": {"dist": "fixed", "value": 256},
                                 "sharing": {"pattern": "system-prompt", "shared_tokens": s_tokens}},
                    "simulation": {"num_requests": 4 * b},
                    "techniques": [{"name": "prefix-caching", "shared_prefix_attention": flag}]})
                tps.append(summarise(simulate(sc).result)["output_tps"])
            cells.append(tps[1] / tps[0])
        print(f"{s_tokens:6d} " + " ".join(f"{c:8.2f}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=["a", "b", "c", "d", "e"])
    args = parser.parse_args()
    tables = {"a": table_a, "b": table_b, "c": table_c, "d": table_d, "e": table_e}
    for key in args.only:
        tables[key]()


if __name__ == "__main__":
    main()
