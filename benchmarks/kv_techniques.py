"""What KV quantisation and KV eviction give in capsim (derived, not fitted): the figures of
docs/techniques/kv-quantization.md and docs/techniques/kv-eviction.md.

    PYTHONPATH=. python benchmarks/kv_techniques.py

Each figure is a simulation or a memory plan of a stated scenario; nothing is tuned to a paper's number.
"""

from __future__ import annotations

from simulator.config.schema import Scenario
from simulator.engine import simulate
from simulator.metrics.summary import summarise
from simulator.system import build_system


def scenario(techniques=(), *, model="llama-3.1-8b", device="h100-sxm", prompt=8000, output=1000, qps=50.0,
             n=600, kv_dtype="bf16") -> Scenario:
    return Scenario.model_validate({
        "seed": 3, "model": model, "deployment": {"engine": "none", "device": device, "kv_dtype": kv_dtype},
        "scheduler": {"name": "vllm", "max_num_batched_tokens": max(8192, prompt)},
        "workload": {"arrival": "poisson", "qps": qps, "prompt": {"dist": "fixed", "value": prompt},
                     "output": {"dist": "fixed", "value": output}},
        "simulation": {"num_requests": n}, "techniques": list(techniques),
    })


QUANT = {
    "bf16 cache (none)": [],
    "8 bits, groups of 64": [{"name": "kv-quantization", "bits": 8, "group_size": 64}],
    "4 bits, groups of 64": [{"name": "kv-quantization", "bits": 4, "group_size": 64}],
    "2 bits, groups of 32 (KIVI-like)": [{"name": "kv-quantization", "bits": 2, "group_size": 32}],
    "K 4 / V 2 bits, groups of 32": [{"name": "kv-quantization", "key_bits": 4, "value_bits": 2, "group_size": 32}],
    "3 bits + 1% outliers (KVQuant-like)": [{"name": "kv-quantization", "bits": 3, "outlier_fraction": 0.01,
                                              "metadata_bytes": 0}],
}
EVICT = {
    "none": [],
    "h2o, 1,024 tokens": [{"name": "kv-eviction", "policy": "h2o", "budget_tokens": 1024}],
    "h2o, 20% of the prompt": [{"name": "kv-eviction", "policy": "h2o", "retention": 0.2}],
    "snapkv, 1,024 prompt tokens": [{"name": "kv-eviction", "policy": "snapkv", "budget_tokens": 1024}],
    "streaming, 4 sinks + 1,020": [{"name": "kv-eviction", "policy": "streaming"}],
    "duo: 25% full heads + streaming": [{"name": "kv-eviction", "policy": "streaming", "full_head_fraction": 0.25}],
    "minicache 50% + think 50%": [{"name": "kv-eviction", "policy": "none", "merged_layer_fraction": 0.5,
                                   "key_channel_pruning": 0.5}],
}


def tps(techniques, **kw) -> float:
    return summarise(simulate(scenario(techniques, **kw)).result)["output_tps"]


def table(title: str, variants: dict) -> None:
    print(f"\n{title}\nLlama-3.1-8B, one H100, vLLM; saturated Poisson load (600 requests)")
    print(f"{'setting':38s} {'B/token':>9s} {'KV tokens':>10s} {'long tok/s':>11s} {'x':>6s} {'short tok/s':>12s} {'x':>6s}")
    base_long = base_short = None
    for name, tech in variants.items():
        mem = build_system(scenario(tech)).memory
        long_, short = tps(tech, prompt=8000, output=1000, qps=50), tps(tech, prompt=128, output=128, qps=200)
        base_long, base_short = base_long or long_, base_short or short
        print(f"{name:38s} {mem.kv_bytes_per_token:9.0f} {mem.kv_capacity_tokens:10,d} {long_:11.0f} "
              f"{long_ / base_long:6.2f} {short:12.0f} {short / base_short:6.2f}")
    print("long: 8,000-token prompts, 1,000-token outputs at 50 req/s; short: 128/128 at 200 req/s")


def decode_step(techniques, **kw) -> float:
    """Mean decode step of one request alone (batch 1) over its generation."""
    return summarise(simulate(scenario(techniques, n=1, qps=1.0, **kw)).result)["tpot_mean_s"]


def papers() -> None:
    print("\nBeside the papers")
    # Mistral-7B-Instruct-v0.2, the model SnapKV evaluates: full attention (v0.1 has a 4,096-token window).
    kw = {"model": "mistral-7b-v0.2", "device": "a100-80gb-sxm", "prompt": 16000, "output": 512}
    base = decode_step([], **kw)
    snap = decode_step([{"name": "kv-eviction", "policy": "snapkv", "budget_tokens": 1024}], **kw)
    print(f"SnapKV, Mistral-7B-v0.2, A100-80GB, batch 1, 16k prompt, 512 out, budget 1024: decode step "
          f"{base * 1e3:.2f} -> {snap * 1e3:.2f} ms ({base / snap:.2f}x)")
    kw = {"model": "llama-2-7b", "device": "a100-80gb-sxm", "prompt": 1024, "output": 1024, "qps": 50.0}
    b, k = tps([], **kw), tps([{"name": "kv-quantization", "bits": 2, "group_size": 32}], **kw)
    print(f"KIVI-like 2 bits, Llama-2-7B, A100-80GB, saturated, 1,024/1,024 tokens: {b:.0f} -> {k:.0f} tok/s "
          f"({k / b:.2f}x)")


if __name__ == "__main__":
    table("KV quantisation", QUANT)
    table("KV eviction and structure", EVICT)
    papers()
