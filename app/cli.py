"""``capsim app``: start the what-if dashboard on this machine.

Why a sub-command rather than telling users to type ``streamlit run``: the page
file lives inside the installed package, and the defaults that matter for a
local tool -- listen on 127.0.0.1 only, port 8501, no usage statistics, no
interactive first-run prompt -- should not be each user's job to remember.

    capsim app                      # http://127.0.0.1:8501
    capsim app --port 8600          # another port
    capsim app --host 0.0.0.0       # reachable from other machines (no authentication!)
"""


import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType
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
        "--client.toolbarMode", "minimal",  # no "Deploy" button: this page is served locally, not published
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
            fix="reinstall capsim (pip install -e .), which depends on Streamlit, or pip install streamlit",
        )


class _Stopped(Exception):
    """Raised by the signal handler of :func:`serve` to leave the wait for the child."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _die_with_parent() -> None:  # pragma: no cover -- runs in the forked child
    """Linux: have the kernel send the child SIGTERM if capsim dies, even by SIGKILL (which no handler sees)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def serve(command: list[str], env: dict[str, str] | None = None, *, grace_s: float = 10.0) -> int:
    """Run the dashboard server ``command`` as a child process; stop it whenever capsim stops.

    Why: ``subprocess.call`` left the Streamlit server serving when capsim was stopped by anything but Ctrl+C in its
    terminal (which signals the whole process group): ``kill``, a service manager's SIGTERM, a closed SSH session's
    SIGHUP. Those signals now stop the child too (SIGTERM, then SIGKILL after ``grace_s``); on Linux the child is
    also told to exit if capsim is killed outright. Returns the exit status for capsim: the child's, 0 after
    Ctrl+C, 128 + the signal number after another signal.
    """
    child = subprocess.Popen(command, env=env, preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise _Stopped(signum)

    catchable = [getattr(signal, name) for name in ("SIGTERM", "SIGHUP", "SIGQUIT") if hasattr(signal, name)]
    previous = {signum: signal.signal(signum, stop) for signum in catchable}
    try:
        return child.wait()
    except KeyboardInterrupt:
        return 0
    except _Stopped as stopped:
        return 128 + stopped.signum
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


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
        raise typer.Exit(serve(streamlit_command(port, host), env))
