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
"""

from __future__ import annotations

import difflib
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

    def register(self, name: str, *, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name`` and its aliases."""

        def decorate(obj: T) -> T:
            self.add(name, obj, aliases=aliases)
            return obj

        return decorate

    def add(self, name: str, obj: T, *, aliases: tuple[str, ...] = ()) -> None:
        key = normalise_name(name)
        if key in self._items:
            raise ValueError(f"{self.kind} {key!r} is registered twice")
        self._items[key] = obj
        for alias in aliases:
            self._aliases[normalise_name(alias)] = key

    def canonical(self, name: str) -> str:
        """The canonical id for ``name`` or one of its aliases."""
        key = normalise_name(name)
        if key in self._items:
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
        return self._items[self.canonical(name)]

    def names(self) -> list[str]:
        return sorted(self._items)

    def aliases_of(self, name: str) -> list[str]:
        key = self.canonical(name)
        return sorted(a for a, k in self._aliases.items() if k == key)

    def __contains__(self, name: object) -> bool:
        key = normalise_name(str(name))
        return key in self._items or key in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
