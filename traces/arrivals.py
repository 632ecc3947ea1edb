"""Arrival processes, registered in :data:`ARRIVALS`.

Why a registry: ``workload.arrival`` names the process, each process says
which workload fields it reads (so ``cv`` given to a Poisson process is an
error, not silently ignored), and a new process is one class.

Open-loop processes are renewal processes: i.i.d. gaps with mean ``1/qps``,
the first request at t = 0. They are generated with vectorised numpy draws:
a million arrivals take a few milliseconds.

>>> import numpy as np
>>> from traces.config import WorkloadConfig
>>> draw = ARRIVALS.get("constant").sample(WorkloadConfig(arrival="constant", qps=4.0),
...     np.random.default_rng(0), num_requests=3, duration_s=None, trace=None)
>>> draw.arrival_s.tolist()
[0.0, 0.25, 0.5]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from capsim.errors import CapsimError
from capsim.registry import Registry
from traces.stream import ClosedLoop

if TYPE_CHECKING:
    from traces.config import WorkloadConfig
    from traces.loaders.table import TraceTable

#: Workload fields that belong to arrival processes; each process declares the ones it uses.
ARRIVAL_PARAMETERS = ("qps", "cv", "concurrency", "think_time_s", "think_time_dist", "ramp_up_s", "servegen")

#: Refuse to draw more arrivals than this in one stream (a guard against a typo such as qps: 1e9).
MAX_REQUESTS = 50_000_000


@dataclass(frozen=True)
class ArrivalDraw:
    """Arrival times; for trace replay the trace rows they belong to; lengths when the process supplies them."""

    arrival_s: np.ndarray
    rows: np.ndarray | None = None
    lengths: dict[str, np.ndarray] | None = None  # {"prompt": ..., "output": ...}


class ArrivalProcess:
    """Base class of an arrival process.

    ``uses`` lists the workload fields (of :data:`ARRIVAL_PARAMETERS`) it reads;
    ``needs_trace`` marks processes that replay ``workload.trace``;
    ``supplies_lengths`` marks processes whose draws carry lengths (used for
    a side that neither ``prompt``/``output`` nor ``trace`` sets); ``finite``
    marks processes that end by themselves, so a stream needs no request
    count or duration.
    """

    uses: ClassVar[frozenset[str]] = frozenset()
    needs_trace: ClassVar[bool] = False
    supplies_lengths: ClassVar[bool] = False
    finite: ClassVar[bool] = False
    description: ClassVar[str] = ""

    def check(self, cfg: WorkloadConfig) -> None:
        """Raise ValueError when the workload lacks something this process always needs."""

    def sample(
        self,
        cfg: WorkloadConfig,
        rng: np.random.Generator,
        *,
        num_requests: int | None,
        duration_s: float | None,
        trace: TraceTable | None,
    ) -> ArrivalDraw:
        raise NotImplementedError

    def closed_loop(self, cfg: WorkloadConfig) -> ClosedLoop | None:
        """The closed-loop population, for processes that are not open loop."""
        return None

    def describe(self, cfg: WorkloadConfig) -> str:
        raise NotImplementedError


ARRIVALS: Registry[ArrivalProcess] = Registry("arrival process")


def register_arrival(name: str, *, aliases: tuple[str, ...] = ()):
    """Class decorator: register one (stateless) instance of the process under ``name``."""

    def decorate(cls: type[ArrivalProcess]) -> type[ArrivalProcess]:
        ARRIVALS.add(name, cls(), aliases=aliases)
        return cls

    return decorate


# ServeGen's process lives in its own module (it reads a data folder); imported when a workload names it.
ARRIVALS.declare("servegen", "traces.servegen")


def require_qps(cfg: WorkloadConfig) -> float:
    """The request rate of an open-loop process; checked at build time so a planner may fill it in later."""
    if cfg.qps is None:
        raise CapsimError(
            f"arrival process {cfg.arrival!r} needs a request rate",
            where="workload.qps",
            fix="set workload.qps to the mean rate in requests/s",
        )
    return float(cfg.qps)


def check_request_count(expected: float) -> None:
    if expected > MAX_REQUESTS:
        raise CapsimError(
            f"this would generate about {expected:,.0f} requests (limit {MAX_REQUESTS:,})",
            where="workload",
            fix="lower workload.qps or the duration, or pass num_requests",
        )


class RenewalProcess(ArrivalProcess):
    """Open loop with i.i.d. gaps; subclasses supply ``gaps(cfg, rng, n)`` with mean ``1/qps``."""

    def gaps(self, cfg: WorkloadConfig, rng: np.random.Generator, n: int) -> np.ndarray:
        raise NotImplementedError

    def sample(self, cfg, rng, *, num_requests, duration_s, trace):
        qps = require_qps(cfg)
        if duration_s is None:
            check_request_count(num_requests)
            times = np.concatenate(([0.0], np.cumsum(self.gaps(cfg, rng, max(num_requests - 1, 0)))))
            return ArrivalDraw(times[:num_requests])
        expected = qps * duration_s
        cap = num_requests if num_requests is not None else np.inf
        check_request_count(min(expected, cap))
        # Draw a little more than the expected count, then top up in chunks until the window is covered.
        chunk = int(min(expected + 6 * np.sqrt(expected) + 16, cap))
        parts = [np.array([0.0]), np.cumsum(self.gaps(cfg, rng, chunk))]
        total, last = chunk + 1, parts[-1][-1] if chunk else 0.0
        while last < duration_s and total < cap:
            extra = np.cumsum(self.gaps(cfg, rng, max(chunk // 4, 1024))) + last
            parts.append(extra)
            total, last = total + len(extra), extra[-1]
        times = np.concatenate(parts)
        times = times[times < duration_s]
        if num_requests is not None:
            times = times[:num_requests]
        return ArrivalDraw(times)


@register_arrival("poisson")
class Poisson(RenewalProcess):
    """Poisson process: exponential gaps with mean ``1/qps`` (memoryless, CV = 1)."""

    uses = frozenset({"qps"})
    description = "Poisson arrivals at qps req/s (exponential gaps)"

    def gaps(self, cfg, rng, n):
        return rng.exponential(1.0 / cfg.qps, size=n)

    def describe(self, cfg):
        return f"poisson({_rate(cfg)})"


@register_arrival("gamma")
class Gamma(RenewalProcess):
    """Gamma-distributed gaps with mean ``1/qps`` and coefficient of variation ``cv``.

    Shape k = 1/cv^2 and scale = 1/(qps k): cv = 1 is Poisson, cv > 1 is
    burstier (clusters of requests with long pauses), cv < 1 more regular.
    Production LLM traffic often shows cv > 1 (e.g. ServeGen, arXiv 2505.09999).
    """

    uses = frozenset({"qps", "cv"})
    description = "gamma-distributed gaps at qps req/s with coefficient of variation cv (cv > 1 is burstier)"

    def gaps(self, cfg, rng, n):
        shape = 1.0 / cfg.cv**2
        return rng.gamma(shape, 1.0 / (cfg.qps * shape), size=n)

    def describe(self, cfg):
        return f"gamma({_rate(cfg)}, cv {cfg.cv:g})"


@register_arrival("constant", aliases=("uniform-gaps", "deterministic"))
class Constant(RenewalProcess):
    """Evenly spaced arrivals exactly ``1/qps`` apart (the D in M/D/1-style sanity checks)."""

    uses = frozenset({"qps"})
    description = "evenly spaced arrivals, exactly 1/qps seconds apart"

    def gaps(self, cfg, rng, n):
        return np.full(n, 1.0 / cfg.qps)

    def sample(self, cfg, rng, *, num_requests, duration_s, trace):
        # Exact multiples of the gap (a cumulative sum would accumulate rounding error).
        qps = require_qps(cfg)
        n = num_requests
        if duration_s is not None:
            in_window = int(np.ceil(duration_s * qps))
            n = in_window if n is None else min(n, in_window)
        check_request_count(n)
        times = np.arange(n, dtype=np.float64) / qps
        if duration_s is not None:
            times = times[times < duration_s]
        return ArrivalDraw(times)

    def describe(self, cfg):
        return f"constant({_rate(cfg)})"


def _all_at_zero(num_requests: int | None, problem: str, where: str, fix: str) -> ArrivalDraw:
    """``num_requests`` arrivals at t = 0 (closed loop issues them as users free up; offline has them all at once);
    a run without a request count is refused with ``problem``."""
    if num_requests is None:
        raise CapsimError(problem, where=where, fix=fix)
    check_request_count(num_requests)
    return ArrivalDraw(np.zeros(num_requests))


@register_arrival("closed-loop", aliases=("closed",))
class ClosedLoopArrivals(ArrivalProcess):
    """``concurrency`` users, each sending its next request ``think_time_s`` after the previous one completes.

    The stream carries no arrival times (all zeros); the simulator issues the
    requests in stream order as users become free, so the run needs a request
    count, not a duration.
    """

    uses = frozenset({"concurrency", "think_time_s", "think_time_dist", "ramp_up_s"})
    description = "closed loop: concurrency users, each waits think_time_s after a response"

    def check(self, cfg):
        if cfg.concurrency is None:
            raise ValueError("arrival 'closed-loop' needs 'concurrency' (the number of users)")

    def sample(self, cfg, rng, *, num_requests, duration_s, trace):
        return _all_at_zero(num_requests, "a closed-loop workload needs a number of requests; its duration is an "
                            "outcome of the run", "workload", "give num_requests (the run length in requests)")

    def closed_loop(self, cfg):
        return ClosedLoop(concurrency=cfg.concurrency, think_time_s=cfg.think_time_s,
                          think_time_dist=cfg.think_time_dist, ramp_up_s=cfg.ramp_up_s)

    def describe(self, cfg):
        think = f"think {cfg.think_time_s:g} s" + (" exp" if cfg.think_time_dist == "exponential" else "")
        ramp = f", ramp {cfg.ramp_up_s:g} s" if cfg.ramp_up_s else ""
        return f"closed-loop({cfg.concurrency} users, {think}{ramp})"


@register_arrival("offline", aliases=("batch", "all-at-once"))
class Offline(ArrivalProcess):
    """Every request present at time 0: the offline throughput benchmark of vLLM, TensorRT-LLM and NanoFlow
    (the engine admits them as fast as memory and its budgets allow; the run's length measures throughput)."""

    uses = frozenset()
    description = "offline: every request arrives at t = 0 (throughput benchmark)"

    def sample(self, cfg, rng, *, num_requests, duration_s, trace):
        return _all_at_zero(num_requests, "an offline workload needs a number of requests (they all arrive at "
                            "once)", "simulation.num_requests", "set simulation.num_requests")

    def describe(self, cfg):
        return "offline (all at t = 0)"


@register_arrival("trace", aliases=("replay",))
class TraceReplay(ArrivalProcess):
    """Arrival times from ``workload.trace``; with ``qps`` set, rescaled so the mean rate equals ``qps``.

    The mean rate of a trace is (n - 1) / (last - first arrival), measured on
    the prepared trace (after window, sub-sampling and time_scale) before it
    is cut to the requested number of requests or duration.
    """

    uses = frozenset({"qps"})
    needs_trace = True
    finite = True
    description = "replay the arrival times of workload.trace (optionally rescaled to qps)"

    def check(self, cfg):
        if cfg.trace is None:
            raise ValueError(
                "arrival 'trace' needs workload.trace (a shipped trace `name` or a file `path`); "
                "run `capsim list traces` for the shipped ones"
            )

    def sample(self, cfg, rng, *, num_requests, duration_s, trace):
        label = cfg.trace.label() if cfg.trace is not None else "trace"
        arrivals = np.asarray(trace["arrival_s"], dtype=np.float64)
        if np.isnan(arrivals).any():
            raise CapsimError(
                f"trace {label!r} has no arrival times (it only holds lengths)",
                where="workload.trace",
                fix="use a synthetic arrival process with it, e.g. arrival: poisson and qps: 5",
            )
        if cfg.qps is not None:
            span = arrivals[-1] - arrivals[0] if len(arrivals) else 0.0
            if span <= 0:
                raise CapsimError(
                    f"cannot rescale trace {label!r} to qps: its {len(arrivals)} request(s) span no time",
                    where="workload.qps",
                    fix="remove qps or widen the trace window",
                )
            arrivals = arrivals * (((len(arrivals) - 1) / span) / cfg.qps)
        keep = len(arrivals)
        if duration_s is not None:
            keep = int(np.searchsorted(arrivals, duration_s, side="left"))
        if num_requests is not None:
            keep = min(keep, num_requests)
        return ArrivalDraw(arrivals[:keep], rows=np.arange(keep))

    def describe(self, cfg):
        label = cfg.trace.label() if cfg.trace is not None else "trace"
        return f"{label} arrivals" + (f" rescaled to {_rate(cfg)}" if cfg.qps is not None else "")


def _rate(cfg: WorkloadConfig) -> str:
    return f"{cfg.qps:g} req/s" if cfg.qps is not None else "? req/s"
