"""Shipped YAML catalogs (models, devices): reading, validating and indexing them.

Why shared: every catalog is a YAML mapping ``{section: {id: entry}}`` whose
entries are validated by a pydantic spec and looked up by id or alias through a
:class:`~capsim.registry.Registry`. The checks a catalog needs -- the file
parses, each entry is a mapping, an entry's ``name`` matches its key, no alias
is claimed twice or shadows an id -- are the same for all of them.
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from capsim.errors import CapsimError
from capsim.registry import Registry, normalise_name
from capsim.yaml_cache import load_yaml

T = TypeVar("T")

# libyaml's parser when PyYAML was built with it: the catalogs are read at every start (the device catalog
# alone took ~0.1 s with the pure-Python parser, a fifth of a one-shot command); same YAML 1.1 safe rules.
_FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_catalog_yaml(package: str, filename: str, section: str, *, what: str) -> dict[str, Any]:
    """The ``section:`` mapping of a YAML file shipped in ``package``."""
    where = f"{package.replace('.', '/')}/{filename}"
    text = resources.files(package).joinpath(filename).read_text(encoding="utf-8")
    try:
        doc = load_yaml(text, _FAST_LOADER)  # a safe loader; parsed once per text (capsim.yaml_cache)
    except yaml.YAMLError as err:
        raise CapsimError(f"cannot parse the {what} catalog: {err}", where=where) from None
    if not isinstance(doc, dict) or not isinstance(doc.get(section), dict):
        raise CapsimError(f"the {what} catalog must have a top-level '{section}:' mapping", where=where)
    return doc[section]


def load_catalog(entries: Mapping[str, Any], *, where: str, build: Callable[[dict[str, Any], str], T]) -> dict[str, T]:
    """Validate every entry with ``build(fields, where)``, keyed by canonical id.

    The YAML key is the id; an entry may repeat it as ``name`` but must not contradict it.
    """
    specs: dict[str, T] = {}
    for key, entry in entries.items():
        name = normalise_name(key)
        place = f"{where}: {name}"
        if not isinstance(entry, dict):
            raise CapsimError("catalog entry must be a mapping of fields", where=place)
        if "name" in entry and normalise_name(entry["name"]) != name:
            raise CapsimError(f"entry name {entry['name']!r} differs from its key {key!r}", where=place)
        specs[name] = build({**entry, "name": name}, place)
    return specs


def registry_of(kind: str, specs: Mapping[str, T], *, where: str) -> Registry[T]:
    """Registry of ``specs`` by id and alias; refuses an alias claimed twice or shadowing an id."""
    registry: Registry[T] = Registry(kind)
    owner: dict[str, str] = {}
    for name, spec in specs.items():
        aliases = tuple(getattr(spec, "aliases", ()))
        for alias in aliases:
            key = normalise_name(alias)
            if key in specs or owner.setdefault(key, name) != name:
                raise CapsimError(
                    f"alias {alias!r} of {name!r} is already used by {key if key in specs else owner[key]!r}",
                    where=f"{where}: {name}.aliases",
                    fix=f"give each alias to one {kind} only",
                )
        registry.add(name, spec, aliases=aliases)
    return registry


def _model_at(spec: type[BaseModel], path: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that holds the last element of ``path`` (None when the path leaves the schema)."""
    model: type[BaseModel] | None = spec
    for part in path[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part)) if model is not None else None
        if field is None:
            return None
        candidates = [field.annotation, *typing.get_args(field.annotation)]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return model


def spec_validation_error(
    err: ValidationError,
    spec: type[BaseModel],
    *,
    where: str,
    what: str,
    doc: str,
    derived: Mapping[str, str] | None = None,
) -> CapsimError:
    """Every problem pydantic found in an inline ``what`` (model, device), in one message.

    Why all at once: an inline definition is typed by hand from a datasheet or a config.json; reporting the first
    problem only ("name: Field required") made users fix and rerun once per field. Missing fields are listed
    together, and the fix names every required field. ``derived`` maps a required field that a validator fills
    from others to how (``{"head_dim": "hidden_size / num_heads"}``): it is "missing" only because its sources
    are, so it is not listed as missing.
    """
    derived = derived or {}
    missing: list[str] = []
    problems: list[str] = []
    unknown_known: list[str] = []
    for e in err.errors():
        loc = ".".join(str(part) for part in e["loc"])
        if e["type"] == "missing":
            if loc not in derived:
                missing.append(loc)
        elif e["type"] == "extra_forbidden":
            holder = _model_at(spec, tuple(e["loc"]))
            known = sorted(holder.model_fields) if holder is not None else []
            close = difflib.get_close_matches(str(e["loc"][-1]), known, n=1)
            problems.append(f"{loc}: unknown field" + (f" (did you mean {close[0]!r}?)" if close else ""))
            unknown_known = known
        else:
            message = e["msg"].removeprefix("Value error, ")
            got = repr(e.get("input"))
            got = got if len(got) <= 60 else got[:57] + "..."
            problems.append(f"{loc}: {message} (got {got})" if loc else message)
    if missing:
        problems.insert(0, f"missing required field(s) {', '.join(missing)}")
    bad_locs = [e["loc"] for e in err.errors() if not (e["type"] == "missing" and e["loc"][0] in derived)]
    place = where + ("." + ".".join(str(p) for p in bad_locs[0]) if len(bad_locs) == 1 and bad_locs[0] else "")
    required = [name for name, field in spec.model_fields.items() if field.is_required() and name not in derived]
    fix = f"an inline {what} needs {', '.join(required)}"
    fix += "".join(f" ({name} defaults to {how})" for name, how in derived.items())
    if unknown_known:
        fix += f"; known fields here: {', '.join(unknown_known)}"
    fix += f"; every field is described in {doc}"
    return CapsimError(f"invalid {what}: " + "; ".join(problems), where=place, fix=fix)
