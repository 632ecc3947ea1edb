"""The users of a closed-loop workload, and how many requests a run issued -- shared by every engine.

Why a module: a closed loop is the same whatever serves it -- ``concurrency`` users, each sending its next
request (in stream order) ``think_time_s`` after its previous one finished -- so the single-pool engine and the
pool engine hand it a ``submit(rid)`` and get back the ``on_finish`` callback their replicas call.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import simpy

from simulator.requests import RequestTable
from traces.stream import ClosedLoop


class ClosedLoopClients:
    """``closed.concurrency`` users sending the requests of ``table`` in order through ``submit``."""

    def __init__(self, env: simpy.Environment, table: RequestTable, closed: ClosedLoop,
                 submit: Callable[[int], None]):
        self.env, self.table, self.closed, self._submit = env, table, closed, submit
        self.issued = 0  # requests sent so far (the next one is request ``issued``)

    def submit_next(self, _event=None) -> None:
        rid = self.issued
        if rid >= self.table.n:
            return
        self.issued = rid + 1
        self.table.arrival_s[rid] = self.env.now
        self._submit(rid)

    def start(self) -> None:
        for _ in range(min(self.closed.concurrency, self.table.n)):
            self.submit_next()

    def on_finish(self, finished: np.ndarray, now: float) -> None:
        """Each finished request frees its user, who sends the next after the think time."""
        think = self.closed.think_time_s
        for _ in range(len(finished)):
            if think > 0:
                self.env.timeout(think).callbacks.append(self.submit_next)
            else:
                self.submit_next()


def arrived_requests(table: RequestTable, clients: ClosedLoopClients | None, now: float,
                     max_time_s: float | None) -> int:
    """Requests that were part of the run: a run stopped by ``max_time_s`` leaves out those that had not arrived
    (never issued, for a closed loop) -- counting them as unfinished would make attainment depend on how far the
    workload reached past the stop."""
    if clients is not None:
        return clients.issued
    if max_time_s is not None:
        return int(np.searchsorted(table.arrival_s, now, side="left"))  # arrivals are sorted
    return table.n
