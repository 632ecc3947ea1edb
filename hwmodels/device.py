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
from typing import Any

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
from capsim.types import OptionalCount

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
    tdp_w: float = Field(gt=0, description="Board power limit (TDP/TBP), W.")
    idle_w: float = Field(ge=0, description="Power when powered on but idle, W.")
    price_usd_per_hour: float = Field(ge=0, description="Rental price of one device, USD/h.")
    price_source: str = Field(default="", description="Where the price comes from, with a date.")
    efficiency: Efficiency = Field(default_factory=Efficiency)
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
