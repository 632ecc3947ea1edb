"""Speculative decoding, derived from the cost model (not a timed test): three tables for the docs.

    python benchmarks/speculative.py            # all three
    python benchmarks/speculative.py --only batch rate presets

1. *batch*: where speculation stops paying, per batch size. Speed-up of one round over plain decoding
   = tau * t_plain(b) / t_round(b) at a per-sequence context of 1,024 tokens, Llama-3.1-8B on an H100 with
   a Llama-3.2-1B draft (K = 4), for several acceptance rates; the crossover batch is where it falls below 1.
2. *rate*: the same question as a serving engineer asks it -- median TPOT and E2E against the arrival
   rate, Llama-2-7B on an A100 with a LLaMA-68M draft (K = 4, acceptance 0.6), 512-token prompts and
   256-token outputs, vLLM scheduling; the crossover rate is interpolated where the TPOT ratio crosses 1.
3. *presets*: each named method's preset at batch 1 (one request at a time, 128-token prompt, 256-token
   output) on the hardware its paper names where it names one (A100-80GB otherwise), its decode speed-up
   beside the paper's reported figure.
"""

from __future__ import annotations

import argparse

import numpy as np

from simulator.config.schema import Scenario
from simulator.engine import simulate
from simulator.metrics.summary import summarise
from simulator.system import build_system
from simulator.techniques.presets import PRESETS
from simulator.techniques.speculative import expected_tokens

SPEC = "speculative-decoding"


def batch_table() -> None:
    base = {"model": "llama-3.1-8b", "deployment": {"engine": "none", "device": "h100-sxm"}}
    plain = build_system(Scenario.model_validate(base)).cost_model()
    ctx = 1024
    batches = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    print("batch crossover: llama-3.1-8b on h100-sxm (calibrated), draft llama-3.2-1b, K=4, context 1,024 / seq")
    print(f"{'acceptance':>10} {'tau':>5} " + " ".join(f"{b:>6}" for b in batches) + "  crossover batch")
    for a in (0.5, 0.6, 0.7, 0.8, 0.9):
        tech = {"name": SPEC, "drafter": "model", "draft_model": "llama-3.2-1b", "k": 4, "acceptance": a}
        system = build_system(Scenario.model_validate({**base, "techniques": [tech]}))
        step = system.step
        shape = step.chain_max
        tau = float(expected_tokens(shape, lambda j, a=a: a))
        speedups = []
        for b in batches:
            t_plain = plain.decode_run(b, b * ctx, 1).first
            verify = step.verify(shape.verified).decode_run(b, b * ctx, 1).first
            draft = step.drafter.round_run(shape, b, b * ctx, 1, float(b)).first
            speedups.append(tau * t_plain / (verify + draft))
        below = [b for b, s in zip(batches, speedups, strict=True) if s < 1.0]
        print(f"{a:>10.2f} {tau:>5.2f} " + " ".join(f"{s:>6.2f}" for s in speedups)
              + f"  {below[0] if below else '> 512'}")


def _run(qps: float, techniques: list) -> dict:
    sc = Scenario.model_validate({
        "seed": 5, "model": "llama-2-7b", "deployment": {"engine": "none", "device": "a100-80gb-sxm"},
        "scheduler": {"name": "vllm", "max_num_seqs": 256},
        "workload": {"arrival": "poisson", "qps": qps, "prompt": {"dist": "fixed", "value": 512},
                     "output": {"dist": "fixed", "value": 256}},
        "simulation": {"num_requests": 1500, "warmup_s": 20}, "techniques": techniques,
    })
    return summarise(simulate(sc).result, sc.slo)


def rate_table() -> None:
    tech = [{"name": SPEC, "drafter": "model", "draft_model": "llama-68m", "k": 4, "acceptance": 0.6}]
    rates = [0.5, 2, 4, 8, 12, 16, 20, 24, 28]
    print("\nrate crossover: llama-2-7b on a100-80gb-sxm, draft llama-68m, K=4, acceptance 0.6, 512/256 tokens")
    print(f"{'req/s':>6} {'TPOT plain':>11} {'TPOT spec':>10} {'ratio':>6} {'E2E p50 plain':>14} {'E2E p50 spec':>13}")
    ratios = []
    for q in rates:
        p, s = _run(q, []), _run(q, tech)
        r = s["tpot_p50_s"] / p["tpot_p50_s"]
        ratios.append(r)
        print(f"{q:>6g} {p['tpot_p50_s'] * 1e3:>9.2f}ms {s['tpot_p50_s'] * 1e3:>8.2f}ms {r:>6.2f} "
              f"{p['e2e_p50_s']:>13.2f}s {s['e2e_p50_s']:>12.2f}s")
    ratios = np.array(ratios)
    cross = np.flatnonzero((ratios[:-1] < 1) & (ratios[1:] >= 1))
    if len(cross):
        i = int(cross[0])
        q = rates[i] + (1 - ratios[i]) * (rates[i + 1] - rates[i]) / (ratios[i + 1] - ratios[i])
        print(f"TPOT crossover at about {q:.1f} req/s (linear between {rates[i]} and {rates[i + 1]})")
    else:
        print("no crossover in the range")


HARDWARE = {"eagle-llama2-chat-70b": ("a100-40gb-sxm", 4)}  # EAGLE's 70B runs: 4 A100 (40G)


def presets_table() -> None:
    print("\npresets at batch 1: 128-token prompt, 256-token output, one request at a time (decode speed-up)")
    print(f"{'preset':24} {'device':16} {'tau':>5} {'sim':>6}  reported")
    for name, preset in PRESETS.items():
        model = preset.conditions.get("model", "llama-2-7b")
        device, tp = HARDWARE.get(name, ("a100-80gb-sxm", 1))
        out = []
        for techniques in ([], [{"name": SPEC, "preset": name}]):
            sc = Scenario.model_validate({
                "seed": 1, "model": model, "deployment": {"engine": "none", "device": device, "tp": tp},
                "workload": {"arrival": "poisson", "qps": 0.05, "prompt": {"dist": "fixed", "value": 128},
                             "output": {"dist": "fixed", "value": 256}},
                "simulation": {"num_requests": 20}, "techniques": techniques,
            })
            r = simulate(sc).result.requests
            out.append(float(((r["finish_s"] - r["first_token_s"]) / (r["output_tokens"] - 1)).mean()))
        system = build_system(Scenario.model_validate({"model": model, "deployment": {"engine": "none", "device": device, "tp": tp},
                                                       "techniques": [{"name": SPEC, "preset": name}]}))
        p = system.techniques.techniques[0].params
        shape = system.step.chain_max
        acc = p.acceptance_by_position
        rate = p.acceptance
        tau = float(expected_tokens(shape, (lambda j, acc=acc: acc[j]) if acc else (lambda j, rate=rate: rate)))
        print(f"{name:24} {device + (f' x{tp}' if tp > 1 else ''):16} {tau:>5.2f} {out[0] / out[1]:>5.2f}x  "
              f"{preset.reported}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=["batch", "rate", "presets"])
    args = parser.parse_args()
    for part in args.only:
        {"batch": batch_table, "rate": rate_table, "presets": presets_table}[part]()


if __name__ == "__main__":
    main()
