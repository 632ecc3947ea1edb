"""Progress of long CLI work, on a terminal and in logs alike.

Why: a sweep, a plan or a many-configuration run can take minutes. On a terminal a rich bar shows it; when
stderr is a file or a CI log a bar draws nothing, and silence for minutes looks like a hang. There a line is
printed at most every ``every_s`` seconds (and when the work ends): ``plan: goodput search 3/20 (45 s)``. One
long step (a single simulation of a big trace) advances no counter, so in logs a heartbeat thread repeats the
line every ``every_s`` seconds while the work runs, and the log never goes quiet for longer than that.

>>> with Progress("sweep", total=2, console=None) as p:   # doctest: +SKIP
...     p.advance()
"""

from __future__ import annotations

import threading
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress


class Progress:
    """A labelled counter shown as a bar on a terminal, as periodic plain lines elsewhere."""

    def __init__(self, description: str, total: int, *, console: Console, every_s: float = 5.0,
                 show: bool = True):
        self.description, self.total, self.completed = description, int(total), 0
        self._console, self._every = console, every_s
        self._bar: RichProgress | None = None
        self._task: Any = None
        self._show = show
        self._t0 = self._last = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def __enter__(self) -> Progress:
        if self._show and self._console.is_terminal:
            self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), console=self._console, transient=True)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.description, total=self.total)
        elif self._show and self._every > 0:
            self._ticker = threading.Thread(target=self._heartbeat, name="capsim-progress", daemon=True)
            self._ticker.start()
        return self

    def _heartbeat(self) -> None:
        """Repeat the current line while no update has printed one for ``every_s`` seconds (logs only)."""
        while not self._stop.wait(self._every / 4):
            with self._lock:
                if time.monotonic() - self._last >= self._every:
                    self._last = time.monotonic()
                    self._line()

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        if self._bar is not None:
            self._bar.__exit__(*exc)
        elif self._show and exc[0] is None and time.monotonic() - self._t0 >= self._every:
            self._line()  # the closing count, for work that ran long enough to have printed lines

    def update(self, *, description: str | None = None, completed: int | None = None,
               total: int | None = None) -> None:
        if description is not None:
            self.description = description
        if completed is not None:
            self.completed = int(completed)
        if total is not None:
            self.total = int(total)
        if self._bar is not None:
            self._bar.update(self._task, description=self.description, completed=self.completed, total=self.total)
            return
        with self._lock:
            now = time.monotonic()
            if self._show and now - self._last >= self._every:
                self._last = now
                self._line()

    def advance(self, n: int = 1) -> None:
        self.update(completed=self.completed + n)

    def _line(self) -> None:
        elapsed = time.monotonic() - self._t0
        self._console.print(f"{self.description}: {self.completed}/{self.total} ({elapsed:.0f} s)", highlight=False)
