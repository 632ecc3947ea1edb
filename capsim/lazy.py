"""Modules imported on first use, so one-shot commands start fast.

Why: pandas (with pyarrow) takes about a second to import, most of ``capsim estimate``'s and
``capsim validate``'s start-up, yet those commands never read a trace. The trace loaders name
pandas at module level only inside their functions, so binding ``pd`` to a stand-in that imports
pandas at its first attribute lookup keeps every call site as written while commands that load no
trace never pay for it.

>>> json = lazy_module("json")
>>> json.dumps([1])
'[1]'
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any


class _LazyModule(ModuleType):
    """Stands in for a module until an attribute is read, then forwards every lookup to it."""

    def __getattr__(self, attr: str) -> Any:
        module = importlib.import_module(self.__name__)  # cached in sys.modules after the first time
        return getattr(module, attr)


def lazy_module(name: str) -> Any:
    """A stand-in for module ``name`` that imports it on first attribute access (``pd = lazy_module("pandas")``)."""
    return _LazyModule(name)


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` (PEP 562) that imports ``exports[name]`` at the first use of ``name``.

    Why: a package's ``__init__`` that re-exports its submodules' names imports all of them, so importing one small
    submodule (``traces.config``, which every scenario needs) pulled in the whole package. With
    ``__getattr__ = lazy_exports(__name__, {"build_requests": "traces.build", ...})`` the names resolve on first
    use and are then cached in the package's namespace.
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)  # later lookups find it without this function
        return value

    return __getattr__
