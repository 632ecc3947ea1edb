"""Total cost of ownership per hour: capex amortised, plus the electricity and hosting of the power drawn.

Why beside rental: a cloud rents a GPU-hour at one price whether it computes or idles, so rental cost depends on
hardware and time only. An owner pays for the purchase once (spread over the hours of its useful life) and for the
energy actually drawn, so an owner's cost per token also depends on how hard the run works the hardware. With the
user's settings (:class:`simulator.config.cost.CostConfig`):

    TCO $/h = Σ_devices capex / (amortisation_years × hours_per_year)            (capex)
            + average IT power (kW) × PUE × electricity $/kWh                    (energy)
            + provisioned power (kW) × hosting $/kW-month × 12 / hours_per_year  (hosting)

The average IT power is the run's measured energy over its window (GPUs, added devices, tiers in use); the
provisioned power is the sum of their active (TDP) powers, what a rack is sized for. Fixed yearly costs (capex,
hosting) are divided by the hours the hardware is paid for, so fewer hours per year raise the hourly figure.

>>> s = CostSettings("tco", 5.0, 8760.0, 0.1, 1.0, 0.0, 8)
>>> parts = tco_per_hour(s, capex_usd=43800.0, avg_power_w=1000.0, provisioned_w=1000.0)
>>> round(parts.capex, 6), round(parts.energy, 6), round(parts.total, 6)
(1.0, 0.1, 1.1)
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class CostSettings:
    """The scenario's cost settings in plain numbers (NaN where not given), as the metrics layer reads them."""

    mode: str
    amortisation_years: float
    hours_per_year: float
    electricity_usd_per_kwh: float
    pue: float
    hosting_usd_per_kw_month: float
    devices_per_node: int

    @property
    def tco(self) -> bool:
        return self.mode == "tco"


#: What an unconfigured run assumes: rental pricing, no facility overhead, 8 GPUs per node (docs/energy-and-cost.md).
DEFAULT_COST = CostSettings("rental", math.nan, 8760.0, math.nan, 1.0, 0.0, 8)


@dataclass(frozen=True)
class TCOParts:
    """TCO per hour of the whole deployment, USD, by part."""

    capex: float
    energy: float
    hosting: float

    @property
    def total(self) -> float:
        return self.capex + self.energy + self.hosting


def tco_per_hour(settings: CostSettings, *, capex_usd: float, avg_power_w: float, provisioned_w: float) -> TCOParts:
    """TCO per hour (module doc) of hardware bought for ``capex_usd`` in all, drawing ``avg_power_w`` on
    average and provisioned for ``provisioned_w``."""
    hours = settings.hours_per_year
    return TCOParts(
        capex=capex_usd / (settings.amortisation_years * hours),
        energy=avg_power_w / 1000.0 * settings.pue * settings.electricity_usd_per_kwh,
        hosting=provisioned_w / 1000.0 * settings.hosting_usd_per_kw_month * 12.0 / hours,
    )
