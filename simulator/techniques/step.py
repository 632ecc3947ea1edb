"""The decode-step model: how many tokens a decode step yields and what it costs.

Why an interface of its own: plain decoding yields one token per sequence per step and the engine's
closed-form decode runs are built on that. Speculative decoding (and later early exit, multi-token
heads) yields several tokens per step for a step that costs more. The replica asks a bound step model
four questions per decode run -- which option this batch uses, how many steps until a sequence
finishes, what the steps cost, how many tokens each sequence got -- and nothing else changes.

A scenario without such a technique has no step model, and the replica keeps its one-token path
untouched (byte-identical results).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from simulator.costmodel.iteration import DecodeRun, IterationCost
from simulator.requests import RequestTable


@dataclass(slots=True)
class StepPlan:
    """What one decode run (or one mixed iteration) of a batch uses.

    ``tokens_per_step`` is each sequence's expected tokens per step (>= 1); ``lookahead`` the KV slots
    a step writes beyond those it keeps (rolled back after verification); ``option`` is the step
    model's own choice (e.g. the speculation length), opaque to the engine.
    """

    option: Any
    tokens_per_step: np.ndarray
    lookahead: int


class BoundStep(Protocol):
    """A step model bound to one simulation's requests (it may keep per-request state)."""

    #: Most KV slots one step can write beyond the tokens it keeps, over every option.
    max_lookahead: int

    def plan(self, ids: np.ndarray) -> StepPlan:
        """The option this batch of decoding sequences uses, and each one's tokens per step."""

    def tokens_after(self, ids: np.ndarray, plan: StepPlan, steps: int) -> np.ndarray:
        """Tokens each sequence will have received after ``steps`` more steps (not capped)."""

    def steps_to_reach(self, ids: np.ndarray, plan: StepPlan, tokens: np.ndarray) -> np.ndarray:
        """Fewest steps after which each sequence has received at least ``tokens`` tokens."""

    def commit(self, ids: np.ndarray, plan: StepPlan, steps: int) -> np.ndarray:
        """``steps`` steps happened: update per-request state, return the tokens each sequence got."""

    def run(self, plan: StepPlan, batch: int, context0: float, steps: int, growth: float) -> DecodeRun:
        """Durations of ``steps`` decode steps whose summed context starts at ``context0`` and grows by
        ``growth`` per step."""

    def work(self, plan: StepPlan, batch: int, context0: float, steps: int, growth: float) -> tuple[float, float]:
        """(FLOPs, bytes) over all GPUs of those steps."""

    def iteration(self, plan: StepPlan | None, prefill_tokens: int, logit_seqs: int, prefill_attn_work: float,
                  prefill_kv_read: int, decode_seqs: int, decode_context: int) -> IterationCost:
        """One iteration with prefill chunks (and, under mixed batching, one step of ``decode_seqs``)."""


class StepModel(Protocol):
    """Built once per system by a technique's ``step`` hook; bound once per simulation."""

    #: Most KV slots one step writes beyond those it keeps (admission leaves room for them).
    max_lookahead: int

    def bind(self, table: RequestTable, rng: np.random.Generator, cost: Any = None) -> BoundStep:
        """Per-simulation state; ``cost`` is the replica's cost model (one-token steps, prefills)."""


def sum_runs(runs: list[DecodeRun]) -> DecodeRun:
    """Step-wise sum of runs of the same length (a step made of several passes, one after another)."""
    if len(runs) == 1:
        return runs[0]
    k = runs[0].iterations
    if all(r.affine for r in runs):
        return DecodeRun(k, sum(r.first for r in runs), sum(r.step for r in runs), True)
    d = np.sum([r.all_durations() for r in runs], axis=0)
    return durations_run(d)


def scale_run(run: DecodeRun, factor: float) -> DecodeRun:
    """Every step of ``run`` taken ``factor`` times (the same pass repeated within each step)."""
    if run.affine:
        return DecodeRun(run.iterations, factor * run.first, factor * run.step, True)
    if run.pieces is not None:
        return DecodeRun(run.iterations, factor * run.first, 0.0, False, None,
                         tuple((c, factor * f, factor * st) for c, f, st in run.pieces))
    return DecodeRun(run.iterations, factor * run.first, 0.0, False, factor * run.durations)


def max_runs(a: DecodeRun, b: DecodeRun) -> DecodeRun:
    """Step-wise maximum of two runs (two passes that overlap on separate devices)."""
    if a.affine and b.affine:
        if a.first >= b.first and a.last >= b.last:
            return a
        if b.first >= a.first and b.last >= a.last:
            return b
    return durations_run(np.maximum(a.all_durations(), b.all_durations()))


def durations_run(d: np.ndarray) -> DecodeRun:
    """A run from its step durations, affine when they are (to rounding)."""
    k = len(d)
    if k == 1:
        return DecodeRun(1, float(d[0]), 0.0, True)
    second = np.diff(d, 2) if k > 2 else np.zeros(0)
    if np.all(np.abs(second) <= 1e-12 * max(float(np.abs(d).max()), 1e-30)):
        return DecodeRun(k, float(d[0]), float(d[1] - d[0]), True)
    return DecodeRun(k, float(d[0]), 0.0, False, d)
