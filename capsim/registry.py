"""String-keyed registries.

Why: a scenario names its scheduler, router, trace format or technique by a
string, and a new one must plug in by registering itself in its own module --
never by adding a branch to the engine. A lookup miss raises
:class:`~capsim.errors.UnknownNameError` that lists the closest known names.

>>> schedulers = Registry("scheduler")
>>> @schedulers.register("fifo", aliases=("first-come",))
... class Fifo: ...
>>> schedulers.get("first-come") is Fifo
True

A shipped plug-in may instead be *declared* by name with the module that registers it
(``schedulers.declare("orca", "simulator.schedulers.orca")``): the module is imported at the first lookup of
that name. Why: a one-shot command such as ``capsim estimate`` uses one scheduler and no technique, and importing
every plug-in module was a noticeable share of its start-up. Aliases live in the modules only, so a name the
registry does not know yet (an alias, or a typo) imports every declared module before it is resolved or refused:
lookups answer exactly as if every module had been imported up front.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from capsim.errors import UnknownNameError

T = TypeVar("T")


def normalise_name(name: str) -> str:
    """Catalog ids are lower-case with hyphens; accept ``Llama_3.1 8B`` style input too."""
    return "-".join(str(name).strip().lower().replace("_", "-").split())


class Registry(Generic[T]):
    """Maps canonical names (and aliases) to plug-in objects of one kind."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}
        self._declared: dict[str, str] = {}  # canonical name -> the module that registers it when imported

    def register(self, name: str, *, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name`` and its aliases."""

        def decorate(obj: T) -> T:
            self.add(name, obj, aliases=aliases)
            return obj

        return decorate

    def declare(self, name: str, module: str) -> None:
        """Name a plug-in that ``module`` registers when imported; it is imported at the first lookup of ``name``."""
        key = normalise_name(name)
        if key in self._items:  # the module was imported already
            return
        if self._declared.setdefault(key, module) != module:
            raise ValueError(f"{self.kind} {key!r} is declared twice ({self._declared[key]} and {module})")

    def add(self, name: str, obj: T, *, aliases: tuple[str, ...] = ()) -> None:
        key = normalise_name(name)
        if key in self._items:
            raise ValueError(f"{self.kind} {key!r} is registered twice")
        self._declared.pop(key, None)  # a declared module registering itself
        self._items[key] = obj
        for alias in aliases:
            self._aliases[normalise_name(alias)] = key

    def canonical(self, name: str) -> str:
        """The canonical id for ``name`` or one of its aliases."""
        key = normalise_name(name)
        if key not in self._items and key not in self._declared and key not in self._aliases:
            self._import_declared()  # an alias or a miss: answer as if every plug-in were registered
        if key in self._items or key in self._declared:
            return key
        if key in self._aliases:
            return self._aliases[key]
        known = sorted(self._items) + sorted(self._aliases)
        close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        raise UnknownNameError(
            f"unknown {self.kind} {name!r}",
            where=self.kind,
            fix=f"{hint}known {self.kind}s: {', '.join(sorted(self._items))} "
            f"(run `capsim list {self.kind}s`)",
        )

    def get(self, name: str) -> T:
        key = self.canonical(name)
        if key not in self._items:
            self._import(key)
        return self._items[key]

    def names(self) -> list[str]:
        return sorted([*self._items, *self._declared])

    def aliases_of(self, name: str) -> list[str]:
        self._import_declared()
        key = self.canonical(name)
        return sorted(a for a, k in self._aliases.items() if k == key)

    def _import(self, key: str) -> None:
        """Import the module declared for ``key``, which registers it."""
        module = self._declared[key]
        importlib.import_module(module)
        if key not in self._items:
            raise ValueError(f"{module} was declared to register {self.kind} {key!r} but did not")

    def _import_declared(self) -> None:
        """Import every declared module (their aliases are known only once they have registered)."""
        for key in list(self._declared):
            if key in self._declared:  # one module may register several names
                self._import(key)

    def __contains__(self, name: object) -> bool:
        key = normalise_name(str(name))
        if key not in self._items and key not in self._declared and key not in self._aliases:
            self._import_declared()
        return key in self._items or key in self._declared or key in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items) + len(self._declared)
