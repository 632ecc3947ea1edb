"""Describe the fields of a pydantic model as form fields.

Why: every input of the dashboard is generated from the scenario schema (and
from each registered scheduler's ``Params`` model), so a new scheduler, a new
parameter or a new scenario section shows up on the page without editing it.
This module only *describes* fields -- the widget kind, default, choices and
help text -- and does not import Streamlit; :mod:`app.widgets` draws them.

>>> from simulator.metrics.slo import SLOConfig
>>> [(f.name, f.kind, f.optional) for f in form_fields(SLOConfig)][:2]
[('ttft_s', 'float', True), ('tpot_s', 'float', True)]
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo

#: Widget kinds: a checkbox, an integer or float box, a choice among fixed values, free text, a nested
#: model drawn as its own group of fields, or (for anything else: lists, mappings, unions) a YAML text box.
Kind = Literal["bool", "int", "float", "choice", "text", "model", "yaml"]


class _Required:
    """Marker for a field without a default (the user must give a value)."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED = _Required()


@dataclass(frozen=True)
class FormField:
    """One field of a pydantic model as the dashboard shows it."""

    name: str
    kind: Kind
    default: Any  # REQUIRED when the field has no default
    optional: bool  # None is an accepted value ("not set")
    help: str = ""
    options: tuple[Any, ...] = ()  # for kind "choice"
    model: type[BaseModel] | None = None  # for kind "model"

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


def _split_optional(annotation: Any) -> tuple[list[Any], bool]:
    """The non-None members of a union annotation, and whether None is allowed."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        args = list(typing.get_args(annotation))
        members = [a for a in args if a is not type(None)]
        return members, len(members) < len(args)
    return [annotation], False


def _kind_of(annotation: Any) -> tuple[Kind, tuple[Any, ...], type[BaseModel] | None]:
    """Widget kind for a single (non-union) annotation."""
    if typing.get_origin(annotation) is Literal:
        return "choice", tuple(typing.get_args(annotation)), None
    if annotation is bool:
        return "bool", (), None
    if annotation is int:
        return "int", (), None
    if annotation is float:
        return "float", (), None
    if annotation is str:
        return "text", (), None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "model", (), annotation
    return "yaml", (), None


def describe_field(name: str, info: FieldInfo) -> FormField:
    """The :class:`FormField` for one pydantic field."""
    members, optional = _split_optional(info.annotation)
    if len(members) == 1:
        kind, options, model = _kind_of(members[0])
    else:  # e.g. ``str | dict``: no single widget fits, so the value is typed as YAML
        kind, options, model = "yaml", (), None
    default = REQUIRED if info.is_required() else info.get_default(call_default_factory=True)
    return FormField(name, kind, default, optional, info.description or "", options, model)


def form_fields(
    model: type[BaseModel], *, include: Iterable[str] | None = None, exclude: Iterable[str] = ()
) -> list[FormField]:
    """The fields of ``model`` in declaration order (or in ``include`` order), minus ``exclude``."""
    skip = set(exclude)
    names = list(include) if include is not None else list(model.model_fields)
    return [describe_field(n, model.model_fields[n]) for n in names if n in model.model_fields and n not in skip]


def default_value(field: FormField) -> Any:
    """A value to start a widget from: the field's default, or a neutral value for a required field."""
    if not field.required:
        default = field.default
        return default.model_dump(mode="json") if isinstance(default, BaseModel) else default
    neutral: dict[str, Any] = {"bool": False, "int": 1, "float": 1.0, "text": "", "yaml": None, "model": {}}
    if field.kind == "choice":
        return field.options[0] if field.options else None
    return neutral[field.kind]


def prune_defaults(values: dict[str, Any], fields: Iterable[FormField]) -> dict[str, Any]:
    """Drop values equal to their field's default, so a written scenario states only what was chosen."""
    out = {}
    by_name = {f.name: f for f in fields}
    for key, value in values.items():
        field = by_name.get(key)
        if field is not None and not field.required and value == default_value(field):
            continue
        out[key] = value
    return out
