"""Request streams for capsim: synthetic arrival and length processes, and real-trace replay.

Public API
----------
Building a stream (the entry point used by the simulator):

- ``build_requests(cfg: WorkloadConfig, *, seed: int, num_requests: int | None = None,
  duration_s: float | None = None, base_dir: str | Path | None = None) -> RequestStream``

Output types (:mod:`traces.stream`):

- ``RequestStream(arrival_s, prompt_tokens, output_tokens, source, closed_loop=None,
  prefix_block_hashes=None)`` -- frozen, validated; ``len()``, ``duration_s``, ``mean_rate``, ``to_frame()``.
- ``ClosedLoop(concurrency: int, think_time_s: float = 0.0)``.

Configuration (:mod:`traces.config`; the ``workload:`` section of a scenario):

- ``WorkloadConfig`` (arrival, qps, cv, concurrency, think_time_s, prompt, output, trace, servegen;
  ``length_config(role)``), ``LengthConfig`` (dist + its parameters; ``describe()``),
  ``TraceConfig`` (name | path, format, columns, time_scale, sample_fraction, start_s, duration_s,
  max_prompt_tokens, max_output_tokens; ``label()``), ``ColumnMap`` (arrival, prompt, output, arrival_unit),
  ``ServeGenConfig`` (path, start_s, clients).

Registries (:class:`capsim.registry.Registry`), each extended by registering one class or module:

- ``ARRIVALS`` -- poisson, gamma, constant, closed-loop, trace (:mod:`traces.arrivals`), servegen
  (:mod:`traces.servegen`; reads a ServeGen data folder, not shipped).
- ``LENGTHS`` -- fixed, uniform, normal, lognormal, zipf, empirical (:mod:`traces.lengths`).
- ``TRACE_FORMATS`` -- azure, mooncake, vidur, csv, jsonl (:mod:`traces.loaders`).
- ``SHIPPED_TRACES`` -- azure-conv-2023, azure-code-2023, mooncake-conversation, sharegpt-lengths
  (:mod:`traces.catalog`).

Traces:

- ``list_traces() -> list[ShippedTrace]`` and ``shipped_trace(name) -> ShippedTrace`` (id, file, format,
  rows, has_arrivals, description, licence, citation, path).
- ``load_file(path, format="auto", columns=None) -> pandas.DataFrame`` -- one file, normalised to
  ``arrival_s`` (s from the earliest request; NaN for length-only traces), ``prompt_tokens``,
  ``output_tokens`` (+ ``prefix_block_hashes`` for Mooncake); bad files raise ``TraceFormatError``.
- ``detect_format(path) -> str``.
- ``load_trace(cfg: TraceConfig, *, seed=0, base_dir=None) -> pandas.DataFrame`` -- a trace after the
  window, sub-sampling, time scaling and clipping of ``cfg``.
- ``sample_lengths(cfg: LengthConfig, rng, n, *, role, base_dir=None) -> numpy.ndarray``.
"""

from typing import TYPE_CHECKING

from capsim.lazy import lazy_exports

#: Each public name and the module that defines it. The modules are imported at the first use of one of their
#: names (PEP 562), so ``import traces.config`` -- which every scenario needs -- does not also import the trace
#: loaders and the stream builder (why: start-up of one-shot commands such as ``capsim estimate``).
_EXPORTS = {
    "ARRIVALS": "traces.arrivals", "ArrivalDraw": "traces.arrivals", "ArrivalProcess": "traces.arrivals",
    "build_requests": "traces.build",
    "SHIPPED_TRACES": "traces.catalog", "ShippedTrace": "traces.catalog", "list_traces": "traces.catalog",
    "shipped_trace": "traces.catalog",
    "ColumnMap": "traces.config", "LengthConfig": "traces.config", "ServeGenConfig": "traces.config",
    "TraceConfig": "traces.config", "WorkloadConfig": "traces.config",
    "LENGTHS": "traces.lengths", "LengthDist": "traces.lengths", "describe_lengths": "traces.lengths",
    "sample_lengths": "traces.lengths",
    "TRACE_FORMATS": "traces.loaders", "TraceFormat": "traces.loaders", "detect_format": "traces.loaders",
    "load_file": "traces.loaders",
    "load_trace": "traces.replay",
    "ClosedLoop": "traces.stream", "RequestStream": "traces.stream",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # for type checkers and editors; at run time the names resolve through __getattr__
    from traces.arrivals import ARRIVALS, ArrivalDraw, ArrivalProcess  # noqa: F401
    from traces.build import build_requests  # noqa: F401
    from traces.catalog import SHIPPED_TRACES, ShippedTrace, list_traces, shipped_trace  # noqa: F401
    from traces.config import ColumnMap, LengthConfig, ServeGenConfig, TraceConfig, WorkloadConfig  # noqa: F401
    from traces.lengths import LENGTHS, LengthDist, describe_lengths, sample_lengths  # noqa: F401
    from traces.loaders import TRACE_FORMATS, TraceFormat, detect_format, load_file  # noqa: F401
    from traces.replay import load_trace  # noqa: F401
    from traces.stream import ClosedLoop, RequestStream  # noqa: F401

__getattr__ = lazy_exports(__name__, _EXPORTS)
