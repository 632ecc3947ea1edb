"""ServeGen per-client workload statistics as an arrival process (``arrival: servegen``).

ServeGen (Alibaba, arXiv 2505.09999; https://github.com/alibaba/ServeGen)
publishes, per anonymised API client, fitted arrival processes for every
10-minute window of a day and empirical length distributions for every
6-hour window -- not raw requests. This module draws requests from them:

- ``chunk-<id>-trace.csv`` (no header): window start (s of the day), rate
  (req/s), cv, pattern (``Gamma`` or ``Weibull``; empty when the client was
  idle), shape, scale. Within a window a client's gaps follow the fitted
  distribution (SciPy parameterisation), rescaled so their mean is 1/rate.
- ``chunk-<id>-dataset.json``: per 6-hour window, ``input_tokens`` and
  ``output_tokens`` probability tables written as Python dict literals.

The files are not shipped (the full language set is hundreds of MB); point
``workload.servegen.path`` at a folder holding them, for example the
``data/reason/deepseek-r1`` folder of the ServeGen repository.
"""

from __future__ import annotations

import ast
import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from capsim.errors import CapsimError, TraceFormatError
from traces.arrivals import ArrivalDraw, ArrivalProcess, check_request_count, register_arrival

if TYPE_CHECKING:
    import pandas as pd

WINDOW_S = 600.0  # arrival windows (ServeGen README)
LENGTH_WINDOW_S = 21_600.0  # length-distribution windows
DAY_S = 86_400.0
TRACE_COLUMNS = ("start_s", "rate", "cv", "pattern", "shape", "scale")
_CHUNK = re.compile(r"chunk-(.+)-trace\.csv$")


@dataclass(frozen=True)
class ServeGenClients:
    """All clients' windows of one ServeGen folder (``windows``: one row per active client-window)."""

    folder: Path
    windows: pd.DataFrame  # client, start_s, rate, pattern, shape, scale


def _mean_gap(pattern: np.ndarray, shape: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Mean of the fitted gap distribution: gamma k*theta, Weibull lambda*Gamma(1 + 1/c)."""
    from scipy.special import gamma as gamma_fn

    return np.where(pattern == "Gamma", shape * scale, scale * gamma_fn(1.0 + 1.0 / shape))


@functools.lru_cache(maxsize=4)
def load_clients(folder: str) -> ServeGenClients:
    """Read every ``chunk-<id>-trace.csv`` of ``folder`` (memoised; the files do not change)."""
    import pandas as pd

    path = Path(folder)
    if not path.is_dir():
        raise TraceFormatError(
            "not a folder", where=str(path), fix="point workload.servegen.path at a ServeGen data folder"
        )
    frames = []
    for file in sorted(path.glob("chunk-*-trace.csv")):
        try:
            table = pd.read_csv(file, header=None, names=list(TRACE_COLUMNS))
        except pd.errors.EmptyDataError:
            continue
        bad = table["pattern"].notna() & ~table["pattern"].isin(["Gamma", "Weibull"])
        numeric = table[["start_s", "rate", "shape", "scale"]].apply(pd.to_numeric, errors="coerce")
        bad |= numeric.isna().any(axis=1) | (numeric["rate"] < 0)
        bad |= table["pattern"].notna() & ((numeric["shape"] <= 0) | (numeric["scale"] <= 0))
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise TraceFormatError(
                f"unusable window {table.iloc[row].tolist()!r}; expected start, rate >= 0, cv, Gamma|Weibull|empty, "
                "shape > 0, scale > 0",
                where=f"{file} row {row + 1}",
            )
        table[["start_s", "rate", "shape", "scale"]] = numeric
        table["client"] = _CHUNK.search(file.name).group(1)
        frames.append(table[(table["rate"] > 0) & table["pattern"].notna()])
    if not frames:
        raise TraceFormatError(
            "no chunk-<id>-trace.csv files",
            where=str(path),
            fix="use a folder such as ServeGen's data/reason/deepseek-r1",
        )
    windows = pd.concat(frames, ignore_index=True)
    windows["mean_gap"] = _mean_gap(
        windows["pattern"].to_numpy(), windows["shape"].to_numpy(), windows["scale"].to_numpy()
    )
    return ServeGenClients(path, windows)


@functools.lru_cache(maxsize=256)
def _length_tables(folder: str, client: str) -> dict[float, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Per 6-hour window start: {"prompt"|"output": (values, probabilities)} of one client."""
    file = Path(folder) / f"chunk-{client}-dataset.json"
    try:
        raw = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TraceFormatError(f"cannot read the length tables: {exc}", where=str(file)) from exc
    tables: dict[float, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for start, entry in raw.items():
        sides = {}
        for role, key in (("prompt", "input_tokens"), ("output", "output_tokens")):
            try:
                pmf = ast.literal_eval(entry[key])  # a Python dict literal (ServeGen's format); literal_eval is safe
                values = np.array(list(pmf.keys()), dtype=np.int64)
                probs = np.array(list(pmf.values()), dtype=np.float64)
            except (KeyError, ValueError, SyntaxError, TypeError, AttributeError) as exc:
                raise TraceFormatError(f"bad {key} table in window {start!r}: {exc}", where=str(file)) from exc
            keep = (values >= 1) & (probs > 0)
            if keep.any():
                sides[role] = (values[keep], probs[keep] / probs[keep].sum())
        if len(sides) == 2:  # windows in which the client was idle have empty tables
            tables[float(start)] = sides
    if not tables:
        raise TraceFormatError("no window has both input and output length tables", where=str(file))
    return tables


def _client_window_arrivals(
    rng: np.random.Generator,
    start: float,
    end: float,
    rate: float,
    pattern: str,
    shape: float,
    scale: float,
    mean: float,
) -> np.ndarray:
    """Arrivals of one client in [start, end): fitted gaps scaled to mean 1/rate, random phase at the start."""
    factor = (1.0 / rate) / mean
    expected = rate * (end - start)
    size = int(expected * 1.5 + 10)
    times: list[np.ndarray] = []
    t = start - rng.random() * factor * (rng.gamma(shape, scale) if pattern == "Gamma" else scale * rng.weibull(shape))
    while t < end:
        raw = rng.gamma(shape, scale, size=size) if pattern == "Gamma" else scale * rng.weibull(shape, size=size)
        chunk = t + np.cumsum(raw * factor)
        times.append(chunk)
        t = chunk[-1]
    out = np.concatenate(times) if times else np.empty(0)
    return out[(out >= start) & (out < end)]


@register_arrival("servegen")
class ServeGenArrivals(ArrivalProcess):
    """Sum of ServeGen clients' fitted per-window arrival processes, from ``servegen.start_s`` of the day.

    With ``qps`` set, every client's rate is multiplied by one factor so the
    mean aggregate rate over the replayed period -- ``duration_s``, or
    ``num_requests / qps`` when only a count is given -- equals ``qps`` (the
    daily shape is kept). Lengths come from the clients' 6-hour length tables unless
    ``prompt``/``output`` or ``trace`` are given. The run ends at the end of the day.
    """

    uses = frozenset({"qps", "servegen"})
    supplies_lengths = True
    finite = True
    description = "ServeGen per-client fitted arrivals and length tables (workload.servegen.path)"

    def check(self, cfg):
        if cfg.servegen is None:
            raise ValueError("arrival 'servegen' needs workload.servegen with the `path` of a ServeGen data folder")

    def sample(self, cfg, rng, *, num_requests, duration_s, trace):
        sg = cfg.servegen
        clients = load_clients(str(Path(sg.path).expanduser().resolve()))
        windows = clients.windows
        if sg.clients is not None:
            missing = sorted(set(sg.clients) - set(windows["client"]))
            if missing:
                raise CapsimError(
                    f"client(s) {', '.join(missing)} have no active window in {clients.folder}",
                    where="workload.servegen.clients",
                    fix=f"known clients: {', '.join(sorted(set(windows['client']), key=_natural))}",
                )
            windows = windows[windows["client"].isin(sg.clients)]
        end = min(sg.start_s + duration_s, DAY_S) if duration_s is not None else DAY_S
        factor = 1.0
        if cfg.qps is not None:
            # Average over the period actually replayed; with only a request count at rate qps that is n / qps.
            if duration_s is None and num_requests is not None:
                end = min(sg.start_s + num_requests / cfg.qps, DAY_S)
            overlap = np.clip(
                np.minimum(windows["start_s"] + WINDOW_S, end) - np.maximum(windows["start_s"], sg.start_s), 0, None
            )
            mean_rate = float((windows["rate"] * overlap).sum()) / (end - sg.start_s)
            if mean_rate <= 0:
                raise CapsimError("the selected clients send nothing in this period", where="workload.servegen")
            factor = cfg.qps / mean_rate
            if duration_s is None:
                end = DAY_S  # the request count, not the averaging period, ends the run
        span = windows[(windows["start_s"] + WINDOW_S > sg.start_s) & (windows["start_s"] < end)]
        check_request_count((span["rate"].sum() * WINDOW_S) * factor if num_requests is None else num_requests)
        times, owners = [], []
        for start in sorted(span["start_s"].unique()):
            chunk_t, chunk_c = [], []
            for row in span[span["start_s"] == start].itertuples():
                lo, hi = max(start, sg.start_s), min(start + WINDOW_S, end)
                got = _client_window_arrivals(
                    rng, lo, hi, row.rate * factor, row.pattern, row.shape, row.scale, row.mean_gap
                )
                chunk_t.append(got)
                chunk_c.append(np.full(len(got), row.client, dtype=object))
            times.extend(chunk_t)
            owners.extend(chunk_c)
            if num_requests is not None and sum(map(len, times)) >= num_requests:
                break  # later windows cannot contribute earlier arrivals
        arrival = np.concatenate(times) if times else np.empty(0)
        client = np.concatenate(owners) if owners else np.empty(0, dtype=object)
        order = np.argsort(arrival, kind="stable")
        arrival, client = arrival[order], client[order]
        if num_requests is not None:
            arrival, client = arrival[:num_requests], client[:num_requests]
        wanted = cfg.trace is None and (cfg.prompt is None or cfg.output is None)
        lengths = self._lengths(clients.folder, client, arrival, rng) if wanted else None
        rebased = arrival - arrival[0] if len(arrival) else arrival
        return ArrivalDraw(rebased, lengths=lengths)

    @staticmethod
    def _lengths(
        folder: Path, client: np.ndarray, arrival: np.ndarray, rng: np.random.Generator
    ) -> dict[str, np.ndarray]:
        import pandas as pd

        out = {"prompt": np.empty(len(arrival), dtype=np.int64), "output": np.empty(len(arrival), dtype=np.int64)}
        window = np.floor(arrival / LENGTH_WINDOW_S) * LENGTH_WINDOW_S
        keys = pd.DataFrame({"client": client, "window": window}).groupby(["client", "window"]).indices
        for (name, start), idx in keys.items():
            tables = _length_tables(str(folder), name)
            # Use the table of this 6-hour window, else the latest earlier one, else the first.
            starts = sorted(tables)
            chosen = max((s for s in starts if s <= start), default=starts[0])
            for role in ("prompt", "output"):
                values, probs = tables[chosen][role]
                out[role][idx] = rng.choice(values, size=len(idx), p=probs)
        return out

    def describe(self, cfg):
        sg = cfg.servegen
        rate = f", rescaled to {cfg.qps:g} req/s" if cfg.qps is not None else ""
        return f"servegen({Path(sg.path).name} from {sg.start_s:g} s{rate})"


def _natural(name: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))
