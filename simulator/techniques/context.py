"""What a technique may look at while the system is built.

Why a context object rather than arguments: hooks of different techniques need different facts (the
device to price a draft model on, the deployment's numeric formats, the main operator table to derive a
verification pass from). One frozen object carries them all, and a hook cannot mutate the system.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hwmodels.device import DeviceSpec
from hwmodels.roofline import RooflineDevice
from simulator.config.schema import DeploymentConfig
from simulator.costmodel.iteration import IterationCostModel, OverheadTerms
from simulator.costmodel.operators import OperatorTable
from simulator.models.spec import ModelSpec


@dataclass(frozen=True)
class BuildContext:
    """The system as built so far. ``table`` is the main model's operator table after every
    technique's ``operators`` hook (None while those hooks run)."""

    model: ModelSpec
    device: DeviceSpec
    deployment: DeploymentConfig
    roofline: RooflineDevice
    overheads: OverheadTerms | None
    seed: int
    table: OperatorTable | None = None
    max_batch_seqs: int = 256  # the scheduler's most sequences per iteration (sizes per-sequence reserves)

    def main_cost_model(self, transform: Callable[[OperatorTable], OperatorTable] | None = None) -> IterationCostModel:
        """A cost model of the main model (optionally with its table transformed), priced exactly as the
        replica's own: same device view, calibrated curves and engine overheads."""
        table = self.table if transform is None else transform(self.table)
        return IterationCostModel(table, self.roofline, self.overheads)

    def cost_model(
        self, model: ModelSpec, *, device: DeviceSpec | None = None, tp: int | None = None,
        transform: Callable[[OperatorTable], OperatorTable] | None = None,
    ) -> IterationCostModel:
        """A cost model of another model (a drafter) on ``device`` (default: the replica's own)."""
        from simulator.system import cost_model_for

        return cost_model_for(model, device or self.device, self.deployment, tp=tp or self.deployment.tp,
                              transform=transform)
