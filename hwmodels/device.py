"""Accelerator specifications and the shipped device catalog (``devices.yaml``).

Why: roofline pricing needs, per device, the peak arithmetic rate for each numeric
format, the memory capacity and bandwidth, the links to other devices, power and
price. These are datasheet facts (each catalog entry cites its source) plus a
few *uncalibrated* efficiency constants that calibration replaces. A new device
is one YAML entry; a device that is not in the catalog can be given inline in a
scenario with the same fields (:func:`device_from_dict`).

>>> h100 = get_device("h100")
>>> h100.name, round(h100.ridge_point("bf16"))
('h100-sxm', 295)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from capsim.catalog import load_catalog, read_catalog_yaml, registry_of, spec_validation_error
from capsim.errors import CapsimError
from capsim.registry import Registry, normalise_name
from capsim.types import Count, OptionalCount
from hwmodels.links import Link

DTYPES: tuple[str, ...] = ("fp32", "tf32", "bf16", "fp16", "fp8", "int8", "int4")
"""Numeric formats a device may list a peak for (dense tensor-core rates, except fp32)."""

_DTYPE_SYNONYMS: Mapping[str, str] = {
    "float32": "fp32",
    "float": "fp32",
    "bfloat16": "bf16",
    "float16": "fp16",
    "half": "fp16",
    "float8": "fp8",
    "fp8-e4m3": "fp8",
    "fp8-e5m2": "fp8",
}

CATALOG_FILE = "devices.yaml"
_CATALOG_WHERE = f"hwmodels/{CATALOG_FILE}"


def canonical_dtype(dtype: str) -> str:
    """``'bfloat16'`` -> ``'bf16'`` etc.; unknown names are returned normalised, unchanged."""
    key = normalise_name(dtype)
    return _DTYPE_SYNONYMS.get(key, key)


class Interconnect(BaseModel):
    """Links of one device: scale-up fabric, host PCIe, and the per-message latency.

    Bandwidths are per device and per direction (the datasheets' "900 GB/s NVLink"
    is both directions added: 450 GB/s each way).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    nvlink_gbs: float = Field(
        ge=0,
        description="Scale-up GPU-to-GPU bandwidth per direction, GB/s (NVLink via NVSwitch, "
        "or AMD Infinity Fabric); 0 when devices only talk over PCIe.",
    )
    pcie_gbs: float = Field(gt=0, description="Host link bandwidth per direction, GB/s.")
    link_latency_us: float = Field(ge=0, description="Fixed cost of one message between devices, microseconds.")
    nvlink_domain: OptionalCount = Field(
        default=None,
        gt=0,
        description="GPUs one scale-up fabric joins (72 for a GB200 NVL72 rack). capsim prices every link of a "
        "replica with nvlink_gbs, so a replica of more GPUs (tp x pp) than this is refused; unset: not checked.",
    )


TIER_KINDS: tuple[str, ...] = ("sram", "hbm", "gddr", "lpddr", "ddr", "host", "nvme", "flash")
"""Kinds of memory a tier may be: on-chip SRAM, device DRAM (HBM, GDDR, LPDDR, DDR), host DRAM, an NVMe
drive, flash behind a computational-storage controller."""

LINK_KINDS: tuple[str, ...] = ("pcie", "nvlink", "c2c", "cxl", "p2p", "tsv", "network", "ufs")
"""Kinds of link between tiers: PCIe, NVLink, a chip-to-chip link (NVLink-C2C), CXL, a peer-to-peer path
(GPU to SSD), through-silicon vias (a logic die under DRAM), a network, a phone's UFS storage interface. A transfer row placed on a link is
priced by the ``transfer`` pricer registered for its kind."""

TierKind = Literal["sram", "hbm", "gddr", "lpddr", "ddr", "host", "nvme", "flash"]
LinkKind = Literal["pcie", "nvlink", "c2c", "cxl", "p2p", "tsv", "network", "ufs"]


class MemoryTier(BaseModel):
    """One level of a device's memory hierarchy: where weights or KV may be placed.

    Why named tiers: a model that does not fit the fast tier can stream weights or keep KV in a slower
    one (host DRAM, NVMe, flash), and an operator can run where its data lives (PIM, a CSD). The tier's
    own bandwidth is what an operator placed *in* it reads at; moving data to another tier is priced on
    the :class:`TierLink` between them.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Tier id, unique on the device, e.g. 'host', 'nvme'; placements name it.")
    kind: TierKind = Field(description=f"What memory it is: {', '.join(TIER_KINDS)}.")
    capacity_gib: float | None = Field(
        default=None, gt=0, description="Capacity per device, GiB (2^30 B); None: not bounded by capsim (e.g. "
        "the host DRAM of an unspecified server)."
    )
    bandwidth_gbs: float | None = Field(
        default=None, gt=0, description="The tier's own peak bandwidth as the rest of the system sees it, GB/s "
        "(a tier that computes reads itself at internal_bandwidth_gbs); None where no source gives it."
    )
    latency_us: float = Field(default=0.0, ge=0, description="Access latency, microseconds.")
    compute_tflops: float | None = Field(
        default=None, gt=0, description="Peak throughput of the compute units inside the tier, TFLOP/s (HBM-PIM "
        "banks, a CSD's in-storage accelerator); None: the tier stores data but computes nothing."
    )
    internal_bandwidth_gbs: float | None = Field(
        default=None, gt=0, description="Bandwidth the tier's own compute units read it at, GB/s (a multiple of the "
        "external bandwidth: HBM-PIM reads its banks in parallel, a CSD its flash channels); needs compute_tflops."
    )
    active_w: float | None = Field(
        default=None, ge=0, description="Power while in use, W, per device; counted while its replica runs iterations "
        "when a technique uses the tier (docs/energy-and-cost.md). None: not given (the energy is reported unknown)."
    )
    idle_w: float | None = Field(default=None, ge=0, description="Power while idle, W (None: not given).")
    source: str = Field(default="", description="Where each figure comes from.")

    @model_validator(mode="after")
    def _check_compute(self) -> MemoryTier:
        if (self.compute_tflops is None) != (self.internal_bandwidth_gbs is None):
            raise ValueError(f"tier {self.name!r}: a tier that computes gives both compute_tflops and "
                             "internal_bandwidth_gbs (or neither)")
        return self

    @property
    def computes(self) -> bool:
        """True when operators may be placed in the tier (it declares compute units)."""
        return self.compute_tflops is not None


class TierLink(BaseModel):
    """A link between two tiers (of this device, or the host's): bandwidth per direction and latency."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Link id, unique on the device, e.g. 'pcie', 'c2c'; transfer rows are placed on it.")
    kind: LinkKind = Field(description=f"What link it is: {', '.join(LINK_KINDS)}.")
    between: tuple[str, str] = Field(description="The two tiers it joins, by name.")
    bandwidth_gbs: float = Field(gt=0, description="Bandwidth per direction, GB/s.")
    latency_us: float = Field(default=0.0, ge=0, description="Fixed cost of one transfer, microseconds.")
    generation: str = Field(default="", description="E.g. 'PCIe Gen5 x16', 'NVLink-C2C'.")
    source: str = Field(default="", description="Where the figures come from.")


class StaticShapes(BaseModel):
    """The fixed graph shapes an NPU's matrix engine runs (mllm-NPU, Xu et al., ASPLOS 2025, arXiv 2407.05858).

    Why: an NPU runs graphs compiled ahead of time for fixed tensor shapes (Qualcomm QNN builds one graph per
    shape; rebuilding one for a new prompt length took seconds in mllm-NPU's measurements), so a runtime pads
    work up to the shapes it compiled. A prefill runs in chunks of ``prefill_chunk`` tokens, the last one padded;
    a decode batch runs at the smallest compiled batch that holds it. The padded rows cost what real rows cost
    (:mod:`simulator.costmodel.static_shapes`), so a prompt of ``prefill_chunk + 1`` tokens costs two chunks.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    prefill_chunk: Count = Field(
        gt=0, description="Tokens per compiled prefill graph: an iteration's prefill tokens are padded up to a "
        "multiple of it (mllm-NPU uses 256)."
    )
    decode_batches: tuple[Count, ...] = Field(
        default=(1,), min_length=1, description="Batch sizes with a compiled decode graph, ascending. A decode "
        "batch runs at the smallest that holds it; above the largest, as several graphs of the largest "
        "(padded to a multiple of it)."
    )
    source: str = Field(default="", description="Where the shapes come from (the runtime, a paper).")

    @field_validator("decode_batches")
    @classmethod
    def _check_batches(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(b <= 0 for b in value):
            raise ValueError(f"decode batch sizes must be positive, got {list(value)}")
        if list(value) != sorted(set(value)):
            raise ValueError(f"decode_batches must be strictly ascending, got {list(value)}")
        return value

    def padded_prefill(self, tokens: int) -> int:
        """Prefill tokens the NPU computes for ``tokens`` real ones: whole chunks."""
        c = self.prefill_chunk
        return -(-tokens // c) * c

    def padded_decode(self, batch: int) -> int:
        """Decode rows the NPU computes for a batch of ``batch`` sequences."""
        if batch <= 0:
            return batch
        for b in self.decode_batches:
            if b >= batch:
                return b
        top = self.decode_batches[-1]
        return -(-batch // top) * top


class Thermal(BaseModel):
    """A first-order (RC) thermal model: sustained work heats the device and lowers its clocks.

    Why: a phone or a fanless module cannot dissipate its peak power for long. MELT (Laskaridis et al.,
    MobiCom 2024, arXiv 2403.12844) reports that continuous LLM execution on phones is limited by thermals. A
    heat level ``h`` in [0, 1] follows ``dh/dt = (busy - h) / time_constant_s`` (1 while the device computes,
    0 while idle) and the device runs at ``speed = 1 - (1 - sustained_fraction) * h`` of its peak compute and
    memory rates; from cold, continuous work slows as ``1 - (1 - f)(1 - exp(-t / tau))``, monotone towards
    ``sustained_fraction``. A throttled device also draws less: its busy power above idle is scaled by
    ``speed ** power_exponent`` (:mod:`simulator.metrics.thermal_power`). See :mod:`simulator.costmodel.thermal`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    sustained_fraction: float = Field(
        gt=0, le=1, description="Speed (of the compute and memory clocks, as a fraction of peak) the device "
        "settles at after running long enough to reach thermal equilibrium; 1: never throttles."
    )
    time_constant_s: float = Field(
        gt=0, description="RC time constant of heating and cooling, seconds: after this long busy from cold "
        "63 % of the way to the sustained speed."
    )
    power_exponent: Count = Field(
        default=1, ge=1, le=3, description="How the busy power above idle follows the throttled speed s: it is "
        "(tdp_w - idle_w) x s**power_exponent. 1: the clock alone (dynamic power C V^2 f at a fixed voltage; the "
        "largest power a throttled device can draw, so energy stays an upper bound); 3: the voltage tracks the "
        "clock (V proportional to f, the dynamic-power relation under DVFS)."
    )
    source: str = Field(default="", description="The measurement the figures come from.")


class Efficiency(BaseModel):
    """Fractions of peak a real kernel reaches, and the fixed cost of launching one.

    These are UNCALIBRATED defaults, to be replaced by values fitted to measured
    kernels. compute 0.7: large bf16 GEMMs reach ~0.96 of peak (aiconfigurator's
    A100/H100 tables: 299/312 and 956/989 TFLOP/s) but transformer-shaped GEMMs
    measured by vidur reach ~0.75 (H100, Llama-2-7B MLP up-projection at 4096
    tokens), and small ones much less. memory 0.8 and 3 us: NVIDIA aiconfigurator's
    ``mem_bw_empirical_scaling_factor`` and ``mem_empirical_constant_latency``
    (ai-dynamo/aiconfigurator systems/*.yaml).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    compute: float = Field(default=0.7, gt=0, le=1, description="Achieved / peak FLOP/s.")
    memory: float = Field(default=0.8, gt=0, le=1, description="Achieved / peak bandwidth.")
    launch_overhead_us: float = Field(default=3.0, ge=0, description="Fixed time added to every kernel, microseconds.")


class DeviceSpec(BaseModel):
    """One accelerator: datasheet peaks, memory, links, power, price and efficiencies.

    Units are the datasheets': TFLOP/s (10^12), GB/s (10^9 B/s), W, USD. Memory
    capacity is in GiB (2^30 B): GPU memory is built from binary-sized DRAM dies,
    so the marketed "80 GB" of an H100 is 80 GiB = 85,899,345,920 B, as NVIDIA's
    aiconfigurator records it; where aiconfigurator gives the capacity the driver
    reports (H200 141 GiB, L40S 46,068 MiB with ECC) we use that. The runtime's
    own reservation (CUDA context, allocator slack) is the memory planner's job.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Catalog id, lower-case and hyphenated, e.g. 'h100-sxm'.")
    aliases: tuple[str, ...] = Field(default=(), description="Other names for this device.")
    vendor: str = Field(description="Maker, e.g. 'nvidia', 'amd'.")
    source: str = Field(default="", description="Datasheet or document the numbers come from.")
    peak_tflops: dict[str, float] = Field(
        description="DENSE peak (no 2:4 sparsity) per numeric format, TFLOP/s (TOP/s for "
        f"integers); keys from {', '.join(DTYPES)}, only formats the hardware runs natively."
    )
    memory_gib: float = Field(gt=0, description="Device memory capacity, GiB (2^30 bytes).")
    memory_bandwidth_gbs: float = Field(gt=0, description="Peak memory bandwidth, GB/s.")
    sram_mib: float | None = Field(
        default=None,
        ge=0,
        description="Last-level on-chip cache (L2, or AMD Infinity Cache), MiB; None where no source gives it "
        "(calibration fitting then treats the L2 as 0).",
    )
    num_sms: OptionalCount = Field(
        default=None,
        gt=0,
        description="Streaming multiprocessors (NVIDIA) or compute units (AMD).",
    )
    interconnect: Interconnect
    memory_kind: Literal["hbm", "gddr", "lpddr", "ddr"] = Field(
        default="hbm", description="What the device memory (memory_gib at memory_bandwidth_gbs) is; its tier "
        "is named after it."
    )
    memory_tiers: tuple[MemoryTier, ...] = Field(
        default=(), description="Memory tiers beyond the device memory and the on-chip SRAM (host DRAM, NVMe, "
        "flash, DDR), each with capacity, bandwidth, latency and source. A 'host' tier over PCIe is implied "
        "when none is given (see DeviceSpec.tiers)."
    )
    tier_links: tuple[TierLink, ...] = Field(
        default=(), description="Links between tiers (PCIe, NVLink-C2C, CXL, P2P, TSV). The device memory's "
        "link to 'host' defaults to the interconnect's PCIe rate and latency."
    )
    tdp_w: float = Field(gt=0, description="Board power limit (TDP/TBP), W.")
    idle_w: float = Field(ge=0, description="Power when powered on but idle, W.")
    price_usd_per_hour: float = Field(ge=0, description="Rental price of one device, USD/h.")
    price_source: str = Field(default="", description="Where the price comes from, with a date.")
    capex_usd: float | None = Field(
        default=None, ge=0, description="Purchase price of one device, USD, for the TCO view (docs/energy-and-cost.md); "
        "None where no source gives one (a scenario's cost.capex_usd supplies it)."
    )
    capex_source: str = Field(default="", description="Where capex_usd comes from, with a date.")
    efficiency: Efficiency = Field(default_factory=Efficiency)
    static_shapes: StaticShapes | None = Field(
        default=None, description="Fixed graph shapes of an NPU (prefill chunk, decode batches): work is padded "
        "up to them. None (GPUs): any shape runs as it is."
    )
    thermal: Thermal | None = Field(
        default=None, description="Thermal throttling (sustained_fraction, time_constant_s): sustained work "
        "lowers the clocks. None: the device keeps its peak rates however long it runs (every GPU entry)."
    )
    serving_engine: str | None = Field(
        default=None,
        description="Serving-engine profile (`deployment.engine`) a deployment on this device gets when it names "
        "none. None: the project default, `vllm` (a current vLLM with CUDA graphs, the engine most GPU "
        "deployments run). Devices no profile describes (phone and laptop NPUs, CPUs, the SN40L, whose serving "
        "stacks are not vLLM) set 'none': kernels alone, plus nothing an unmeasured engine would add.",
    )
    calibration_profile: str | None = Field(
        default=None,
        description="Calibrated profile that prices this device's kernels (a shipped profile's device id, or "
        "the path of a YAML written by `capsim calibrate fit`). None: the shipped profile named like this "
        "device, if there is one (a100-80gb-sxm, h100-sxm, h200), else the efficiency constants.",
    )

    @field_validator("name")
    @classmethod
    def _normalise_name(cls, value: str) -> str:
        return normalise_name(value)

    @field_validator("peak_tflops")
    @classmethod
    def _check_peaks(cls, value: dict[str, float]) -> dict[str, float]:
        peaks: dict[str, float] = {}
        for dtype, tflops in value.items():
            key = canonical_dtype(dtype)
            if key not in DTYPES:
                raise ValueError(f"unknown numeric format {dtype!r}; use one of {', '.join(DTYPES)}")
            if not tflops > 0:
                raise ValueError(f"peak for {dtype!r} must be positive, got {tflops}")
            peaks[key] = float(tflops)
        if not peaks:
            raise ValueError("give at least one peak, e.g. {bf16: 312}")
        return peaks

    @model_validator(mode="after")
    def _check_power(self) -> DeviceSpec:
        if self.idle_w > self.tdp_w:
            raise ValueError(f"idle_w ({self.idle_w}) cannot exceed tdp_w ({self.tdp_w})")
        return self

    @model_validator(mode="after")
    def _check_tiers(self) -> DeviceSpec:
        names = [t.name for t in self.tiers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"memory tier names must be unique; repeated: {', '.join(dupes)} (the device memory "
                             f"is tier {self.memory_kind!r}, sram_mib is tier 'sram')")
        links = [ln.name for ln in self.tier_links]
        dupes = sorted({n for n in links if links.count(n) > 1})
        if dupes:
            raise ValueError(f"tier link names must be unique; repeated: {', '.join(dupes)}")
        for ln in self.tier_links:
            unknown = [t for t in ln.between if t not in names]
            if unknown:
                raise ValueError(f"tier link {ln.name!r} joins unknown tier(s) {', '.join(unknown)} "
                                 f"(tiers: {', '.join(names)})")
        return self

    def __hash__(self) -> int:
        # The peak table is a dict; hash a frozen view so specs can key memo caches.
        return hash(
            (
                self.name,
                frozenset(self.peak_tflops.items()),
                self.memory_gib,
                self.memory_bandwidth_gbs,
                self.interconnect,
                self.efficiency,
                self.price_usd_per_hour,
                self.tdp_w,
                self.idle_w,
                self.static_shapes,
                self.thermal,
            )
        )

    # -- derived ------------------------------------------------------------------------

    @property
    def dtypes(self) -> tuple[str, ...]:
        """Numeric formats this device lists a peak for, in :data:`DTYPES` order."""
        return tuple(d for d in DTYPES if d in self.peak_tflops)

    def peak_flops(self, dtype: str) -> float:
        """Dense peak in FLOP/s (OP/s for integer formats) for ``dtype``.

        Raises :class:`~capsim.errors.CapsimError` naming the device and its formats
        when the device has no native peak for ``dtype``.
        """
        key = canonical_dtype(dtype)
        if key not in self.peak_tflops:
            raise CapsimError(
                f"device {self.name!r} has no {dtype} peak (it lists {', '.join(self.dtypes)})",
                where=f"device {self.name}",
                fix=f"use one of {', '.join(self.dtypes)}, or add peak_tflops.{key} to the "
                "device's entry if the hardware supports it",
            )
        return self.peak_tflops[key] * 1e12

    @property
    def memory_bytes(self) -> int:
        """Memory capacity in bytes (``memory_gib * 2**30``)."""
        return round(self.memory_gib * 2**30)

    @property
    def memory_bandwidth(self) -> float:
        """Peak memory bandwidth in bytes/s."""
        return self.memory_bandwidth_gbs * 1e9

    @property
    def nvlink_bandwidth(self) -> float:
        """Scale-up bandwidth per direction in bytes/s (0 without NVLink/Infinity Fabric)."""
        return self.interconnect.nvlink_gbs * 1e9

    @property
    def pcie_bandwidth(self) -> float:
        """Host PCIe bandwidth per direction in bytes/s."""
        return self.interconnect.pcie_gbs * 1e9

    # -- memory hierarchy ---------------------------------------------------------------------

    @property
    def main_tier(self) -> str:
        """Name of the device-memory tier (weights and KV live there unless placed elsewhere)."""
        return self.memory_kind

    @property
    def tiers(self) -> tuple[MemoryTier, ...]:
        """The device's memory hierarchy, fastest first.

        Derived, so every existing entry is the one-tier special case without edits: the on-chip SRAM
        (``sram_mib``, when given), the device memory (``memory_gib`` at ``memory_bandwidth_gbs``, named
        after ``memory_kind``), the entry's ``memory_tiers``, and -- unless the entry gives one -- a
        ``host`` tier of unbounded capacity reached over the PCIe link of ``interconnect``.
        """
        out: list[MemoryTier] = []
        if self.sram_mib:
            out.append(MemoryTier(name="sram", kind="sram", capacity_gib=self.sram_mib / 1024, source="sram_mib"))
        out.append(MemoryTier(
            name=self.memory_kind, kind=self.memory_kind, capacity_gib=self.memory_gib,
            bandwidth_gbs=self.memory_bandwidth_gbs, source="memory_gib, memory_bandwidth_gbs"))
        out.extend(self.memory_tiers)
        if not any(t.name == "host" for t in self.memory_tiers):
            out.append(MemoryTier(name="host", kind="host", source="implied: host DRAM, capacity not modelled"))
        return tuple(out)

    @property
    def links(self) -> tuple[TierLink, ...]:
        """Links between tiers: the entry's ``tier_links``, plus the device memory's PCIe link to ``host``
        (``interconnect.pcie_gbs``, ``link_latency_us``) when the entry gives none between them."""
        pair = {self.main_tier, "host"}
        if any(set(ln.between) == pair for ln in self.tier_links):
            return self.tier_links
        return (*self.tier_links, TierLink(
            name="pcie", kind="pcie", between=(self.main_tier, "host"), bandwidth_gbs=self.interconnect.pcie_gbs,
            latency_us=self.interconnect.link_latency_us, source="interconnect.pcie_gbs"))

    def tier(self, name: str, *, where: str = "placement.tier") -> MemoryTier:
        """The tier called ``name``; a :class:`CapsimError` listing the device's tiers otherwise."""
        for t in self.tiers:
            if t.name == name:
                return t
        raise CapsimError(
            f"device {self.name!r} has no memory tier {name!r} (tiers: {', '.join(t.name for t in self.tiers)})",
            where=where, fix="name one of its tiers, or add the tier to the device's memory_tiers",
        )

    def computing_tier(self, name: str, *, where: str, runs: str) -> MemoryTier:
        """The tier called ``name``, which must compute (PIM, a computational drive); ``runs`` says what the
        caller would run in it, for the message when it does not."""
        tier = self.tier(name, where=where)
        if not tier.computes:
            raise CapsimError(
                f"tier {tier.name!r} of device {self.name!r} declares no compute, so {runs} cannot run in it",
                where=where,
                fix="name a tier with compute_tflops and internal_bandwidth_gbs, or add them to the tier",
            )
        return tier

    def link_between(self, a: str, b: str, *, where: str = "placement.tier") -> TierLink:
        """The link joining tiers ``a`` and ``b``; an error naming the device's links otherwise."""
        self.tier(a, where=where)
        self.tier(b, where=where)
        for ln in self.links:
            if set(ln.between) == {a, b}:
                return ln
        raise CapsimError(
            f"device {self.name!r} has no link between tiers {a!r} and {b!r} "
            f"(links: {', '.join(f'{ln.name} {ln.between[0]}-{ln.between[1]}' for ln in self.links)})",
            where=where, fix="add a tier_links entry joining them to the device",
        )

    def transfer_link(self, a: str, b: str, *, where: str = "placement.tier") -> Link:
        """The link between tiers ``a`` and ``b`` as the cost model's :class:`~hwmodels.links.Link` (B/s, s)."""
        ln = self.link_between(a, b, where=where)
        return Link(ln.name, ln.bandwidth_gbs * 1e9, ln.latency_us * 1e-6, ln.kind)

    def ridge_point(self, dtype: str) -> float:
        """Arithmetic intensity (FLOP/byte) where peak compute meets peak bandwidth."""
        return self.peak_flops(dtype) / self.memory_bandwidth


# -- loading ----------------------------------------------------------------------------


def device_from_dict(data: Mapping[str, Any], *, where: str = "hardware.device") -> DeviceSpec:
    """Build a :class:`DeviceSpec` from a mapping (an inline device in a scenario).

    Same schema as a catalog entry, or ``base: <catalog id>`` plus the fields to override
    (:func:`_fields_on_base`: the base's calibrated profile is kept unless the peaks or
    bandwidth change). Unknown keys and bad values raise
    :class:`~capsim.errors.CapsimError` whose ``where`` starts with ``where``.
    """
    if not isinstance(data, Mapping):
        raise CapsimError(
            f"an inline device must be a mapping of fields, got {type(data).__name__}",
            where=where,
            fix="give either a catalog name (a string) or a mapping of DeviceSpec fields",
        )
    fields = dict(data)
    if "base" in fields:
        fields = _fields_on_base(fields, where=where)
    try:
        return DeviceSpec.model_validate(fields)
    except ValidationError as err:
        raise spec_validation_error(err, DeviceSpec, where=where, what="device", doc="hwmodels/device.py") from None


_PRICING_FIELDS = ("peak_tflops", "memory_bandwidth_gbs")
"""Fields a calibrated profile's curves depend on: its curves were fitted against the base's values."""


def _fields_on_base(fields: dict[str, Any], *, where: str) -> dict[str, Any]:
    """``{base: <catalog id>, ...overrides}`` -> the base entry's fields with the overrides applied.

    The result keeps the base's calibrated profile (``calibration_profile`` is set to it
    explicitly, so a renamed device still finds it) unless the overrides change the peaks
    or the memory bandwidth: a profile's curves are fitted against the peaks it records,
    so it would silently price the base's hardware. Then the device falls back to the
    datasheet constants and a :class:`UserWarning` says so; give ``calibration_profile``
    explicitly to keep a profile anyway. A mapping override (``peak_tflops``,
    ``interconnect``, ``efficiency``) replaces only the keys it gives. The name defaults to
    ``<base>-custom``; aliases are not inherited.
    """
    from capsim.errors import UnknownNameError

    base_name = fields.pop("base")
    if not isinstance(base_name, str):
        raise CapsimError(
            f"base must be a catalog device name, got {type(base_name).__name__}",
            where=f"{where}.base",
            fix="name a catalog device, e.g. base: h100-sxm (run `capsim list devices`)",
        )
    try:
        base = DEVICES.get(base_name)
    except UnknownNameError as exc:
        raise UnknownNameError(exc.problem, where=f"{where}.base", fix=exc.fix) from None
    merged = base.model_dump(exclude={"aliases", "calibration_profile"})
    merged["name"] = f"{base.name}-custom"
    for key, value in fields.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = {**merged[key], **value}  # one peak, link or efficiency; the others stay
        else:
            merged[key] = value
    if "calibration_profile" in fields:
        return merged
    profile = base.calibration_profile or (base.name if calibrated_profile(base) is not None else None)
    if profile is None:
        return merged
    changed = [key for key in _PRICING_FIELDS if key in fields and _differs(merged[key], getattr(base, key))]
    if changed:
        import warnings

        warnings.warn(
            f"{where}: {', '.join(changed)} differ from base {base.name!r}, whose calibrated profile was fitted "
            "on the base's peaks; this device is priced with the datasheet constants instead "
            f"(set calibration_profile: {profile} to keep the profile anyway)",
            UserWarning,
            stacklevel=3,
        )
        return merged
    merged["calibration_profile"] = profile
    return merged


def _differs(given: Any, base_value: Any) -> bool:
    """Whether an override changes a base value (peak tables compared after canonicalising format names)."""
    if isinstance(given, Mapping) and isinstance(base_value, Mapping):
        try:
            return {canonical_dtype(k): float(v) for k, v in given.items()} != dict(base_value)
        except (TypeError, ValueError):
            return True
    return given != base_value


def load_device_catalog() -> dict[str, DeviceSpec]:
    """Read and validate every entry of the shipped catalog, keyed by canonical id."""
    entries = read_catalog_yaml(__package__, CATALOG_FILE, "devices", what="device")
    return load_catalog(entries, where=_CATALOG_WHERE, build=lambda fields, where: device_from_dict(fields, where=where))


DEVICES: Registry[DeviceSpec] = registry_of("device", load_device_catalog(), where=_CATALOG_WHERE)
"""Every catalog device by id and alias (filled at import from ``devices.yaml``)."""


def calibrated_profile(spec: DeviceSpec):
    """The calibrated profile that prices ``spec``'s kernels, or None (datasheet constants only).

    ``spec.calibration_profile`` when set, else the shipped profile of the device
    id (``hwmodels/calibration/profiles/<id>.yaml``) when there is one. Returns a
    :class:`hwmodels.calibration.profile.DeviceProfile`.
    """
    from hwmodels.calibration.profile import resolve_profile, shipped_profile

    if spec.calibration_profile:
        return resolve_profile(spec.calibration_profile)
    return shipped_profile(spec.name)


def get_device(name: str) -> DeviceSpec:
    """The catalog device called ``name`` (an id or alias, any case, '_' or '-').

    Raises :class:`~capsim.errors.UnknownNameError` with the closest names otherwise.
    """
    return DEVICES.get(name)
