"""Sparse attention, derived from the cost model (not a timed test): the tables of docs/techniques/sparse-attention.md.

    PYTHONPATH=. python benchmarks/sparse_attention.py            # all four
    PYTHONPATH=. python benchmarks/sparse_attention.py --only context quest shadowkv minference budget

1. *context*: decode-step speed-up of Quest-style selection (density 1/16, pages of 16) against the context,
   Llama-3.1-8B on an H100, batch 1 and 16; and host-resident KV (the same selection, K and V on the host)
   against density at 128k: where the step turns PCIe-bound.
2. *quest*: self-attention and decode-step speed-up at 32k tokens of context, batch 1, token budgets 512 to
   4,096 (density = budget / context), Llama-2-7B geometry on an A100-80GB and an H100.
3. *shadowkv*: decode throughput at 128k tokens of context on an A100-80GB, Llama-3.1-8B: dense attention
   at the batch its KV capacity allows, against values on the host and keys as a rank-160 factor on the GPU,
   budget 1.56 %, at the batch host memory allows.
4. *minference*: prefill of a 1M-token prompt on an A100-80GB, Llama-3.1-8B, dense and sparse at several
   densities.
5. *budget*: decode-step speed-up of Quest-style selection with a 2,048-token budget per sequence against the
   context, Llama-3.1-8B on an H100, batch 1 and 16.

Every figure is the cost model's (datasheet roofline, or the device's calibrated profile where it has one);
none is fitted to a paper.
"""

from __future__ import annotations

import argparse

from simulator.config.schema import Scenario
from simulator.costmodel.features import BatchShape
from simulator.system import build_system

SPARSE = "sparse-attention"
QUEST = {"name": SPARSE, "page_size": 16, "summary_vectors": 2}


def _system(model: str, device: str, techniques=()):
    return build_system(Scenario.model_validate({"model": model, "deployment": {"engine": "none", "device": device},
                                                 "techniques": list(techniques)}))


def _decode(sys_, batch: int, context: int) -> float:
    return sys_.cost_model().iteration(BatchShape(decode_seqs=batch, decode_context=batch * context)).time_s


def _attention(sys_, batch: int, context: int) -> float:
    rows = sys_.cost_model().breakdown(BatchShape(decode_seqs=batch, decode_context=batch * context))
    return sum(r.time_s for r in rows if r.name in ("attention_decode", "kv_select"))


def context_table() -> None:
    dense = _system("llama-3.1-8b", "h100-sxm")
    quest = _system("llama-3.1-8b", "h100-sxm", [{**QUEST, "density": 1 / 16}])
    print("decode step speed-up, Quest density 1/16 (pages of 16): llama-3.1-8b on h100-sxm")
    print(f"{'context':>8} {'batch 1':>8} {'batch 16':>9}")
    for ctx in (2048, 8192, 32768, 131072):
        s1 = _decode(dense, 1, ctx) / _decode(quest, 1, ctx)
        s16 = _decode(dense, 16, ctx) / _decode(quest, 16, ctx)
        print(f"{ctx:>8} {s1:>8.2f} {s16:>9.2f}")
    print("\nhost-resident KV (K and V on the host, overlapped fetch), 128k context, batch 1: step ms")
    print(f"{'density':>8} {'HBM':>8} {'host':>8} {'PCIe share':>10}")
    for rho in (1.0, 0.5, 0.25, 1 / 16, 1 / 64, 1 / 256):
        hbm = _decode(_system("llama-3.1-8b", "h100-sxm", [{**QUEST, "density": rho}]), 1, 131072)
        host_sys = _system("llama-3.1-8b", "h100-sxm", [{**QUEST, "density": rho, "kv_location": "host",
                                                          "host_kv_gib": 512}])
        host = _decode(host_sys, 1, 131072)
        rows = host_sys.cost_model().breakdown(BatchShape(decode_seqs=1, decode_context=131072))
        fetch = sum(r.time_s for r in rows if r.name == "kv_fetch")
        print(f"{rho:>8.4f} {hbm * 1e3:>8.2f} {host * 1e3:>8.2f} {fetch / host:>10.2f}")


def quest_table() -> None:
    ctx = 32768
    print("Quest at 32k context, batch 1, llama-2-7b geometry: self-attention / decode-step speed-up")
    print(f"{'budget':>7} {'density':>8} {'a100 attn':>10} {'a100 step':>10} {'h100 attn':>10} {'h100 step':>10}")
    for budget in (512, 1024, 2048, 4096):
        rho = budget / ctx
        out = []
        for device in ("a100-80gb-sxm", "h100-sxm"):
            dense = _system("llama-2-7b", device)
            quest = _system("llama-2-7b", device, [{**QUEST, "density": rho}])
            out += [_attention(dense, 1, ctx) / _attention(quest, 1, ctx), _decode(dense, 1, ctx) / _decode(quest, 1, ctx)]
        print(f"{budget:>7} {rho:>8.4f} " + " ".join(f"{v:>10.2f}" for v in out))


def shadowkv_table() -> None:
    ctx = 131072
    device, model = "a100-80gb-sxm", "llama-3.1-8b"
    dense = _system(model, device)
    shadow = _system(model, device, [{"name": SPARSE, "density": 0.0156, "page_size": 8, "summary_vectors": 1,
                                      "kv_location": "host", "host_tensors": "values", "key_rank": 160,
                                      "host_kv_gib": 1024}])
    b_dense = dense.memory.kv_capacity_tokens // ctx
    b_shadow = shadow.memory.kv_capacity_tokens // ctx
    t_dense = b_dense / _decode(dense, b_dense, ctx)
    t_shadow = b_shadow / _decode(shadow, b_shadow, ctx)
    t_unbounded = b_shadow / _decode(dense, b_shadow, ctx)  # dense at the same batch, memory ignored
    print(f"ShadowKV-style at {ctx} context, {model} on {device} (values on host, rank-160 keys, budget 1.56 %)")
    print(f"  dense: batch {b_dense}, {t_dense:.1f} tok/s")
    print(f"  host values: batch {b_shadow}, {t_shadow:.1f} tok/s  ({t_shadow / t_dense:.2f}x dense, "
          f"{b_shadow / max(b_dense, 1):.1f}x batch)")
    print(f"  dense at batch {b_shadow} with memory ignored: {t_unbounded:.1f} tok/s")


def minference_table() -> None:
    n = 1_000_000
    device, model = "a100-80gb-sxm", "llama-3.1-8b"
    shape = BatchShape(prefill_chunks=((n, 0, True),))
    dense = _system(model, device).cost_model().iteration(shape).time_s
    print(f"prefill of a {n:,}-token prompt, {model} on {device}: dense {dense / 60:.1f} min")
    print(f"{'density':>8} {'minutes':>8} {'speed-up':>9}")
    for rho in (0.2, 0.1, 0.05, 0.02):
        t = _system(model, device, [{"name": "sparse-prefill", "density": rho}]).cost_model().iteration(shape).time_s
        print(f"{rho:>8.2f} {t / 60:>8.2f} {dense / t:>9.2f}")


def budget_table() -> None:
    dense = _system("llama-3.1-8b", "h100-sxm")
    quest = _system("llama-3.1-8b", "h100-sxm", [{**QUEST, "budget_tokens": 2048}])
    print("decode step speed-up, Quest with a 2,048-token budget per sequence (pages of 16): llama-3.1-8b on h100-sxm")
    print(f"{'context':>8} {'batch 1':>8} {'batch 16':>9}")
    for ctx in (1024, 2048, 8192, 32768, 131072):
        s1 = _decode(dense, 1, ctx) / _decode(quest, 1, ctx)
        s16 = _decode(dense, 16, ctx) / _decode(quest, 16, ctx)
        print(f"{ctx:>8} {s1:>8.2f} {s16:>9.2f}")


TABLES = {"context": context_table, "quest": quest_table, "shadowkv": shadowkv_table, "minference": minference_table,
          "budget": budget_table}

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", choices=sorted(TABLES), default=list(TABLES))
    for name in ap.parse_args().only:
        TABLES[name]()
        print()
