"""Shipped YAML catalogs (models, devices): reading, validating and indexing them.

Why shared: every catalog is a YAML mapping ``{section: {id: entry}}`` whose
entries are validated by a pydantic spec and looked up by id or alias through a
:class:`~capsim.registry.Registry`. The checks a catalog needs -- the file
parses, each entry is a mapping, an entry's ``name`` matches its key, no alias
is claimed twice or shadows an id -- are the same for all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any, TypeVar

import yaml

from capsim.errors import CapsimError
from capsim.registry import Registry, normalise_name

T = TypeVar("T")


def read_catalog_yaml(package: str, filename: str, section: str, *, what: str) -> dict[str, Any]:
    """The ``section:`` mapping of a YAML file shipped in ``package``."""
    where = f"{package.replace('.', '/')}/{filename}"
    text = resources.files(package).joinpath(filename).read_text(encoding="utf-8")
    try:
        doc = yaml.safe_load(text)
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
