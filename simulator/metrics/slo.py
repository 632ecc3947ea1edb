"""Service-level objectives: per-request latency targets and the fraction of requests that must meet them.

Why per request: goodput and attainment count *requests* that met every target, which is what a serving operator
promises ("90% of requests see a first token within 500 ms and never wait more than 100 ms for the next token").
A request that had not finished when the simulation stopped is a miss: it cannot be shown to meet its targets, and
counting it as a hit would reward an overloaded configuration for leaving work undone.

>>> slo = SLOConfig(ttft_s=0.5, tbt_s=0.1)
>>> slo.targets()
{'ttft_s': 0.5, 'tbt_s': 0.1}
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:  # pandas is imported when requests are judged, not when a scenario is validated
    import pandas as pd


class PercentileTarget(BaseModel):
    """A target on one percentile of a latency distribution (DistServe's P90 TTFT and P90 TPOT, Sarathi-Serve's
    P99 of every inter-token gap, a median scheduling delay that keeps the queue from blowing up)."""

    model_config = ConfigDict(extra="forbid")

    metric: Literal["ttft_s", "tpot_s", "e2e_s", "queueing_s", "tbt_s"] = Field(
        description="ttft_s, tpot_s, e2e_s or queueing_s (scheduling delay) over the measured requests; tbt_s over "
        "every inter-token gap of every request."
    )
    percentile: float = Field(gt=0, le=100, description="Which percentile, e.g. 90 or 99.")
    max_s: float = Field(gt=0, description="The percentile must not exceed this many seconds.")

    @property
    def key(self) -> str:
        """Summary key of the measured value, e.g. ``slo_ttft_p90_s``."""
        return f"slo_{self.metric[:-2]}_p{self.percentile:g}_s"


class SLOConfig(BaseModel):
    """Latency targets (seconds; leave a target out to not constrain it) and the attainment goal."""

    model_config = ConfigDict(extra="forbid")

    ttft_s: float | None = Field(None, gt=0, description="Time to first token target: first_token − arrival ≤ ttft_s.")
    tpot_s: float | None = Field(
        None,
        gt=0,
        description="Time per output token target, (e2e − ttft) / (output_tokens − 1) ≤ tpot_s; "
        "requests with a single output token have no decode phase and always meet it.",
    )
    tbt_s: float | None = Field(
        None,
        gt=0,
        description="Time between tokens target, applied to each request's largest gap between consecutive "
        "output tokens (max_tbt_s), so one long stall is a miss.",
    )
    e2e_s: float | None = Field(None, gt=0, description="End-to-end latency target: finish − arrival ≤ e2e_s.")
    attainment: float = Field(
        0.9,
        gt=0,
        le=1,
        description="Fraction of (post-warm-up) requests that must meet all the given targets for the SLO to be met.",
    )
    percentiles: list[PercentileTarget] = Field(
        default_factory=list,
        description="Percentile targets, all of which must hold besides the per-request attainment, e.g. "
        "[{metric: ttft_s, percentile: 90, max_s: 0.5}, {metric: tbt_s, percentile: 99, max_s: 0.1}]. A request "
        "unfinished at the end counts as infinitely slow.",
    )

    def targets(self) -> dict[str, float]:
        """The latency targets that are set, by name."""
        names = ("ttft_s", "tpot_s", "tbt_s", "e2e_s")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def meets(self, requests: pd.DataFrame) -> np.ndarray:
        """Per request (in row order), whether it finished and met every set target.

        With no targets set, every finished request meets the SLO and every unfinished one misses it.
        """
        from simulator.metrics.result import request_latencies

        finished = np.isfinite(requests["finish_s"].to_numpy(dtype=np.float64))
        lat = request_latencies(requests)
        ok = finished.copy()
        if self.ttft_s is not None:
            ok &= lat["ttft_s"].to_numpy() <= self.ttft_s
        if self.e2e_s is not None:
            ok &= lat["e2e_s"].to_numpy() <= self.e2e_s
        if self.tpot_s is not None:
            tpot = lat["tpot_s"].to_numpy()
            ok &= np.isnan(tpot) | (tpot <= self.tpot_s)  # NaN here means a one-token request: nothing to pace
        if self.tbt_s is not None:
            worst = requests["max_tbt_s"].to_numpy(dtype=np.float64)
            ok &= np.isnan(worst) | (worst <= self.tbt_s)  # NaN: the request produced at most one token
        return ok
