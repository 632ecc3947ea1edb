"""Streamlit widgets generated from :class:`~app.fields.FormField` descriptions, with error slots.

Why generated: the page never lists a scheduler's parameters or a section's
fields by hand; it asks :func:`app.fields.form_fields` and draws whatever the
schema holds, with the field's description as the widget's help text.

Why error *slots*: a problem is only known after every widget has been read
and the set-up validated, but it must appear next to the widget that caused
it. Each widget reserves an empty container right below itself under its field
path (``cfg1.deployment.tp``); :meth:`ErrorSlots.show` later writes the error
into the slot of that path, or of its nearest ancestor that has one.

Widget keys are ``w{generation}-{path}``: loading a scenario file bumps the
generation, so every widget is created afresh from the loaded values.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

import streamlit as st
import yaml

from app.checks import Issue
from app.fields import FormField, default_value


def widget_key(generation: int, path: str) -> str:
    """The Streamlit key of the widget for ``path`` (also its CSS class ``st-key-<key>`` in the browser)."""
    return f"w{generation}-" + re.sub(r"[^A-Za-z0-9_-]", "_", path.replace(".", "-"))


class ErrorSlots:
    """Containers reserved below widgets, by field path, to receive that field's errors."""

    def __init__(self) -> None:
        self._slots: dict[str, Any] = {}

    def reserve(self, ui: Any, path: str) -> None:
        self._slots[path] = ui.container()

    def find(self, path: str) -> str | None:
        """The reserved path closest to ``path`` (itself, else its nearest ancestor), if any."""
        p = path
        while p:
            if p in self._slots:
                return p
            p = p.rpartition(".")[0]
        return None

    def show(self, path: str, message: str) -> bool:
        """Write ``message`` as an error in the slot for ``path``; False when no slot fits."""
        found = self.find(path)
        if found is None:
            return False
        self._slots[found].error(message if found == path else f"{path}: {message}")
        return True


def _as_number(value: Any, integer: bool) -> int | float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(x):
        return None
    return int(round(x)) if integer else x


#: Abbreviations written in capitals in labels.
_ACRONYMS = {"ttft", "tpot", "tbt", "e2e", "qps", "tp", "pp", "kv", "slo", "cv", "ep", "mfu", "mbu", "gpu", "lm"}
#: Unit suffixes of field names, shown as the unit in brackets.
_UNITS = {"s": "s", "ms": "ms", "us": "µs", "gib": "GiB", "gb": "GB", "w": "W", "usd": "USD", "rps": "req/s",
          "tps": "tokens/s", "pct": "%"}


def _label(name: str) -> str:
    """A field name in plain words: ``ttft_s`` -> ``TTFT (s)``, ``max_num_batched_tokens`` -> ``max num batched
    tokens``; the help text (the field's description) says the rest."""
    words = name.split("_")
    unit = None
    if len(words) > 1 and words[-1] in _UNITS:
        unit = _UNITS[words.pop()]
    text = " ".join(w.upper() if w in _ACRONYMS else w for w in words)
    return f"{text} ({unit})" if unit else text


class Form:
    """Draws widgets for fields, remembers their slots, and collects problems found while reading them."""

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.slots = ErrorSlots()
        self.issues: list[Issue] = []

    def key(self, path: str) -> str:
        return widget_key(self.generation, path)

    def field(
        self,
        ui: Any,
        field: FormField,
        path: str,
        initial: Any,
        *,
        key_path: str | None = None,
        options: Sequence[Any] | None = None,
        label: str | None = None,
    ) -> Any:
        """Draw one field and return its value; ``options`` turns a text field into a choice."""
        key = self.key(key_path or path)
        label = label or _label(field.name)
        kind = "choice" if options is not None else field.kind
        if initial is None and not field.optional:
            initial = default_value(field)
        if kind == "bool":
            value: Any = ui.checkbox(label, value=bool(initial), key=key, help=field.help)
        elif kind == "choice":
            value = self._choice(ui, field, label, initial, key, list(options if options is not None else field.options))
        elif kind in ("int", "float"):
            value = self._number(ui, field, label, initial, key)
        elif kind == "text":
            text = ui.text_input(label, value="" if initial is None else str(initial), key=key, help=field.help)
            value = None if field.optional and not text.strip() else text
        elif kind == "model":
            value = self._nested(ui, field, path, initial, key_path or path)
        else:
            value = self._yaml(ui, field, path, label, initial, key)
        self.slots.reserve(ui, path)
        return value

    def fields(
        self,
        ui: Any,
        fields: Iterable[FormField],
        prefix: str,
        values: dict[str, Any],
        *,
        key_prefix: str | None = None,
        options: dict[str, Sequence[Any]] | None = None,
    ) -> dict[str, Any]:
        """Draw every field (initial values from ``values``) and return ``{name: value}`` for all of them."""
        out = {}
        for f in fields:
            out[f.name] = self.field(
                ui, f, f"{prefix}.{f.name}", values.get(f.name),
                key_path=f"{key_prefix or prefix}.{f.name}", options=(options or {}).get(f.name),
            )
        return out

    # ----------------------------------------------------------------- kinds
    def _choice(self, ui: Any, field: FormField, label: str, initial: Any, key: str, options: list[Any]) -> Any:
        if field.optional and None not in options:
            options = [None, *options]
        if initial not in options and initial is not None:
            options = [*options, initial]  # keep an unusual loaded value selectable (validation explains it)
        index = options.index(initial) if initial in options else 0
        return ui.selectbox(
            label, options, index=index, key=key, help=field.help,
            format_func=lambda o: "(not set)" if o is None else str(o),
        )

    def _number(self, ui: Any, field: FormField, label: str, initial: Any, key: str) -> Any:
        integer = field.kind == "int"
        value = _as_number(initial, integer)
        if value is None and not field.optional:
            value = _as_number(default_value(field), integer)
        if integer:
            return ui.number_input(
                label, value=value, step=1, key=key, help=field.help, placeholder="not set" if field.optional else None
            )
        return ui.number_input(
            label, value=None if value is None else float(value), format="%g", key=key, help=field.help,
            placeholder="not set" if field.optional else None,
        )

    def _nested(self, ui: Any, field: FormField, path: str, initial: Any, key_path: str) -> dict[str, Any] | None:
        from app.fields import form_fields, prune_defaults

        initial = initial if isinstance(initial, dict) else None
        if field.optional:
            on = ui.checkbox(f"set {field.name}", value=initial is not None, key=self.key(key_path + ".set"),
                             help=field.help)
            if not on:
                return None
        else:
            ui.caption(f"{field.name}: {field.help}")
        sub = form_fields(field.model)
        values = self.fields(ui, sub, path, initial or {}, key_prefix=key_path)
        return prune_defaults({k: v for k, v in values.items() if v is not None}, sub)

    def _yaml(self, ui: Any, field: FormField, path: str, label: str, initial: Any, key: str) -> Any:
        text0 = "" if initial in (None, "", {}, []) else yaml.safe_dump(initial, sort_keys=False).strip()
        text = ui.text_area(f"{label} (YAML)", value=text0, key=key, help=field.help, height=90)
        if not text.strip():
            return None if field.optional else default_value(field)
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            self.issues.append(Issue(path, f"not valid YAML ({problem})"))
            return initial


def render_issues(form: Form, issues: Iterable[Issue]) -> list[Issue]:
    """Show each issue in its slot; return those that have no slot (the page lists them at the top)."""
    unplaced = []
    for issue in issues:
        if not form.slots.show(issue.path, issue.message):
            unplaced.append(issue)
    return unplaced


def clear_widget_state(prefix: str = "w") -> None:
    """Forget generated widgets' state (after loading a file, so that new widgets start from its values)."""
    for key in [k for k in st.session_state if isinstance(k, str) and k.startswith(prefix)]:
        del st.session_state[key]
