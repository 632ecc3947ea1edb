"""What every ``capsim`` sub-command shares: consoles, common options, the error guard.

Sub-command modules (``simulator.cli_plan``, ``app.cli``, ``hwmodels.calibration.cli``) import from here,
never from :mod:`simulator.cli`, which imports them to register their commands.
"""

from __future__ import annotations

import traceback
import warnings
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from capsim.errors import CapsimError

# Tables are wide; when stdout is not a terminal (piped, CI, docs) do not squeeze them to 80 columns.
out_console = Console() if Console().is_terminal else Console(width=160)
err_console = Console(stderr=True)

DebugOpt = Annotated[bool, typer.Option("--debug", help="Show the Python traceback on errors.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a field by dotted path, e.g. --set workload.qps=8 (repeatable)."),
]


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """Print a Python warning as one ``warning:`` line, like the CLI's own (not as a source location)."""
    err_console.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)


def _guard(debug: bool, action: Callable[[], Any]) -> Any:
    """Run ``action``; turn user errors into a clear message and exit status 2."""
    try:
        with warnings.catch_warnings():
            if not debug:
                warnings.showwarning = _show_warning
            return action()
    except CapsimError as exc:
        if debug:
            traceback.print_exc()
        err_console.print(f"[bold red]error:[/] {escape(exc.render())}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        err_console.print("interrupted")
        raise typer.Exit(130) from None
    except Exception as exc:  # a bug, not bad input: say so, and how to see more
        if debug:
            traceback.print_exc()
        err_console.print(
            f"[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc))}. "
            "This is a capsim bug; rerun with --debug and report the traceback.",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1) from None


def _json_default(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)
