"""Microbenchmarks on this machine, written in the calibration schema.

What is timed: the kernels a transformer layer actually runs, at the shapes the
model catalog's layers produce -- the fused QKV, output, gate+up and down
projection GEMMs of a model sharded ``tp`` ways, at token counts 1 ... 16k;
causal prefill attention and decode attention with the model's (per-GPU) query
and KV heads; RMSNorm, rotary embedding, the MLP activation (SiLU-and-multiply
for gated MLPs, GELU otherwise), residual add and embedding gather; and
device-memory copies (plus host <-> device copies on a GPU).

Backends (``--backend``): ``numpy`` (CPU, float32 -- numpy has no bf16),
``torch`` on the CPU (float32) or on CUDA (bf16). torch is optional (``pip
install 'capsim[torch]'``) and only imported when asked for or, with ``auto``,
when installed. How a case is timed:

* every case runs a warm-up call first (kernel selection, lazy allocation and
  page faults happen there), then at least 3 timed calls, more while the timed
  total is under ``min_total_s``; the recorded time is the median of the timed
  calls and the spread their inter-quartile range;
* on a CPU each call is timed with ``time.perf_counter`` (torch CPU ops are
  synchronous);
* on CUDA the GPU is first kept busy with large GEMMs for about a second so its
  clocks have left idle; each timed call is bracketed by ``torch.cuda.Event``
  records on the current stream, preceded by an (untimed) write of a buffer
  larger than the L2 cache -- in a forward pass a layer's weights were evicted
  by the previous layers', so a kernel re-reading its inputs from a warm L2
  would look faster than it runs in a model; that write also keeps the GPU
  busy while the next launches are queued, so the events time the kernels, not
  the Python launch gaps. The device is synchronised before the first and after
  the last timed call, and the events are read only then.

The CUDA path has been reviewed but not run by the project's CI or its
developers' machines (no GPU there); the CPU paths are exercised by the tests.

Memory: a case whose arrays would not fit in half of the memory available
(host RAM on a CPU, free GPU memory on CUDA) is skipped and listed in the
result's ``attrs["skipped"]`` -- the full sweep's largest decode cases (256
sequences of 32k context with 32 KV heads) need over 100 GB.

Elementwise kernels here are the framework's unfused ones (e.g. SiLU, then a
multiply), while the rows record the bytes the cost model charges the fused
kernel a serving engine runs (:mod:`hwmodels.calibration.importers.vidur`
counts the same): a CPU or eager-torch profile's elementwise curves are
therefore slower than a serving engine's, on purpose -- they describe what was
timed.

Held-out families: every model-shaped row carries the model's hidden size
(:mod:`hwmodels.calibration.folds` puts <= 5120 in fold A, larger in fold B),
so the quick sweep's two models -- Llama-3.1-8B and Llama-3.1-70B at TP 8 --
give a 7B/8B-vs-70B split even on a laptop CPU.

To measure a GPU: install torch with CUDA, then ``capsim calibrate measure
--device cuda --out gpu.csv`` (the full sweep takes tens of minutes on an H100);
``capsim calibrate fit --measurements gpu.csv --device <catalog id>`` fits it
(pass ``--label`` to name the device as the catalog does, e.g. ``h100-sxm``).
"""

from __future__ import annotations

import datetime as _dt
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from capsim.errors import CapsimError
from hwmodels.calibration.schema import make_frame
from hwmodels.calibration.work import element_bytes

QUICK_MODELS = (("llama-3.1-8b", 8), ("llama-3.1-70b", 8))
FULL_MODELS = (
    ("llama-2-7b", 1), ("llama-2-7b", 2), ("llama-3.1-8b", 1), ("llama-3.1-8b", 2), ("llama-3.1-8b", 8),
    ("llama-3.1-70b", 2), ("llama-3.1-70b", 4), ("llama-3.1-70b", 8), ("qwen2.5-72b", 4), ("qwen2.5-72b", 8),
)
QUICK_TOKENS = (1, 4, 16, 32, 64, 128)
FULL_TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
CPU_MAX_FLOPS = 2e11  # full sweep on a CPU: skip cases above this (minutes each)
MEMORY_FRACTION = 0.5  # a case may use this fraction of the memory available when the sweep starts
L2_FLUSH_BYTES = 256 << 20  # larger than any GPU's L2 so far (H100 50 MB, B200 126 MB)
GPU_WARMUP_S = 1.0  # busy time before the first timed case, so the clocks have ramped up
BACKENDS = ("auto", "numpy", "torch")


# --------------------------------------------------------------------- backends


@dataclass
class Backend:
    """How to allocate arrays, run a kernel and time it on one device."""

    name: str  # "numpy" | "torch"
    device: str  # "cpu" | "cuda"
    dtype: str  # schema dtype of the arrays
    versions: str
    label: str  # schema ``device``
    _torch: Any = None
    _tdtype: Any = None
    kernel_names: dict[str, str] = field(default_factory=dict)
    _flush: Any = None  # CUDA: the buffer written between timed calls to evict L2

    @property
    def gpu(self) -> bool:
        return self.device == "cuda"

    # -- arrays
    def rand(self, *shape: int):
        """An array of ``shape`` filled with small values (timings do not depend on them; random
        generation of the largest weights would take longer than timing them)."""
        if self._torch is None:
            a = np.empty(shape, dtype=np.float32)
            a.fill(0.01)
            return a
        return self._torch.full(shape, 0.01, device=self.device, dtype=self._tdtype)

    def memory_budget(self) -> float:
        """Bytes one case may allocate: a fraction of what is free now (GPU memory on CUDA, else RAM)."""
        if self.gpu:
            free, _total = self._torch.cuda.mem_get_info()
            return MEMORY_FRACTION * free
        import psutil

        return MEMORY_FRACTION * psutil.virtual_memory().available

    def warm_up(self) -> None:
        """On CUDA: run large GEMMs for ``GPU_WARMUP_S`` (clocks leave idle) and allocate the L2 flush buffer."""
        if not self.gpu:
            return
        torch = self._torch
        self._flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device="cuda")
        a = torch.full((4096, 4096), 0.01, device="cuda", dtype=self._tdtype)
        t0 = time.perf_counter()
        with torch.inference_mode():
            while time.perf_counter() - t0 < GPU_WARMUP_S:
                for _ in range(10):
                    torch.matmul(a, a)
                torch.cuda.synchronize()

    # -- timing
    def time(self, fn: Callable[[], Any], *, repeats: int, warmup: int) -> list[float]:
        """Seconds of each of ``repeats`` calls after ``warmup`` untimed ones."""
        if self._torch is None:
            for _ in range(warmup):
                fn()
            return _perf_counter_times(fn, repeats)
        torch = self._torch
        with torch.inference_mode():  # no autograd bookkeeping: a serving engine runs without it too
            for _ in range(warmup):
                fn()
            if not self.gpu:
                return _perf_counter_times(fn, repeats)
            if self._flush is None:
                self.warm_up()
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                      for _ in range(repeats)]
            torch.cuda.synchronize()  # nothing of the warm-up is still running when timing starts
            for start, end in events:
                self._flush.zero_()  # untimed: evicts L2 and lets the CPU queue fn's launches ahead
                start.record()
                fn()
                end.record()
            torch.cuda.synchronize()  # every event has completed before it is read
            return [start.elapsed_time(end) * 1e-3 for start, end in events]  # elapsed_time is in ms


def _perf_counter_times(fn: Callable[[], Any], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def make_backend(device: str, backend: str = "auto") -> Backend:
    """The backend for ``device`` (``cpu`` | ``cuda``); ``auto`` prefers torch when it is installed."""
    if device not in ("cpu", "cuda"):
        raise CapsimError(f"unknown device {device!r}", where="--device", fix="use cpu or cuda")
    if backend not in BACKENDS:
        raise CapsimError(f"unknown backend {backend!r}", where="--backend", fix=f"use one of {', '.join(BACKENDS)}")
    if device == "cuda" and backend == "numpy":
        raise CapsimError("the numpy backend runs on the CPU only", where="--backend numpy",
                          fix="use --backend torch (or auto) with --device cuda, or --device cpu")
    torch = None
    if backend != "numpy":
        try:
            import torch  # optional dependency
        except ImportError:
            if backend == "torch" or device == "cuda":
                raise CapsimError(
                    "torch is not installed", where="--backend torch" if backend == "torch" else "--device cuda",
                    fix="pip install 'capsim[torch]' (a CUDA build of torch for --device cuda), "
                    "or use --device cpu --backend numpy",
                ) from None
    if device == "cuda":
        if not torch.cuda.is_available():
            raise CapsimError(f"no CUDA device visible to torch {torch.__version__}", where="--device cuda",
                              fix="run on a machine with an NVIDIA GPU and a CUDA build of torch, or use --device cpu")
        name = torch.cuda.get_device_name(torch.cuda.current_device())
        return Backend("torch", "cuda", "bf16", f"torch {torch.__version__}, CUDA {torch.version.cuda}",
                       f"cuda:{name}", torch, torch.bfloat16)
    cpu = platform.processor() or platform.machine()
    if torch is not None:
        return Backend("torch", "cpu", "fp32", f"torch {torch.__version__} ({torch.get_num_threads()} threads)",
                       "cpu", torch, torch.float32, {"cpu": cpu})
    return Backend("numpy", "cpu", "fp32", f"numpy {np.__version__}", "cpu", kernel_names={"cpu": cpu})


# ----------------------------------------------------------------------- kernels


def _matmul(be: Backend, a, b):
    return (lambda: a @ b) if be._torch is None else (lambda: be._torch.matmul(a, b))


def _softmax_np(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x


def _prefill(be: Backend, batch: int, seq: int, heads: int, kv_heads: int, head_dim: int):
    q, k, v = be.rand(batch, heads, seq, head_dim), be.rand(batch, kv_heads, seq, head_dim), \
        be.rand(batch, kv_heads, seq, head_dim)
    if be._torch is not None:
        sdpa = be._torch.nn.functional.scaled_dot_product_attention
        rep = heads // kv_heads
        # Grouped-query heads expanded once, outside the timed call (serving kernels index the shared
        # KV head instead of copying it).
        kk = k.repeat_interleave(rep, dim=1) if rep > 1 else k
        vv = v.repeat_interleave(rep, dim=1) if rep > 1 else v
        return lambda: sdpa(q, kk, vv, is_causal=True)
    group = heads // kv_heads
    qg = q.reshape(batch, kv_heads, group * seq, head_dim)
    mask = np.triu(np.full((seq, seq), -np.inf, dtype=np.float32), 1)
    scale = np.float32(1.0 / np.sqrt(head_dim))

    def run():
        s = (qg @ k.transpose(0, 1, 3, 2)) * scale  # (b, hkv, group*seq, seq)
        s = s.reshape(batch, kv_heads, group, seq, seq) + mask
        return _softmax_np(s).reshape(batch, kv_heads, group * seq, seq) @ v

    return run


def _decode(be: Backend, batch: int, context: int, heads: int, kv_heads: int, head_dim: int):
    ctx = context + 1
    q = be.rand(batch, kv_heads, heads // kv_heads, head_dim)
    k, v = be.rand(batch, kv_heads, ctx, head_dim), be.rand(batch, kv_heads, ctx, head_dim)
    if be._torch is not None:
        torch = be._torch
        scale = 1.0 / head_dim**0.5

        def run_t():
            s = torch.matmul(q, k.transpose(-1, -2)) * scale
            return torch.matmul(torch.softmax(s, dim=-1), v)

        return run_t
    scale = np.float32(1.0 / np.sqrt(head_dim))
    return lambda: _softmax_np((q @ k.transpose(0, 1, 3, 2)) * scale) @ v


def _rope(be: Backend, tokens: int, heads: int, head_dim: int):
    """Rotary embedding of ``heads`` (query plus key heads) of ``tokens`` tokens: ``x cos + rot(x) sin``,
    with rot the rotate-half permutation (GPT-NeoX / Llama layout); cos and sin per token and dimension."""
    x = be.rand(tokens, heads, head_dim)
    cos, sin = be.rand(tokens, 1, head_dim), be.rand(tokens, 1, head_dim)
    half = head_dim // 2
    if be._torch is None:
        return lambda: x * cos + np.concatenate((-x[..., half:], x[..., :half]), axis=-1) * sin
    torch = be._torch
    return lambda: x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def _elementwise(be: Backend, op: str, tokens: int, width: int, gated: bool = True):
    x = be.rand(tokens, width)
    if op == "norm":
        w = be.rand(width)
        if be._torch is None:
            return lambda: x * (1.0 / np.sqrt((x * x).mean(axis=-1, keepdims=True) + 1e-6)) * w
        torch = be._torch
        return lambda: x * torch.rsqrt((x * x).mean(dim=-1, keepdim=True) + 1e-6) * w
    if op == "activation":
        if gated:  # SiLU(gate) * up over the fused gate+up activations
            g, u = be.rand(tokens, width), be.rand(tokens, width)
            if be._torch is None:
                return lambda: g / (1.0 + np.exp(-g)) * u
            return lambda: be._torch.nn.functional.silu(g) * u
        if be._torch is None:  # GELU, tanh approximation
            c = np.float32(np.sqrt(2.0 / np.pi))
            return lambda: 0.5 * x * (1.0 + np.tanh(c * (x + 0.044715 * x * x * x)))
        return lambda: be._torch.nn.functional.gelu(x, approximate="tanh")
    if op == "residual_add":
        y = be.rand(tokens, width)
        return lambda: x + y
    if op == "embedding":
        rows = EMBEDDING_ROWS
        table = be.rand(rows, width)
        if be._torch is None:
            ids = np.random.default_rng(1).integers(0, rows, tokens)
            return lambda: table[ids]
        ids = be._torch.randint(0, rows, (tokens,), device=be.device)
        return lambda: table[ids]
    raise ValueError(op)


EMBEDDING_ROWS = 8192  # vocabulary rows to gather from (a whole vocabulary only costs allocation time)


# ------------------------------------------------------------------------- sweep


@dataclass(frozen=True)
class Case:
    """One timed shape: the schema columns except the timing ones, a kernel factory, its FLOPs and the
    number of array elements it allocates (inputs, outputs and the largest temporaries), which decides
    whether it fits in memory."""

    row: dict[str, Any]
    build: Callable[[Backend], Callable[[], Any]]
    flops: float
    elements: float = 0.0


def _model_cases(model: Any, tp: int, tokens: tuple[int, ...], quick: bool) -> Iterator[Case]:
    """Cases of one model (a catalog id or a ``ModelSpec``) sharded ``tp`` ways."""
    from simulator.costmodel.sharding import kv_heads_per_gpu  # the simulator's sharding: time what it prices
    from simulator.models import get_model  # the catalog lives with the simulator

    m = get_model(model) if isinstance(model, str) else model
    d, h, hkv, dh, f = m.hidden_size, m.num_heads, m.num_kv_heads, m.head_dim, m.ffn_size
    h_gpu = h // tp
    hkv_gpu = kv_heads_per_gpu(hkv, tp)
    gated = m.mlp == "gated"
    up = (2 if gated else 1) * f // tp
    base = {"model": m.name, "hidden": d, "tp": tp}
    gemms = {
        "qkv_proj": ((h_gpu + 2 * hkv_gpu) * dh, d),
        "o_proj": (d, h_gpu * dh),
        "gate_up_proj": (up, d),
        "down_proj": (d, f // tp),
    }
    for op, (n, k) in gemms.items():
        for t in tokens:
            yield Case({**base, "op_class": "gemm", "op": op, "m": t, "n": n, "k": k},
                       lambda be, t=t, n=n, k=k: _matmul(be, be.rand(t, k), be.rand(k, n)), 2.0 * t * n * k,
                       float(t * k + k * n + t * n))
    seqs = (16, 64, 256, 512) if quick else (128, 512, 1024, 2048, 4096, 8192, 16384)
    batches = (1, 2, 4) if quick else (1, 2, 4, 8)
    for b in batches:
        for s in seqs:
            # q, k, v, the expanded k and v, the output; the numpy path's score matrices (3 live at once)
            elements = b * s * dh * (3.0 * h_gpu + 2.0 * hkv_gpu) + 3.0 * b * h_gpu * s * s
            yield Case({**base, "op_class": "attention_prefill", "op": "attention_prefill", "batch": b, "seq": s,
                        "context": 0, "heads": h_gpu, "kv_heads": hkv_gpu, "head_dim": dh},
                       lambda be, b=b, s=s: _prefill(be, b, s, h_gpu, hkv_gpu, dh), 2.0 * b * h_gpu * dh * s * s,
                       elements)
    dec_b = (1, 4, 16, 32) if quick else (1, 4, 16, 64, 256)
    dec_c = (128, 512, 2048) if quick else (128, 512, 2048, 8192, 32768)
    for b in dec_b:
        for c in dec_c:
            # the KV cache dominates: k and v of every sequence, plus two score matrices, q and the output
            elements = 2.0 * b * hkv_gpu * (c + 1) * dh + 2.0 * b * h_gpu * (c + 1) + 2.0 * b * h_gpu * dh
            yield Case({**base, "op_class": "attention_decode", "op": "attention_decode", "batch": b, "seq": 1,
                        "context": c, "heads": h_gpu, "kv_heads": hkv_gpu, "head_dim": dh},
                       lambda be, b=b, c=c: _decode(be, b, c, h_gpu, hkv_gpu, dh), 4.0 * b * h_gpu * dh * c,
                       elements)
    el_tokens = (1, 16, 128, 1024, 4096) if quick else (1, 16, 128, 1024, 4096, 16384)
    rope_width = (h_gpu + hkv_gpu) * dh
    # (op, width of the rows, elements read + written per token that the cost model charges (the fused
    # kernel's traffic, as the vidur importer records), elements allocated per token by the unfused kernel)
    elementwise = (
        ("norm", d, 2, 6),
        ("rope", rope_width, 2, 6),
        ("activation", f // tp, 3 if gated else 2, 6),
        ("residual_add", d, 3, 3),
        ("embedding", d, 2, 1),
    )
    for op, width, per_token_elems, alloc in elementwise:
        for t in el_tokens:
            if op == "rope":
                def build(be, t=t):
                    return _rope(be, t, h_gpu + hkv_gpu, dh)
            else:
                def build(be, op=op, t=t, width=width):
                    return _elementwise(be, op, t, width, gated)
            extra = EMBEDDING_ROWS * width if op == "embedding" else 0
            yield Case({**base, "op_class": "elementwise", "op": op, "tokens": t,
                        "elements": t * width * per_token_elems},
                       build, float(t * width), float(t * width * alloc + extra))


def _copy_cases(quick: bool, gpu: bool) -> Iterator[Case]:
    sizes = (1 << 20, 1 << 22, 1 << 24, 1 << 26, 1 << 27) if quick else tuple(1 << p for p in range(16, 31, 2))
    for size in sizes:
        def build(be, size=size):
            elems = int(size // element_bytes(be.dtype))
            src = be.rand(elems)
            if be._torch is None:
                dst = np.empty_like(src)
                return lambda: np.copyto(dst, src)
            dst = be._torch.empty_like(src)
            return lambda: dst.copy_(src)
        # nbytes: bytes copied (read once, written once: the curve's bandwidth is for the copy size x 2).
        # ``elements`` is in bytes / 2 here: the sweep's memory check multiplies by the element size (<= 4).
        yield Case({"op_class": "memcpy", "op": "copy", "nbytes": 2.0 * size}, build, 0.0, float(size))
        if gpu:
            def build_h2d(be, size=size):
                torch = be._torch
                host = torch.empty(size // 2, dtype=torch.bfloat16, pin_memory=True)
                dev = torch.empty(size // 2, dtype=torch.bfloat16, device="cuda")
                return lambda: dev.copy_(host, non_blocking=True)
            yield Case({"op_class": "host_copy", "op": "h2d", "nbytes": float(size), "group_size": 1, "link": "pcie"},
                       build_h2d, 0.0, float(size) / 2)


def sweep(quick: bool, gpu: bool, models=None, tokens: tuple[int, ...] | None = None) -> list[Case]:
    """Every case of the quick or the full sweep (``models``: ``(catalog id or ModelSpec, tp)`` pairs)."""
    models = models or (QUICK_MODELS if quick else FULL_MODELS)
    tokens = tokens or (QUICK_TOKENS if quick else FULL_TOKENS)
    cases: list[Case] = []
    for model, tp in models:
        cases.extend(_model_cases(model, tp, tokens, quick))
    cases.extend(_copy_cases(quick, gpu))
    return cases


def _describe(case: Case) -> str:
    keys = ("model", "tp", "op", "m", "n", "k", "batch", "seq", "context", "tokens", "nbytes")
    return " ".join(f"{k}={case.row[k]}" for k in keys if k in case.row)


def run_sweep(
    device: str = "cpu",
    *,
    quick: bool = True,
    backend: str = "auto",
    label: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    min_total_s: float = 0.02,
    models=None,
    tokens: tuple[int, ...] | None = None,
    memory_budget: float | None = None,
) -> pd.DataFrame:
    """Time every case of the sweep; returns a schema table (one row per case).

    Each case runs 1 warm-up call then at least 3 timed ones, more while the
    timed total is under ``min_total_s`` (capped at 50). On a CPU the full sweep
    skips cases above ``CPU_MAX_FLOPS`` FLOPs. Cases whose arrays would exceed
    ``memory_budget`` bytes (default: half the free RAM or GPU memory) are
    skipped; ``attrs["skipped"]`` lists them. ``models`` / ``tokens`` replace the
    sweep's models and GEMM token counts (tests time tiny inline models).
    """
    be = make_backend(device, backend)
    stamp = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    rows: list[dict[str, Any]] = []
    cases = sweep(quick, be.gpu, models, tokens)
    if not be.gpu and not quick:
        cases = [c for c in cases if c.flops <= CPU_MAX_FLOPS]
    budget = be.memory_budget() if memory_budget is None else memory_budget
    eb = element_bytes(be.dtype)
    skipped = [_describe(c) for c in cases if c.elements * eb > budget]
    cases = [c for c in cases if c.elements * eb <= budget]
    be.warm_up()
    for i, case in enumerate(cases):
        fn = case.build(be)
        first = be.time(fn, repeats=1, warmup=1)[0]
        extra = int(min(50, max(2, min_total_s / max(first, 1e-9))))
        times = [first, *be.time(fn, repeats=extra, warmup=0)]
        del fn  # the case's arrays are freed before the next case allocates its own
        q1, q3 = np.percentile(times, [25, 75])
        row = dict(case.row)
        if "elements" in row:  # elementwise cases count elements; the schema wants bytes
            row["nbytes"] = row.pop("elements") * eb
        rows.append({
            **row, "device": label or be.label, "dtype": be.dtype,
            "kernel": f"{be.name}-{be.device}" + (f" ({be.kernel_names['cpu']})" if "cpu" in be.kernel_names else ""),
            "measured_s": statistics.median(times), "repeats": len(times), "spread_s": float(q3 - q1),
            "timestamp": stamp, "versions": be.versions, "source": f"measure.py {be.name}-{be.device} case {i + 1}",
        })
        if progress:
            progress(i + 1, len(cases))
    if not rows:
        raise CapsimError("no case of the sweep fits in memory", where="calibrate measure",
                          fix=f"free memory (budget {budget / 2**30:.1f} GiB) or use --quick")
    df = make_frame(rows)
    df.attrs["skipped"] = skipped
    return df
