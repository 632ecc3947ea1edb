"""``capsim app``: start the what-if dashboard on this machine.

Why a sub-command rather than telling users to type ``streamlit run``: the page
file lives inside the installed package, and the defaults that matter for a
local tool -- listen on 127.0.0.1 only, port 8501, no usage statistics, no
interactive first-run prompt -- should not be each user's job to remember.

    capsim app                      # http://127.0.0.1:8501
    capsim app --port 8600          # another port
    capsim app --host 0.0.0.0       # reachable from other machines (no authentication!)
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from capsim.errors import CapsimError

#: The Streamlit page that ``capsim app`` serves.
PAGE = Path(__file__).resolve().parent / "dashboard.py"
DEFAULT_PORT = 8501
DEFAULT_HOST = "127.0.0.1"


def streamlit_command(port: int, host: str, page: Path = PAGE) -> list[str]:
    """The command line that serves ``page`` (headless: Streamlit prints the URL instead of prompting)."""
    return [
        sys.executable, "-m", "streamlit", "run", str(page),
        "--server.port", str(port),
        "--server.address", host,
        "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
        "--browser.serverAddress", host,
        "--browser.serverPort", str(port),
    ]


def _check(port: int) -> None:
    if not 1 <= port <= 65535:
        raise CapsimError(f"port {port} is out of range", where="--port", fix="use a port between 1024 and 65535")
    if importlib.util.find_spec("streamlit") is None:
        raise CapsimError(
            "the dashboard needs Streamlit, which is not installed",
            where="capsim app",
            fix="pip install 'capsim[app]' (or pip install streamlit)",
        )


def register(app: typer.Typer) -> None:
    """Add the ``app`` command to the ``capsim`` command line."""

    @app.command("app")
    def app_command(
        port: Annotated[int, typer.Option(help="Port to serve on (default 8501).")] = DEFAULT_PORT,
        host: Annotated[
            str, typer.Option(help="Address to listen on; 127.0.0.1 keeps the page local to this machine.")
        ] = DEFAULT_HOST,
    ) -> None:
        """Start the what-if dashboard (Streamlit) at http://HOST:PORT; stop it with Ctrl+C."""
        from rich.markup import escape

        from simulator.cli_common import err_console

        try:
            _check(port)
        except CapsimError as exc:
            err_console.print(f"[bold red]error:[/] {escape(exc.render())}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        err_console.print(f"capsim dashboard: http://{host}:{port}  (Ctrl+C to stop)", highlight=False)
        env = {**os.environ, "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
        try:
            code = subprocess.call(streamlit_command(port, host), env=env)
        except KeyboardInterrupt:
            code = 0
        raise typer.Exit(code)
