"""The scenario reference, generated from the pydantic schema and the plug-in registries.

Why generated: a hand-written field list drifts from the schema the loader enforces. This module walks the
models the loader validates with (the scenario, plan and sweep files, an inline model and device, every
registered scheduler's, router's, serving system's and technique's ``Params``) and writes one Markdown page:
every field with its type, default and description. ``docs/reference/scenario.md`` is its output, and
``tests/test_docs_site.py`` fails when the committed page differs from what this module writes now, so the
page changes in the same commit as the schema.

    python -m simulator.config.reference > docs/reference/scenario.md
"""

from __future__ import annotations

import enum
import re
import types
import typing
from collections.abc import Iterable, Iterator
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

HEADER = """# Scenario reference

Generated from the schema by `python -m simulator.config.reference` (do not edit by hand; a test checks the
page is current). Every section of a scenario file, every field with its type, default and description, then
what an inline model or device needs, then the parameters of every registered plug-in. Unknown keys are errors
everywhere; `capsim validate FILE` checks a file without simulating, and `--set a.b=v` overrides any field by its
dotted path.
"""


def _type_name(annotation: Any) -> str:
    """A short, readable rendering of a field's annotation (``int | None``, ``list[PoolConfig]``, ...)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is Literal:
        return " \\| ".join(repr(a).replace("'", '"') for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in args)
    if origin in (list, tuple, set, frozenset):
        inner = ", ".join(_type_name(a) for a in args if a is not Ellipsis)
        return f"{origin.__name__}[{inner}]"
    if origin is dict:
        return f"dict[{', '.join(_type_name(a) for a in args)}]"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return f"[{annotation.__name__}](#{_anchor(annotation)})"
        if issubclass(annotation, enum.Enum):
            return " \\| ".join(f'"{m.value}"' for m in annotation)
        return annotation.__name__
    return re.sub(r"typing\.|<class '|'>", "", str(annotation))


def _anchor(model: type[BaseModel]) -> str:
    return model.__name__.lower()


def _nested_models(annotation: Any) -> Iterator[type[BaseModel]]:
    """Every pydantic model inside an annotation (through unions, lists, dicts and Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    for arg in typing.get_args(annotation):
        yield from _nested_models(arg)


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "**required**"
    if info.default_factory is not None:
        try:
            value = info.default_factory()  # type: ignore[call-arg]
        except TypeError:
            return "(computed)"
        if isinstance(value, BaseModel):
            return "(its defaults)"
        return f"`{value!r}`"
    if info.default is PydanticUndefined:
        return "**required**"
    value = info.default
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`' if value else '`""`'
    return f"`{value!r}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _constraints(info: FieldInfo) -> str:
    """Bounds pydantic enforces (gt/ge/lt/le) as a short suffix, so the limits are visible beside the default."""
    out = []
    for meta in info.metadata:
        for attr, sym in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤")):
            value = getattr(meta, attr, None)
            if value is not None:
                out.append(f"{sym} {value}")
    return f" ({', '.join(out)})" if out else ""


def model_table(model: type[BaseModel], *, skip: Iterable[str] = ()) -> str:
    """A Markdown table of a model's own fields: name, type, default, description."""
    rows = ["| field | type | default | description |", "|---|---|---|---|"]
    skipped = set(skip)
    for name, info in model.model_fields.items():
        if name in skipped:
            continue
        key = info.alias or name
        rows.append(
            f"| `{key}` | {_type_name(info.annotation)} | {_default(info)} | "
            f"{_cell(info.description or '')}{_constraints(info)} |"
        )
    if len(rows) == 2:
        return "No parameters.\n"
    return "\n".join(rows) + "\n"


def _doc_first_paragraph(obj: Any) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return " ".join(doc.split("\n\n")[0].split())


class _Writer:
    """Collects sections; documents each nested model once, the first time a field names it."""

    def __init__(self) -> None:
        self.parts: list[str] = [HEADER]
        self.done: set[type[BaseModel]] = set()

    def section(self, level: int, title: str, text: str = "") -> None:
        self.parts.append(f"{'#' * level} {title}\n")
        if text:
            self.parts.append(text.rstrip() + "\n")

    def model(
        self,
        model: type[BaseModel],
        level: int,
        title: str | None = None,
        *,
        skip: Iterable[str] = (),
        intro: str | None = None,
    ) -> None:
        """A model's table, then (once each) the models its fields refer to."""
        if model in self.done:
            return
        self.done.add(model)
        heading = title or model.__name__
        self.parts.append(f"{'#' * level} {heading} {{#{_anchor(model)}}}\n")
        about = intro if intro is not None else _doc_first_paragraph(model)
        if about:
            self.parts.append(about + "\n")
        self.parts.append(model_table(model, skip=skip))
        skipped = set(skip)
        for name, info in model.model_fields.items():
            if name in skipped:
                continue
            for nested in _nested_models(info.annotation):
                self.model(nested, level + 1 if level < 4 else level)

    def text(self) -> str:
        return "\n".join(self.parts)


def _plugin_sections(w: _Writer, title: str, registry: Any, intro: str) -> None:
    w.section(2, title, intro)
    for name in registry.names():
        cls = registry.get(name)
        params = getattr(cls, "Params", None)
        w.parts.append(f"### `{name}`\n")
        about = _doc_first_paragraph(cls)
        if about:
            w.parts.append(about + "\n")
        if params is None:
            w.parts.append("No parameters.\n")
        else:
            w.parts.append(model_table(params, skip=("name",)))
            for field_name, info in params.model_fields.items():
                if field_name != "name":
                    for nested in _nested_models(info.annotation):
                        w.model(nested, 4)


def render() -> str:
    """The whole reference page."""
    import simulator.pools.partition  # noqa: F401  (registers semi-pd)
    import simulator.pools.systems  # noqa: F401  (registers the serving systems)
    import simulator.schedulers  # noqa: F401  (registers the schedulers)
    import simulator.techniques  # noqa: F401  (registers the techniques)
    from hwmodels.device import DeviceSpec
    from simulator.config.schema import ScenarioFile
    from simulator.models.spec import ModelSpec
    from simulator.planner.schema import PlanFile
    from simulator.pools.systems import SERVING_SYSTEMS
    from simulator.routers import ROUTERS
    from simulator.schedulers.base import SCHEDULERS
    from simulator.sweep.schema import SweepFile
    from simulator.techniques.base import TECHNIQUES

    w = _Writer()
    w.model(ScenarioFile, 2, "Scenario file (`capsim run`, `capsim validate`)")
    plan_only = [n for n in PlanFile.model_fields if n not in ScenarioFile.model_fields]
    w.model(
        PlanFile,
        2,
        "Plan file (`capsim plan`): the scenario fields plus",
        skip=[n for n in PlanFile.model_fields if n not in plan_only],
    )
    sweep_only = [n for n in SweepFile.model_fields if n not in ScenarioFile.model_fields]
    w.model(
        SweepFile,
        2,
        "Sweep file (`capsim sweep`): the scenario fields plus",
        skip=[n for n in SweepFile.model_fields if n not in sweep_only],
    )
    w.model(
        ModelSpec,
        2,
        "Inline model (`model:` as a mapping)",
        intro="A model not in the catalog, given field by field (every **required** field must be present; "
        "`capsim validate` lists all missing ones at once). " + _doc_first_paragraph(ModelSpec),
    )
    w.model(
        DeviceSpec,
        2,
        "Inline device (`deployment.device:` as a mapping)",
        intro="A device not in the catalog, given field by field, or `{base: <catalog id>, ...}` to override "
        "some fields of a catalog entry (keeping its calibrated profile unless peaks or bandwidth "
        "change). " + _doc_first_paragraph(DeviceSpec),
    )
    _plugin_sections(
        w,
        "Schedulers (`scheduler:`)",
        SCHEDULERS,
        "`scheduler: {name: <id>, ...}` takes the chosen scheduler's parameters below.",
    )
    _plugin_sections(
        w, "Routers (`router:`)", ROUTERS, "`router: {name: <id>, ...}` takes the chosen router's parameters below."
    )
    _plugin_sections(
        w,
        "Serving systems (`serving:`)",
        SERVING_SYSTEMS,
        "With `pools:`, `serving: {name: <id>, ...}` joins the pools; its parameters below.",
    )
    _plugin_sections(
        w,
        "Techniques (`techniques:`)",
        TECHNIQUES,
        "Each entry of `techniques:` is `{name: <id>, ...}` with that technique's parameters below; "
        "`capsim explain <id>` prints its mechanism, sources and presets.",
    )
    return w.text()


if __name__ == "__main__":
    print(render(), end="")
