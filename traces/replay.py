"""Finding, loading (memoised) and preparing real traces for replay.

Why memoise: a sweep or capacity search builds hundreds of streams from the
same trace; parsing the Mooncake JSONL each time would dominate. Loaded
tables are cached by file path, size, modification time, format and column
mapping, and are read-only (preparation always makes a new table), so sharing
them is safe.

Traces are handled as :class:`~traces.loaders.table.TraceTable` (numpy
columns), not pandas frames, so that ``capsim validate`` of a replay does not
import pandas; :func:`load_trace` still returns a frame for users.
"""

from __future__ import annotations

import difflib
import functools
import warnings
from pathlib import Path

import numpy as np

from capsim.errors import CapsimError, UnknownNameError
from capsim.lazy import lazy_module
from traces.catalog import SHIPPED_TRACES
from traces.config import TraceConfig
from traces.loaders import read_table
from traces.loaders.generic import as_mapping
from traces.loaders.table import TraceTable

pd = lazy_module("pandas")  # imported on first use: commands that read no trace start without it

#: How many distinct trace files stay parsed in memory.
CACHE_SIZE = 8


def _resolve_path(path: str, base_dir: Path | None) -> Path:
    candidate = Path(path).expanduser()
    if not candidate.is_absolute() and base_dir is not None:
        candidate = Path(base_dir) / candidate
    return candidate


@functools.lru_cache(maxsize=CACHE_SIZE)
def _load_cached(path: str, fmt: str, columns: tuple, mtime_ns: int, size: int) -> TraceTable:
    # mtime_ns and size are part of the key only, so an edited file is re-read.
    return read_table(path, fmt, dict(columns) or None).freeze()


def _load(path: Path, fmt: str, columns: object) -> TraceTable:
    if not path.is_file():
        return read_table(path, fmt, columns)  # raises the loaders' "file not found"
    stat = path.stat()
    key = tuple(sorted(as_mapping(columns).items()))
    return _load_cached(str(path.resolve()), fmt, key, stat.st_mtime_ns, stat.st_size)


def load_trace_source(source: str | TraceConfig, *, base_dir: Path | None = None) -> tuple[TraceTable, str]:
    """Load a trace given as a :class:`TraceConfig` or a string (shipped id, else file path).

    Returns the normalised table (shared and read-only) and a label for
    messages. A string that is neither a shipped id nor an existing file
    raises :class:`~capsim.errors.UnknownNameError` with the closest ids.
    """
    if isinstance(source, TraceConfig):
        if source.name is not None:
            trace = SHIPPED_TRACES.get(source.name)
            return _load(trace.path, trace.format, None), trace.id
        return _load(_resolve_path(source.path, base_dir), source.format, source.columns), source.label()
    if source in SHIPPED_TRACES:
        trace = SHIPPED_TRACES.get(source)
        return _load(trace.path, trace.format, None), trace.id
    path = _resolve_path(source, base_dir)
    if path.is_file():
        return _load(path, "auto", None), path.name
    close = difflib.get_close_matches(str(source).lower(), SHIPPED_TRACES.names(), n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    raise UnknownNameError(
        f"unknown trace {source!r}: not a shipped trace id and no file {str(path)!r}",
        where="trace",
        fix=f"{hint}shipped traces: {', '.join(SHIPPED_TRACES.names())} (run `capsim list traces`), or give a file path",
    )


def prepare_trace(table: TraceTable, cfg: TraceConfig, rng: np.random.Generator) -> TraceTable:
    """Apply the window, sub-sampling, re-basing, ``time_scale`` and length clipping of ``cfg``.

    Returns a new table sorted by arrival (stable, so ties keep file order),
    with the first kept request at t = 0; length-only traces keep NaN arrivals.
    """
    label = cfg.label()
    arrivals = np.asarray(table["arrival_s"], dtype=np.float64)
    timed = not np.isnan(arrivals).any()
    keep = np.ones(len(table), dtype=bool)
    if cfg.start_s is not None or cfg.duration_s is not None:
        if not timed:
            raise CapsimError(
                f"trace {label!r} has no arrival times, so it has no time window",
                where="workload.trace.start_s" if cfg.start_s is not None else "workload.trace.duration_s",
                fix="remove start_s/duration_s (use sample_fraction to take part of a length-only trace)",
            )
        start = cfg.start_s or 0.0
        end = start + cfg.duration_s if cfg.duration_s is not None else np.inf
        keep = (arrivals >= start) & (arrivals < end)
        if not keep.any():
            raise CapsimError(
                f"the window [{start:g}, {end:g}) s holds no requests; trace {label!r} spans "
                f"0 .. {arrivals.max():.1f} s",
                where="workload.trace.start_s",
                fix="choose a window inside the trace",
            )
    rows = np.flatnonzero(keep)
    if cfg.sample_fraction < 1.0:
        count = max(1, int(round(cfg.sample_fraction * len(rows))))
        rows = np.sort(rng.choice(rows, size=count, replace=False))
    if timed:
        backwards = int(np.count_nonzero(np.diff(arrivals[rows]) < 0))
        if backwards:
            # Sorting is the only sensible reading, but a file out of order is often a sign of a bad merge or a
            # wrong column: say so rather than reorder it without a word.
            warnings.warn(
                f"trace {label!r}: {backwards} arrival time(s) are earlier than the row before them; the requests "
                "are replayed sorted by arrival time",
                stacklevel=2,
            )
        rows = rows[np.argsort(arrivals[rows], kind="stable")]
    out = table.take(rows)
    if timed:
        kept = out["arrival_s"]
        out = out.with_column("arrival_s", (kept - kept[0]) * cfg.time_scale if len(kept) else kept)
    if cfg.max_prompt_tokens is not None:
        prompts = out["prompt_tokens"]
        clipped = np.minimum(prompts, cfg.max_prompt_tokens)
        out = out.with_column("prompt_tokens", clipped)
        block = table.attrs.get("hash_block_tokens")
        if "prefix_block_hashes" in out.columns and block:
            hashes = out["prefix_block_hashes"].copy()
            for i in np.flatnonzero(clipped < prompts):  # a shorter prompt covers fewer blocks
                hashes[i] = hashes[i][: -(-int(clipped[i]) // block)]
            out = out.with_column("prefix_block_hashes", hashes)
    if cfg.max_output_tokens is not None:
        out = out.with_column("output_tokens", np.minimum(out["output_tokens"], cfg.max_output_tokens))
    return out


def load_trace(cfg: TraceConfig, *, seed: int = 0, base_dir: Path | None = None) -> pd.DataFrame:
    """Load and prepare a trace as configured, as a pandas frame (a private copy, safe to modify).

    ``seed`` drives ``sample_fraction``. :func:`traces.build.build_requests`
    is the usual entry point; this is for inspecting what a config selects.
    """
    table, _ = load_trace_source(cfg, base_dir=base_dir)
    return prepare_trace(table, cfg, np.random.default_rng(seed)).to_frame()
