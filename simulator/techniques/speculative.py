"""Speculative decoding: one general model for the whole family (draft models, draft heads, n-gram
drafting, layer-skipping self-speculation; chains and token trees; fixed, threshold and goodput-driven
speculation length; drafting on the same GPUs or on a separate device, with or without overlap).

A speculation *round* replaces a decode step. A drafter proposes tokens for every sequence of the batch;
the target model verifies them in one forward pass over ``q`` tokens per sequence (``K + 1`` for a chain
of ``K``, ``1 + nodes`` for a tree); each sequence keeps the accepted prefix plus one token of the
target's own, and the KV written for rejected tokens is rolled back.

How capsim prices it (everything through the cost model, nothing fitted to a paper's speed-up):

* **Verification** is the target's decode step with its per-sequence token rows scaled by ``q``: every
  GEMM runs ``q * batch`` tokens (so a large batch turns it compute-bound), attention does ``q`` times
  the FLOPs of a decode query but reads each sequence's KV once, the LM head produces ``q`` logits per
  sequence, tensor-parallel all-reduces move ``q`` times the activations. The summed context still
  enters affinely, so a run of rounds keeps the closed form of plain decode runs.
* **Drafting**: a draft model (or an EAGLE-style head of a few layers, or the target with layers
  skipped) runs ``K`` sequential decode steps at the batch size, each priced by its own cost model on
  its own device; Medusa-style heads are one pass of ``K`` (residual block + vocabulary projection)
  GEMMs; n-gram / prompt-lookup drafting costs a fixed time per round (default 0). A draft model also
  prefills every prompt. Drafting and verification add up on the same GPUs; with ``overlap`` on a
  separate device (PEARL) a round takes the longer of the two.
* **Acceptance** is an i.i.d. rate, a per-position vector, or a per-request rate drawn from a Beta
  distribution. Expected tokens per round: ``(1 - a^(K+1)) / (1 - a)`` for a chain, ``1 + sum_d prod_{j<=d}
  (1 - (1 - a_j)^(w_j))`` for a tree of branching ``w_1..w_D`` (a level is accepted when any of its
  ``w`` candidates is). Each sequence receives the expected number deterministically -- a fractional
  carry per request, so a sequence of rate ``tau`` gets ``floor(carry + r * tau)`` tokens after ``r``
  rounds; per-round randomness is not simulated (its variance averages out over a request's rounds;
  the spread between requests comes from the per-request distribution).
* **Memory**: a draft model's weights and its own KV per token reduce the KV capacity; verification
  needs ``q - 1`` spare slots per sequence during a round.
* **Hierarchy** (TriForce): the target's weights over a ``kv_budget``-token sparse cache draft for the
  target and are themselves speculated by a small model with a ``draft_window``-token cache; a round
  costs ``K / tau_inner`` inner rounds (small-model steps + a middle verify at the capped context) plus
  the target's verify at the full context.
* **Policies**: ``fixed`` K; ``threshold`` -- the SpecDec++ stopping rule (draft while the predicted
  probability of at least one rejection stays below the threshold), applied to the batch's mean
  acceptance; ``goodput`` -- SmartSpec's choice of the K (0 = no speculation) that maximises expected
  tokens per second for the current batch and context, so speculation switches itself off as load grows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from capsim.errors import CapsimError
from capsim.types import Count, Flag, OptionalCount
from simulator.costmodel import features as F
from simulator.costmodel.features import BatchShape
from simulator.costmodel.iteration import DecodeRun, IterationCost, IterationCostModel
from simulator.costmodel.operators import Collective, Operator, OperatorTable
from simulator.costmodel.precision import bytes_per_element
from simulator.memory_plan import weights_per_gpu
from simulator.models.spec import ModelSpec
from simulator.requests import RequestTable
from simulator.techniques.base import TECHNIQUES, ExtraDevice, MemoryTerms, Technique, TechniqueParams
from simulator.techniques.context import BuildContext
from simulator.techniques.presets import PRESETS
from simulator.techniques.step import StepPlan, durations_run, max_runs, scale_run, sum_runs

SMALL_BATCH = 32
"""Batches up to this size do their per-sequence arithmetic in Python (as the replica's own reductions do):
a numpy call costs ~1 us of overhead, a Python float operation ~0.05 us."""

Drafter = Literal["model", "eagle", "medusa", "ngram", "layer-skip", "hierarchical"]


class SpeculativeParams(TechniqueParams):
    """Parameters of speculative decoding (units in each description)."""

    preset: str | None = Field(
        None, description="A named method whose published settings fill every parameter not given here "
        "(`capsim explain speculative-decoding` lists them with their sources)."
    )
    drafter: Drafter = Field(
        "model", description="Who proposes tokens: 'model' (a separate draft model, draft_model), 'eagle' "
        "(an autoregressive head of head_layers decoder layers reading the target's features), 'medusa' (k "
        "parallel heads, one pass per round), 'ngram' (prompt lookup / retrieval / token recycling: no model), "
        "'layer-skip' (the target itself with skip_fraction of its layers skipped), 'hierarchical' (TriForce: "
        "draft_model speculates for the target with a kv_budget sparse cache, which drafts for the target)."
    )
    draft_model: str | None = Field(None, description="Catalog id of the draft model (drafter: model).")
    draft_device: str | dict[str, Any] | None = Field(
        None, description="A separate device the draft model runs on (drafter: model): a catalog id, or an inline "
        "device definition (e.g. a host CPU's peak FLOP/s and memory bandwidth); None: the replica's own GPUs, "
        "time-shared with verification."
    )
    draft_tp: OptionalCount = Field(
        None, gt=0, description="Tensor-parallel degree of the draft model (default: the deployment's tp on "
        "the same GPUs, 1 on a separate device)."
    )
    overlap: Flag = Field(
        False, description="Draft and verify run concurrently (PEARL's pre-/post-verify): a round takes the "
        "longer of the two instead of their sum. Needs a separate draft_device."
    )
    head_layers: Count = Field(1, ge=1, le=8, description="Decoder layers of an EAGLE-style head (drafter: eagle).")
    skip_fraction: float = Field(
        0.5, gt=0, lt=1, description="Fraction of the target's layers the self-draft skips (drafter: layer-skip)."
    )
    ngram_cost_s: float = Field(
        0.0, ge=0, description="CPU seconds per round to build n-gram / retrieval drafts (drafter: ngram)."
    )
    k: Count = Field(4, ge=1, le=16, description="Tokens drafted per round (chain length K); the maximum K for "
                   "the threshold and goodput policies; the number of Medusa heads.")
    tree: list[Count] | None = Field(
        None, description="A token tree instead of a chain: candidates per level, e.g. [4, 2, 1] (each accepted "
        "node's children at the next level); verification covers all its nodes (SpecInfer, Sequoia, Medusa)."
    )
    acceptance: float = Field(
        0.7, gt=0, le=1, description="Probability that the target accepts a drafted token (i.i.d. per token); "
        "the mean of the per-request distribution when acceptance_concentration is set."
    )
    acceptance_by_position: list[float] | None = Field(
        None, description="Acceptance of the 1st, 2nd, ... drafted token given the previous ones were accepted "
        "(overrides acceptance); at least k (or tree depth) entries."
    )
    acceptance_concentration: float | None = Field(
        None, gt=0, description="Draw each request's acceptance from Beta(c*a, c*(1-a)) with a = acceptance "
        "(requests differ: code copies well, chat less); None: every request has the same rate."
    )
    policy: Literal["fixed", "threshold", "goodput"] = Field(
        "fixed", description="Speculation length per batch: 'fixed' K = k; 'threshold' (SpecDec++): the "
        "longest K whose probability of at least one rejection stays <= threshold; 'goodput' (SmartSpec): "
        "the K in 0..k (with a tree: its first 0..D levels) with the most expected tokens per second for the "
        "batch and context at hand."
    )
    threshold: float = Field(0.5, gt=0, lt=1, description="Stopping threshold of the 'threshold' policy.")
    kv_budget: Count = Field(
        4096, ge=1, description="Tokens of KV per sequence the middle stage attends (drafter: hierarchical; "
        "TriForce's retrieval cache)."
    )
    inner_k: Count = Field(4, ge=1, le=16, description="Tokens draft_model proposes to the middle stage per inner "
                           "round (drafter: hierarchical).")
    inner_acceptance: float = Field(
        0.7, gt=0, le=1, description="Acceptance of draft_model's tokens by the middle stage (drafter: hierarchical)."
    )
    draft_window: Count = Field(
        256, ge=1, description="Tokens of context draft_model attends (a StreamingLLM window; drafter: hierarchical)."
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data):
        if isinstance(data, dict) and data.get("preset") is not None:
            name = str(data["preset"])
            if name not in PRESETS:
                raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
            data = {**PRESETS[name].params, **data}
        return data

    @model_validator(mode="after")
    def _consistent(self):
        if self.drafter in ("model", "hierarchical") and not self.draft_model:
            raise ValueError(f"drafter {self.drafter!r} needs draft_model (a catalog model id, e.g. llama-68m)")
        if self.drafter not in ("model", "hierarchical") and self.draft_model:
            raise ValueError(f"draft_model applies to drafters 'model' and 'hierarchical', not {self.drafter!r}")
        if self.drafter != "model" and self.draft_device:
            raise ValueError(f"draft_device applies to drafter 'model', not {self.drafter!r}")
        if self.drafter == "hierarchical" and self.tree is not None:
            raise ValueError("the hierarchical drafter drafts a chain; remove tree")
        if self.overlap and not self.draft_device:
            raise ValueError("overlap needs a separate draft_device: on the same GPUs draft and verify take turns")
        if self.tree is not None:
            if not self.tree or any(w < 1 for w in self.tree):
                raise ValueError("tree must list at least one level of >= 1 candidates")
            if self.policy == "threshold":
                raise ValueError("the threshold policy stops a chain; with a tree use policy fixed, or goodput "
                                 "(which picks how many of the tree's levels to draft per batch)")
        depth = len(self.tree) if self.tree else self.k
        if self.acceptance_by_position is not None:
            if len(self.acceptance_by_position) < depth:
                raise ValueError(f"acceptance_by_position needs at least {depth} entries (k or the tree depth)")
            if any(not 0 < a <= 1 for a in self.acceptance_by_position):
                raise ValueError("acceptance_by_position entries must be in (0, 1]")
            if self.acceptance_concentration is not None:
                raise ValueError("give either acceptance_by_position or acceptance_concentration, not both")
        return self


# ------------------------------------------------------------------------ round shapes and acceptance
@dataclass(frozen=True)
class RoundShape:
    """What one round drafts: ``widths`` candidates per level (a chain of K is K levels of 1)."""

    widths: tuple[int, ...]

    @property
    def depth(self) -> int:
        return len(self.widths)

    @cached_property
    def verified(self) -> int:
        """Tokens per sequence the target verifies: the pending token plus every tree node."""
        nodes, frontier = 0, 1
        for w in self.widths:
            frontier *= w
            nodes += frontier
        return 1 + nodes

    @cached_property
    def level_groups(self) -> tuple[tuple[int, int, float], ...]:
        """Consecutive levels expanding the same frontier: (frontier, levels, mean level index)."""
        groups: list[list[int]] = []
        for level, f in enumerate(self.frontiers()):
            if groups and groups[-1][0] == f:
                groups[-1][1] += 1
            else:
                groups.append([f, 1, level])
        return tuple((f, count, first + (count - 1) / 2.0) for f, count, first in groups)

    def frontiers(self) -> list[int]:
        """Tokens per sequence a drafter processes at each level (the nodes it expands)."""
        out, frontier = [], 1
        for w in self.widths:
            out.append(frontier)
            frontier *= w
        return out


PLAIN = RoundShape(())


def expected_tokens(shape: RoundShape, accept) -> np.ndarray | float:
    """Expected tokens a round yields per sequence: ``1 + sum_d prod_{j<=d} (1 - (1 - a_j)^w_j)``.

    ``accept(j)`` is the acceptance of level ``j`` (0-based): a scalar or one value per sequence. The
    leading 1 is the token the target produces itself (the correction, or the bonus token after a fully
    accepted draft). For a chain of K with i.i.d. ``a`` this is ``(1 - a^(K+1)) / (1 - a)``.
    """
    total, reach = 1.0, 1.0
    for j, w in enumerate(shape.widths):
        a = accept(j)
        reach = reach * (1.0 - (1.0 - a) ** w)
        total = total + reach
    return total


# ------------------------------------------------------------------------ verification as a table edit
def verify_table(table: OperatorTable, q: int) -> OperatorTable:
    """The operator table of a target pass that verifies ``q`` tokens per decode sequence.

    Every per-sequence decode coefficient is scaled by ``q`` (GEMM tokens, activations, the new KV each
    token writes, all-reduced activations); attention's FLOPs per context token by ``q`` (``q`` queries
    per sequence) while its KV read stays once per sequence; rows producing logits get ``q - 1`` more per
    decode sequence. Prefill coefficients are untouched.
    """
    if q == 1:
        return table
    d_seq, ctx, logit = F.DECODE_SEQS, F.DECODE_CONTEXT, F.LOGIT_SEQS

    def op(o: Operator) -> Operator:
        fl, by = o.flops.copy(), o.bytes.copy()
        fl[d_seq] = fl[d_seq] * q + (q - 1) * o.flops[logit]
        by[d_seq] = by[d_seq] * q + (q - 1) * o.bytes[logit]
        if o.op_class == "attention_decode":
            fl[ctx] *= q
        return replace(o, flops=fl, bytes=by)

    def comm(c: Collective) -> Collective:
        tm, by = c.time.copy(), c.bytes.copy()
        tm[d_seq] *= q
        by[d_seq] *= q
        return replace(c, time=tm, bytes=by)

    return table.with_ops(
        layer_ops=tuple(op(o) for o in table.layer_ops), iteration_ops=tuple(op(o) for o in table.iteration_ops),
        layer_comms=tuple(comm(c) for c in table.layer_comms),
        iteration_comms=tuple(comm(c) for c in table.iteration_comms),
    )


class _ByTokens:
    """Cost models of one operator table verifying 1, 2, ... tokens per sequence, built on first use."""

    def __init__(self, make):
        self._make = make
        self._models: dict[int, IterationCostModel] = {}

    def __call__(self, q: int) -> IterationCostModel:
        cm = self._models.get(q)
        if cm is None:
            cm = self._make(lambda table: verify_table(table, q))
            cm.decode_tokens_per_seq = q
            self._models[q] = cm
        return cm


# ------------------------------------------------------------------------ drafters
class _Drafter:
    """What drafting costs per round; no cost by default (n-gram drafting with ngram_cost_s = 0)."""

    def round_run(self, shape: RoundShape, n: int, c0: float, k: int, growth: float) -> DecodeRun | None:
        return None

    def round_work(self, shape: RoundShape, n: int, c0: float, k: int, growth: float) -> tuple[float, float]:
        return 0.0, 0.0

    def prefill(self, ptok: int, logits: int, work: float, kv_read: int) -> IterationCost | None:
        return None

    def prime(self, prompts: np.ndarray) -> None:
        """Price the prefill of each prompt length alone in one vectorised pass (see prime_lone_prefills)."""


class _FixedDrafter(_Drafter):
    """A constant time per round (CPU-side n-gram, prompt-lookup or retrieval drafting)."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def round_run(self, shape, n, c0, k, growth):
        return DecodeRun(k, self.seconds, 0.0, True) if self.seconds > 0 else None


class _ModelDrafter(_Drafter):
    """A draft network run autoregressively: one decode step per tree level, each expanding the level's
    frontier, at the batch size and the sequences' context (a draft model, an EAGLE head, a layer-skipping
    self-draft). ``prefills`` says whether it also prefills each prompt (a model with its own KV does)."""

    def __init__(self, models: _ByTokens, prefills: bool):
        self.models = models
        self.prefills = prefills

    def _levels(self, shape: RoundShape, n: int, c0: float) -> list[tuple[int, int, float]]:
        """(frontier, levels, mean context) per group of consecutive levels with the same frontier.

        A chain is one group of K single-token steps at contexts ``c0, c0 + n, ...``; a group is priced
        as ``levels`` steps at its mean context -- exact while a draft step is affine in the context
        (one roofline and kernel-split regime across the group's few steps), and one decode-run call
        per group instead of one per level.
        """
        return [(f, count, c0 + n * offset) for f, count, offset in shape.level_groups]

    def round_run(self, shape, n, c0, k, growth):
        runs = []
        for f, count, ctx in self._levels(shape, n, c0):
            r = self.models(f).decode_run(n, ctx, k, growth)
            runs.append(r if count == 1 else scale_run(r, count))
        return sum_runs(runs)

    def round_work(self, shape, n, c0, k, growth):
        fl = by = 0.0
        for f, count, ctx in self._levels(shape, n, c0):
            a, b = self.models(f).decode_work(n, ctx, k, growth)  # linear in the context: exact
            fl, by = fl + count * a, by + count * b
        return fl, by

    def prime(self, prompts):
        if self.prefills:
            self.models(1).prime_lone_prefills(prompts)

    def prefill(self, ptok, logits, work, kv_read):
        if not self.prefills or ptok == 0:
            return None
        return self.models(1).iteration_from_totals(ptok, logits, work, kv_read, 0, 0)


def capped_segments(n: int, c0: float, k: int, growth: float, cap: int) -> list[tuple[float, int, float]]:
    """``(context0, steps, growth)`` pieces of a run whose sequences attend at most ``cap`` tokens each (a
    sparse or windowed cache): the summed context grows until it reaches ``n * cap`` and stays there
    (mean-context approximation)."""
    limit = float(n * cap)
    if c0 >= limit:
        return [(limit, k, 0.0)]
    if c0 + growth * (k - 1) <= limit:
        return [(c0, k, growth)]
    below = int((limit - c0) // growth) + 1
    return [(c0, below, growth), (limit, k - below, 0.0)]


def capped_run(model: IterationCostModel, n: int, c0: float, k: int, growth: float, cap: int) -> DecodeRun:
    runs = [model.decode_run(n, c, steps, g) for c, steps, g in capped_segments(n, c0, k, growth, cap)]
    return runs[0] if len(runs) == 1 else durations_run(np.concatenate([r.all_durations() for r in runs]))


def capped_work(model: IterationCostModel, n: int, c0: float, k: int, growth: float, cap: int) -> tuple[float, float]:
    works = [model.decode_work(n, c, steps, g) for c, steps, g in capped_segments(n, c0, k, growth, cap)]
    return sum(w[0] for w in works), sum(w[1] for w in works)


class _HierarchicalDrafter(_Drafter):
    """TriForce (Sun et al. 2024): the target's own weights over a sparse KV cache of ``budget`` tokens per
    sequence draft the K tokens the target verifies, and are themselves speculated by a small model with a
    ``window``-token cache. Producing K tokens takes ``K / tau1`` inner rounds on average (``tau1`` the inner
    chain's expected tokens), each ``inner_k`` small-model steps plus one middle pass verifying
    ``inner_k + 1`` tokens per sequence: long contexts make the target's KV read dominate, and both inner
    stages read little of it."""

    def __init__(self, small: _ByTokens, middle: _ByTokens, p: SpeculativeParams):
        self.small, self.middle, self.p = small, middle, p
        self.tau1 = float(expected_tokens(RoundShape((1,) * p.inner_k), lambda j: p.inner_acceptance))

    def round_run(self, shape, n, c0, k, growth):
        p = self.p
        small = scale_run(capped_run(self.small(1), n, c0, k, growth, p.draft_window), p.inner_k)
        middle = capped_run(self.middle(p.inner_k + 1), n, c0, k, growth, p.kv_budget)
        return scale_run(sum_runs([small, middle]), shape.depth / self.tau1)

    def round_work(self, shape, n, c0, k, growth):
        p = self.p
        a = capped_work(self.small(1), n, c0, k, growth, p.draft_window)
        b = capped_work(self.middle(p.inner_k + 1), n, c0, k, growth, p.kv_budget)
        rounds = shape.depth / self.tau1
        return rounds * (p.inner_k * a[0] + b[0]), rounds * (p.inner_k * a[1] + b[1])

    def prime(self, prompts):
        self.small(1).prime_lone_prefills(prompts)

    def prefill(self, ptok, logits, work, kv_read):
        return self.small(1).iteration_from_totals(ptok, logits, work, kv_read, 0, 0) if ptok else None


class _HeadsDrafter(_Drafter):
    """Medusa-style heads: one pass of K heads (residual block + vocabulary projection) per round,
    independent of the context."""

    def __init__(self, model: IterationCostModel):
        self.model = model
        self._memo: dict[int, IterationCost] = {}

    def _one(self, n: int) -> IterationCost:
        hit = self._memo.get(n)
        if hit is None:
            hit = self._memo[n] = self.model.iteration(BatchShape(decode_seqs=n))
        return hit

    def round_run(self, shape, n, c0, k, growth):
        return DecodeRun(k, self._one(n).time_s, 0.0, True)

    def round_work(self, shape, n, c0, k, growth):
        one = self._one(n)
        return k * one.flops, k * one.bytes


def medusa_table(model: ModelSpec, heads: int, tp: int, weight_bytes: float, act_bytes: float) -> OperatorTable:
    """Operators of ``heads`` Medusa heads (Cai et al. 2024): each a residual block ``x + SiLU(W x)`` with a
    ``d x d`` weight and its own ``d x V`` vocabulary projection, sharded ``tp`` ways like the LM head."""
    d, V, t = float(model.hidden_size), float(model.vocab_size), float(tp)

    def vec(**kw) -> np.ndarray:
        v = np.zeros(F.NUM_FEATURES)
        for key, value in kw.items():
            v[F.FEATURE_NAMES.index(key)] = value
        return v

    res = Operator("medusa_resblock", "gemm", flops=vec(decode_seqs=2 * heads * d * d / t),
                   bytes=vec(one=heads * d * d / t * weight_bytes, decode_seqs=heads * (d + d / t) * act_bytes),
                   launches=float(heads), gemms=((d / t, d, float(heads)),))
    vocab = Operator("medusa_vocab", "gemm", flops=vec(decode_seqs=2 * heads * d * V / t),
                     bytes=vec(one=heads * d * V / t * weight_bytes, decode_seqs=heads * (d + V / t) * act_bytes),
                     launches=float(heads), gemms=((V / t, d, float(heads)),))
    act = Operator("medusa_silu_add", "elementwise", flops=vec(decode_seqs=6 * heads * d / t),
                   bytes=vec(decode_seqs=3 * heads * d / t * act_bytes))
    return OperatorTable(num_layers=1, tp=tp, pp=1, num_experts=1, experts_per_token=1,
                         layer_ops=(res, vocab), iteration_ops=(act,))


# ------------------------------------------------------------------------ the step model
class SpeculativeStep:
    """Built once per system; :meth:`bind` makes the per-simulation state (acceptance per request)."""

    def __init__(self, p: SpeculativeParams, verify: _ByTokens, drafter: _Drafter):
        self.p = p
        self.verify = verify
        self.drafter = drafter
        self.chain_max = RoundShape(tuple(p.tree)) if p.tree else RoundShape((1,) * p.k)
        self.max_lookahead = self.chain_max.verified - 1

    def bind(self, table: RequestTable, rng: np.random.Generator,
             cost: IterationCostModel | None = None) -> BoundSpeculation:
        """Per-simulation state. ``cost`` is the replica's own cost model: plain steps and prefills are
        priced (and its primed prefill shapes reused) there."""
        p = self.p
        if p.acceptance_concentration is not None and p.acceptance < 1:
            c = p.acceptance_concentration
            alpha = np.clip(rng.beta(c * p.acceptance, c * (1 - p.acceptance), size=table.n), 1e-9, 1.0)
        else:
            alpha = np.full(table.n, p.acceptance)
        self.drafter.prime(table.prompt)
        return BoundSpeculation(self, table, alpha, cost or self.verify(1))


class BoundSpeculation:
    """Speculation state of one simulation: each request's acceptance and fractional token carry.

    The expected tokens per round of every request at every speculation length are tabulated once
    (``tau[request, option]``), so planning a batch is one gather, not a formula per sequence.
    """

    GOODPUT_BUCKET = 64
    """The goodput policy prices each K once per batch size and per 64 tokens of mean context (its
    choice is memoised there); the tokens it weighs are each batch's own."""

    def __init__(self, model: SpeculativeStep, table: RequestTable, alpha: np.ndarray, base: IterationCostModel):
        self.m = model
        self.p = p = model.p
        self.table = table
        self.alpha = alpha
        self.base = base
        self.carry = np.zeros(table.n)
        self.max_lookahead = model.chain_max.verified - 1
        self._goodput_memo: dict[tuple[int, int], np.ndarray] = {}
        # Options: speculation lengths 0..k for a chain, or (0, the tree) for a tree.
        # Options by depth: a chain of 0..k tokens, or the tree's first 0..D levels (the goodput policy then
        # sizes the tree per batch, as dynamic-tree methods such as DySpec and Sequoia size it to the hardware).
        widths = model.chain_max.widths
        self.shapes = [RoundShape(widths[:d]) if d else PLAIN for d in range(len(widths) + 1)]
        by_pos = p.acceptance_by_position
        accept = (lambda j: by_pos[j]) if by_pos is not None else (lambda j: alpha)
        self.tau = np.column_stack([np.broadcast_to(np.asarray(expected_tokens(s, accept), dtype=float), (table.n,))
                                    for s in self.shapes])
        self._uniform = by_pos is not None or p.acceptance_concentration is None
        self._fixed_option = len(self.shapes) - 1 if p.policy == "fixed" else None
        if p.policy == "threshold" and self._uniform:
            self._fixed_option = self._threshold_option(by_pos if by_pos is not None else [p.acceptance] * p.k)

    # -- policies -----------------------------------------------------------------------------
    def plan(self, ids: np.ndarray) -> StepPlan:
        option = self._fixed_option
        if option is None:
            if self.p.policy == "threshold":
                option = self._threshold_option([float(self.alpha[ids].mean())] * self.p.k)
            else:
                option = self._goodput_option(ids)
        shape = self.shapes[option]
        return StepPlan(shape, self.tau[ids, option], shape.verified - 1)

    def _threshold_option(self, accept: list[float]) -> int:
        """SpecDec++'s rule with the batch's mean acceptance: draft while P(>= 1 rejection) <= threshold."""
        all_accepted, depth = 1.0, 0
        for j in range(self.p.k):
            all_accepted *= accept[j]
            if 1.0 - all_accepted > self.p.threshold:
                break
            depth = j + 1
        return depth

    def _goodput_option(self, ids: np.ndarray) -> int:
        """SmartSpec: the K in 0..k maximising expected tokens per second of the batch's next round."""
        n = len(ids)
        c0 = int(self.table.kv_tokens[ids].sum()) + n
        key = (n, c0 // (n * self.GOODPUT_BUCKET))
        times = self._goodput_memo.get(key)
        if times is None:
            ones = np.ones(n)
            times = np.array([self.run(StepPlan(s, ones, 0), n, c0, 1, float(n)).first for s in self.shapes])
            self._goodput_memo[key] = times
        return int(np.argmax(self.tau[ids].sum(axis=0) / times))

    # -- token bookkeeping ---------------------------------------------------------------------
    def tokens_after(self, ids, plan: StepPlan, steps: int) -> np.ndarray:
        return np.floor(self.carry[ids] + steps * plan.tokens_per_step).astype(np.int64)

    def steps_to_reach(self, ids, plan: StepPlan, tokens: np.ndarray) -> np.ndarray:
        carry, tau = self.carry[ids], plan.tokens_per_step
        if len(ids) <= SMALL_BATCH:  # a few scalars: plain Python is ~5x quicker than numpy's calls
            out = []
            for c, t, k in zip(carry.tolist(), tau.tolist(), tokens.tolist(), strict=True):
                r = math.ceil((k - c) / t)
                if math.floor(c + r * t) < k:
                    r += 1
                elif r > 1 and math.floor(c + (r - 1) * t) >= k:
                    r -= 1
                out.append(r)
            return np.array(out, dtype=np.int64)
        r = np.ceil((tokens - carry) / tau)  # >= 1: tokens >= 1 > carry
        # Float edges: r must be the least step count whose floor(carry + r * tau) reaches the target.
        reached = np.floor(carry + r * tau) >= tokens
        if not reached.all():
            r = np.where(reached, r, r + 1)
        back = np.floor(carry + (r - 1) * tau) >= tokens
        if back.any():
            r = np.where(back & (r > 1), r - 1, r)
        return r.astype(np.int64)

    def commit(self, ids, plan: StepPlan, steps: int) -> np.ndarray:
        total = self.carry[ids] + steps * plan.tokens_per_step
        got = np.floor(total)
        self.carry[ids] = total - got
        return got.astype(np.int64)

    # -- pricing --------------------------------------------------------------------------------
    def _verify(self, shape: RoundShape) -> IterationCostModel:
        return self.base if shape.verified == 1 else self.m.verify(shape.verified)

    def run(self, plan: StepPlan, batch: int, context0: float, steps: int, growth: float) -> DecodeRun:
        shape: RoundShape = plan.option
        verify = self._verify(shape).decode_run(batch, context0, steps, growth)
        if not shape.depth:
            return verify
        draft = self.m.drafter.round_run(shape, batch, context0, steps, growth)
        if draft is None:
            return verify
        return max_runs(verify, draft) if self.p.overlap else sum_runs([verify, draft])

    def work(self, plan: StepPlan, batch: int, context0: float, steps: int, growth: float) -> tuple[float, float]:
        shape: RoundShape = plan.option
        fl, by = self._verify(shape).decode_work(batch, context0, steps, growth)
        if shape.depth:
            a, b = self.m.drafter.round_work(shape, batch, context0, steps, growth)
            fl, by = fl + a, by + b
        return fl, by

    def iteration(self, plan, prefill_tokens, logit_seqs, prefill_attn_work, prefill_kv_read, decode_seqs,
                  decode_context) -> IterationCost:
        shape: RoundShape = plan.option if plan is not None else PLAIN
        base = self._verify(shape).iteration_from_totals(
            prefill_tokens, logit_seqs, prefill_attn_work, prefill_kv_read, decode_seqs, decode_context)
        time_s, fl, by = base.time_s, base.flops, base.bytes
        pre = self.m.drafter.prefill(prefill_tokens, logit_seqs - decode_seqs, prefill_attn_work, prefill_kv_read)
        if pre is not None:
            time_s, fl, by = time_s + pre.time_s, fl + pre.flops, by + pre.bytes
        if decode_seqs and shape.depth:
            draft = self.m.drafter.round_run(shape, decode_seqs, decode_context, 1, float(decode_seqs))
            if draft is not None:
                time_s = max(time_s, draft.first) if self.p.overlap else time_s + draft.first
                a, b = self.m.drafter.round_work(shape, decode_seqs, decode_context, 1, float(decode_seqs))
                fl, by = fl + a, by + b
        return IterationCost(time_s, fl, by)


# ------------------------------------------------------------------------ the technique
@TECHNIQUES.register("speculative-decoding", aliases=("speculative", "spec-decode", "sd"))
class SpeculativeDecoding(Technique):
    Params = SpeculativeParams
    summary = "Draft several tokens, verify them in one target pass (draft models, heads, n-gram, self-draft)."
    mechanism = __doc__
    sources = (
        "Leviathan, Kalman, Matias. Fast Inference from Transformers via Speculative Decoding. ICML 2023 "
        "(arXiv 2211.17192): expected tokens per round (1 - a^(K+1)) / (1 - a).",
        "Chen et al. Accelerating Large Language Model Decoding with Speculative Sampling (arXiv 2302.01318).",
        "Miao et al. SpecInfer: tree-based speculative inference and verification (arXiv 2305.09781).",
        "Cai et al. Medusa: Simple LLM Inference Acceleration Framework with Multiple Decoding Heads "
        "(arXiv 2401.10774).",
        "Li et al. EAGLE: Speculative Sampling Requires Rethinking Feature Uncertainty (arXiv 2401.15077).",
        "Huang et al. SpecDec++: Boosting Speculative Decoding via Adaptive Candidate Lengths (arXiv 2405.19715).",
        "Liu et al. Optimizing Speculative Decoding for Serving Large Language Models Using Goodput "
        "(SmartSpec, arXiv 2406.14066).",
        "Liu et al. Parallel Speculative Decoding with Adaptive Draft Length (PEARL, arXiv 2408.11850).",
        "Zhang et al. Draft & Verify: lossless LLM acceleration via self-speculative decoding (arXiv 2309.08168); "
        "Xia et al. SWIFT (arXiv 2410.06916); Liu et al. Kangaroo (arXiv 2404.18911).",
        "Saxena. Prompt lookup decoding (2023); He et al. REST (arXiv 2311.08252).",
        "Sun et al. TriForce: Lossless Acceleration of Long Sequence Generation with Hierarchical Speculative "
        "Decoding (arXiv 2404.11912).",
    )
    presets = PRESETS
    exclusive = ("step",)
    pool_roles = ("decode", "mixed")
    pool_roles_reason = "a prefill pool runs no decode steps (it emits each request's first token and hands it off)"
    schedulers_refused = {
        "static": "request-level batching pads finished sequences to the longest one, so its decode steps "
                  "cannot yield a different number of tokens per sequence",
    }

    # -- helpers ----------------------------------------------------------------------------------
    def _draft_spec(self, ctx: BuildContext) -> ModelSpec | None:
        from simulator.system import resolve_model

        p = self.params
        if p.drafter in ("model", "hierarchical"):
            try:
                return resolve_model(p.draft_model)
            except CapsimError as exc:
                raise CapsimError(exc.problem, where=f"{self.where}.draft_model", fix=exc.fix) from None
        if p.drafter == "eagle":
            return ctx.model.model_copy(update={"name": f"{ctx.model.name}-eagle-head", "num_layers": p.head_layers,
                                                "aliases": ()})
        return None

    def _draft_device(self, ctx: BuildContext):
        from hwmodels.device import device_from_dict
        from simulator.system import resolve_device

        device = self.params.draft_device
        if device is None:
            return None
        if isinstance(device, dict):
            return device_from_dict(device, where=f"{self.where}.draft_device")
        try:
            return resolve_device(device)
        except CapsimError as exc:
            raise CapsimError(exc.problem, where=f"{self.where}.draft_device", fix=exc.fix) from None

    def _draft_tp(self, ctx: BuildContext) -> int:
        p = self.params
        tp = p.draft_tp or (1 if p.draft_device else ctx.deployment.tp)
        spec = self._draft_spec(ctx)
        if spec is not None and spec.num_heads % tp:
            raise CapsimError(f"draft tp={tp} does not divide the {spec.num_heads} heads of {spec.name}",
                              where=f"{self.where}.draft_tp", fix="set draft_tp to a divisor of the draft's heads")
        return tp

    # -- hooks --------------------------------------------------------------------------------------
    def memory(self, terms: MemoryTerms, ctx: BuildContext) -> MemoryTerms:
        p, dep = self.params, ctx.deployment
        wb = bytes_per_element(dep.weight_dtype, field="deployment.weight_dtype")
        kb = bytes_per_element(dep.kv_dtype, field="deployment.kv_dtype")
        if p.drafter == "medusa":
            m = ctx.model
            heads = p.k
            w = heads * (m.hidden_size ** 2 + m.hidden_size * m.vocab_size) * wb / dep.tp
            return terms.plus(reserved=w, note=f"{heads} Medusa heads: {w / 2**30:.2f} GiB per GPU")
        spec = self._draft_spec(ctx)
        if spec is None:
            return terms
        tp = self._draft_tp(ctx)
        kv_heads_gpu = -(-spec.num_kv_heads // tp)
        kv = 2.0 * spec.num_layers * kv_heads_gpu * spec.head_dim * kb
        if p.drafter == "hierarchical":
            # The small model keeps a window of draft_window tokens per sequence, not one entry per token;
            # that per-sequence cache (and TriForce's retrieval cache) is not charged (a few MB per sequence).
            w = weights_per_gpu(spec, tp, 1, wb)
            return terms.plus(reserved=w, note=f"draft {spec.name}: {w / 2**30:.2f} GiB weights")
        if p.drafter == "eagle":
            # The head shares the target's embedding and LM head: only its layers (and their KV) are new.
            w = p.head_layers * spec.layer_params * wb / tp
        else:
            w = weights_per_gpu(spec, tp, 1, wb)
        device = self._draft_device(ctx)
        if device is not None:
            usable = device.memory_bytes * dep.memory_utilization
            if w >= usable:
                raise CapsimError(
                    f"draft model {spec.name} needs {w / 2**30:.1f} GiB of weights per GPU; {device.name} has "
                    f"{usable / 2**30:.1f} GiB usable", where=f"{self.where}.draft_device",
                    fix="choose a larger draft device, a higher draft_tp or a smaller draft model")
            return terms  # the draft's weights and KV live on its own device
        return terms.plus(kv=kv, reserved=w, note=f"draft {spec.name}: {w / 2**30:.2f} GiB weights, "
                          f"{kv:.0f} B of KV per token per GPU")

    def devices(self, ctx: BuildContext) -> tuple[ExtraDevice, ...]:
        device = self._draft_device(ctx)
        if device is None:
            return ()
        n = self._draft_tp(ctx)
        return (ExtraDevice(device.name, n, device.price_usd_per_hour, device.idle_w, device.tdp_w),)

    def step(self, ctx: BuildContext) -> SpeculativeStep:
        p = self.params
        verify = _ByTokens(ctx.main_cost_model)
        if p.drafter == "ngram":
            drafter: _Drafter = _FixedDrafter(p.ngram_cost_s)
        elif p.drafter == "medusa":
            dep = ctx.deployment
            wb = bytes_per_element(dep.weight_dtype, field="deployment.weight_dtype")
            ab = bytes_per_element(dep.activation_dtype, field="deployment.activation_dtype")
            table = medusa_table(ctx.model, p.k, dep.tp, wb, ab)
            drafter = _HeadsDrafter(IterationCostModel(table, ctx.roofline, None))
        elif p.drafter == "hierarchical":
            spec = self._draft_spec(ctx)
            tp = self._draft_tp(ctx)

            def make_small(transform, spec=spec, tp=tp):
                return ctx.cost_model(spec, tp=tp, transform=transform)

            drafter = _HierarchicalDrafter(_ByTokens(make_small), verify, p)
        elif p.drafter == "layer-skip":
            kept = max(1, round((1.0 - p.skip_fraction) * ctx.model.num_layers))

            def make(transform, kept=kept):
                table = ctx.table.with_ops(num_layers=kept)
                return IterationCostModel(transform(table), ctx.roofline, None)

            drafter = _ModelDrafter(_ByTokens(make), prefills=False)
        else:
            spec = self._draft_spec(ctx)
            device = self._draft_device(ctx)
            tp = self._draft_tp(ctx)

            def make(transform, spec=spec, device=device, tp=tp):
                return ctx.cost_model(spec, device=device, tp=tp, transform=transform)

            drafter = _ModelDrafter(_ByTokens(make), prefills=True)
        return SpeculativeStep(p, verify, drafter)


__all__ = ["RoundShape", "SpeculativeDecoding", "SpeculativeParams", "expected_tokens", "medusa_table", "verify_table"]
