"""Turn a :class:`~traces.config.WorkloadConfig` into a :class:`~traces.stream.RequestStream`.

Determinism: every random choice comes from ``numpy.random.SeedSequence(seed)``
spawned into independent child streams -- arrivals, prompt lengths, output
lengths, trace rows, trace sub-sampling -- so the same seed gives identical
arrays, and changing one part of the workload (say the output distribution)
leaves the samples of the other parts unchanged.

>>> from traces.config import WorkloadConfig
>>> s = build_requests(WorkloadConfig(qps=8.0), seed=1, num_requests=1000)
>>> len(s), s.source
(1000, 'poisson(8 req/s) x fixed(512)/fixed(128)')
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from capsim.errors import CapsimError
from traces.arrivals import ARRIVALS
from traces.config import WorkloadConfig
from traces.images import image_tokens
from traces.lengths import describe_lengths, sample_lengths
from traces.sharing import apply_sharing
from traces.stream import RequestStream

#: Order of the child seed streams; append new ones at the end to keep old streams reproducible.
_STREAMS = ("arrivals", "prompt", "output", "trace_rows", "trace_sample", "sharing", "images")


def _check_limits(num_requests: int | None, duration_s: float | None, finite: bool) -> None:
    if num_requests is not None and (int(num_requests) != num_requests or num_requests < 0):
        raise CapsimError(f"num_requests must be a whole number >= 0, got {num_requests!r}", where="num_requests")
    if duration_s is not None and not (np.isfinite(duration_s) and duration_s > 0):
        raise CapsimError(f"duration_s must be a positive number of seconds, got {duration_s!r}", where="duration_s")
    if num_requests is None and duration_s is None and not finite:
        raise CapsimError(
            "a synthetic workload needs a length: a number of requests or a duration",
            where="workload",
            fix="give num_requests and/or duration_s (trace replay defaults to the whole trace)",
        )


def build_requests(
    cfg: WorkloadConfig,
    *,
    seed: int,
    num_requests: int | None = None,
    duration_s: float | None = None,
    base_dir: str | Path | None = None,
) -> RequestStream:
    """Build the request stream of a workload.

    Synthetic arrivals: exactly ``num_requests`` requests, or all arrivals
    before ``duration_s`` when only that is given; with both, whichever ends
    first. Trace replay: the prepared trace (window, sub-sample, time_scale,
    ``qps`` rescale) cut to ``num_requests``/``duration_s``, the whole trace if
    neither is given, re-based so the first request arrives at 0.

    Lengths: from ``workload.prompt``/``output``; with ``workload.trace`` set,
    from the trace rows (the replayed rows, or rows drawn with replacement as
    (prompt, output) pairs for synthetic arrivals) unless that side is given
    explicitly; processes that carry lengths (ServeGen) fill a side neither sets.
    ``base_dir`` anchors relative trace paths (the scenario's folder).
    """
    process = ARRIVALS.get(cfg.arrival)
    _check_limits(num_requests, duration_s, process.finite)
    base = Path(base_dir) if base_dir is not None else None
    children = np.random.SeedSequence(seed).spawn(len(_STREAMS))
    rngs = {name: np.random.default_rng(child) for name, child in zip(_STREAMS, children, strict=True)}

    trace = label = None
    if cfg.trace is not None:
        from traces.replay import load_trace_source, prepare_trace  # the trace loaders: only when a trace is read

        loaded, label = load_trace_source(cfg.trace, base_dir=base)
        trace = prepare_trace(loaded, cfg.trace, rngs["trace_sample"])

    draw = process.sample(cfg, rngs["arrivals"], num_requests=num_requests, duration_s=duration_s, trace=trace)
    n = len(draw.arrival_s)
    if process.finite and num_requests is not None and n < num_requests and duration_s is None:
        what = f"trace {label!r} holds" if label is not None else f"{process.describe(cfg)} yields"
        warnings.warn(f"{what} only {n} requests; asked for {num_requests}", stacklevel=2)

    rows = draw.rows
    if trace is not None and rows is None:
        rows = rngs["trace_rows"].integers(0, len(trace), size=n)  # (prompt, output) pairs stay together

    lengths: dict[str, np.ndarray] = {}
    names: dict[str, str | None] = {}  # None: the side comes from the trace or the arrival process
    for role in ("prompt", "output"):
        length_cfg = cfg.length_config(role)
        if length_cfg is None and trace is not None:
            lengths[role] = np.asarray(trace[f"{role}_tokens"], dtype=np.int64)[rows]
            names[role] = None
        elif length_cfg is None:  # the arrival process drew them (e.g. ServeGen's per-client tables)
            lengths[role] = draw.lengths[role]
            names[role] = None
        else:
            lengths[role] = sample_lengths(length_cfg, rngs[role], n, role=role, base_dir=base)
            names[role] = describe_lengths(length_cfg)

    hashes = block_tokens = None
    if trace is not None and cfg.prompt is None and "prefix_block_hashes" in trace.columns:
        column = trace["prefix_block_hashes"]
        hashes = tuple(column[rows])
        block_tokens = trace.attrs.get("hash_block_tokens")

    arrival_s, source = draw.arrival_s, _source(cfg, process.describe(cfg), names, label)
    if cfg.sharing is not None:
        if hashes is not None:
            raise CapsimError(
                f"trace {label!r} already carries prefix block ids; a synthetic sharing pattern would replace them",
                where="workload.sharing", fix="remove workload.sharing, or override the trace's prompt lengths",
            )
        lengths["prompt"], hashes = apply_sharing(cfg.sharing, lengths["prompt"], lengths["output"], rngs["sharing"])
        block_tokens = cfg.sharing.block_tokens
        source += f" sharing {cfg.sharing.describe()}"
    if cfg.max_total_tokens is not None:
        arrival_s, hashes, note = _cap_lengths(cfg, arrival_s, lengths, hashes)
        source += note
    images = None
    if cfg.images is not None:  # image tokens join the prompt after any length cap (they are not text to clip)
        images = image_tokens(cfg.images, len(arrival_s), rngs["images"])
        lengths["prompt"] = lengths["prompt"] + images
        source += f" + {cfg.images.describe()}"
    return RequestStream(
        arrival_s=arrival_s,
        prompt_tokens=lengths["prompt"],
        output_tokens=lengths["output"],
        source=source,
        closed_loop=process.closed_loop(cfg),
        prefix_block_hashes=hashes,
        prefix_block_tokens=int(block_tokens) if hashes is not None and block_tokens else None,
        image_tokens=images,
    )


def _cap_lengths(cfg: WorkloadConfig, arrival_s: np.ndarray, lengths: dict[str, np.ndarray],
                 hashes: tuple | None) -> tuple[np.ndarray, tuple | None, str]:
    """Apply ``workload.max_total_tokens`` to ``lengths`` in place (clip) or by filtering (drop); warn with the count.

    Clipping shortens the output first (down to one token), then the prompt, so a request keeps as much of the
    prompt it was sampled with as the cap allows.
    """
    cap = cfg.max_total_tokens
    prompt, output = lengths["prompt"], lengths["output"]
    over = prompt + output > cap
    k = int(over.sum())
    if not k:
        return arrival_s, hashes, ""
    n = len(prompt)
    if cfg.length_cap == "clip":
        new_prompt = np.minimum(prompt, cap - 1)
        lengths["prompt"] = np.where(over, new_prompt, prompt)
        lengths["output"] = np.where(over, np.maximum(cap - new_prompt, 1), output)
        verb = "clipped"
    else:
        keep = ~over
        if not keep.any():
            raise CapsimError(f"every one of the {n} requests has more than {cap} prompt + output tokens",
                              where="workload.max_total_tokens", fix="raise the cap, or use length_cap: clip")
        lengths["prompt"], lengths["output"] = prompt[keep], output[keep]
        arrival_s = arrival_s[keep]
        hashes = tuple(h for h, kept in zip(hashes, keep.tolist(), strict=True) if kept) if hashes else hashes
        verb = "dropped"
    warnings.warn(f"workload.max_total_tokens: {k} of {n} requests had more than {cap} prompt + output tokens "
                  f"and were {verb}", stacklevel=3)
    return arrival_s, hashes, f" (cap {cap} tokens: {k} {verb})"


def _source(cfg: WorkloadConfig, arrivals: str, names: dict[str, str | None], label: str | None) -> str:
    """Human description of where the stream came from, e.g. ``azure-conv-2023 (sample 0.5)``."""
    if label is None:
        sides = [names[role] or "its lengths" for role in ("prompt", "output")]
        return f"{arrivals} x {sides[0]}/{sides[1]}" if sides[0] != sides[1] else f"{arrivals} with {sides[0]}"
    tc = cfg.trace
    mods = []
    if tc.start_s is not None or tc.duration_s is not None:
        end = f"{(tc.start_s or 0) + tc.duration_s:g}" if tc.duration_s is not None else "end"
        mods.append(f"window {tc.start_s or 0:g}-{end} s")
    if tc.sample_fraction != 1:
        mods.append(f"sample {tc.sample_fraction:g}")
    if tc.time_scale != 1:
        mods.append(f"time x{tc.time_scale:g}")
    if cfg.qps is not None and ARRIVALS.get(cfg.arrival).needs_trace:
        mods.append(f"rescaled to {cfg.qps:g} req/s")
    if tc.max_prompt_tokens is not None or tc.max_output_tokens is not None:
        mods.append(f"clipped to {tc.max_prompt_tokens or '-'}/{tc.max_output_tokens or '-'} tokens")
    suffix = f" ({', '.join(mods)})" if mods else ""
    if ARRIVALS.get(cfg.arrival).needs_trace:
        text = f"{label}{suffix}"
    else:
        text = f"{arrivals} x {label}{suffix} lengths"
    overridden = [f"{role} {names[role]}" for role in ("prompt", "output") if names[role] is not None]
    if overridden:
        text += f" with {', '.join(overridden)}"
    return text
