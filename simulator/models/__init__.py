"""Model architectures: the :class:`ModelSpec` schema and the shipped model catalog.

A scenario names a catalog model (``get_model("llama-3.1-8b")``, HF ids work as
aliases) or defines one inline (``model_from_dict({...})``) with the same fields.
"""

from simulator.models.catalog import (
    MODELS,
    get_model,
    load_model_catalog,
    model_from_dict,
)
from simulator.models.spec import ModelSpec

__all__ = ["MODELS", "ModelSpec", "get_model", "load_model_catalog", "model_from_dict"]
