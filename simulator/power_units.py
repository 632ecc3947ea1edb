"""What a built system draws power from and what its hardware cost to buy, for the run's energy and TCO figures.

Why here and not in the metrics: the metrics layer reads plain numbers (:class:`simulator.metrics.energy.PowerUnit`,
:class:`simulator.metrics.tco.CostSettings`); turning a system's techniques, device tiers and the scenario's
``cost:`` section into them needs the system, which the metrics never import. Both engines (one pool, pools)
call these when they fill the run's :class:`~simulator.metrics.result.RunInfo`.
"""

from __future__ import annotations

import math

from capsim.errors import CapsimError
from hwmodels.device import DeviceSpec
from simulator.config.cost import CostConfig
from simulator.metrics.energy import PowerUnit
from simulator.metrics.tco import DEFAULT_COST, CostSettings


def cost_settings(cost: CostConfig | None) -> CostSettings:
    """The scenario's ``cost:`` section as plain numbers (the defaults of :data:`DEFAULT_COST` without one)."""
    if cost is None:
        return DEFAULT_COST
    nan = math.nan
    return CostSettings(
        mode=cost.mode,
        amortisation_years=cost.amortisation_years if cost.amortisation_years is not None else nan,
        hours_per_year=cost.hours_per_year,
        electricity_usd_per_kwh=cost.electricity_usd_per_kwh if cost.electricity_usd_per_kwh is not None else nan,
        pue=cost.pue,
        hosting_usd_per_kw_month=cost.hosting_usd_per_kw_month,
        devices_per_node=int(cost.devices_per_node),
    )


def _capex(name: str, catalog_usd: float | None, cost: CostConfig | None) -> float:
    """Purchase price of one device called ``name``: the scenario's, else the catalog's, else NaN -- which
    mode tco refuses, naming the field to set."""
    given = (cost.capex_usd if cost is not None else {}).get(name)
    usd = given if given is not None else catalog_usd
    if usd is None:
        if cost is not None and cost.tco:
            raise CapsimError(
                f"cost mode tco needs the purchase price of device {name!r}, and the catalog gives none",
                where=f"cost.capex_usd.{name}",
                fix=f"add it under cost: capex_usd: {{{name}: <USD per device>}} (your quote), or use mode rental",
            )
        return math.nan
    return float(usd)


def gpu_capex(device: DeviceSpec, cost: CostConfig | None) -> float:
    """Purchase price of one GPU of the run (NaN when neither the scenario nor the catalog gives one)."""
    return _capex(device.name, device.capex_usd, cost)


def power_units(system, engines_per_replica: int, cost: CostConfig | None) -> tuple[PowerUnit, ...]:
    """Per engine: the devices the system's techniques add and the device tiers they use.

    A replica of ``pp`` stages is ``pp`` engines in the records, so its added devices are spread over them (as
    their price is); a tier exists once per GPU, and each engine holds ``tp`` GPUs.
    """
    units = [
        PowerUnit(f"device.{d.name}", d.count / engines_per_replica, d.idle_w, d.tdp_w, _capex(d.name, None, cost))
        for d in system.extra_devices
    ]
    tp = system.deployment.tp
    for name in system.tiers_used:
        tier = system.device.tier(name, where="techniques")
        units.append(PowerUnit(f"tier.{name}", float(tp), tier.idle_w, tier.active_w))
    return tuple(units)
