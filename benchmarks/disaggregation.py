"""Prefill/decode disaggregation against colocated serving: per-GPU goodput under tight and loose TPOT targets,
and the KV link's share of the latency (issue 15's evidence). Not a timed test.

For each TPOT target, the highest Poisson rate whose SLO attainment stays >= 90 % (bisection on the rate,
9 steps, 800 requests each) is found for three H100s run colocated (vLLM) and split 1 prefill : 2 decode and
2 prefill : 1 decode, KV over NVLink. Llama-3.1-8B, lognormal prompts (mean 2048) and outputs (mean 256),
TTFT target 0.5 s. Then the same 1P:2D deployment at a fixed 6 req/s with the KV over each catalog link.

    python benchmarks/disaggregation.py
"""

from __future__ import annotations

from simulator.config.schema import Scenario
from simulator.engine import simulate
from simulator.metrics.summary import summarise


def scenario(layout: str, qps: float, tpot: float, link: str = "nvlink", n: int = 800) -> Scenario:
    data = {
        "name": layout,
        "seed": 1,
        "model": "llama-3.1-8b",
        "scheduler": {"name": "vllm"},
        "router": {"name": "least-outstanding"},
        "workload": {
            "qps": qps,
            "prompt": {"dist": "lognormal", "mean": 2048, "std": 1024, "max": 8000},
            "output": {"dist": "lognormal", "mean": 256, "std": 128, "max": 2000},
        },
        "slo": {"ttft_s": 0.5, "tpot_s": tpot},
        "simulation": {"num_requests": n},
    }
    if layout == "colocated":
        data["deployment"] = {"engine": "none", "device": "h100-sxm", "num_replicas": 3}
    else:
        p, d = int(layout[0]), int(layout[2])
        data["serving"] = {"name": "disaggregated", "link": {"kind": link}}
        data["pools"] = [
            {"name": "prefill", "role": "prefill", "engine": "none", "device": "h100-sxm", "num_replicas": p},
            {"name": "decode", "role": "decode", "engine": "none", "device": "h100-sxm", "num_replicas": d},
        ]
    return Scenario.model_validate(data)


def attainment(layout: str, qps: float, tpot: float) -> float:
    sc = scenario(layout, qps, tpot)
    return summarise(simulate(sc).result, sc.slo)["slo_attainment"]


def max_rate(layout: str, tpot: float) -> float:
    lo, hi = 0.5, 64.0
    for _ in range(9):
        mid = (lo * hi) ** 0.5
        lo, hi = (mid, hi) if attainment(layout, mid, tpot) >= 0.9 else (lo, mid)
    return lo


def main() -> None:
    layouts = ("colocated", "1p2d", "2p1d")
    print("goodput per GPU (req/s at >= 90 % SLO attainment, / 3 GPUs)")
    print(f"{'TPOT target':>12} " + " ".join(f"{x:>10}" for x in layouts) + "  best disaggregated / colocated")
    for tpot in (0.012, 0.02, 0.05):
        rates = [max_rate(x, tpot) / 3 for x in layouts]
        print(
            f"{tpot * 1000:>9.0f} ms " + " ".join(f"{r:>10.2f}" for r in rates) + f"  {max(rates[1:]) / rates[0]:.2f}x"
        )
    print("\n1p2d at 6 req/s, KV over each link")
    print(f"{'link':>15} {'transfer mean':>14} {'share of E2E':>13} {'TPOT mean':>10} {'TTFT p99':>9}")
    for link in ("nvlink", "infiniband-ndr", "pcie", "ethernet-100g", "ethernet-25g"):
        sc = scenario("1p2d", 6.0, 0.05, link=link)
        s = summarise(simulate(sc).result, sc.slo)
        print(
            f"{link:>15} {s['kv_transfer_mean_s'] * 1000:>11.2f} ms {s['kv_handoff_share_of_e2e']:>13.4f} "
            f"{s['tpot_mean_s'] * 1000:>7.2f} ms {s['ttft_p99_s'] * 1000:>6.0f} ms"
        )


if __name__ == "__main__":
    main()
