"""The technique layer: serving techniques as plug-ins acting at named hooks.

Why hooks: a technique (speculative decoding, KV quantisation, prefix caching, sparse attention ...)
changes *what work costs* or *how many tokens a step yields*, never which batch a scheduler picks.
Threading each one through the engine as flags is how simulators become unreadable; here a technique is
one module that registers itself and overrides only the hooks it needs. Every hook does nothing by
default, so a technique that is not listed in ``techniques:`` cannot change a single number.

Hooks, in the order the system is built and run:

=============  =========  ==========================================================================
hook           when       what it may change
=============  =========  ==========================================================================
``model``      build      the served model (quantised weights, pruned layers, experts)
``memory``     build      bytes per KV token and reserved bytes per GPU (draft weights, adapters)
``operators``  build      the operator table: add, scale or remove rows (verify tokens, sparse reads)
``step``       runtime    tokens a decode step yields and what the step costs (speculation)
``kv_policy``  runtime    tokens each sequence keeps: stored KV and attended context (eviction)
``admit``      scheduler  tokens already cached at admission (prefix caching; KV hand-off later)
``gate``       scheduler  which waiting requests a replica may batch (resident models of a composition)
``bounds``     planner    whether the planner's analytic lower bounds still hold
=============  =========  ==========================================================================

Techniques compose in list order: each hook receives what the previous technique returned. Two
techniques that both claim an exclusive resource (for instance the decode step) are refused with a
message naming both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict, ValidationError

from capsim.errors import CapsimError
from capsim.registry import Registry

if TYPE_CHECKING:
    from simulator.costmodel.operators import AttentionGeometry, OperatorTable
    from simulator.kvcache import Retention
    from simulator.models.spec import ModelSpec
    from simulator.requests import RequestTable
    from simulator.techniques.context import BuildContext
    from simulator.techniques.step import StepModel


class TechniqueParams(BaseModel):
    """Base of every technique's parameters: unknown keys are errors, every field has a description."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class MemoryTerms:
    """Per-GPU memory a technique adds beside the served model's weights and KV cache.

    ``extra_kv_bytes_per_token`` is stored for every token of every sequence in addition to the
    target model's KV (a draft model keeps its own cache); ``reserved_bytes`` is held for the whole
    run (draft weights, heads, adapters). Both reduce the KV capacity the memory plan leaves.

    A technique that keeps the KV cache in host memory (sparse attention with KV retrieval) sets
    ``gpu_kv_fraction`` (the share of the served model's KV per token still held on the GPU; 0 when all
    of it moved), ``host_kv_bytes_per_token`` (what each token costs in host memory, per GPU's share) and
    ``host_kv_bytes`` (host memory set aside for KV, per GPU): capacity is then the least that either
    tier holds. Devices do not model host DRAM yet, so its size is the technique's parameter.

    ``kv_bytes_scale`` multiplies the target model's own KV bytes per token (a quantised or
    channel-pruned cache stores fewer bytes per token; a multiplier, because the saving is relative to
    whatever ``deployment.kv_dtype`` stores). Techniques compose by multiplying it.

    ``offloaded_weight_bytes`` (per GPU) of the served model's weights live in a slower tier and are
    streamed in each pass (weight offload): they take no device memory.
    """

    extra_kv_bytes_per_token: float = 0.0
    reserved_bytes: float = 0.0
    notes: tuple[str, ...] = ()
    gpu_kv_fraction: float = 1.0
    host_kv_bytes_per_token: float = 0.0
    host_kv_bytes: float = 0.0
    kv_bytes_scale: float = 1.0
    offloaded_weight_bytes: float = 0.0

    def plus(self, kv: float = 0.0, reserved: float = 0.0, note: str | None = None) -> MemoryTerms:
        return replace(
            self, extra_kv_bytes_per_token=self.extra_kv_bytes_per_token + kv,
            reserved_bytes=self.reserved_bytes + reserved, notes=self.notes + ((note,) if note else ()),
        )

    def scaled(self, factor: float, note: str | None = None) -> MemoryTerms:
        """The target model's KV bytes per token multiplied by ``factor`` (on top of earlier scales)."""
        return replace(self, kv_bytes_scale=self.kv_bytes_scale * factor, notes=self.notes + ((note,) if note else ()))

    def offload_weights(self, nbytes: float, note: str | None = None) -> MemoryTerms:
        """``nbytes`` per GPU of the served model's weights kept outside device memory."""
        return replace(self, offloaded_weight_bytes=self.offloaded_weight_bytes + nbytes,
                       notes=self.notes + ((note,) if note else ()))

    def on_host(self, gpu_kv_fraction: float, host_bytes_per_token: float, host_bytes: float,
                note: str | None = None) -> MemoryTerms:
        """The served model's KV moved (in part) to host memory: ``gpu_kv_fraction`` of it stays on the GPU."""
        return replace(
            self, gpu_kv_fraction=self.gpu_kv_fraction * gpu_kv_fraction,
            host_kv_bytes_per_token=self.host_kv_bytes_per_token + host_bytes_per_token,
            host_kv_bytes=self.host_kv_bytes + host_bytes, notes=self.notes + ((note,) if note else ()),
        )


class Technique:
    """Base class of a technique plug-in; subclasses set the class attributes and override hooks.

    ``exclusive`` names resources only one technique may own (``"step"`` for anything that
    changes tokens per decode step); ``incompatible`` lists technique ids that cannot be combined
    with this one; ``schedulers_refused`` lists scheduler ids it cannot run under, with the reason.
    """

    Params: ClassVar[type[TechniqueParams]] = TechniqueParams
    #: One line: what the technique does.
    summary: ClassVar[str] = ""
    #: How it works and how capsim models it (printed by ``capsim explain``).
    mechanism: ClassVar[str] = ""
    #: The paper(s) the model follows, as "Authors, Title, venue year (arXiv id)".
    sources: ClassVar[tuple[str, ...]] = ()
    #: Named settings from papers (``preset: NAME``), shown by ``capsim explain``.
    presets: ClassVar[dict[str, Any]] = {}
    exclusive: ClassVar[tuple[str, ...]] = ()
    incompatible: ClassVar[tuple[str, ...]] = ()
    schedulers_refused: ClassVar[dict[str, str]] = {}
    #: True when the technique's formulas assume a cache of separate keys and values per KV head, which a
    #: multi-head latent attention model (DeepSeek-V2/V3: one shared latent per token) does not have.
    needs_key_value_heads: ClassVar[bool] = False
    #: Pool roles (``pools:``) whose replicas the technique can serve; a prefill pool only emits first tokens,
    #: so a technique that changes the decode step has nothing to do there. ``pool_roles_reason`` says why a
    #: role is missing (printed when a pool asks for it).
    pool_roles: ClassVar[tuple[str, ...]] = ("prefill", "decode", "mixed")
    pool_roles_reason: ClassVar[str] = ""

    def __init__(self, params: TechniqueParams, *, name: str, index: int):
        self.params = params
        self.name = name
        self.index = index  # position in the scenario's techniques list (for messages)

    @property
    def where(self) -> str:
        return f"techniques[{self.index}] ({self.name})"

    # -- build-time hooks (identity by default) ---------------------------------------------
    def model(self, model: ModelSpec, ctx: BuildContext) -> ModelSpec:
        return model

    def memory(self, terms: MemoryTerms, ctx: BuildContext) -> MemoryTerms:
        return terms

    def operators(self, table: OperatorTable, ctx: BuildContext) -> OperatorTable:
        return table

    def devices(self, ctx: BuildContext) -> tuple[ExtraDevice, ...]:
        """Hardware the technique adds to every replica (a separate draft device), for cost and energy."""
        return ()

    def tiers(self, ctx: BuildContext) -> tuple[str, ...]:
        """Memory tiers of the device (other than its device memory) this technique keeps data or runs
        operators in. Why: their power is counted in the run's energy only when something uses them."""
        return ()

    # -- runtime hooks (None: the technique does not take part) -----------------------------
    def step(self, ctx: BuildContext) -> StepModel | None:
        """The decode-step model this technique imposes (tokens per step, step cost), if any."""
        return None

    def kv_policy(self, ctx: BuildContext) -> KVPolicy | None:
        """A KV retention policy (eviction, compression): how many tokens each sequence keeps. The engine
        then counts blocks of the kept tokens and prices decode attention over them."""
        return None

    def admit(self, ctx: BuildContext) -> Any | None:
        """An admission hook that reports cached tokens (prefix reuse, KV from another pool): an object whose
        ``bind(table, hashes, unit_tokens, clock)`` returns, per simulation, a factory of block managers
        (``block_manager(total_blocks, block_size, table)``) whose ``attach`` reports each admission's hit."""
        return None

    def gate(self, ctx: BuildContext) -> Any | None:
        """A gate on which waiting requests each replica may batch (Composition of Experts: only requests of the
        experts resident in device memory): an object whose ``bind(table, seed)`` returns, per simulation, one
        with ``attach(replica)`` (wraps the replica's scheduler) and ``annotate(frame)`` (adds request columns)."""
        return None

    # -- planner ------------------------------------------------------------------------------
    def keeps_planner_bounds(self) -> bool:
        """Whether the planner's analytic bounds (no-queueing latency, roofline throughput of the plain
        deployment) stay lower bounds with this technique on. A technique that can make a step cheaper
        or yield more tokens per step returns False, and the planner then simulates instead of pruning."""
        return False


class KVPolicy(Protocol):
    """Built once per system by a technique's ``kv_policy`` hook; bound once per simulation to its requests
    (budgets may depend on each prompt's length)."""

    def bind(self, table: RequestTable) -> Retention:
        """The per-request retention :class:`simulator.kvcache.Retention` of this simulation."""


@dataclass(frozen=True)
class ExtraDevice:
    """``count`` devices a technique adds to each replica beside its GPUs (priced and powered like them)."""

    name: str
    count: int
    price_usd_per_hour: float
    idle_w: float
    tdp_w: float


TECHNIQUES: Registry[type[Technique]] = Registry("technique")


@dataclass
class TechniqueStack:
    """The scenario's techniques, validated and in order."""

    techniques: tuple[Technique, ...] = ()
    owners: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.techniques)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.techniques)

    def apply_model(self, model: ModelSpec, ctx: BuildContext) -> ModelSpec:
        for t in self.techniques:
            if t.needs_key_value_heads and model.is_mla:
                raise CapsimError(
                    f"technique {t.name!r} models a cache of keys and values per KV head, but {model.name} uses "
                    "multi-head latent attention (one shared latent per token), which capsim does not model it on",
                    where=t.where, fix="drop the technique for this model (kv_dtype: fp8 quantises an MLA cache)",
                )
            model = t.model(model, ctx)
        return model

    def apply_memory(self, ctx: BuildContext) -> MemoryTerms:
        terms = MemoryTerms()
        for t in self.techniques:
            terms = t.memory(terms, ctx)
        return terms

    def apply_operators(self, table: OperatorTable, ctx: BuildContext) -> OperatorTable:
        for t in self.techniques:
            table = t.operators(table, ctx)
        return table

    def extra_devices(self, ctx: BuildContext) -> tuple[ExtraDevice, ...]:
        return tuple(d for t in self.techniques for d in t.devices(ctx))

    def tiers(self, ctx: BuildContext) -> tuple[str, ...]:
        """The device tiers the techniques use, each once, in first-use order."""
        return tuple(dict.fromkeys(name for t in self.techniques for name in t.tiers(ctx)))

    def kv_policy(self, ctx: BuildContext) -> KVPolicy | None:
        policies = [k for k in (t.kv_policy(ctx) for t in self.techniques) if k is not None]
        return policies[0] if policies else None  # exclusivity of "kv_policy" was checked when the stack was built

    def admit(self, ctx: BuildContext) -> Any | None:
        hooks = [a for a in (t.admit(ctx) for t in self.techniques) if a is not None]
        return hooks[0] if hooks else None  # exclusivity of "admit" was checked when the stack was built

    def gate(self, ctx: BuildContext) -> Any | None:
        gates = [g for g in (t.gate(ctx) for t in self.techniques) if g is not None]
        return gates[0] if gates else None  # exclusivity of "gate" was checked when the stack was built

    def step_model(self, ctx: BuildContext) -> StepModel | None:
        steps = [s for s in (t.step(ctx) for t in self.techniques) if s is not None]
        return steps[0] if steps else None  # exclusivity of "step" was checked when the stack was built

    def keeps_planner_bounds(self) -> bool:
        return all(t.keeps_planner_bounds() for t in self.techniques)


def attention_geometry(table: OperatorTable, where: str) -> AttentionGeometry:
    """The table's attention geometry, which every technique that reprices attention needs; an error naming the
    technique when the table has none (a table not built by ``build_operator_table``)."""
    if table.attention is None:
        raise CapsimError(
            "the operator table carries no attention geometry (heads, KV heads, head size per GPU)",
            where=where,
            fix="build the table with build_operator_table",
        )
    return table.attention


def _param_error(cls: type[Technique], name: str, index: int, exc: ValidationError) -> CapsimError:
    err = exc.errors()[0]
    loc = ".".join(str(x) for x in err.get("loc", ()))
    msg = "unknown parameter" if err.get("type") == "extra_forbid" or err.get("type") == "extra_forbidden" else (
        err.get("msg", "invalid"))
    known = ", ".join(cls.Params.model_fields)
    return CapsimError(
        f"{msg}: {loc!r} (got {err.get('input')!r})" if loc else msg,
        where=f"techniques[{index}].{loc}" if loc else f"techniques[{index}]",
        fix=f"parameters of technique {name!r} are: {known} (`capsim explain {name}` describes them)",
    )


def build_stack(entries: Sequence[Any], scheduler: str | None = None) -> TechniqueStack:
    """Validate the scenario's ``techniques:`` entries (``{name, **params}``) into a stack.

    Refuses unknown names and parameters, a technique listed twice, two techniques that claim the
    same exclusive resource or declare each other incompatible, and a scheduler a technique cannot
    run under -- each with a message naming both sides.
    """
    from capsim.errors import UnknownNameError

    out: list[Technique] = []
    owners: dict[str, str] = {}
    for i, entry in enumerate(entries):
        raw_name, params = entry.name, entry.params
        try:
            canonical = TECHNIQUES.canonical(raw_name)
        except UnknownNameError as exc:
            raise UnknownNameError(exc.problem, where=f"techniques[{i}].name", fix=exc.fix) from None
        cls = TECHNIQUES.get(canonical)
        try:
            p = cls.Params.model_validate(params)
        except ValidationError as exc:
            raise _param_error(cls, canonical, i, exc) from None
        tech = cls(p, name=canonical, index=i)
        for prev in out:
            if prev.name == canonical:
                raise CapsimError(
                    f"technique {canonical!r} is listed twice (techniques[{prev.index}] and techniques[{i}])",
                    where=f"techniques[{i}]", fix="list each technique once, with all its parameters",
                )
            if canonical in prev.incompatible or prev.name in cls.incompatible:
                raise CapsimError(
                    f"{canonical!r} cannot be combined with {prev.name!r} (techniques[{prev.index}])",
                    where=f"techniques[{i}]", fix=f"remove one of {prev.name!r} and {canonical!r}",
                )
        for resource in cls.exclusive:
            if resource in owners:
                raise CapsimError(
                    f"{canonical!r} and {owners[resource]!r} both change the decode {resource}; only one "
                    "technique may own it",
                    where=f"techniques[{i}]", fix=f"remove one of {owners[resource]!r} and {canonical!r}",
                )
            owners[resource] = canonical
        if scheduler is not None and scheduler in cls.schedulers_refused:
            raise CapsimError(
                f"technique {canonical!r} cannot run under scheduler {scheduler!r}: {cls.schedulers_refused[scheduler]}",
                where=f"techniques[{i}]", fix="choose another scheduler (vllm, sarathi or orca) or drop the technique",
            )
        out.append(tech)
    return TechniqueStack(tuple(out), owners)
