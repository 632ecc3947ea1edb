"""Steady-state estimate without a trace (``capsim estimate``).

A roofline calculator over the same operator table and memory plan the
simulator uses: a batch of ``batch`` requests with ``prompt`` tokens each is
prefilled in one iteration, then decodes ``output - 1`` steps together (the
first output token comes from the prefill). No queueing, no arrivals: it
answers "how fast is one batch of this shape on this hardware".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from capsim.errors import CapsimError, DoesNotFitError
from simulator.costmodel.features import BatchShape
from simulator.memory_plan import GIB
from simulator.system import System


@dataclass(frozen=True)
class Estimate:
    model: str
    device: str
    tp: int
    pp: int
    batch: int
    prompt: int
    output: int
    prefill_s: float  # the whole batch's prefill iteration
    first_decode_step_s: float | None  # decode step at context prompt + 1; None when output is 1 (no decode)
    tpot_s: float | None  # mean decode-step time over the generation; None when output is 1
    decode_s: float  # all decode steps
    e2e_s: float  # prefill + decode of the batch
    ttft_s: float  # = prefill_s: every request's first token comes from the prefill
    output_tokens_per_s: float
    prefill_tokens_per_s: float
    weights_gib: float  # per GPU
    kv_gib: float  # per GPU, the batch at its longest (prompt + output tokens each)
    activation_reserve_gib: float
    free_gib: float  # per GPU, usable memory left after weights, reserve and the batch's KV
    kv_capacity_tokens: int  # per replica
    fits: bool
    prefill_bound: str
    decode_bound: str | None  # None when output is 1 (no decode)
    bound: str  # bound of the phase that takes most of e2e
    mfu_decode: float | None
    mbu_decode: float | None
    # What priced each operator row (its pricer's source): "roofline" where a calibrated profile has no curve.
    pricing: dict[str, str] = field(default_factory=dict)
    # The serving-engine profile (deployment.engine) and its share of the prefill and of the first decode step.
    engine: str = "none"
    engine_prefill_s: float = 0.0
    engine_first_decode_step_s: float | None = None  # None when output is 1 (no decode)
    # --context: one decode step of the batch with every sequence at this context (None: not asked).
    context: int | None = None
    decode_step_at_context_s: float | None = None
    # Every operator row of each priced iteration ("prefill", "first_decode_step", "decode_step_at_context"):
    # name, op_class, scope, time_s (all layers), flops and bytes per GPU, bound, source.
    breakdown: dict[str, list[dict]] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def _pricing(rows) -> dict[str, str]:
    """Operator name -> what priced it, over the breakdowns of both phases (first seen wins)."""
    out: dict[str, str] = {}
    for r in rows:
        out.setdefault(r.name, r.source)
    return out


def roofline_rows(pricing: dict[str, str]) -> str:
    """Which operator rows the roofline priced: the ones a calibrated profile had no curve for."""
    rows = [name for name, source in pricing.items() if source == "roofline"]
    if len(rows) == len(pricing):
        return "all (datasheet pricing)"
    return ", ".join(rows) if rows else "none (all from the profile)"


def _phase_bound(rows) -> str:
    compute = sum(r.time_s for r in rows if r.bound == "compute")
    memory = sum(r.time_s for r in rows if r.bound == "memory")
    comm = sum(r.time_s for r in rows if r.bound == "communication")
    return max((compute, "compute"), (memory, "memory"), (comm, "communication"))[1]


def breakdown_terms(rows) -> list[dict]:
    """An iteration's operator rows as JSON-ready dicts (every term ``--json`` reports)."""
    return [asdict(r) for r in rows]


def estimate(system: System, *, batch: int, prompt: int, output: int, context: int | None = None) -> Estimate:
    for name, value in (("batch", batch), ("prompt", prompt), ("output", output), ("context", context)):
        if value is not None and value < 1:
            raise CapsimError(f"{name} must be at least 1, got {value}", where=f"--{name}", fix="pass a positive integer")
    if context is not None and context > system.model.max_context:
        raise CapsimError(
            f"a decode context of {context} tokens exceeds the context of {system.model.name} "
            f"({system.model.max_context})",
            where="--context",
            fix=f"use --context {system.model.max_context} or less",
        )
    if prompt + output > system.model.max_context:
        raise CapsimError(
            f"prompt + output = {prompt + output} tokens exceeds the context of {system.model.name} "
            f"({system.model.max_context})",
            where="--prompt/--output",
            fix="shorten them or pick a model with a longer context",
        )
    cost = system.cost_model()
    prefill_shape = BatchShape(prefill_chunks=((prompt, 0, True),) * batch)
    prefill = cost.iteration(prefill_shape)
    steps = output - 1
    if steps > 0:
        run = cost.decode_run(batch, batch * (prompt + 1), steps)
        durations = run.all_durations()
        flops, nbytes = cost.decode_work(batch, batch * (prompt + 1), steps)
    else:
        durations = np.zeros(0)
        flops = nbytes = 0.0
    decode_s = float(durations.sum())
    # One output token means no decode step: its TPOT and decode utilisation do not exist (None, not 0 ms).
    first_step = float(durations[0]) if steps else None
    tpot = float(durations.mean()) if steps else None
    e2e = prefill.time_s + decode_s
    mem = system.memory
    kv_tokens = batch * (prompt + output)
    kv_bytes = kv_tokens * mem.kv_bytes_per_token
    free = mem.usable_bytes - mem.weights_bytes - mem.reserve_bytes - kv_bytes
    mid_context = batch * (prompt + 1 + steps // 2)
    decode_rows = cost.breakdown(BatchShape(decode_seqs=batch, decode_context=mid_context))
    prefill_rows = cost.breakdown(prefill_shape)
    prefill_bound = _phase_bound(prefill_rows)
    decode_bound = _phase_bound(decode_rows) if steps else None
    gpus = system.deployment.gpus_per_replica
    dev = system.roofline
    first_rows = cost.breakdown(BatchShape(decode_seqs=batch, decode_context=batch * (prompt + 1))) if steps else []
    breakdown = {"prefill": breakdown_terms(prefill_rows)}
    if steps:
        breakdown["first_decode_step"] = breakdown_terms(first_rows)
    at_context = None
    if context is not None:
        shape = BatchShape(decode_seqs=batch, decode_context=batch * context)
        at_context = cost.iteration(shape).time_s
        breakdown["decode_step_at_context"] = breakdown_terms(cost.breakdown(shape))
    return Estimate(
        model=system.model.name,
        device=system.device.name,
        tp=system.deployment.tp,
        pp=system.deployment.pp,
        batch=batch,
        prompt=prompt,
        output=output,
        prefill_s=prefill.time_s,
        first_decode_step_s=first_step,
        tpot_s=tpot,
        decode_s=decode_s,
        e2e_s=e2e,
        ttft_s=prefill.time_s,
        output_tokens_per_s=batch * output / e2e,
        prefill_tokens_per_s=batch * prompt / prefill.time_s,
        weights_gib=mem.weights_bytes / GIB,
        kv_gib=kv_bytes / GIB,
        activation_reserve_gib=mem.reserve_bytes / GIB,
        free_gib=free / GIB,
        kv_capacity_tokens=mem.kv_capacity_tokens,
        fits=kv_tokens <= mem.kv_capacity_tokens,
        prefill_bound=prefill_bound,
        decode_bound=decode_bound,
        bound=decode_bound if decode_bound is not None and decode_s >= prefill.time_s else prefill_bound,
        mfu_decode=flops / (decode_s * dev.peak_flops * gpus) if decode_s else None,
        mbu_decode=nbytes / (decode_s * dev.memory_bandwidth * gpus) if decode_s else None,
        pricing=_pricing(prefill_rows + decode_rows),
        engine=cost.overheads.name,
        engine_prefill_s=_engine_share(prefill_rows),
        engine_first_decode_step_s=_engine_share(first_rows) if steps else None,
        context=context,
        decode_step_at_context_s=at_context,
        breakdown=breakdown,
    )


def _engine_share(rows) -> float:
    """Seconds of an iteration's breakdown that the engine profile adds (its ``overhead`` row)."""
    return float(sum(r.time_s for r in rows if r.op_class == "overhead"))


def largest_fitting_batch(fits: Callable[[int], bool], upper: int) -> int:
    """The largest batch in ``[1, upper]`` for which ``fits`` holds (0 when none); ``fits`` must be monotone.

    Both memory needs grow with the batch (its KV cache, and the activations of prefilling it in one iteration),
    so bisection finds the edge in a few system builds.
    """
    low, high = 0, upper
    while low < high:
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    return low


def estimate_fitting(
    make_system: Callable[[int], System], *, batch: int, prompt: int, output: int, context: int | None = None
) -> Estimate:
    """:func:`estimate` for a batch that fits in memory; otherwise a :class:`DoesNotFitError` naming ``--batch``.

    Why one rule: a batch can fail to fit in two ways -- the activations of its prefill leave no room for any KV
    cache (the memory plan refuses the system), or the system builds but the batch's KV cache is larger than the
    room left. Both are the same answer to the user ("this batch does not fit"), so both end the same way, and the
    fix names the largest batch that does fit (besides more GPUs) instead of only suggesting tp/pp.
    ``make_system(b)`` builds the system whose scheduler budgets a batch of ``b``.
    """

    def fits(b: int) -> bool:
        try:
            memory = make_system(b).memory
        except DoesNotFitError:
            return False
        return b * (prompt + output) <= memory.kv_capacity_tokens

    try:
        system = make_system(batch)
    except DoesNotFitError as exc:
        if batch <= 1 or not fits(1):
            raise  # even one request does not fit: the model needs more memory, whatever the batch
        problem = f"a batch of {batch} prompts of {prompt} tokens prefilled together does not fit: {exc.problem}"
    else:
        result = estimate(system, batch=batch, prompt=prompt, output=output, context=context)
        if result.fits:
            return result
        problem = (
            f"a batch of {batch} x ({prompt} + {output}) tokens needs {batch * (prompt + output):,} tokens of KV "
            f"cache; {result.model} on {result.device} (tp={result.tp}, pp={result.pp}) has room for "
            f"{result.kv_capacity_tokens:,} beside the activations of prefilling it"
        )
    largest = largest_fitting_batch(fits, batch - 1)
    more = "raise --tp or --pp, use a device with more memory, or a smaller --weight-dtype/--kv-dtype"
    if largest < 1:
        raise DoesNotFitError(problem, where="--prompt/--output", fix=f"shorten --prompt/--output, or {more}")
    raise DoesNotFitError(problem, where="--batch", fix=f"use --batch {largest} or less (the largest that fits), or {more}")
