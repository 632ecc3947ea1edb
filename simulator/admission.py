"""Requests a configuration can never serve, found before the simulation starts.

A request longer than the model's context, than a replica's whole KV cache,
or than the largest prefill the scheduler will run would wait forever. Rather
than deadlock or silently lose it, the scenario's ``simulation.oversized``
policy decides: stop with a message naming the first offender and the fix, or
drop such requests and report how many.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from capsim.errors import CapsimError

#: What can be changed for each kind of unservable request; only the fixes for the kinds found are suggested (a
#: prompt longer than the model's context is not helped by a scheduler that chunks prompts).
FIXES: dict[str, str] = {
    "context": "a model with a longer context, or clip lengths in the workload "
               "(trace.max_prompt_tokens / max_output_tokens, or the length distributions' max)",
    "kv": "more memory per replica (tp/pp, a device with more memory)",
    "prefill": "a larger scheduler budget (e.g. scheduler.max_num_batched_tokens) or a scheduler that chunks "
               "prompts (sarathi)",
}


class Reason(NamedTuple):
    """One kind of unservable request: ``kind`` (a key of :data:`FIXES`), a sentence, and which requests."""

    kind: str
    text: str
    mask: np.ndarray

    def __str__(self) -> str:
        return self.text


def unservable_mask(
    prompt: np.ndarray,
    output: np.ndarray,
    *,
    max_context: int,
    kv_capacity_tokens: int,
    max_prefill_tokens: int | None,
) -> tuple[np.ndarray, list[Reason]]:
    """Boolean mask of requests that can never be served, and the reasons found."""
    total = prompt + output
    reasons = []
    too_long = total > max_context
    if too_long.any():
        reasons.append(Reason("context", f"{int(too_long.sum())} exceed the model context of {max_context} tokens",
                              too_long))
    too_big = total > kv_capacity_tokens
    if too_big.any():
        reasons.append(Reason(
            "kv", f"{int(too_big.sum())} need more KV than a replica holds ({kv_capacity_tokens} tokens)", too_big))
    mask = too_long | too_big
    if max_prefill_tokens is not None:
        over = prompt > max_prefill_tokens
        if over.any():
            reasons.append(Reason(
                "prefill",
                f"{int(over.sum())} have prompts longer than the scheduler's prefill budget ({max_prefill_tokens})",
                over,
            ))
        mask |= over
    return mask, reasons


def enforce(mask: np.ndarray, reasons: list[Reason], prompt: np.ndarray, output: np.ndarray, policy: str) -> None:
    """Raise for ``policy='error'`` when any request is unservable, suggesting only the fixes that apply."""
    if policy == "error" and mask.any():
        first = int(np.flatnonzero(mask)[0])
        fixes = [FIXES[k] for k in dict.fromkeys(r.kind for r in reasons) if k in FIXES]
        raise CapsimError(
            f"{int(mask.sum())} of {len(mask)} requests can never be served: {'; '.join(map(str, reasons))} "
            f"(first: request {first}, prompt {int(prompt[first])} + output {int(output[first])} tokens)",
            where="workload",
            fix="use " + "; or ".join(fixes) + "; or set simulation.oversized: drop",
        )
