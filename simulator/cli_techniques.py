"""``capsim list techniques`` and ``capsim explain NAME``: what each technique does, its parameters and sources.

Everything printed comes from the technique's registered class -- its ``Params`` model (types, defaults,
bounds, descriptions), ``summary``, ``mechanism``, ``sources`` and ``presets`` -- so a new technique is
documented here without touching this module.
"""


import inspect
import typing
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from simulator.cli_common import DebugOpt, _guard, out_console


def techniques_table() -> Table:
    from simulator.techniques import TECHNIQUES

    t = Table(title="techniques")
    for col in ("id", "what", "parameters (defaults)", "aliases"):
        t.add_column(col)
    for name in TECHNIQUES.names():
        cls = TECHNIQUES.get(name)
        params = ", ".join(f"{k}={f.default}" for k, f in cls.Params.model_fields.items())
        t.add_row(name, escape(cls.summary), escape(params), ", ".join(TECHNIQUES.aliases_of(name)))
    return t


def _bounds(field) -> str:
    parts = []
    for meta in field.metadata:
        for attr, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            v = getattr(meta, attr, None)
            if v is not None:
                parts.append(f"{sym} {v}")
    return ", ".join(parts)


def explain_system(name: str) -> None:
    """Print a serving system's description, roles, parameters and sources (``serving:`` with ``pools:``)."""
    from simulator.pools.build import SERVING_SYSTEMS

    cls = SERVING_SYSTEMS.get(name)
    canonical = SERVING_SYSTEMS.canonical(name)
    out_console.print(f"[bold]{canonical}[/bold] (serving system) -- {escape(cls.summary)}\n")
    out_console.print(escape(inspect.cleandoc(cls.__doc__ or "")) + "\n")
    out_console.print(f"pool roles: {', '.join(cls.roles)} (required: {', '.join(cls.required)})\n")
    _params_table(cls.Params, f"parameters (serving: {{name: {canonical}, ...}})")
    if cls.sources:
        out_console.print("\n[bold]sources[/bold]")
        for s in cls.sources:
            out_console.print(f"- {escape(s)}")


def _params_table(params_cls, title: str) -> None:
    params = Table(title=title)
    for col in ("parameter", "type", "default", "bounds", "description"):
        params.add_column(col)
    for key, f in params_cls.model_fields.items():
        if typing.get_origin(f.annotation) is typing.Literal:
            ann = " | ".join(repr(a) for a in typing.get_args(f.annotation))
        else:
            ann = getattr(f.annotation, "__name__", None) or str(f.annotation).replace("typing.", "")
        default = f.default if f.default_factory is None else f.default_factory()
        params.add_row(key, escape(ann), escape(repr(default)), _bounds(f), escape(f.description or ""))
    out_console.print(params)


def explain(name: str) -> None:
    """Print the technique's mechanism, parameters, sources and presets (or a serving system's)."""
    from simulator.pools.build import SERVING_SYSTEMS
    from simulator.techniques import TECHNIQUES

    if name not in TECHNIQUES and name in SERVING_SYSTEMS:
        explain_system(name)
        return
    cls = TECHNIQUES.get(name)
    canonical = TECHNIQUES.canonical(name)
    out_console.print(f"[bold]{canonical}[/bold] -- {escape(cls.summary)}\n")
    out_console.print(escape(inspect.cleandoc(cls.mechanism or "")) + "\n")
    params = Table(title=f"parameters (techniques: [{{name: {canonical}, ...}}])")
    for col in ("parameter", "type", "default", "bounds", "description"):
        params.add_column(col)
    for key, f in cls.Params.model_fields.items():
        if typing.get_origin(f.annotation) is typing.Literal:
            ann = " | ".join(repr(a) for a in typing.get_args(f.annotation))
        else:
            ann = getattr(f.annotation, "__name__", None) or str(f.annotation).replace("typing.", "")
        params.add_row(key, escape(ann), escape(repr(f.default)), _bounds(f), escape(f.description or ""))
    out_console.print(params)
    if cls.sources:
        out_console.print("\n[bold]sources[/bold]")
        for s in cls.sources:
            out_console.print(f"- {escape(s)}")
    presets = getattr(cls, "presets", {}) or {}
    if presets:
        table = Table(title="presets (preset: NAME fills every parameter not given)")
        for col in ("preset", "settings", "reported by the paper", "source"):
            table.add_column(col)
        for pname, p in presets.items():
            settings = ", ".join(f"{k}={v}" for k, v in p.params.items())
            table.add_row(pname, escape(settings + f" ({p.derivation})"), escape(p.reported), escape(p.source))
        out_console.print(table)


def register(app: typer.Typer) -> None:
    """Add ``explain`` to ``app`` (``list techniques`` is wired into ``capsim list``)."""

    @app.command("explain")
    def explain_cmd(
        name: Annotated[str, typer.Argument(help="A technique id (`capsim list techniques`) or a serving system "
                                                 "(`capsim list systems`).")],
        debug: DebugOpt = False,
    ) -> None:
        """Explain a serving technique: how capsim models it, its parameters, sources and presets."""
        _guard(debug, lambda: explain(name))
