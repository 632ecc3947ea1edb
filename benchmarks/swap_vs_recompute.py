"""Preemption by swap vs by recompute: which finishes a memory-starved offline batch sooner (issue 15).

Each cell serves the same offline batch (every request at t = 0) on one Llama-3.1-8B replica whose KV cache
is squeezed so that the vLLM scheduler preempts, once with ``preemption_mode: recompute`` and once with
``swap`` (block-group copies, ``swap_copy: sequence``), for short and long contexts and over a fast and a
slow host link (an H100 SXM variant whose ``interconnect.pcie_gbs`` is set). Nothing is fitted: the
winner comes out of the cost model (a recompute re-prefills prompt + generated tokens; a swap moves the
sequence's KV blocks over PCIe twice).

    PYTHONPATH=. python benchmarks/swap_vs_recompute.py
"""

from __future__ import annotations

import argparse

from simulator.config.schema import Scenario
from simulator.engine import simulate
from simulator.metrics.summary import summarise
from simulator.system import build_system

CONTEXTS = {"short": (128, 256), "long": (6000, 2048)}  # (prompt, output) tokens
LINKS = {"fast": 64.0, "slow": 2.0}  # host link GB/s per direction: PCIe Gen5 x16; a PCIe Gen1 x8-class link


def scenario(context: str, link: str, mode: str, num_requests: int) -> Scenario:
    prompt, output = CONTEXTS[context]
    doc = _doc(context, link, mode, num_requests, 0.9)
    # The KV budget holds eight prompts and half an output's worth more each: the scheduler admits about
    # eight sequences, and their decode growth runs out of blocks and preempts the newest.
    mem = build_system(Scenario.model_validate(doc)).memory
    kv_bytes = 8 * (prompt + output // 2) * mem.kv_bytes_per_token
    return Scenario.model_validate(
        _doc(context, link, mode, num_requests, (mem.weights_bytes + kv_bytes) / mem.gpu_memory_bytes)
    )


def _doc(context: str, link: str, mode: str, num_requests: int, utilization: float) -> dict:
    prompt, output = CONTEXTS[context]
    return {
        "name": f"{context}-{link}-{mode}",
        "seed": 1,
        "model": "llama-3.1-8b",
        "deployment": {
            "engine": "none",
            "device": {"base": "h100-sxm", "name": f"h100-pcie-{link}", "interconnect": {"pcie_gbs": LINKS[link]}},
            "memory_utilization": utilization,
            "activation_reserve_gib": 0.0,
        },
        "scheduler": {
            "name": "vllm",
            "max_num_seqs": 64,
            "max_num_batched_tokens": 16384,
            "preemption_mode": mode,
            "swap_copy": "sequence",
            "swap_space_gib": 64,
        },
        "workload": {
            "arrival": "offline",
            "prompt": {"dist": "fixed", "value": prompt},
            "output": {"dist": "uniform", "low": output // 4, "high": output},
        },
        "simulation": {"num_requests": num_requests},
    }


def run(context: str, link: str, mode: str, num_requests: int) -> dict:
    s = summarise(simulate(scenario(context, link, mode, num_requests)).result)
    return {
        "makespan_s": s["sim_time_s"],
        "preemptions": s["preemptions"],
        "swap_outs": s["swap_outs"],
        "swap_gb": s["swap_bytes"] / 1e9,
        "swap_s": s["swap_transfer_s"],
        "output_tps": s["output_tps"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=64)
    args = ap.parse_args()
    print(
        "| context | host link | recompute makespan s | swap makespan s | swap / recompute | preemptions "
        "(rec, swap) | swapped GB | winner |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for context in CONTEXTS:
        for link in LINKS:
            rec = run(context, link, "recompute", args.requests)
            swp = run(context, link, "swap", args.requests)
            ratio = swp["makespan_s"] / rec["makespan_s"]
            print(
                f"| {context} {CONTEXTS[context]} | {link} {LINKS[link]:g} GB/s | {rec['makespan_s']:.2f} | "
                f"{swp['makespan_s']:.2f} | {ratio:.3f} | {rec['preemptions']}, {swp['preemptions']} | "
                f"{swp['swap_gb']:.1f} | {'swap' if ratio < 1 else 'recompute'} |"
            )


if __name__ == "__main__":
    main()
