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
                 submit: Callable[[int], None], seed: int = 0):
        self.env, self.table, self.closed, self._submit = env, table, closed, submit
        self.issued = 0  # requests sent so far (the next one is request ``issued``)
        # Think times drawn from a stream of their own, so turning the draw on leaves every other draw as it was.
        self._rng = (np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(3,)))
                     if closed.think_time_dist == "exponential" else None)

    def submit_next(self, _event=None) -> None:
        rid = self.issued
        if rid >= self.table.n:
            return
        self.issued = rid + 1
        self.table.arrival_s[rid] = self.env.now
        self._submit(rid)

    def start(self) -> None:
        users = min(self.closed.concurrency, self.table.n)
        ramp = self.closed.ramp_up_s
        for i in range(users):
            if ramp > 0 and i:  # user i starts at i/users of the ramp (user 0 at once)
                self.env.timeout(ramp * i / users).callbacks.append(self.submit_next)
            else:
                self.submit_next()

    def on_finish(self, finished: np.ndarray, now: float) -> None:
        """Each finished request frees its user, who sends the next after the think time."""
        think, rng = self.closed.think_time_s, self._rng
        for _ in range(len(finished)):
            pause = think if rng is None or think <= 0 else float(rng.exponential(think))
            if pause > 0:
                self.env.timeout(pause).callbacks.append(self.submit_next)
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
