"""From a multi-pool scenario to one :class:`~simulator.system.System` per pool, plus the serving system.

Why reuse the single-pool builder: a pool is exactly today's deployment -- device, layout, memory plan,
scheduler, cost model -- so each pool is built by :func:`~simulator.system.build_system` on a one-pool view of
the scenario; only the field paths of its errors are rewritten to point at ``pools.<i>``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from pydantic import ValidationError

from capsim.errors import CapsimError, UnknownNameError
from hwmodels.network import ReplicaLink, resolve_link
from simulator.config.schema import PoolConfig, Scenario
from simulator.pools import partition as _partition  # noqa: F401 - registers semi-pd
from simulator.pools.systems import SERVING_SYSTEMS, ServingParams, ServingSystem
from simulator.schedulers import SCHEDULERS
from simulator.system import System, build_system


@dataclass(frozen=True)
class PoolPlan:
    """One pool resolved: its scenario entry and its system."""

    index: int
    config: PoolConfig
    system: System

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def role(self) -> str:
        return self.config.role


@dataclass(frozen=True)
class PoolSet:
    """Every pool of a scenario, the serving system's class and parameters, and the links between pools."""

    pools: tuple[PoolPlan, ...]
    system_cls: type[ServingSystem]
    params: ServingParams
    links: dict[tuple[int, int], ReplicaLink]  # (sending pool, receiving pool) -> link
    # Pools that share GPUs (an SM-partitioning system): KV blocks per engine of the shared cache, and each
    # pool's share of the GPUs; None / 1 for pools with GPUs of their own.
    shared_kv_blocks: int | None = None
    gpu_shares: tuple[float, ...] = ()
    base_systems: tuple[System, ...] = ()  # each pool's system on whole GPUs, before the SM split

    def gpu_share(self, index: int) -> float:
        return self.gpu_shares[index] if self.gpu_shares else 1.0

    @property
    def cost_per_hour_usd(self) -> float:
        return sum(p.system.cost_per_hour_usd * self.gpu_share(p.index) for p in self.pools)

    @property
    def num_gpus(self) -> int:
        return round(sum(p.system.num_gpus * self.gpu_share(p.index) for p in self.pools))


def _pool_scenario(scenario: Scenario, pool: PoolConfig) -> Scenario:
    update = {}
    if pool.role == "encode":  # an encoder pool holds the vision encoder, not the language model
        images = scenario.workload.images
        if images is None:
            raise CapsimError(
                f"pool {pool.name!r} encodes images, but the workload has none",
                where="workload.images", fix="add workload.images (e.g. {per_request: 1}), or remove the pool",
            )
        update["model"] = images.encoder
    return scenario.model_copy(
        update={
            **update,
            "deployment": pool.deployment(),
            "scheduler": pool.scheduler or scenario.scheduler,
            "router": pool.router or scenario.router,
            "pools": None,
            "serving": None,
        }
    )


def _rewrite(where: str | None, i: int, pool: PoolConfig) -> str:
    """``deployment.tp`` -> ``pools.1.tp``; ``scheduler.x`` -> ``pools.1.scheduler.x`` when the pool has its own."""
    if where is None:
        return f"pools.{i}"
    head, _, rest = where.partition(".")
    if head == "deployment":
        return f"pools.{i}.{rest}" if rest else f"pools.{i}"
    if head in ("scheduler", "router") and getattr(pool, head) is not None:
        return f"pools.{i}.{where}"
    return where


def serving_params(scenario: Scenario) -> tuple[type[ServingSystem], ServingParams]:
    cfg = scenario.serving
    try:
        cls = SERVING_SYSTEMS.get(cfg.name)
    except UnknownNameError as exc:
        raise UnknownNameError(exc.problem, where="serving.name", fix=exc.fix) from None
    try:
        params = cls.Params.model_validate(cfg.params)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(x) for x in err.get("loc", ()))
        msg = "unknown parameter" if err.get("type") == "extra_forbidden" else err.get("msg", "invalid")
        raise CapsimError(
            f"{msg}: {field!r} (got {err.get('input')!r})",
            where=f"serving.{field}",
            fix=f"parameters of serving system {SERVING_SYSTEMS.canonical(cfg.name)!r} are: "
            f"{', '.join(cls.Params.model_fields)}",
        ) from None
    return cls, params


def build_pools(scenario: Scenario) -> PoolSet:
    """Resolve every pool and check that the serving system can use them."""
    cls, params = serving_params(scenario)
    name = SERVING_SYSTEMS.canonical(scenario.serving.name)
    if scenario.techniques:
        raise CapsimError(
            "serving techniques are not yet modelled together with several pools",
            where="techniques",
            fix="remove `techniques:` or simulate a single pool (`deployment:`)",
        )
    plans = []
    for i, pool in enumerate(scenario.pools):
        if pool.role not in cls.roles:
            raise CapsimError(
                f"pool {pool.name!r} has role {pool.role!r}, which serving system {name!r} does not use",
                where=f"pools.{i}.role",
                fix=f"use one of: {', '.join(cls.roles)}",
            )
        try:
            system = build_system(_pool_scenario(scenario, pool))
        except CapsimError as exc:
            raise type(exc)(exc.problem, where=_rewrite(exc.where, i, pool), fix=exc.fix) from None
        if system.kv_policy is not None:
            raise CapsimError(
                f"{system.model.name} keeps a capped KV cache (sliding window), which pools do not model yet",
                where="model", fix="simulate it as a single pool (`deployment:`), or use a model without a window",
            )
        plans.append(PoolPlan(i, pool, system))
    roles = [p.role for p in plans]
    for role in cls.required:
        if role not in roles:
            raise CapsimError(
                f"serving system {name!r} needs a pool with role {role!r}",
                where="pools",
                fix=f"add a pool with `role: {role}`",
            )
    for role in set(roles):
        if roles.count(role) > 1:
            raise CapsimError(
                f"{roles.count(role)} pools have role {role!r}; {name!r} takes one pool per role",
                where="pools",
                fix="merge them into one pool (num_replicas) or give them different roles",
            )
    for p in plans:
        if p.role in ("decode", "mixed") and not p.system.scheduler_cls.receives_kv:
            raise CapsimError(
                f"scheduler {SCHEDULERS.canonical((p.config.scheduler or scenario.scheduler).name)!r} cannot take "
                f"requests whose KV arrives from another pool (its batch is fixed until all are done)",
                where=f"pools.{p.index}.scheduler",
                fix="use vllm, sarathi or orca in this pool",
            )
    links = {}
    for src in plans:
        for dst in plans:  # (i, i): between two replicas of one pool (live migration)
            links[(src.index, dst.index)] = resolve_link(
                params.link,
                src.system.device,
                dst.system.device,
                src.system.deployment.gpus_per_replica,
                dst.system.deployment.gpus_per_replica,
                where="serving.link",
            )
    if getattr(cls, "colocated", False):
        return _partitioned(PoolSet(tuple(plans), cls, params, links))
    return PoolSet(tuple(plans), cls, params, links)


def _partitioned(pools: PoolSet) -> PoolSet:
    """Pools that share GPUs: each worker priced at its SM share, one KV cache for both."""
    from simulator.pools.partition import attainable_shares, partitioned, shared_kv_blocks

    by_role = {p.role: p for p in pools.pools}
    prefill, decode = by_role["prefill"], by_role["decode"]
    blocks = shared_kv_blocks(prefill.system, decode.system)
    cp, bp, cd, bd = attainable_shares(pools.params)
    scaled = {prefill.index: partitioned(prefill.system, cp, bp), decode.index: partitioned(decode.system, cd, bd)}
    plans = tuple(PoolPlan(p.index, p.config, scaled[p.index]) for p in pools.pools)
    shares = tuple(cp if p.role == "prefill" else cd for p in pools.pools)
    return replace(pools, pools=plans, shared_kv_blocks=blocks, gpu_shares=shares,
                   base_systems=tuple(p.system for p in pools.pools))
