"""Where configurations run: a local process pool (default) or a Ray cluster.

An executor maps a top-level function over payloads and yields ``(index,
result)`` pairs as they complete, so the caller can advance a progress bar
and save each result as soon as it arrives. Executors are plug-ins in
:data:`EXECUTORS`; a new backend (Dask, Slurm) is one class registered here.

Determinism: a worker's result depends only on its payload (the scenario and
its seed), never on which process or machine ran it, so every executor gives
identical results; only the order of completion differs, and callers put
results back in payload order.

>>> with LocalExecutor(max_workers=1) as ex:
...     sorted(ex.imap_unordered(abs, [-1, -2]))
[(0, 1), (1, 2)]
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any

from capsim.errors import CapsimError
from capsim.registry import Registry


class Executor:
    """Base class: ``imap_unordered(fn, payloads)`` yields ``(index, fn(payload))`` as results complete."""

    name = "executor"

    def imap_unordered(self, fn: Callable[[Any], Any], payloads: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        raise NotImplementedError

    def close(self) -> None:
        """Release workers (idempotent)."""

    def describe(self) -> str:
        return self.name

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


EXECUTORS: Registry[type[Executor]] = Registry("executor")


@EXECUTORS.register("local", aliases=("process-pool", "processes"))
class LocalExecutor(Executor):
    """A pool of local processes, one per core by default; ``max_workers=1`` runs in this process.

    Why in-process for one worker: no start-up cost and plain tracebacks, which
    is what a small sweep or a debugging session wants.
    """

    name = "local"

    def __init__(self, max_workers: int | None = None):
        if max_workers is not None and max_workers < 1:
            raise CapsimError(f"--workers must be at least 1, got {max_workers}", where="--workers",
                              fix="pass a positive number, or leave it out to use every core")
        self.max_workers = max_workers or os.cpu_count() or 1
        self._pool: ProcessPoolExecutor | None = None

    def describe(self) -> str:
        return f"local ({self.max_workers} worker{'s' if self.max_workers != 1 else ''})"

    def imap_unordered(self, fn, payloads):
        if self.max_workers == 1 or len(payloads) <= 1:
            for i, payload in enumerate(payloads):
                yield i, fn(payload)
            return
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.max_workers)
        futures = {self._pool.submit(fn, payload): i for i, payload in enumerate(payloads)}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in sorted(done, key=futures.__getitem__):
                    yield futures[fut], fut.result()
        finally:
            for fut in pending:
                fut.cancel()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def import_ray():
    """The ``ray`` module, or a CapsimError saying how to install the optional extra."""
    try:
        import ray
    except ImportError:
        raise CapsimError(
            "Ray is not installed",
            where="--ray",
            fix="install the optional extra with `pip install 'capsim[ray]'`, or leave out --ray to use local processes",
        ) from None
    return ray


@EXECUTORS.register("ray")
class RayExecutor(Executor):
    """Tasks on a Ray cluster: ``address`` is ``auto``, ``ray://host:10001``, ``host:6379``, or None.

    With None, a Ray instance this process already started is used, or a local
    one is started. Ray is imported only here, so it stays an optional extra.
    """

    name = "ray"

    def __init__(self, address: str | None = None):
        self.ray = import_ray()
        self.address = address
        self._started = False
        if not self.ray.is_initialized():
            try:
                self.ray.init(address=address, include_dashboard=False, log_to_driver=False)
            except Exception as exc:  # noqa: BLE001 - connection problems of any kind
                raise CapsimError(
                    f"cannot connect to Ray at {address or 'a new local instance'} ({type(exc).__name__}: {exc})",
                    where="--ray",
                    fix="start the cluster (`ray start --head`) and pass its address, or `--ray auto` on a cluster node",
                ) from None
            self._started = True
        self._remotes: dict[Callable, Any] = {}

    def describe(self) -> str:
        cpus = int(self.ray.cluster_resources().get("CPU", 0))
        return f"ray ({self.address or 'local'}, {cpus} CPUs)"

    def imap_unordered(self, fn, payloads):
        remote = self._remotes.get(fn)
        if remote is None:
            remote = self._remotes[fn] = self.ray.remote(fn)
        refs = [remote.remote(p) for p in payloads]
        index = {ref: i for i, ref in enumerate(refs)}
        pending = list(refs)
        try:
            while pending:
                done, pending = self.ray.wait(pending, num_returns=1)
                for ref in done:
                    yield index[ref], self.ray.get(ref)
        finally:
            for ref in pending:
                self.ray.cancel(ref)

    def close(self) -> None:
        if self._started and self.ray.is_initialized():
            self.ray.shutdown()
            self._started = False


def make_executor(workers: int | None = None, ray_address: str | None = None) -> Executor:
    """The executor the CLI flags ask for: Ray when ``--ray`` is given, else local processes."""
    if ray_address is not None:
        return EXECUTORS.get("ray")(None if ray_address in ("", "local") else ray_address)
    return EXECUTORS.get("local")(workers)
