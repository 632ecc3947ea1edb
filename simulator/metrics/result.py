"""The records a simulation hands to the metrics layer.

Why a fixed shape: the engine, the summary, the writers, the plots and the dashboard all meet here. The engine fills
a :class:`SimulationResult` once at the end of a run; everything downstream reads it and nothing writes back
(data flows one way). Per-request and per-iteration records are pandas frames so that they can be written, merged and
plotted without copying; inter-token gaps are kept compact in :class:`TokenGaps` because a large run produces
hundreds of millions of them.

>>> gaps = TokenGaps.from_runs(first=[0.02], step=[0.001], count=[3], weight=[2], single_values=[0.5])
>>> gaps.num_samples
7
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from capsim.errors import CapsimError
from capsim.lazy import lazy_module
from simulator.metrics.energy import PowerUnit, ThermalPower
from simulator.metrics.tco import DEFAULT_COST, CostSettings

pd = lazy_module("pandas")  # imported on first use: `capsim validate` of a synthetic workload never needs it

#: Columns the engine writes to ``SimulationResult.requests`` (extra columns are allowed and kept).
REQUEST_COLUMNS: tuple[str, ...] = (
    "request_id",
    "replica",
    "arrival_s",
    "prompt_tokens",
    "output_tokens",
    "schedule_s",
    "first_token_s",
    "finish_s",
    "preemptions",
    "max_tbt_s",
)

#: Columns of ``SimulationResult.iterations``: one row per run of identical-composition iterations of a replica.
ITERATION_COLUMNS: tuple[str, ...] = (
    "replica",
    "start_s",
    "end_s",
    "num_iterations",
    "prefill_tokens",
    "prefill_seqs",
    "decode_seqs",
    "context_tokens",
    "duration_first_s",
    "duration_last_s",
    "kv_blocks_used",
    "kv_blocks_total",
    "flops",
    "bytes",
    "busy_s",
)


def _as_array(values: Iterable[float] | np.ndarray, dtype: type, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=dtype)
    if array.ndim != 1:
        raise CapsimError(f"{name} must be one-dimensional, got shape {array.shape}", where=f"TokenGaps.{name}")
    return array


@dataclass
class TokenGaps:
    """Inter-token gaps (TBT samples) stored compactly.

    Run ``j`` contributes ``count[j]`` gaps forming an arithmetic progression ``first[j], first[j] + step[j], ...``
    (gap ``k`` is ``first[j] + k * step[j]``), each gap observed by ``weight[j]`` sequences (the decode sequences in
    that run of identical-composition iterations), plus individual gaps (``single_values``, weight 1 each), e.g. the
    first gap of each sequence in a run, which includes any stall. Exact percentiles are computed from this without
    per-token storage (see :mod:`simulator.metrics.quantiles`).

    Contract with the engine: gaps are recorded only for requests that arrived at or after ``RunInfo.warmup_s``, so
    that TBT statistics cover the same requests as the other latency statistics (the gaps carry no request id, so
    the summary cannot filter them afterwards).
    """

    first: np.ndarray
    step: np.ndarray
    count: np.ndarray
    weight: np.ndarray
    single_values: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self) -> None:
        self.first = _as_array(self.first, np.float64, "first")
        self.step = _as_array(self.step, np.float64, "step")
        self.count = _as_array(self.count, np.int64, "count")
        self.weight = _as_array(self.weight, np.int64, "weight")
        self.single_values = _as_array(self.single_values, np.float64, "single_values")
        n = len(self.first)
        if not (len(self.step) == len(self.count) == len(self.weight) == n):
            raise CapsimError(
                "first, step, count and weight must have the same length, got "
                f"{n}, {len(self.step)}, {len(self.count)}, {len(self.weight)}",
                where="TokenGaps",
                fix="append one entry to each array per run",
            )
        if (self.count < 0).any() or (self.weight < 0).any():
            raise CapsimError("count and weight must be non-negative", where="TokenGaps")
        finite = np.isfinite(self.first).all() and np.isfinite(self.step).all()
        if not (finite and np.isfinite(self.single_values).all()):
            raise CapsimError("gaps must be finite numbers", where="TokenGaps", fix="do not record NaN or inf gaps")

    @classmethod
    def from_runs(
        cls,
        first: Sequence[float] | np.ndarray = (),
        step: Sequence[float] | np.ndarray = (),
        count: Sequence[int] | np.ndarray = (),
        weight: Sequence[int] | np.ndarray = (),
        single_values: Sequence[float] | np.ndarray = (),
    ) -> TokenGaps:
        """Build from plain sequences (lists are fine)."""
        return cls(
            first=np.asarray(first, dtype=np.float64),
            step=np.asarray(step, dtype=np.float64),
            count=np.asarray(count, dtype=np.int64),
            weight=np.asarray(weight, dtype=np.int64),
            single_values=np.asarray(single_values, dtype=np.float64),
        )

    @classmethod
    def empty(cls) -> TokenGaps:
        """No gaps at all (every request produced at most one token)."""
        return cls.from_runs()

    @classmethod
    def concat(cls, parts: Iterable[TokenGaps]) -> TokenGaps:
        """Merge the gaps of several replicas into one set (order does not matter for statistics)."""
        parts = list(parts)
        if not parts:
            return cls.empty()
        return cls(
            first=np.concatenate([p.first for p in parts]),
            step=np.concatenate([p.step for p in parts]),
            count=np.concatenate([p.count for p in parts]),
            weight=np.concatenate([p.weight for p in parts]),
            single_values=np.concatenate([p.single_values for p in parts]),
        )

    @property
    def num_runs(self) -> int:
        return int(len(self.first))

    @property
    def num_samples(self) -> int:
        """Number of gaps in the expanded sample: Σ count·weight + number of singles."""
        return int(np.dot(self.count, self.weight)) + int(len(self.single_values))

    def expand(self) -> np.ndarray:
        """Every gap as its own array element (weights repeated). For tests and small runs only: this is the
        per-token storage the compact form exists to avoid."""
        run_of = np.repeat(np.arange(self.num_runs), self.count)
        starts = np.repeat(np.cumsum(self.count) - self.count, self.count)
        k = np.arange(len(run_of)) - starts
        values = self.first[run_of] + k * self.step[run_of]
        expanded = np.repeat(values, self.weight[run_of])
        return np.concatenate([expanded, self.single_values])


class TokenGapsBuilder:
    """Collects gaps one run at a time and produces a :class:`TokenGaps`; convenient for the engine.

    >>> b = TokenGapsBuilder()
    >>> b.add_run(first=0.03, step=0.0, count=10, weight=4)
    >>> b.add_single(0.25)
    >>> b.build().num_samples
    41
    """

    def __init__(self) -> None:
        self._first: list[float] = []
        self._step: list[float] = []
        self._count: list[int] = []
        self._weight: list[int] = []
        self._singles: list[float] = []

    def add_run(self, first: float, step: float, count: int, weight: int) -> None:
        if count > 0 and weight > 0:
            self._first.append(first)
            self._step.append(step)
            self._count.append(count)
            self._weight.append(weight)

    def add_single(self, value: float) -> None:
        self._singles.append(value)

    def add_singles(self, values: Iterable[float]) -> None:
        self._singles.extend(values)

    def build(self) -> TokenGaps:
        return TokenGaps.from_runs(self._first, self._step, self._count, self._weight, self._singles)


@dataclass(frozen=True)
class PoolInfo:
    """One pool of a multi-pool run: its replicas are ``first_replica .. first_replica + num_replicas - 1`` in
    the records; the hardware fields mean what :class:`RunInfo`'s do, for this pool."""

    name: str
    role: str
    device: str
    first_replica: int
    num_replicas: int
    gpus_per_replica: int
    peak_flops_per_gpu: float
    mem_bandwidth_per_gpu: float
    price_usd_per_gpu_hour: float
    tdp_w: float
    idle_w: float
    kv_capacity_tokens_per_replica: int
    weights_bytes_per_gpu: float
    gpu_memory_bytes: float
    extra_usd_per_replica_hour: float = 0.0
    extra_idle_w_per_replica: float = 0.0
    extra_tdp_w_per_replica: float = 0.0
    # The optimal-throughput bound of this pool's phase (simulator/pools/bound.py), output tokens/s; NaN: none.
    bound_output_tps: float = float("nan")
    # Share of its GPUs this pool uses, when pools share GPUs (SM partitioning): its cost, power and peaks are
    # that share of the GPUs'; 1 for a pool with GPUs of its own.
    gpu_share: float = 1.0
    # Power-drawing units beside the GPUs (added devices, memory tiers in use), per replica; purchase price of
    # one GPU for the TCO view (NaN: not given). simulator/metrics/energy.py, simulator/metrics/tco.py.
    units: tuple[PowerUnit, ...] = ()
    capex_usd_per_gpu: float = math.nan

    @property
    def num_gpus(self) -> int:
        return int(self.num_replicas * self.gpus_per_replica)

    @property
    def gpus_used(self) -> float:
        """GPUs this pool accounts for (its share of the GPUs it shares)."""
        return self.num_gpus * self.gpu_share


@dataclass
class RunInfo:
    """Facts about the run that the metrics need (hardware, prices, windows) and that go into summary.json."""

    scenario_name: str
    seed: int
    model: str
    device: str
    num_replicas: int
    gpus_per_replica: int
    peak_flops_per_gpu: float  # FLOP/s for the model's compute dtype
    mem_bandwidth_per_gpu: float  # B/s
    price_usd_per_gpu_hour: float
    tdp_w: float
    idle_w: float
    kv_capacity_tokens_per_replica: int
    kv_block_size: int
    weights_bytes_per_gpu: float
    gpu_memory_bytes: float
    warmup_s: float  # requests arriving before this are excluded from latency stats
    wall_time_s: float
    sim_end_s: float
    # Requests of the workload that had not arrived when simulation.max_time_s stopped the run: left out of the
    # records and of every statistic (they were never part of what was measured), but counted so a cut is visible.
    not_arrived: int = 0
    # Devices a technique adds to each replica (a separate draft device): price and power per replica.
    extra_usd_per_replica_hour: float = 0.0
    extra_idle_w_per_replica: float = 0.0
    extra_tdp_w_per_replica: float = 0.0
    # A multi-pool run (``pools:``): each pool's replicas and hardware. Empty for one pool, whose hardware is
    # in the fields above; with pools, those fields describe the first pool and the totals come from here.
    pools: tuple[PoolInfo, ...] = ()
    # SM re-partitions of GPUs shared by two workers (semi-PD's dynamic split): (time, new prefill share) each.
    resplits: tuple[tuple[float, float], ...] = ()
    # Replicas drained (scale-down, serving.migration.drain): (replica, start, emptied or NaN) each.
    drains: tuple[tuple[int, float, float], ...] = ()
    # Preemption by swap (simulator/schedulers/preemption.py), summed over replicas; zero when it is off.
    swap_outs: int = 0
    swap_ins: int = 0
    swap_bytes: float = 0.0  # both directions, all GPUs
    swap_recompute_fallbacks: int = 0
    swap_transfer_s: float = 0.0
    # The optimal-throughput bound of the workload on this hardware (simulator/throughput_bound.py), output
    # tokens per second per resource; NaN when unknown (records built outside the engine).
    bound_compute_tps: float = float("nan")
    bound_memory_tps: float = float("nan")
    bound_network_tps: float = float("nan")
    # Energy and cost beyond the GPUs (docs/energy-and-cost.md): power-drawing units per replica (added devices,
    # memory tiers in use), one GPU's purchase price, and the scenario's cost settings.
    units: tuple[PowerUnit, ...] = ()
    capex_usd_per_gpu: float = float("nan")
    cost: CostSettings = DEFAULT_COST
    # A multi-pool run: the KV hand-off link's share of that bound (inf: no hand-offs; in bound_network_tps too).
    bound_link_tps: float = float("inf")
    # The device's thermal throttling curve (None: it keeps its peak rates, every GPU): a throttled replica's busy
    # power follows its lowered clocks (simulator/metrics/thermal_power.py).
    thermal: ThermalPower | None = None
    # The serving-engine profile whose terms priced the run (deployment.engine, or the device's or capsim's
    # default when unset; "none": kernels alone) -- shown because it changes every latency.
    engine: str = "none"

    @property
    def num_gpus(self) -> int:
        if self.pools:
            return round(sum(p.gpus_used for p in self.pools))
        return int(self.num_replicas * self.gpus_per_replica)

    def pool_views(self) -> tuple[PoolInfo, ...]:
        """The pools of the run; a single-pool run is one pool built from the scalar fields."""
        if self.pools:
            return self.pools
        return (PoolInfo(
            "default", "colocated", self.device, 0, self.num_replicas, self.gpus_per_replica,
            self.peak_flops_per_gpu, self.mem_bandwidth_per_gpu, self.price_usd_per_gpu_hour, self.tdp_w,
            self.idle_w, self.kv_capacity_tokens_per_replica, self.weights_bytes_per_gpu, self.gpu_memory_bytes,
            self.extra_usd_per_replica_hour, self.extra_idle_w_per_replica, self.extra_tdp_w_per_replica,
            units=self.units, capex_usd_per_gpu=self.capex_usd_per_gpu,
        ),)

    @property
    def price_usd_per_hour(self) -> float:
        """Rental price of everything the run used: GPUs of every pool and devices techniques add."""
        return sum(p.gpus_used * p.price_usd_per_gpu_hour + p.num_replicas * p.extra_usd_per_replica_hour
                   for p in self.pool_views())


def _check_columns(frame: pd.DataFrame, needed: tuple[str, ...], name: str) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise CapsimError(f"{name} must be a pandas DataFrame, got {type(frame).__name__}", where=name)
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise CapsimError(
            f"missing columns {', '.join(missing)}",
            where=name,
            fix=f"provide all of: {', '.join(needed)}",
        )


@dataclass
class SimulationResult:
    """Everything one simulation run produced.

    ``requests``: one row per request (:data:`REQUEST_COLUMNS`; ``finish_s`` is NaN if the request was unfinished
    when the simulation stopped, ``first_token_s``/``schedule_s`` NaN if it never got that far).
    ``iterations``: one row per run of identical-composition iterations of a replica (:data:`ITERATION_COLUMNS`;
    ``flops`` and ``bytes`` are sums over the run for the whole replica, ``kv_blocks_used`` is taken at run start).
    """

    requests: pd.DataFrame
    iterations: pd.DataFrame
    token_gaps: TokenGaps
    info: RunInfo

    def __post_init__(self) -> None:
        _check_columns(self.requests, REQUEST_COLUMNS, "SimulationResult.requests")
        _check_columns(self.iterations, ITERATION_COLUMNS, "SimulationResult.iterations")


def empty_requests_frame() -> pd.DataFrame:
    """A zero-row requests frame with the right columns (a run in which no request arrived)."""
    return pd.DataFrame({c: pd.Series(dtype="float64") for c in REQUEST_COLUMNS})


def empty_iterations_frame() -> pd.DataFrame:
    """A zero-row iterations frame with the right columns (a run in which no replica did any work)."""
    return pd.DataFrame({c: pd.Series(dtype="float64") for c in ITERATION_COLUMNS})


def request_latencies(requests: pd.DataFrame) -> pd.DataFrame:
    """Per-request latencies derived from the timestamps, NaN where a request did not get that far.

    Columns: ``ttft_s`` = first_token − arrival; ``e2e_s`` = finish − arrival; ``queue_s`` = schedule − arrival;
    ``tpot_s`` = (e2e − ttft) / (output_tokens − 1), defined only for finished requests with more than one output
    token (a one-token request has no decode phase).
    """
    arrival = requests["arrival_s"].to_numpy(dtype=np.float64)
    ttft = requests["first_token_s"].to_numpy(dtype=np.float64) - arrival
    e2e = requests["finish_s"].to_numpy(dtype=np.float64) - arrival
    queue = requests["schedule_s"].to_numpy(dtype=np.float64) - arrival
    out = requests["output_tokens"].to_numpy(dtype=np.float64)
    decode_steps = out - 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        tpot = np.where(decode_steps > 0, (e2e - ttft) / decode_steps, np.nan)
    return pd.DataFrame({"ttft_s": ttft, "tpot_s": tpot, "e2e_s": e2e, "queue_s": queue}, index=requests.index)
