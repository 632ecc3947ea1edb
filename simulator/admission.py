"""Requests a configuration can never serve, found before the simulation starts.

A request longer than the model's context, than a replica's whole KV cache,
or than the largest prefill the scheduler will run would wait forever. Rather
than deadlock or silently lose it, the scenario's ``simulation.oversized``
policy decides: stop with a message naming the first offender and the fix, or
drop such requests and report how many.
"""

from __future__ import annotations

import numpy as np

from capsim.errors import CapsimError


def unservable_mask(
    prompt: np.ndarray,
    output: np.ndarray,
    *,
    max_context: int,
    kv_capacity_tokens: int,
    max_prefill_tokens: int | None,
) -> tuple[np.ndarray, list[str]]:
    """Boolean mask of requests that can never be served, and the reasons found."""
    total = prompt + output
    reasons = []
    too_long = total > max_context
    if too_long.any():
        reasons.append(f"{int(too_long.sum())} exceed the model context of {max_context} tokens")
    too_big = total > kv_capacity_tokens
    if too_big.any():
        reasons.append(f"{int(too_big.sum())} need more KV than a replica holds ({kv_capacity_tokens} tokens)")
    mask = too_long | too_big
    if max_prefill_tokens is not None:
        over = prompt > max_prefill_tokens
        if over.any():
            reasons.append(
                f"{int(over.sum())} have prompts longer than the scheduler's prefill budget ({max_prefill_tokens})"
            )
        mask |= over
    return mask, reasons


def enforce(mask: np.ndarray, reasons: list[str], prompt: np.ndarray, output: np.ndarray, policy: str) -> None:
    """Raise for ``policy='error'`` when any request is unservable."""
    if policy == "error" and mask.any():
        first = int(np.flatnonzero(mask)[0])
        raise CapsimError(
            f"{int(mask.sum())} of {len(mask)} requests can never be served: {'; '.join(reasons)} "
            f"(first: request {first}, prompt {int(prompt[first])} + output {int(output[first])} tokens)",
            where="workload",
            fix="use a model with a longer context, more memory per replica (tp/pp, device), a larger "
            "scheduler budget (e.g. scheduler.max_num_batched_tokens, or the sarathi scheduler that chunks "
            "prompts), clip lengths in the workload, or set simulation.oversized: drop",
        )
