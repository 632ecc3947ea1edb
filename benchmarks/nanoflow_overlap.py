"""NanoFlow nano-batching: throughput against the optimal-throughput bound, per scheduler and nano-batch count.

An offline batch (every request at t = 0; prompts 256-2,048, outputs 64-512 tokens) on one Llama-3.1-8B
H100 replica, under Sarathi (iterations mix a prompt chunk with the decodes) and vLLM v0 (prefill-only and
decode-only iterations), with operators one after another and with 2 or 4 nano-batches. Nothing is fitted:
the split and the overlap are priced by the cost model (docs/techniques/nanoflow.md).

    PYTHONPATH=. python benchmarks/nanoflow_overlap.py
"""

from __future__ import annotations

import argparse

from simulator.config.schema import Scenario
from simulator.engine import simulate
from simulator.metrics.summary import summarise

SCHEDULERS = {
    "sarathi": {"name": "sarathi", "max_num_seqs": 512, "chunk_size": 2048},
    "vllm": {"name": "vllm", "max_num_seqs": 256, "max_num_batched_tokens": 16384},
}


def run(scheduler: str, nano: int, num_requests: int) -> dict:
    doc = {
        "seed": 1,
        "model": "llama-3.1-8b",
        "deployment": {"engine": "none", "device": "h100-sxm"},
        "scheduler": SCHEDULERS[scheduler],
        "workload": {
            "arrival": "offline",
            "prompt": {"dist": "uniform", "low": 256, "high": 2048},
            "output": {"dist": "uniform", "low": 64, "high": 512},
        },
        "simulation": {"num_requests": num_requests},
    }
    if nano > 1:
        doc["techniques"] = [{"name": "nanoflow", "nano_batches": nano}]
    return summarise(simulate(Scenario.model_validate(doc)).result)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=400)
    args = ap.parse_args()
    print("| scheduler | nano-batches | output tok/s | vs off | bound tok/s (binding) | of bound |")
    print("|---|---|---|---|---|---|")
    for scheduler in SCHEDULERS:
        base = None
        for nano in (1, 2, 4):
            s = run(scheduler, nano, args.requests)
            base = base or s["output_tps"]
            print(
                f"| {scheduler} | {'off' if nano == 1 else nano} | {s['output_tps']:,.0f} | "
                f"{s['output_tps'] / base:.3f} | {s['bound_output_tps']:,.0f} ({s['bound_resource']}) | "
                f"{s['bound_attainment']:.1%} |"
            )


if __name__ == "__main__":
    main()
