"""From a multi-pool scenario to one :class:`~simulator.system.System` per pool, plus the serving system.

Why reuse the single-pool builder: a pool is exactly today's deployment -- device, layout, memory plan,
scheduler, cost model -- so each pool is built by :func:`~simulator.system.build_system` on a one-pool view of
the scenario; only the field paths of its errors are rewritten to point at ``pools.<i>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from pydantic import ValidationError

from capsim.errors import CapsimError, UnknownNameError
from hwmodels.network import ReplicaLink, resolve_link
from simulator.config.schema import PoolConfig, Scenario
from simulator.pools import partition as _partition  # noqa: F401 - registers semi-pd
from simulator.pools.systems import SERVING_SYSTEMS, ServingParams, ServingSystem
from simulator.schedulers import SCHEDULERS
from simulator.system import System, build_system
from simulator.techniques import TECHNIQUES


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


def _technique_class(name: str):
    """The registered class of a technique name, or None when unknown (the pool's stack then names the error)."""
    try:
        return TECHNIQUES.get(TECHNIQUES.canonical(name))
    except UnknownNameError:
        return None


def _pool_techniques(scenario: Scenario, i: int, pool: PoolConfig) -> tuple[list, list[int] | None]:
    """The technique entries pool ``i`` runs, and for each the index of the scenario-level entry it came from
    (None when the pool lists its own).

    A pool's own ``techniques:`` replace the scenario's; a technique it lists for a role it cannot serve is an
    error naming both. The scenario's techniques apply to every pool whose role the technique serves (a
    speculative decoder to the decode pool, not the prefill pool). An encoder pool runs the vision encoder,
    not the language model the techniques act on, so it takes none."""
    if pool.role == "encode":
        if pool.techniques:
            raise CapsimError(
                f"pool {pool.name!r} encodes images; serving techniques act on the language model, which it does "
                "not hold",
                where=f"pools.{i}.techniques", fix="remove the encode pool's techniques",
            )
        return [], []
    if pool.techniques is not None:
        for j, entry in enumerate(pool.techniques):
            cls = _technique_class(entry.name)
            if cls is not None and pool.role not in cls.pool_roles:
                raise CapsimError(
                    f"technique {entry.name!r} cannot serve pool {pool.name!r} (role {pool.role!r}): "
                    f"{cls.pool_roles_reason or 'it does not act on that phase'}",
                    where=f"pools.{i}.techniques[{j}]",
                    fix=f"list it on a pool with role {' or '.join(cls.pool_roles)}, or remove it",
                )
        return list(pool.techniques), None
    kept, origin = [], []
    for j, entry in enumerate(scenario.techniques):
        cls = _technique_class(entry.name)
        if cls is None or pool.role in cls.pool_roles:
            kept.append(entry)
            origin.append(j)
    return kept, origin


def _rewrite_technique(where: str | None, i: int, origin: list[int] | None) -> str | None:
    """``techniques[j]...`` of a pool's stack -> ``pools.i.techniques[j]...`` (its own list) or the scenario
    entry it came from (``techniques[origin[j]]...``)."""
    match = re.match(r"techniques\[(\d+)\](.*)", where or "", re.S)
    if match is None:
        return where
    j, rest = int(match.group(1)), match.group(2)
    if origin is None:
        return f"pools.{i}.techniques[{j}]{rest}"
    return f"techniques[{origin[j]}]{rest}" if j < len(origin) else where


def _pool_scenario(scenario: Scenario, pool: PoolConfig, techniques: list | None = None) -> Scenario:
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
            "techniques": techniques or [],
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
    colocated = getattr(cls, "colocated", False)
    plans = []
    used: set[int] = set()  # scenario-level techniques some pool runs
    for i, pool in enumerate(scenario.pools):
        if pool.role not in cls.roles:
            raise CapsimError(
                f"pool {pool.name!r} has role {pool.role!r}, which serving system {name!r} does not use",
                where=f"pools.{i}.role",
                fix=f"use one of: {', '.join(cls.roles)}",
            )
        techniques, origin = _pool_techniques(scenario, i, pool)
        used.update(origin or ())
        try:
            system = build_system(_pool_scenario(scenario, pool, techniques))
        except CapsimError as exc:
            where = _rewrite_technique(exc.where, i, origin) if techniques else exc.where
            raise type(exc)(exc.problem, where=_rewrite(where, i, pool), fix=exc.fix) from None
        _check_pool_techniques(system, i, pool, origin, colocated, name)
        if system.device.thermal is not None:
            raise CapsimError(
                f"device {system.device.name!r} throttles (thermal), which pools do not model yet",
                where=_rewrite("deployment.device", i, pool),
                fix="simulate it as a single pool (`deployment:`), or give the device thermal: null",
            )
        plans.append(PoolPlan(i, pool, system))
    for j, entry in enumerate(scenario.techniques):
        if j not in used:
            tech = _technique_class(entry.name)
            raise CapsimError(
                f"technique {entry.name!r} serves no pool of this scenario (it acts on pools with role "
                f"{' or '.join(tech.pool_roles) if tech else '?'} that do not list their own `techniques:`)",
                where=f"techniques[{j}]", fix="remove it, add it to a pool's own list, or add a pool it can serve",
            )
    _check_kv_formats(plans)
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
    if colocated:
        return _partitioned(PoolSet(tuple(plans), cls, params, links))
    return PoolSet(tuple(plans), cls, params, links)


def _check_pool_techniques(system: System, i: int, pool: PoolConfig, origin: list[int] | None, colocated: bool,
                           serving: str) -> None:
    """Refuse, naming the pool and the technique, what the pool engine does not model with techniques yet."""
    stack = system.techniques
    if not stack and system.kv_policy is None:
        return

    def where_of(name: str) -> str:
        k = stack.names.index(name)
        return f"pools.{i}.techniques[{k}]" if origin is None else f"techniques[{origin[k]}]"

    if colocated:
        if stack:
            raise CapsimError(
                f"pool {pool.name!r}: serving system {serving!r} shares one KV cache and the GPUs' SMs between two "
                f"workers, which capsim does not model with techniques ({', '.join(stack.names)}) yet",
                where=where_of(stack.names[0]), fix="remove the techniques, or use `disaggregated` pools",
            )
        raise CapsimError(
            f"{system.model.name} keeps a capped KV cache (sliding window), which {serving!r}'s shared KV cache "
            "does not model yet",
            where="model", fix="use `disaggregated` pools, or a model without a window",
        )
    # Runtime hooks the pool engine does not bind yet: the technique that claims one is named.
    for hook, what in (
        ("admit", "reports KV cached at admission, which pools do not model yet (a received hand-off is the only "
                  "cached KV there)"),
        ("gate", "decides which waiting requests a replica may batch, which the pool engine does not bind yet"),
    ):
        if getattr(system, hook) is not None:
            owner = stack.owners.get(hook, stack.names[0])
            raise CapsimError(
                f"pool {pool.name!r}: technique {owner!r} {what}",
                where=where_of(owner), fix="remove it from the pools scenario, or simulate one pool (`deployment:`)",
            )
    if system.memory.host_kv_bytes_per_token or system.extra_devices:
        what = "keep KV in host memory, which a hand-off does not move" if system.memory.host_kv_bytes_per_token \
            else "add devices per replica, which per-pool cost and energy do not price"
        raise CapsimError(
            f"pool {pool.name!r}: its techniques ({', '.join(stack.names)}) {what} yet",
            where=where_of(stack.names[0]), fix="remove the technique from this pool, or simulate one pool",
        )


def _retention_of(system: System) -> tuple:
    """What decides the tokens a pool's KV keeps: the retention technique and its parameters, or the window."""
    owner = system.techniques.owners.get("kv_policy")
    if owner is not None:
        tech = system.techniques.techniques[system.techniques.names.index(owner)]
        return owner, tech.params.model_dump_json()
    return "window", system.model.sliding_window


def _check_kv_formats(plans: list[PoolPlan]) -> None:
    """A hand-off moves the tokens the sender's KV kept; a receiver that keeps others cannot take them."""
    holding = [p for p in plans if p.role != "encode"]
    for p in holding[1:]:
        first = holding[0]
        if _retention_of(p.system) != _retention_of(first.system):
            raise CapsimError(
                f"pools {first.name!r} and {p.name!r} keep different KV tokens (KV eviction or retention "
                "technique); a hand-off moves the tokens the sender kept, so every pool must keep the same",
                where=f"pools.{p.index}.techniques",
                fix="give every pool the same KV eviction technique (list it in the scenario's `techniques:`)",
            )


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
