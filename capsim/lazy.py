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
