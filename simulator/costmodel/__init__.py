"""Per-iteration cost model: batch shape -> operators -> roofline time.

See :mod:`simulator.costmodel.operators` for the operator table (FLOPs and bytes
per layer, from docs/cost-model.md), :mod:`simulator.costmodel.pricers` for how one
row is priced (the roofline or a calibrated curve, chosen by the row's class)
and :mod:`simulator.costmodel.iteration` for the memoised, vectorised pricing
the engine calls in its hot loop.
"""

from simulator.costmodel.features import BatchShape
from simulator.costmodel.iteration import IterationCost, IterationCostModel
from simulator.costmodel.operators import OperatorTable, build_operator_table

__all__ = [
    "BatchShape",
    "IterationCost",
    "IterationCostModel",
    "OperatorTable",
    "build_operator_table",
]
