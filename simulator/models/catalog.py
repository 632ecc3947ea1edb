"""The model catalog: named architectures shipped as ``catalog.yaml``.

Why a YAML catalog behind a registry: a scenario names its model by string
(``model: llama-3.1-8b`` or an HF id such as ``meta-llama/Meta-Llama-3-8B``), and
adding a model must be a data change, not a code change. Models that are not in
the catalog can be given inline in a scenario with the same fields
(:func:`model_from_dict`).

>>> get_model("meta-llama/Llama-2-7b-hf").num_kv_heads
32
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from capsim.catalog import load_catalog, read_catalog_yaml, registry_of, spec_validation_error
from capsim.errors import CapsimError
from capsim.registry import Registry
from simulator.models.spec import ModelSpec

CATALOG_FILE = "catalog.yaml"
_CATALOG_WHERE = f"simulator/models/{CATALOG_FILE}"


def model_from_dict(data: Mapping[str, Any], *, where: str = "model") -> ModelSpec:
    """Build a :class:`ModelSpec` from a mapping (an inline model in a scenario).

    Same schema as a catalog entry; unknown keys and inconsistent numbers raise
    :class:`~capsim.errors.CapsimError` whose ``where`` starts with ``where``.
    """
    if not isinstance(data, Mapping):
        raise CapsimError(
            f"an inline model must be a mapping of fields, got {type(data).__name__}",
            where=where,
            fix="give either a catalog name (a string) or a mapping of ModelSpec fields",
        )
    try:
        return ModelSpec.model_validate(dict(data))
    except ValidationError as err:
        raise spec_validation_error(
            err, ModelSpec, where=where, what="model", doc="simulator/models/spec.py",
            derived={"head_dim": "hidden_size / num_heads"},
        ) from None


def load_model_catalog() -> dict[str, ModelSpec]:
    """Read and validate every entry of the shipped catalog, keyed by canonical id."""
    entries = read_catalog_yaml(__package__, CATALOG_FILE, "models", what="model")
    return load_catalog(entries, where=_CATALOG_WHERE, build=lambda fields, where: model_from_dict(fields, where=where))


MODELS: Registry[ModelSpec] = registry_of("model", load_model_catalog(), where=_CATALOG_WHERE)
"""Every catalog model by id and alias (filled at import from ``catalog.yaml``)."""


def get_model(name: str) -> ModelSpec:
    """The catalog model called ``name`` (an id or alias, any case, '_' or '-').

    Raises :class:`~capsim.errors.UnknownNameError` with the closest names otherwise.
    """
    return MODELS.get(name)
