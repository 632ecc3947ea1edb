"""From a validated scenario to the objects a simulation runs: the *system*.

Resolves catalog names (model, device, scheduler, router), picks numeric
formats, budgets memory and builds the replica cost model. Shared by ``capsim
run`` and ``capsim estimate`` so both price work identically.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from capsim.errors import CapsimError, UnknownNameError
from hwmodels.device import DeviceSpec, calibrated_profile, device_from_dict, get_device
from hwmodels.links import Link
from hwmodels.roofline import RooflineDevice
from simulator.config.schema import DeploymentConfig, Scenario
from simulator.costmodel.iteration import IterationCostModel, OverheadTerms
from simulator.costmodel.operators import OperatorTable, build_operator_table
from simulator.costmodel.precision import COMPUTE_FORMAT_FOR_WEIGHTS, bytes_per_element
from simulator.costmodel.scaled import PhaseScale, ScaledCostModel
from simulator.costmodel.static_shapes import StaticShapeCostModel
from simulator.memory_plan import GIB, MemoryPlan, activation_reserve, plan_memory
from simulator.models import get_model, model_from_dict
from simulator.models.spec import ModelSpec
from simulator.routers import ROUTERS, Router
from simulator.schedulers import SCHEDULERS, Scheduler, SchedulerParams
from simulator.techniques import BuildContext, StepModel, TechniqueStack, build_stack
from simulator.techniques.base import ExtraDevice, KVPolicy


@dataclass(frozen=True)
class System:
    """Everything about one configuration that does not depend on the workload."""

    model: ModelSpec
    device: DeviceSpec
    deployment: DeploymentConfig
    compute_format: str
    roofline: RooflineDevice
    table: OperatorTable
    memory: MemoryPlan
    scheduler_cls: type[Scheduler]
    scheduler_params: SchedulerParams
    router_cls: type[Router]
    overheads: OverheadTerms | None = None
    techniques: TechniqueStack = field(default_factory=TechniqueStack)
    step: StepModel | None = None  # the decode-step model of a technique; None: one token per step
    kv_policy: KVPolicy | None = None  # a technique's KV retention (eviction); None: every token kept
    admit: Any | None = None  # a technique's admission hook (prefix caching); None: nothing cached at admission
    extra_devices: tuple[ExtraDevice, ...] = ()  # per replica, added by techniques (a separate draft device)
    tiers_used: tuple[str, ...] = ()  # device tiers beyond the device memory that techniques use (for energy)
    # Prediction-interval re-runs only: iteration times scaled per phase (simulator/intervals); None otherwise.
    time_scale: PhaseScale | None = None
    gate: Any | None = None  # a technique's gate on which waiting requests a replica batches (composition of experts)
    # Multiplier of the served model's KV bytes per token set by techniques (a quantised cache): what a KV
    # hand-off or migration moves per token, beside deployment.kv_dtype.
    kv_bytes_scale: float = 1.0

    @property
    def engine_name(self) -> str:
        """The engine profile pricing this system (``none`` when no terms apply)."""
        return self.overheads.name if self.overheads is not None else "none"

    @property
    def extra_usd_per_replica_hour(self) -> float:
        return sum(d.count * d.price_usd_per_hour for d in self.extra_devices)

    @property
    def cost_per_hour_usd(self) -> float:
        """Rental price of the whole deployment: its GPUs and the devices its techniques add."""
        gpus = self.num_gpus * self.device.price_usd_per_hour
        extra = self.extra_usd_per_replica_hour
        return gpus + self.deployment.num_replicas * extra if extra else gpus

    def cost_model(self) -> IterationCostModel:
        """A fresh (empty-cache) cost model; one per simulation keeps runs independent.

        A device with static graph shapes (an NPU) gets the model that pads each batch to them first
        (:mod:`simulator.costmodel.static_shapes`); thermal throttling is bound per replica by the engine
        (:func:`simulator.costmodel.thermal.bind_thermal`); prediction-interval re-runs scale the result per phase
        (:mod:`simulator.costmodel.scaled`)."""
        shapes = self.device.static_shapes
        if shapes is not None:
            model: IterationCostModel = StaticShapeCostModel(self.table, self.roofline, self.overheads, shapes=shapes)
        else:
            model = IterationCostModel(self.table, self.roofline, self.overheads)
        return model if self.time_scale is None else ScaledCostModel(model, self.time_scale)

    @property
    def calibration(self) -> str:
        """Which pricing is in force: the calibrated profile's file name, or 'datasheet'."""
        profile = self.roofline.profile
        return f"profile {profile.name}" if profile is not None else "datasheet"

    @property
    def num_gpus(self) -> int:
        return self.deployment.num_replicas * self.deployment.gpus_per_replica


def _lookup(get: Callable[[str], Any], name: str, field: str) -> Any:
    """``get(name)``, with an unknown name reported against the scenario field that holds it."""
    try:
        return get(name)
    except UnknownNameError as exc:
        raise UnknownNameError(exc.problem, where=field, fix=exc.fix) from None


def resolve_model(model: str | dict[str, Any]) -> ModelSpec:
    return model_from_dict(model) if isinstance(model, dict) else _lookup(get_model, model, "model")


def resolve_device(device: str | dict[str, Any]) -> DeviceSpec:
    if isinstance(device, dict):
        return device_from_dict(device, where="deployment.device")
    return _lookup(get_device, device, "deployment.device")


def scheduler_params(name: str, params: dict[str, Any]) -> tuple[type[Scheduler], SchedulerParams]:
    cls = _lookup(SCHEDULERS.get, name, "scheduler.name")
    try:
        return cls, cls.Params.model_validate(params)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(x) for x in err.get("loc", ()))
        msg = "unknown parameter" if err.get("type") == "extra_forbidden" else err.get("msg", "invalid")
        known = ", ".join(cls.Params.model_fields)
        raise CapsimError(
            f"{msg}: {field!r} (got {err.get('input')!r})" if field else msg,
            where=f"scheduler.{field}" if field else "scheduler",
            fix=f"parameters of scheduler {SCHEDULERS.canonical(name)!r} are: {known}",
        ) from None


def router_with_params(name: str, params: dict[str, Any]) -> type[Router]:
    """The router class of ``name``, with its parameters validated and bound (most routers take none)."""
    cls = _lookup(ROUTERS.get, name, "router.name")
    if cls.Params is None:
        if params:
            raise CapsimError(
                f"router {name!r} takes no parameters (got {', '.join(params)})", where="router", fix="remove them"
            )
        return cls
    try:
        return cls.with_params(cls.Params.model_validate(params))
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(x) for x in err.get("loc", ()))
        msg = "unknown parameter" if err.get("type") == "extra_forbidden" else err.get("msg", "invalid")
        raise CapsimError(
            f"{msg}: {field!r} (got {err.get('input')!r})" if field else msg,
            where=f"router.{field}" if field else "router",
            fix=f"parameters of router {ROUTERS.canonical(name)!r} are: {', '.join(cls.Params.model_fields)}",
        ) from None


def resolve_overheads(name: str, tp: int, *, where: str = "deployment.overheads") -> OverheadTerms:
    """The named serving-engine profile (or Vidur overhead set) at this TP degree (``none``: all zero)."""
    from hwmodels.calibration.engines import engine_terms

    t = engine_terms(name, tp, where=where)
    return OverheadTerms(t["per_step_s"], t["per_sequence_s"], t["per_layer_s"], t["name"],
                         per_token_s=t["per_token_s"], per_collective_s=t["per_collective_s"],
                         gqa_reread=t["gqa_reread"])


def resolve_engine(dep: DeploymentConfig, device: DeviceSpec) -> OverheadTerms:
    """The deployment's one engine profile: ``engine``, or the older ``overheads`` field, or the device's default
    (``DeviceSpec.serving_engine``, else ``vllm``)."""
    from hwmodels.calibration.engines import engine_name_of

    name = engine_name_of(dep.engine, dep.overheads, device.serving_engine)
    if dep.engine is not None:
        where = "deployment.engine"
    elif dep.overheads != "none":
        where = "deployment.overheads"
    else:
        where = f"device {device.name}: serving_engine" if device.serving_engine is not None else "deployment.engine"
    return resolve_overheads(name, dep.tp, where=where)


def links_of(device: DeviceSpec) -> tuple[Link, Link]:
    """(tensor-parallel link, pipeline link): NVLink-class fabric where present, else PCIe."""
    lat = device.interconnect.link_latency_us * 1e-6
    if device.nvlink_bandwidth > 0:
        fabric = Link("nvlink", device.nvlink_bandwidth, lat)
    else:
        fabric = Link("pcie", device.pcie_bandwidth, lat)
    return fabric, fabric


def roofline_for(device: DeviceSpec, dep: DeploymentConfig, fmt: str) -> RooflineDevice:
    """The pricing view of ``device``: datasheet peaks, constant efficiencies and, unless the deployment
    asks for the datasheet, its calibrated profile."""
    eff = device.efficiency
    profile = calibrated_profile(device) if dep.calibration == "profile" else None
    return RooflineDevice(
        device.name, device.peak_flops(fmt), device.memory_bandwidth, eff.compute, eff.memory,
        eff.launch_overhead_us * 1e-6, profile=profile, compute_format=fmt,
    )


def table_for(model: ModelSpec, device: DeviceSpec, dep: DeploymentConfig, *, tp: int, pp: int) -> OperatorTable:
    """The operator table of ``model`` on ``device`` with the deployment's numeric formats."""
    tp_link, pp_link = links_of(device)
    return build_operator_table(
        model, tp=tp, pp=pp, weight_bytes=bytes_per_element(dep.weight_dtype, field="deployment.weight_dtype"),
        kv_bytes=bytes_per_element(dep.kv_dtype, field="deployment.kv_dtype"),
        act_bytes=bytes_per_element(dep.activation_dtype, field="deployment.activation_dtype"),
        tp_link=tp_link, pp_link=pp_link, act_dtype=dep.activation_dtype,
        expert_bytes_per_weight=None if model.expert_weight_dtype is None else bytes_per_element(
            model.expert_weight_dtype, field="model.expert_weight_dtype"),
    )


def cost_model_for(
    model: ModelSpec, device: DeviceSpec, dep: DeploymentConfig, *, tp: int,
    transform: Callable[[OperatorTable], OperatorTable] | None = None,
) -> IterationCostModel:
    """A cost model for another model served beside the main one (a draft model, a head), one pipeline
    stage, no serving-engine overhead terms: the main model's iteration already carries them.

    ``transform`` edits the operator table first (e.g. several verified tokens per sequence).
    """
    fmt = COMPUTE_FORMAT_FOR_WEIGHTS[dep.weight_dtype]
    table = table_for(model, device, dep, tp=tp, pp=1)
    if transform is not None:
        table = transform(table)
    return IterationCostModel(table, roofline_for(device, dep, fmt), None)


def build_system(scenario: Scenario) -> System:
    dep = scenario.deployment
    model = resolve_model(scenario.model)
    device = resolve_device(dep.device)
    sched_cls, sched_params = scheduler_params(scenario.scheduler.name, scenario.scheduler.params)
    router_cls = router_with_params(scenario.router.name, scenario.router.params)
    wb = bytes_per_element(dep.weight_dtype, field="deployment.weight_dtype")
    kb = bytes_per_element(dep.kv_dtype, field="deployment.kv_dtype")
    ab = bytes_per_element(dep.activation_dtype, field="deployment.activation_dtype")
    fmt = COMPUTE_FORMAT_FOR_WEIGHTS[dep.weight_dtype]
    try:
        device.peak_flops(fmt)
    except CapsimError as exc:
        raise CapsimError(exc.problem, where="deployment.weight_dtype", fix=exc.fix) from None
    if model.num_heads % dep.tp:
        raise CapsimError(
            f"tp={dep.tp} does not divide the {model.num_heads} attention heads of {model.name}",
            where="deployment.tp",
            fix="choose a tp that divides the number of heads (1, 2, 4, 8 usually)",
        )
    if dep.pp > model.num_layers:
        raise CapsimError(
            f"pp={dep.pp} exceeds the {model.num_layers} layers of {model.name}",
            where="deployment.pp",
            fix="use at most one stage per layer",
        )
    domain = device.interconnect.nvlink_domain
    if domain is not None and dep.tp * dep.pp > domain:
        raise CapsimError(
            f"tp x pp = {dep.tp * dep.pp} GPUs exceeds the {domain}-GPU NVLink domain of {device.name}, and capsim "
            "prices every link of a replica as that fabric",
            where="deployment.tp",
            fix=f"keep tp x pp at most {domain}, and scale out with num_replicas",
        )
    stack = build_stack(scenario.techniques, SCHEDULERS.canonical(scenario.scheduler.name))
    needs = router_cls.requires_technique
    if needs is not None and needs not in stack.names:
        raise CapsimError(
            f"router {scenario.router.name!r} needs the {needs!r} technique (its signal comes from it)",
            where="router.name", fix=f"add `techniques: [{{name: {needs}}}]` or choose another router",
        )
    roofline = roofline_for(device, dep, fmt)
    overheads = resolve_engine(dep, device)
    ctx = BuildContext(model, device, dep, roofline, overheads, scenario.seed,
                       max_batch_seqs=sched_params.max_batch_seqs())
    model = stack.apply_model(model, ctx)
    ctx = replace(ctx, model=model)
    table = stack.apply_operators(table_for(model, device, dep, tp=dep.tp, pp=dep.pp), ctx)
    ctx = replace(ctx, table=table)
    extra = stack.apply_memory(ctx)
    if dep.activation_reserve_gib is not None:
        reserve = dep.activation_reserve_gib * GIB
    else:
        reserve = activation_reserve(
            model, dep.tp, sched_params.max_batch_tokens(), sched_params.max_batch_seqs(), ab
        )
    memory = plan_memory(
        model, device, tp=dep.tp, pp=dep.pp, weight_bytes=wb, kv_bytes=kb, act_bytes=ab,
        memory_utilization=dep.memory_utilization, block_size=dep.block_size, reserve_bytes=reserve,
        technique_kv_bytes_per_token=extra.extra_kv_bytes_per_token, technique_reserved_bytes=extra.reserved_bytes,
        gpu_kv_fraction=extra.gpu_kv_fraction, host_kv_bytes_per_token=extra.host_kv_bytes_per_token,
        host_kv_bytes=extra.host_kv_bytes,
        technique_kv_scale=extra.kv_bytes_scale, offloaded_weight_bytes=extra.offloaded_weight_bytes,
    )
    step = stack.step_model(ctx) if stack else None
    if step is not None and (device.static_shapes is not None or device.thermal is not None):
        what = "static graph shapes" if device.static_shapes is not None else "thermal throttling"
        raise CapsimError(
            f"device {device.name!r} has {what}, which a technique's decode-step model (speculative decoding) "
            "does not price yet: its steps would run unpadded and at full speed",
            where="techniques", fix="remove the speculative technique, or use a device without "
            "static_shapes and thermal (an inline device: base: ... with static_shapes: null, thermal: null)",
        )
    return System(
        model, device, dep, fmt, roofline, table, memory, sched_cls, sched_params, router_cls, overheads,
        techniques=stack, step=step,
        kv_policy=_kv_policy(stack, ctx, model),
        admit=stack.admit(ctx) if stack else None,
        extra_devices=stack.extra_devices(ctx) if stack else (),
        tiers_used=stack.tiers(ctx) if stack else (),
        gate=stack.gate(ctx) if stack else None,
        kv_bytes_scale=extra.kv_bytes_scale,
    )


def _kv_policy(stack: TechniqueStack, ctx: BuildContext, model: ModelSpec) -> KVPolicy | None:
    """A technique's KV retention, or the model's sliding window (they do not combine yet)."""
    policy = stack.kv_policy(ctx) if stack else None
    if model.sliding_window is None:
        return policy
    if policy is not None:
        raise CapsimError(
            f"{model.name} attends to a sliding window of {model.sliding_window} tokens, which capsim does not "
            "combine with a KV eviction or retention technique yet",
            where="techniques", fix="remove the KV eviction technique, or use a model without a window",
        )
    from simulator.window import SlidingWindowPolicy

    return SlidingWindowPolicy(model)
