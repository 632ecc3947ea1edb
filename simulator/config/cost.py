"""The scenario's optional ``cost:`` section: how the deployment is paid for (rental or total cost of ownership).

Why a section of its own: rental prices (the catalog's ``price_usd_per_hour``) answer "what does this cost on a
cloud", while an owner asks what buying, powering and hosting the same hardware costs per hour. Every economic
figure here is the user's input -- capsim ships no electricity price, amortisation period or hosting fee, because
they differ by site and contract -- and only two fields have defaults, both definitions rather than market figures:
``hours_per_year`` (8,760: every hour of the year) and ``pue`` (1.0: no facility overhead counted). Formulas in
:mod:`simulator.metrics.tco` and docs/energy-and-cost.md.

>>> CostConfig.model_validate({"mode": "tco", "amortisation_years": 4, "electricity_usd_per_kwh": 0.1}).pue
1.0
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from capsim.types import Count

COST_MODES: tuple[str, ...] = ("rental", "tco")


class CostConfig(BaseModel):
    """How the run is priced: ``rental`` (the catalog's hourly prices) or ``tco`` (capex amortised + power)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["rental", "tco"] = Field(
        "rental",
        description="Which cost the tables and the planner rank by: 'rental' (price per device-hour) or "
        "'tco' (capex amortised over the years plus electricity and hosting). With 'tco' both are reported.",
    )
    capex_usd: dict[str, float] = Field(
        default_factory=dict,
        description="Purchase price per device, USD, by device name (the GPU and any device a "
        "technique adds, e.g. {h100-sxm: 30000}); overrides the catalog's capex_usd. Needed in mode tco for every "
        "device without a catalog capex_usd.",
    )
    amortisation_years: float | None = Field(
        None, gt=0, description="Years over which capex is written off (straight line). Needed in mode tco."
    )
    hours_per_year: float = Field(
        8760.0,
        gt=0,
        le=8784,
        description="Hours per year the hardware is paid for (8,760: all of them; fewer "
        "spreads capex over fewer, the hours the hardware is expected to serve).",
    )
    electricity_usd_per_kwh: float | None = Field(
        None, ge=0, description="Electricity price, USD per kWh (your contract). Needed in mode tco."
    )
    pue: float = Field(
        1.0,
        ge=1.0,
        description="Power usage effectiveness of the facility (total facility power / IT power): "
        "multiplies the measured energy for cooling and power delivery; 1.0 counts none.",
    )
    hosting_usd_per_kw_month: float = Field(
        0.0,
        ge=0,
        description="Colocation or hosting fee per kW of provisioned power (the devices' TDP) per month; "
        "a month is hours_per_year / 12 hours.",
    )
    devices_per_node: Count = Field(
        8,
        ge=1,
        description="GPUs per node (server) for the per-node $/h keys; 8 is a common baseboard size, an "
        "assumption to replace with your servers'.",
    )

    @field_validator("capex_usd")
    @classmethod
    def _non_negative_capex(cls, prices: dict[str, float]) -> dict[str, float]:
        for name, usd in prices.items():
            if not (isinstance(usd, (int, float)) and math.isfinite(usd) and usd >= 0):
                raise ValueError(f"capex of {name!r} must be a non-negative number of USD, got {usd!r}")
        return prices

    @model_validator(mode="after")
    def _tco_inputs(self) -> CostConfig:
        if self.mode == "tco":
            missing = [f for f in ("amortisation_years", "electricity_usd_per_kwh") if getattr(self, f) is None]
            if missing:
                raise ValueError(f"mode tco needs {' and '.join(missing)} (no default: they are your site's figures)")
        return self

    @property
    def tco(self) -> bool:
        """Whether the TCO figures can be computed (mode tco)."""
        return self.mode == "tco"
