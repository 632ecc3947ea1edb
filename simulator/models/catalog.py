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

import difflib
from collections.abc import Mapping
from importlib import resources
from typing import Any

import yaml
from pydantic import ValidationError

from capsim.errors import CapsimError
from capsim.registry import Registry, normalise_name
from simulator.models.spec import ModelSpec

CATALOG_FILE = "catalog.yaml"
_CATALOG_WHERE = f"simulator/models/{CATALOG_FILE}"


def _from_validation_error(err: ValidationError, where: str, what: str) -> CapsimError:
    """Turn pydantic's report into one CapsimError naming the first bad field."""
    errors = err.errors()
    # A misspelt key also makes the intended key "missing"; report the misspelling.
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = ".".join(str(part) for part in first["loc"])
    place = f"{where}.{loc}" if loc else where
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        bad = str(first["loc"][-1])
        close = difflib.get_close_matches(bad, ModelSpec.model_fields, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        fields = ", ".join(sorted(ModelSpec.model_fields))
        return CapsimError(
            f"unknown {what} field {bad!r}",
            where=place,
            fix=f"{hint}known fields: {fields}",
        )
    extra = f" (and {err.error_count() - 1} more problem(s))" if err.error_count() > 1 else ""
    return CapsimError(
        f"invalid {what}: {message}{extra}",
        where=place,
        fix="correct the value; see the field descriptions in simulator/models/spec.py",
    )


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
        raise _from_validation_error(err, where, "model") from None


def _read_catalog_yaml() -> dict[str, Any]:
    text = resources.files(__package__).joinpath(CATALOG_FILE).read_text(encoding="utf-8")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise CapsimError(f"cannot parse the model catalog: {err}", where=_CATALOG_WHERE) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), dict):
        raise CapsimError(
            "the model catalog must have a top-level 'models:' mapping",
            where=_CATALOG_WHERE,
        )
    return doc["models"]


def load_model_catalog() -> dict[str, ModelSpec]:
    """Read and validate every entry of the shipped catalog, keyed by canonical id.

    The YAML key is the id; an entry may repeat it as ``name`` but must not contradict it.
    """
    specs: dict[str, ModelSpec] = {}
    for key, entry in _read_catalog_yaml().items():
        name = normalise_name(key)
        where = f"{_CATALOG_WHERE}: {name}"
        if not isinstance(entry, dict):
            raise CapsimError("catalog entry must be a mapping of fields", where=where)
        if "name" in entry and normalise_name(entry["name"]) != name:
            raise CapsimError(
                f"entry name {entry['name']!r} differs from its key {key!r}",
                where=where,
            )
        specs[name] = model_from_dict({**entry, "name": name}, where=where)
    return specs


def _build_registry(specs: Mapping[str, ModelSpec]) -> Registry[ModelSpec]:
    """Registry of ``specs``; refuses an alias that is claimed twice or shadows an id."""
    registry: Registry[ModelSpec] = Registry("model")
    owner: dict[str, str] = {}
    for name, spec in specs.items():
        for alias in spec.aliases:
            key = normalise_name(alias)
            if key in specs or owner.setdefault(key, name) != name:
                raise CapsimError(
                    f"alias {alias!r} of {name!r} is already used by {key if key in specs else owner[key]!r}",
                    where=f"{_CATALOG_WHERE}: {name}.aliases",
                    fix="give each alias to one model only",
                )
        registry.add(name, spec, aliases=spec.aliases)
    return registry


MODELS: Registry[ModelSpec] = _build_registry(load_model_catalog())
"""Every catalog model by id and alias (filled at import from ``catalog.yaml``)."""


def get_model(name: str) -> ModelSpec:
    """The catalog model called ``name`` (an id or alias, any case, '_' or '-').

    Raises :class:`~capsim.errors.UnknownNameError` with the closest names otherwise.
    """
    return MODELS.get(name)
