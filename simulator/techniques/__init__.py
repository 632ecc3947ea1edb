"""Serving techniques as plug-ins (see :mod:`simulator.techniques.base` for the hooks).

Every shipped technique is declared here by name with the module that registers it; the module is imported at
the first lookup of the name (why: a command that uses no technique, such as ``capsim estimate``, need not import
fourteen of them). A new technique is one module here plus one line in :data:`_SHIPPED`.
"""

from simulator.techniques.base import TECHNIQUES, MemoryTerms, Technique, TechniqueParams, TechniqueStack, build_stack
from simulator.techniques.context import BuildContext
from simulator.techniques.step import BoundStep, StepModel, StepPlan

#: Each shipped technique's name and the module of this package that registers it (aliases live in the module).
_SHIPPED = {
    "attention-in-memory": "attention_in_memory",
    "attention-offload": "attention_offload",
    "composition-of-experts": "composition_of_experts",
    "dataflow-fusion": "dataflow_fusion",
    "decode-kernel": "decode_kernel",
    "duplex": "duplex",
    "kv-eviction": "kv_eviction",
    "kv-quantization": "kv_quantization",
    "nanoflow": "nanoflow",
    "npu-outliers": "npu_outliers",
    "prefix-caching": "prefix_caching",
    "sparse-attention": "sparse_attention",
    "sparse-prefill": "sparse_attention",
    "speculative-decoding": "speculative",
    "weight-offload": "weight_offload",
}
for _name, _module in _SHIPPED.items():
    TECHNIQUES.declare(_name, f"{__name__}.{_module}")

__all__ = [
    "TECHNIQUES", "BoundStep", "BuildContext", "MemoryTerms", "StepModel", "StepPlan", "Technique",
    "TechniqueParams", "TechniqueStack", "build_stack",
]
