"""Serving systems: how several pools of replicas cooperate on one request.

A system is registered by name in :data:`SERVING_SYSTEMS`; a scenario names it under ``serving:`` with its
parameters. It says which pool roles it needs, where a new request enters, and where a request goes when its
prefill is done (a hand-off of its KV cache over the scenario's link). The pool engine
(:mod:`simulator.pools.engine`) does the rest: replicas, routers, links and the transfers -- so a new system is
one class here, never a branch in the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Protocol

from pydantic import BaseModel, ConfigDict, Field

from capsim.registry import Registry
from capsim.types import Flag
from hwmodels.network import LinkConfig
from simulator.pools.migration import MigrationConfig
from simulator.pools.priority import PriorityConfig


class PoolView(Protocol):
    """What a system may look at to decide: the pool's role and load (never a replica's internals)."""

    name: str
    role: str

    def queued_per_replica(self) -> float: ...  # requests routed to the pool and not yet running, per replica


class ServingParams(BaseModel):
    """Parameters every pool system shares: the hand-off link."""

    model_config = ConfigDict(extra="forbid")

    link: LinkConfig = Field(default_factory=LinkConfig, description="Link that carries KV between the pools.")
    migration: MigrationConfig | None = Field(
        None,
        description="Live migration of running requests between the replicas of each pool (Llumnix); "
        "None: requests stay where they were routed.",
    )
    priorities: PriorityConfig | None = Field(
        None,
        description="Two priority classes of requests (Llumnix): `{high_fraction, headroom_tokens, queue_first}`; "
        "None: every request alike.",
    )
    layerwise: Flag = Field(
        False,
        description="Send each layer's KV as soon as the prefill has computed it (Splitwise, DistServe's pull "
        "is whole-request): only the part of the transfer that outlasts the prefill iteration stays visible.",
    )


class ServingSystem:
    """Base class. ``roles`` lists the roles the system understands; ``required`` those a scenario must have."""

    Params: ClassVar[type[ServingParams]] = ServingParams
    roles: ClassVar[tuple[str, ...]] = ()
    required: ClassVar[tuple[str, ...]] = ()
    summary: ClassVar[str] = ""
    sources: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: ServingParams, pools: Sequence[PoolView]):
        self.params = params
        self.by_role = {}
        for pool in pools:
            self.by_role.setdefault(pool.role, []).append(pool)

    def entry(self, rid: int) -> PoolView:
        """The pool a newly arrived request goes to."""
        raise NotImplementedError

    def after_prefill(self, rid: int, source: PoolView) -> PoolView | None:
        """The pool that decodes ``rid`` once ``source`` has prefilled it (None: ``source`` decodes it)."""
        raise NotImplementedError


SERVING_SYSTEMS: Registry[type[ServingSystem]] = Registry("serving system")


@SERVING_SYSTEMS.register("disaggregated", aliases=("distserve", "pd-disaggregation", "prefill-decode"))
class Disaggregated(ServingSystem):
    """Prefill and decode on separate pools (DistServe): each phase gets the GPUs, TP/PP and batch it prefers,
    and neither stalls the other; the price is a KV transfer per request."""

    roles = ("prefill", "decode")
    required = ("prefill", "decode")
    summary = "prefill pool -> KV hand-off over a link -> decode pool"
    sources = (
        "Zhong et al., DistServe: Disaggregating Prefill and Decoding for Goodput-optimized Large Language Model "
        "Serving, OSDI 2024",
    )

    def entry(self, rid: int) -> PoolView:
        return self.by_role["prefill"][0]

    def after_prefill(self, rid: int, source: PoolView) -> PoolView | None:
        return self.by_role["decode"][0]


class SplitwiseParams(ServingParams):
    overflow_queue: float = Field(
        4.0,
        gt=0,
        allow_inf_nan=False,
        description="Requests waiting per replica of the prefill (or decode) pool beyond which new work goes to "
        "the mixed pool, which runs both phases colocated (Splitwise's mixed pool).",
    )


@SERVING_SYSTEMS.register("splitwise")
class Splitwise(ServingSystem):
    """Splitwise: a prefill ("prompt") pool and a decode ("token") pool, possibly of different device types
    (H100 for prompts, A100 for tokens), with KV sent layer by layer, plus an optional mixed pool that serves
    whole requests colocated when the other pools' queues build up."""

    Params = SplitwiseParams
    roles = ("prefill", "decode", "mixed")
    required = ("prefill", "decode")
    summary = "prefill pool -> KV over a link -> decode pool; a mixed pool absorbs queues"
    sources = ("Patel et al., Splitwise: Efficient Generative LLM Inference Using Phase Splitting, ISCA 2024",)

    def _mixed(self) -> PoolView | None:
        mixed = self.by_role.get("mixed")
        return mixed[0] if mixed else None

    def entry(self, rid: int) -> PoolView:
        prefill, mixed = self.by_role["prefill"][0], self._mixed()
        if mixed is not None and prefill.queued_per_replica() >= self.params.overflow_queue:
            return mixed
        return prefill

    def after_prefill(self, rid: int, source: PoolView) -> PoolView | None:
        if source.role == "mixed":
            return None
        decode, mixed = self.by_role["decode"][0], self._mixed()
        if mixed is not None and decode.queued_per_replica() >= self.params.overflow_queue:
            return mixed
        return decode


class LlumnixParams(ServingParams):
    migration: MigrationConfig | None = Field(
        default_factory=MigrationConfig,
        description="Live migration between the pool's replicas (on by default for this system; null turns it off).",
    )


@SERVING_SYSTEMS.register("llumnix", aliases=("migration", "colocated"))
class Llumnix(ServingSystem):
    """One pool serving whole requests, whose running requests migrate live between replicas (Llumnix): load
    balancing and de-fragmentation after the router's one-time choice."""

    Params = LlumnixParams
    roles = ("mixed",)
    required = ("mixed",)
    summary = "one colocated pool; running requests migrate between its replicas"
    sources = ("Sun et al., Llumnix: Dynamic Scheduling for Large Language Model Serving, OSDI 2024",)

    def entry(self, rid: int) -> PoolView:
        return self.by_role["mixed"][0]

    def after_prefill(self, rid: int, source: PoolView) -> PoolView | None:
        return None


class EPDParams(ServingParams):
    max_images: int = Field(
        16, ge=1, description="Most images one encoder iteration batches (an encoder replica's batch limit)."
    )


@SERVING_SYSTEMS.register("epd", aliases=("encode-prefill-decode",))
class EPD(ServingSystem):
    """Encode, prefill and decode on separate pools (EPD disaggregation): requests with images are encoded on an
    encoder pool, their embeddings sent to the prefill pool, their KV to the decode pool; text-only requests
    start at the prefill pool."""

    Params = EPDParams
    roles = ("encode", "prefill", "decode")
    required = ("encode", "prefill", "decode")
    summary = "encoder pool -> embeddings over the link -> prefill pool -> KV over the link -> decode pool"
    sources = (
        "Singh et al., Efficiently Serving Large Multimodal Models Using EPD Disaggregation, arXiv 2501.05460, 2025",
    )

    def entry(self, rid: int) -> PoolView:
        return self.by_role["prefill"][0]  # a request with images is sent to the encoder pool first (the engine)

    def encoder_pool(self) -> PoolView:
        return self.by_role["encode"][0]

    def after_prefill(self, rid: int, source: PoolView) -> PoolView | None:
        return self.by_role["decode"][0]
