"""Reading scenario files: YAML -> overrides -> expansion -> validated scenarios.

Every failure here becomes a :class:`~capsim.errors.CapsimError` that names
the file and the field (``deployment.tp``) and says how to fix it: YAML syntax
errors with their line, pydantic errors with their path, overrides that do not
parse.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from capsim.errors import CapsimError
from simulator.config.schema import Scenario, ScenarioFile


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A key that appears twice in one YAML mapping, with the lines of both."""

    def __init__(self, key: Any, first_line: int, second_line: int, mark: yaml.Mark):
        self.key, self.first_line, self.second_line = key, first_line, second_line
        super().__init__(None, None, f"duplicate key {key!r}", mark)


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key repeated in one mapping is an error.

    Why: plain YAML loaders keep the last of two equal keys, so a file with ``deployment:`` twice validates
    with the second section and the first silently vanishes -- the user's intended values are never used.
    Keys brought in by a ``<<:`` merge may still be overridden, which is what merging is for.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise DuplicateKeyError(key, seen[key], line, key_node.start_mark)
                    seen[key] = line
                except TypeError:
                    continue  # an unhashable key: the base loader reports it
        return super().construct_mapping(node, deep=deep)


def _read_utf8(p: Path) -> str:
    """The text of ``p``; a file that cannot be read, or is not UTF-8, is a user error naming the line."""
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise CapsimError(f"cannot read the file ({exc.strerror})", where=str(p), fix="check its permissions") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise CapsimError(
            f"not UTF-8 text (byte 0x{raw[exc.start]:02x}); a binary file or another encoding",
            where=f"{p} line {line}",
            fix="save the scenario as UTF-8 (e.g. `iconv -f latin1 -t utf-8`), or check that the path names a YAML file",
        ) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Parse a YAML mapping, with a clear error for a missing file, bad syntax or a repeated key."""
    p = Path(path)
    if p.is_dir():
        raise CapsimError(f"{str(p)!r} is a directory, not a scenario file", where="scenario",
                          fix="give the path of a .yaml file (e.g. scenarios/quickstart.yaml)")
    if not p.is_file():
        raise CapsimError(f"no such file {str(p)!r}", where="scenario", fix="check the path")
    text = _read_utf8(p)
    try:
        data = yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 -- a SafeLoader subclass
    except DuplicateKeyError as exc:
        raise CapsimError(
            f"key {exc.key!r} appears twice in one section (lines {exc.first_line} and {exc.second_line}); "
            "only one of them would be used",
            where=f"{p} line {exc.second_line}",
            fix="keep one of the two, merging what both say",
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise CapsimError(
            f"malformed YAML ({problem})", where=f"{p}{line}", fix="fix the YAML syntax (indentation, colons, quotes)"
        ) from None
    if data is None:
        raise CapsimError(
            "the file is empty (nothing but blanks or comments)",
            where=str(p),
            fix="write at least a workload, e.g. 'workload: {qps: 4}', or start from a copy of scenarios/quickstart.yaml",
        )
    if not isinstance(data, dict):
        raise CapsimError(
            f"expected a mapping of sections (model:, deployment:, ...), got {type(data).__name__}",
            where=str(p),
            fix="start the file with keys such as 'model:' and 'workload:'",
        )
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """``'workload.qps=8'`` -> ``('workload.qps', 8)``; the value is parsed as YAML."""
    if "=" not in text:
        raise CapsimError(
            f"override {text!r} has no '='", where="--set", fix="write --set section.field=value, e.g. --set workload.qps=8"
        )
    path, raw = text.split("=", 1)
    path = path.strip()
    if not path:
        raise CapsimError(f"override {text!r} has no field path", where="--set", fix="write --set section.field=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return path, value


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """Set ``data['a']['b'] = value`` for ``path='a.b'``, creating sections as needed.

    A numeric key indexes a list (``techniques.0.k`` is the ``k`` of the first technique).
    """
    keys = path.split(".")
    node: Any = data
    for i, key in enumerate(keys[:-1]):
        if isinstance(node, list):
            node = _list_item(node, key, keys[: i + 1], path)
            continue
        child = node.get(key)
        if child is None or not isinstance(child, dict | list):
            if child is not None:
                raise CapsimError(
                    f"cannot set {path!r}: {'.'.join(keys[: i + 1])} is a value ({child!r}), not a section",
                    where="--set",
                    fix="set the section itself, or give the inline definition as a YAML mapping",
                )
            child = {}
            node[key] = child
        node = child
    if isinstance(node, list):
        index = _list_index(node, keys[-1], keys, path)
        node[index] = value
    else:
        node[keys[-1]] = value


def _list_index(items: list, key: str, keys: list[str], path: str) -> int:
    """``key`` as an index into ``items`` (the list at ``keys[:-1]``), or a clear error."""
    where = ".".join(keys[:-1])
    if not key.lstrip("-").isdigit() or not -len(items) <= int(key) < len(items):
        raise CapsimError(
            f"cannot set {path!r}: {where} is a list of {len(items)} entries and {key!r} is not an index into it",
            where="--set", fix=f"use an index from 0 to {len(items) - 1}, or set the whole list with --set {where}=[...]",
        )
    return int(key)


def _list_item(items: list, key: str, keys: list[str], path: str) -> Any:
    item = items[_list_index(items, key, keys, path)]
    if not isinstance(item, dict | list):
        raise CapsimError(f"cannot set {path!r}: {'.'.join(keys)} is a value ({item!r}), not a section",
                          where="--set", fix="set the entry itself")
    return item


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_updates(data: dict[str, Any], updates: dict[str, Any]) -> dict[str, Any]:
    """Apply a mix of nested sections and dotted paths."""
    out = copy.deepcopy(data)
    for key, value in updates.items():
        if "." in key:
            set_path(out, key, copy.deepcopy(value))
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _format_loc(loc: tuple) -> str:
    parts = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside a field annotation (``X``, ``X | None``, ``list[X]``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _sibling_fields(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names valid beside the last element of ``loc`` (empty when the path leaves the schema)."""
    for part in loc[:-1]:
        if isinstance(part, int):
            continue  # an item of a list such as runs[0]
        field = model.model_fields.get(str(part))
        inner = _model_in(field.annotation) if field is not None else None
        if inner is None:
            return []
        model = inner
    return list(model.model_fields)


def _unknown_field_message(model: type[BaseModel], loc: tuple) -> str:
    """'unknown field; did you mean 'tp'? (fields here: ...)' for a misspelt key at ``loc``."""
    known = _sibling_fields(model, loc)
    if not known:
        return "unknown field (check the spelling)"
    close = difflib.get_close_matches(str(loc[-1]), known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown field; {hint}valid fields here: {', '.join(known)}"


def validation_error(exc: ValidationError, source: str, model: type[BaseModel] = ScenarioFile) -> CapsimError:
    """Turn pydantic's report into one paragraph naming each field and the fix."""
    lines = []
    for err in exc.errors()[:5]:
        loc = _format_loc(tuple(err.get("loc", ())))
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            msg = _unknown_field_message(model, tuple(err.get("loc", ())))
        elif "input" in err and err.get("type") not in ("missing",):
            msg = f"{msg} (got {err['input']!r})"
        lines.append(f"{loc or '(top level)'}: {msg}")
    more = len(exc.errors()) - 5
    if more > 0:
        lines.append(f"... and {more} more")
    first_loc = _format_loc(tuple(exc.errors()[0].get("loc", ()))) if exc.errors() else ""
    return CapsimError(
        "invalid scenario: " + "; ".join(lines),
        where=f"{source}" + (f" ({first_loc})" if first_loc else ""),
        fix="correct the field(s) named above; every field is described in simulator/config/schema.py (workload: traces/config.py)",
    )


def validate_as(model: type[BaseModel], data: dict[str, Any], source: str):
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, source, model) from None


def _label_value(value: Any) -> str:
    """A searched value as a configuration label shows it: a pool list as ``prefill:1xh100-sxm/decode:2xa100``,
    a plug-in mapping with only a name as that name, anything else as written."""
    if isinstance(value, list) and value and all(isinstance(v, dict) and "role" in v for v in value):
        def pool(v: dict[str, Any]) -> str:
            tp = f"tp{v['tp']}" if v.get("tp", 1) != 1 else ""
            device = v.get("device", "h100-sxm")
            device = device.get("name", device.get("base", "inline")) if isinstance(device, dict) else device
            return f"{v.get('name', v['role'])}:{v.get('num_replicas', 1)}x{device}{tp}"

        return "/".join(pool(v) for v in value)
    if isinstance(value, dict) and list(value) == ["name"]:
        return str(value["name"])
    return str(value)


def point_label(values: dict[str, Any]) -> str:
    """``{a.x: 1, b.y: 3}`` -> ``x=1,y=3``; a ``None`` (a field switched off for this point) is left out.

    A plug-in's ``name`` is labelled by its section (``scheduler.name: sarathi`` -> ``scheduler=sarathi``): a bare
    ``name=sarathi`` does not say what was named (issue 20).
    """
    return ",".join(f"{_label_key(k)}={_label_value(v)}" for k, v in values.items() if v is not None)


def _label_key(path: str) -> str:
    parts = path.split(".")
    return parts[-2] if parts[-1] == "name" and len(parts) > 1 else parts[-1]


def _grid_points(grid: dict[str, list[Any]]) -> list[tuple[str, dict[str, Any]]]:
    keys = list(grid)
    points = []
    for values in itertools.product(*(grid[k] for k in keys)):
        label = point_label(dict(zip(keys, values, strict=True)))
        points.append((label, dict(zip(keys, values, strict=True))))
    return points


def expand(data: dict[str, Any], source: str) -> list[Scenario]:
    """The configurations a scenario file describes (one, or its runs x grid)."""
    validate_as(ScenarioFile, data, source)  # report errors against the file as written
    runs = data.get("runs") or None
    grid = data.get("grid") or None
    base = {k: v for k, v in data.items() if k not in ("runs", "grid")}
    base_name = base.get("name", "scenario")
    variants: list[tuple[str, dict[str, Any]]] = []
    run_list = runs if runs else [None]
    grid_list = _grid_points(grid) if grid else [None]
    for run in run_list:
        for point in grid_list:
            cfg = base
            names = []
            if run is not None:
                entry = dict(run)  # a fresh copy per grid point: popping must not consume the run
                names.append(entry.pop("name"))
                cfg = apply_updates(cfg, entry.pop("set", {}) or {})
                cfg = apply_updates(cfg, entry)
            if point is not None:
                names.append(point[0])
                cfg = apply_updates(cfg, point[1])
            name = " ".join(names) if names else base_name
            cfg = {**cfg, "name": name}
            variants.append((name, cfg))
    where = source
    out = []
    for name, cfg in variants:
        label = where if len(variants) == 1 else f"{where} [{name}]"
        out.append(validate_as(Scenario, cfg, label))
    return out


def load_scenarios(path: str | Path, overrides: list[str] | None = None) -> list[Scenario]:
    """Read ``path``, apply ``--set`` overrides to the base, and expand runs and grid."""
    data = read_yaml(path)
    for text in overrides or []:
        key, value = parse_override(text)
        set_path(data, key, value)
    _anchor_trace_path(data, Path(path).parent)
    return expand(data, str(path))


def _anchor_trace_path(data: dict[str, Any], folder: Path) -> None:
    """A relative ``workload.trace.path`` means relative to the scenario file when that file exists there."""
    trace = (data.get("workload") or {}).get("trace") if isinstance(data.get("workload"), dict) else None
    if isinstance(trace, dict) and isinstance(trace.get("path"), str):
        p = Path(trace["path"])
        if not p.is_absolute() and (folder / p).exists() and not p.exists():
            trace["path"] = str((folder / p).resolve())
