"""Strict scalar types for the counts and flags users write in YAML.

Why: pydantic's default ("lax") mode turns ``true`` into 1 for an ``int`` field and ``1`` or ``"yes"`` into
``True`` for a ``bool`` field, so ``tp: true`` silently became ``tp=1``. A count must be a whole number and a flag
must be ``true`` or ``false``; anything else is an error that names the field. numpy integers and whole floats
(``2.0``) are still accepted as counts: they mean what they say, and code that builds configurations passes them.

>>> from pydantic import TypeAdapter
>>> TypeAdapter(Count).validate_python(2)
2
>>> TypeAdapter(Flag).validate_python(False)
False
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError


def _whole_number(value: Any) -> Any:
    if isinstance(value, (bool, np.bool_)):
        raise PydanticCustomError("count_type", "expected a whole number; true/false is not a count")
    if isinstance(value, (str, bytes)):
        raise PydanticCustomError("count_type", "expected a whole number, got text; write the number without quotes")
    return value  # pydantic's int validation does the rest (refuses 2.5, accepts numpy integers)


def _true_or_false(value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise PydanticCustomError("flag_type", "expected true or false")


#: A whole number: refuses booleans and text (``tp: true`` is an error, not tp=1).
Count = Annotated[int, BeforeValidator(_whole_number)]
#: A whole number or None. Spelt as one annotation around the union (not ``Count | None``) so that the field's
#: annotation stays ``int | None``, which the dashboard reads to choose a number widget.
OptionalCount = Annotated[int | None, BeforeValidator(_whole_number)]
#: ``true`` or ``false``: refuses numbers and text (``rotary: 1`` is an error, not True).
Flag = Annotated[bool, BeforeValidator(_true_or_false)]
