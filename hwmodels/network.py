"""Links between replicas: the catalog in ``network.yaml`` and the time a transfer takes.

Why a catalog of its own: the links inside a replica (NVLink for tensor parallelism) belong to the device, but
the link that carries a KV cache from a prefill replica to a decode replica is a property of the cluster --
the same H100s may sit in one NVSwitch domain, behind InfiniBand or behind a 25 GbE NIC. A transfer is priced
with the alpha-beta model of :mod:`hwmodels.links` (latency plus bytes over bandwidth); lanes add up when each
GPU of the replica has its own NIC.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from capsim.catalog import load_catalog, read_catalog_yaml, registry_of
from capsim.errors import CapsimError, UnknownNameError
from capsim.registry import Registry
from hwmodels.device import DeviceSpec

_WHERE = "hwmodels/network.yaml"


class LinkSpec(BaseModel):
    """One catalog link kind."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    aliases: tuple[str, ...] = ()
    from_device: Literal["nvlink", "pcie"] | None = Field(
        None, description="Take bandwidth and latency from the device's interconnect entry."
    )
    bandwidth_gbps: float | None = Field(None, gt=0, description="Per-direction line rate of one lane, Gb/s.")
    latency_us: float | None = Field(None, ge=0, description="Fixed cost of one transfer, microseconds.")
    per: Literal["gpu", "replica"] = Field("gpu", description="A lane per GPU, or one lane per replica.")
    source: str = ""


class LinkConfig(BaseModel):
    """The link a scenario names for hand-offs, with optional overrides of the catalog figures."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(
        "nvlink",
        description="Catalog link (hwmodels/network.yaml): nvlink, pcie, infiniband-ndr, "
        "infiniband-hdr, roce-400g, ethernet-100g, ethernet-25g.",
    )
    bandwidth_gbps: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="Override: per-direction rate of one lane, Gb/s."
    )
    latency_us: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="Override: fixed cost of one transfer, microseconds."
    )
    per: Literal["gpu", "replica"] | None = Field(None, description="Override: a lane per GPU or per replica.")


@dataclass(frozen=True)
class ReplicaLink:
    """A resolved link between one sending and one receiving replica type: lanes x lane bandwidth."""

    name: str
    bandwidth: float  # B/s, all lanes together
    latency_s: float
    lanes: int

    def transfer_s(self, nbytes: float) -> float:
        return self.latency_s + nbytes / self.bandwidth


def _load() -> Registry[LinkSpec]:
    entries = read_catalog_yaml(__package__, "network.yaml", "links", what="network link")

    def build(fields: dict[str, Any], where: str) -> LinkSpec:
        try:
            spec = LinkSpec.model_validate(fields)
        except ValidationError as exc:
            raise CapsimError(f"invalid link entry: {exc.errors()[0]['msg']}", where=where) from None
        if spec.from_device is None and (spec.bandwidth_gbps is None or spec.latency_us is None):
            raise CapsimError("a link needs bandwidth_gbps and latency_us, or from_device", where=where)
        return spec

    return registry_of("network link", load_catalog(entries, where=_WHERE, build=build), where=_WHERE)


LINKS: Registry[LinkSpec] = _load()


def resolve_link(
    cfg: LinkConfig, src: DeviceSpec, dst: DeviceSpec, src_gpus: int, dst_gpus: int, *, where: str
) -> ReplicaLink:
    """The link between a replica of ``src_gpus`` ``src`` devices and one of ``dst_gpus`` ``dst`` devices.

    A per-GPU link has ``min(src_gpus, dst_gpus)`` lanes working at once (each GPU sends its own shard of the
    KV to its counterpart); a device-defined link (NVLink, PCIe) runs at the slower end's rate.
    """
    try:
        spec = LINKS.get(cfg.kind)
    except UnknownNameError as exc:
        raise UnknownNameError(exc.problem, where=f"{where}.kind", fix=exc.fix) from None
    if spec.from_device == "nvlink":
        if (src.nvlink_bandwidth <= 0 or dst.nvlink_bandwidth <= 0) and cfg.bandwidth_gbps is None:
            raise CapsimError(
                f"{src.name if src.nvlink_bandwidth <= 0 else dst.name} has no NVLink",
                where=f"{where}.kind",
                fix="use pcie, infiniband-ndr or an ethernet link",
            )
        lane = min(src.nvlink_bandwidth, dst.nvlink_bandwidth)
        latency = max(src.interconnect.link_latency_us, dst.interconnect.link_latency_us) * 1e-6
    elif spec.from_device == "pcie":
        lane = min(src.pcie_bandwidth, dst.pcie_bandwidth)
        latency = max(src.interconnect.link_latency_us, dst.interconnect.link_latency_us) * 1e-6
    else:
        lane = spec.bandwidth_gbps * 1e9 / 8
        latency = spec.latency_us * 1e-6
    if cfg.bandwidth_gbps is not None:
        lane = cfg.bandwidth_gbps * 1e9 / 8
    if cfg.latency_us is not None:
        latency = cfg.latency_us * 1e-6
    per = cfg.per or spec.per
    lanes = min(src_gpus, dst_gpus) if per == "gpu" else 1
    return ReplicaLink(spec.name, lane * lanes, latency, lanes)
