"""The scenario schema: pydantic models that mirror the YAML one to one.

A scenario says *what* to simulate -- model, hardware and deployment,
scheduler, router, workload, SLOs and simulation options. Every field carries a
description (``capsim validate`` and the dashboard show them); unknown keys are
errors, so a typo never silently falls back to a default.

Scheduler and router parameters live beside their ``name``; they are checked
against the parameter model the named plug-in registers, so a new scheduler's
parameters are validated without touching this file.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from capsim.types import Count, OptionalCount
from simulator.config.cost import CostConfig
from simulator.metrics.slo import SLOConfig
from traces.config import WorkloadConfig

STRICT = ConfigDict(extra="forbid")


class DeploymentConfig(BaseModel):
    """Hardware and how the model is laid out on it."""

    model_config = STRICT

    device: str | dict[str, Any] = Field(
        "h100-sxm", description="Catalog device id (`capsim list devices`) or an inline device definition."
    )
    num_replicas: Count = Field(1, gt=0, description="Independent model replicas behind the router.")
    tp: Count = Field(1, gt=0, description="Tensor-parallel degree: GPUs that split every layer.")
    pp: Count = Field(1, gt=0, description="Pipeline-parallel degree: stages that split the layers.")
    weight_dtype: str = Field("bf16", description="Weight format: fp32, bf16, fp16, fp8, int8, int4 or mxfp4.")
    kv_dtype: str = Field("bf16", description="KV-cache format: bf16, fp16, fp8 or int8.")
    activation_dtype: str = Field("bf16", description="Activation format (bf16 or fp16).")
    memory_utilization: float = Field(
        0.9, gt=0, le=1, description="Fraction of GPU memory the server may use (vLLM --gpu-memory-utilization)."
    )
    activation_reserve_gib: float | None = Field(
        None,
        ge=0,
        description="GPU memory per GPU held back for activations and workspace; "
        "None estimates it from the scheduler's token and sequence budgets.",
    )
    block_size: Count = Field(16, gt=0, description="Tokens per KV-cache block (vLLM --block-size).")
    calibration: Literal["profile", "datasheet"] = Field(
        "profile",
        description="How kernels are priced: 'profile' uses the device's calibrated profile (fitted to measured "
        "kernels; shipped for a100-80gb-sxm, h100-sxm and h200) where one exists and the datasheet roofline "
        "elsewhere; 'datasheet' forces the roofline with the catalog's constant efficiencies.",
    )
    engine: str | None = Field(
        None,
        description="Serving-engine profile whose terms are added to every iteration beyond its kernels (per step, "
        "per sequence, per token, per layer, per collective, decode KV re-read): vllm, vllm-eager, tensorrt-llm, "
        "tensorrt-llm-2023, sglang, or a Vidur overhead set such as vidur-a100 (`capsim calibrate engines` lists "
        "them with their terms, sources and held-out errors); 'none' prices the kernels alone. Unset: the older "
        "`overheads` field where it is set, else the device's own default (its catalog `serving_engine`: 'none' "
        "for NPUs, CPUs and the SN40L), else 'vllm' (a current vLLM with CUDA graphs).",
    )
    overheads: str = Field(
        "none",
        description="Older name of `engine` (kept so old scenarios run): a Vidur overhead set by name. Setting "
        "both to different profiles is an error.",
    )

    @property
    def gpus_per_replica(self) -> int:
        return self.tp * self.pp


class PluginConfig(BaseModel):
    """A registry name plus that plug-in's own parameters (validated against it later)."""

    model_config = ConfigDict(extra="allow")

    name: str

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class SchedulerConfig(PluginConfig):
    """Batch scheduler (`capsim list schedulers`) and its parameters."""

    name: str = Field("vllm", description="Scheduler id: vllm, sarathi, orca or static.")


class RouterConfig(PluginConfig):
    """How requests are spread over replicas."""

    name: str = Field(
        "round-robin",
        description="Router id: round-robin, random, least-outstanding or cache-aware (with the prefix-caching "
        "technique; parameter max_imbalance).",
    )


class TechniqueConfig(PluginConfig):
    """One serving technique (`capsim list techniques`) and its parameters (`capsim explain NAME`)."""

    name: str = Field(description="Technique id, e.g. 'speculative-decoding'.")


class PoolConfig(DeploymentConfig):
    """One pool of identical replicas in a multi-pool deployment: its hardware, layout, memory settings and
    scheduler, and the role it plays in the serving system (``serving:``). Every pool holds its own copy of the
    scenario's model."""

    name: str = Field(description="Pool label, unique in the scenario (used in results: pool.<name>.*).")
    role: str = Field(
        description="What the pool does for a request, as the serving system defines it "
        "(`capsim explain SYSTEM`): prefill, decode or mixed (both phases, colocated)."
    )
    scheduler: SchedulerConfig | None = Field(
        None, description="The pool's batch scheduler; None uses the scenario's `scheduler:`."
    )
    router: RouterConfig | None = Field(
        None, description="How the pool spreads the requests it receives over its replicas; None uses `router:`."
    )
    techniques: list[TechniqueConfig] | None = Field(
        None,
        description="The pool's own serving techniques, in order (`capsim list techniques`); they replace the "
        "scenario's `techniques:` for this pool ([]: none here). None: the scenario's techniques, each on the "
        "pools whose role it serves (speculative decoding skips a prefill pool; an encode pool takes none).",
    )

    def deployment(self) -> DeploymentConfig:
        """The pool's hardware and layout as a single-pool deployment."""
        fields = {k: getattr(self, k) for k in DeploymentConfig.model_fields}
        return DeploymentConfig.model_validate(fields)


class ServingConfig(PluginConfig):
    """The serving system that joins the pools (`capsim list systems`) and its parameters."""

    name: str = Field(
        "disaggregated", description="Serving system id: disaggregated (DistServe) or splitwise."
    )


class IntervalsConfig(BaseModel):
    """Prediction intervals: re-run the simulation with iteration times drawn from stored held-out errors."""

    model_config = STRICT

    level: float = Field(
        0.9, gt=0, lt=1, allow_inf_nan=False,
        description="Probability the interval is meant to cover: each metric's [lo, hi] are the (1 - level)/2 and "
        "(1 + level)/2 quantiles of its re-run values (docs/engine-profiles.md, Prediction intervals).",
    )
    samples: Count = Field(
        20, gt=1, le=1000,
        description="Re-runs with sampled iteration-time multipliers (one per phase per re-run, shared by the "
        "replicas); each costs one more simulation.",
    )


class SimulationConfig(BaseModel):
    """How much to simulate and what to measure."""

    model_config = STRICT

    num_requests: OptionalCount = Field(
        1000, gt=0, description="Requests to generate or replay (None: all of a trace, or until duration_s)."
    )
    duration_s: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="Stop generating arrivals after this many seconds (with or instead of num_requests).",
    )
    warmup_s: float = Field(
        0.0,
        ge=0,
        allow_inf_nan=False,
        description="Requests arriving before this time are simulated but excluded from the statistics.",
    )
    max_time_s: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="Stop the simulation at this simulated time even if requests are unfinished "
        "(arrived requests count as SLO misses; requests not yet arrived are left out and counted as "
        "not_arrived). None runs until every request finishes.",
    )
    oversized: Literal["error", "drop"] = Field(
        "error",
        description="Requests that can never be served (longer than the model context, the KV capacity or the "
        "scheduler's prefill budget): 'error' stops with a message, 'drop' removes them and reports how many.",
    )
    intervals: IntervalsConfig | None = Field(
        None,
        description="Prediction intervals for every latency and throughput metric, sized from the stored held-out "
        "residuals of the engine profile or the device's kernel calibration (summary.json gains an 'intervals' "
        "block). None (default): off, outputs unchanged. Example: {level: 0.9, samples: 20}.",
    )


class Scenario(BaseModel):
    """One configuration to simulate."""

    model_config = STRICT

    name: str = Field("scenario", description="Label used in tables and output files.")
    description: str = Field("", description="Free text.")
    seed: Count = Field(0, ge=0, description="Seed of every random draw; same seed, same results.")
    model: str | dict[str, Any] = Field(
        "llama-3.1-8b", description="Catalog model id (`capsim list models`) or an inline model definition."
    )
    deployment: DeploymentConfig = Field(default_factory=DeploymentConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    router: RouterConfig = Field(default_factory=RouterConfig)
    workload: WorkloadConfig = Field(default_factory=WorkloadConfig)
    slo: SLOConfig = Field(default_factory=SLOConfig)
    simulation: SimulationConfig = Field(default_factory=SimulationConfig)
    techniques: list[TechniqueConfig] = Field(
        default_factory=list,
        description="Serving techniques applied in list order, each `{name: ..., <its parameters>}` "
        "(`capsim list techniques`, `capsim explain NAME`); empty: plain serving.",
    )
    pools: list[PoolConfig] | None = Field(
        None,
        description="Several cooperating pools of replicas (e.g. prefill and decode) instead of `deployment:`; "
        "requests move between them as `serving:` says. None: one pool, described by `deployment:`.",
    )
    serving: ServingConfig | None = Field(
        None, description="How the pools cooperate (required with `pools:`): `{name: disaggregated, ...}`."
    )
    cost: CostConfig | None = Field(
        None, description="How the deployment is paid for: `{mode: rental}` (the catalog's hourly prices, also what "
        "None means) or `{mode: tco, capex_usd: {...}, amortisation_years: ..., electricity_usd_per_kwh: ...}` "
        "(docs/energy-and-cost.md). Changes no simulated number, only the cost figures of the results.",
    )

    @model_validator(mode="before")
    @classmethod
    def _null_deployment_is_absent(cls, data):
        # `deployment: null` means "not given": a plan or sweep can then switch a candidate from one pool to
        # `pools:` (zip: {deployment: [{...}, null], pools: [null, [...]]}).
        if isinstance(data, dict) and "deployment" in data and data["deployment"] is None:
            data = {k: v for k, v in data.items() if k != "deployment"}
        return data

    @model_validator(mode="after")
    def _pools_or_deployment(self):
        if self.pools is None:
            if self.serving is not None:
                raise ValueError("`serving:` joins several pools: give `pools:` too, or remove `serving:`")
            return self
        # A dump of a pools scenario carries the default deployment; only a deployment that says something counts.
        if "deployment" in self.model_fields_set and self.deployment != DeploymentConfig():
            raise ValueError(
                "give either `deployment:` (one pool) or `pools:` (several), not both: move the deployment's "
                "fields into each pool"
            )
        if not self.pools:
            raise ValueError("`pools:` is empty: list at least one pool, or use `deployment:`")
        names = [p.name for p in self.pools]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"pool names must be unique; repeated: {', '.join(dupes)}")
        if self.serving is None:
            raise ValueError("`pools:` needs `serving:` naming how they cooperate, e.g. {name: disaggregated}")
        return self


class RunEntry(BaseModel):
    """One entry of a scenario file's ``runs:`` list: a name and overrides of the base scenario."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(description="Label of this configuration in the comparison table.")
    set: dict[str, Any] = Field(
        default_factory=dict, description="Overrides by dotted path, e.g. {'deployment.tp': 2}."
    )


class ScenarioFile(Scenario):
    """A scenario file: one base scenario, optionally expanded into several configurations."""

    runs: list[RunEntry] | None = Field(
        None, description="Configurations to compare: each overrides fields of the base scenario."
    )
    grid: dict[str, list[Any]] | None = Field(
        None,
        description="Cartesian product of values by dotted path, e.g. {'workload.qps': [2, 4, 8]}; "
        "combined with runs, every run is crossed with the grid.",
    )

    @field_validator("grid")
    @classmethod
    def _non_empty_grid(cls, grid):
        if grid is not None:
            for key, values in grid.items():
                if not isinstance(values, list) or not values:
                    raise ValueError(f"grid entry {key!r} must be a non-empty list of values")
        return grid

    @model_validator(mode="after")
    def _unique_run_names(self):
        if self.runs:
            names = [r.name for r in self.runs]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"run names must be unique; repeated: {', '.join(dupes)}")
        return self
