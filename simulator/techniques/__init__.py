"""Serving techniques as plug-ins (see :mod:`simulator.techniques.base` for the hooks).

Importing this package registers every shipped technique; a new technique is one module here plus one
import line below.
"""

# Each shipped technique registers itself on import (one line per technique module).
from simulator.techniques import (  # noqa: F401
    attention_in_memory,
    attention_offload,
    composition_of_experts,
    dataflow_fusion,
    decode_kernel,
    duplex,
    kv_eviction,
    kv_quantization,
    nanoflow,
    npu_outliers,
    prefix_caching,
    sparse_attention,
    speculative,
    weight_offload,
)
from simulator.techniques.base import TECHNIQUES, MemoryTerms, Technique, TechniqueParams, TechniqueStack, build_stack
from simulator.techniques.context import BuildContext
from simulator.techniques.step import BoundStep, StepModel, StepPlan

__all__ = [
    "TECHNIQUES", "BoundStep", "BuildContext", "MemoryTerms", "StepModel", "StepPlan", "Technique",
    "TechniqueParams", "TechniqueStack", "build_stack",
]
