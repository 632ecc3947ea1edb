"""Decode-attention kernels, derived from the cost model (not a timed test): the tables of
docs/techniques/decode-kernels.md.

    PYTHONPATH=. python benchmarks/decode_kernels.py

1. Attention-row and decode-step speed-up of Lean Attention's stream-K kernel over a FlashAttention-2 kernel
   without split-KV, against the context (batch 1) and the batch (32k context): Llama-3.1-8B (8 KV heads) on
   an H100-SXM (132 SMs).
2. The same at batch 1 on an A100-80GB (108 SMs) up to 512k tokens, for Llama-3.1-8B (8 KV heads, grouped
   queries) and Llama-2-7B's geometry (32 KV heads, one per query head), beside FlashDecoding's split-KV.

Every figure is the roofline with each kernel's SM occupancy (module doc of
simulator/techniques/decode_kernel.py); none is fitted to a paper.
"""

from __future__ import annotations

from simulator.config.schema import Scenario
from simulator.costmodel.features import BatchShape
from simulator.system import build_system


def _system(model: str, device: str, kernel: str):
    return build_system(Scenario.model_validate({
        "model": model, "deployment": {"engine": "none", "device": device},
        "techniques": [{"name": "decode-kernel", "kernel": kernel}],
    }))


def _times(sys_, batch: int, context: int) -> tuple[float, float]:
    """(attention row, whole step) seconds of one decode step."""
    cm = sys_.cost_model()
    shape = BatchShape(decode_seqs=batch, decode_context=batch * context)
    rows = {r.name: r.time_s for r in cm.breakdown(shape)}
    return rows["attention_decode"], cm.iteration(shape).time_s


def speedups(model: str, device: str, batch: int, context: int, kernel: str = "lean") -> tuple[float, float]:
    """(attention, step) speed-up of ``kernel`` over the non-split FlashAttention-2 kernel."""
    a0, s0 = _times(_system(model, device, "flash-attention-2"), batch, context)
    a1, s1 = _times(_system(model, device, kernel), batch, context)
    return a0 / a1, s0 / s1


def main() -> None:
    model, dev = "llama-3.1-8b", "h100-sxm"
    print(f"lean over non-split FlashAttention-2, {model} on {dev}: attention / step speed-up")
    print(" context  batch 1          ")
    for c in (2048, 8192, 32768, 131072):
        a, s = speedups(model, dev, 1, c)
        print(f"{c:>8}  {a:6.2f} / {s:5.2f}")
    print("   batch  context 32768    ")
    for b in (1, 2, 4, 8, 16, 32):
        a, s = speedups(model, dev, b, 32768)
        print(f"{b:>8}  {a:6.2f} / {s:5.2f}")
    print()
    print("a100-80gb-sxm, batch 1: attention speed-up over non-split FlashAttention-2")
    print(" context  llama-3.1-8b lean  flash-decoding  llama-2-7b lean  flash-decoding")
    for c in (8192, 32768, 131072, 524288):
        g_lean = speedups("llama-3.1-8b", "a100-80gb-sxm", 1, c)[0]
        g_fd = speedups("llama-3.1-8b", "a100-80gb-sxm", 1, c, "flash-decoding")[0]
        m_lean = speedups("llama-2-7b", "a100-80gb-sxm", 1, c)[0]
        m_fd = speedups("llama-2-7b", "a100-80gb-sxm", 1, c, "flash-decoding")[0]
        print(f"{c:>8}  {g_lean:17.2f}  {g_fd:14.2f}  {m_lean:15.2f}  {m_fd:14.2f}")


if __name__ == "__main__":
    main()
