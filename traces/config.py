"""The ``workload:`` section of a scenario, as pydantic models.

Why pydantic with ``extra='forbid'``: a misspelt key (``qsp: 5``) must fail
when the YAML is read, with the path of the field, rather than silently fall
back to a default. Validators raise ``ValueError`` so pydantic reports the
location (``workload.prompt``); names of distributions, arrival processes,
trace formats and shipped traces are checked against their registries here,
with the closest names suggested.

>>> w = WorkloadConfig.model_validate({"arrival": "gamma", "qps": 8, "cv": 2,
...     "prompt": {"dist": "lognormal", "mean": 1000, "std": 800}})
>>> w.prompt.describe(), w.length_config("output").describe()
('lognormal(mean 1000, std 800)', 'fixed(128)')
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from capsim.registry import Registry
from capsim.types import Count, OptionalCount
from traces.arrivals import ARRIVAL_PARAMETERS, ARRIVALS
from traces.catalog import SHIPPED_TRACES
from traces.images import ImagesConfig
from traces.lengths import LENGTHS, PARAMETERS
from traces.sharing import SharingConfig

DEFAULT_PROMPT_TOKENS = 512
DEFAULT_OUTPUT_TOKENS = 128


def _known(registry: Registry, name: str, what: str, extra: tuple[str, ...] = ()) -> str:
    """Canonical name in ``registry`` (or one of ``extra``), else a ValueError suggesting close names."""
    if name in extra:
        return name
    if name in registry:
        return registry.canonical(name)
    known = [*registry.names(), *extra]
    close = difflib.get_close_matches(str(name).lower(), known, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"unknown {what} {name!r}{hint} (known: {', '.join(known)})")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LengthConfig(_Strict):
    """A distribution of token counts (prompt or output); see :mod:`traces.lengths` for each ``dist``.

    Only the parameters of the chosen ``dist`` may be set; a missing one is an
    error naming it. Examples: ``{dist: fixed, value: 512}``,
    ``{dist: uniform, low: 100, high: 2000}``, ``{dist: normal, mean: 512, std: 128}``,
    ``{dist: lognormal, mean: 1155, std: 1100, max: 8192}``, ``{dist: zipf, a: 1.2, max: 4096}``,
    ``{dist: empirical, trace: sharegpt-lengths}``, ``{dist: empirical, values: [128, 2048], weights: [3, 1]}``.
    """

    dist: str = Field("fixed", description="distribution name: fixed, uniform, normal, lognormal, zipf, empirical")
    value: OptionalCount = Field(None, ge=1, description="fixed: the length of every request, tokens")
    low: OptionalCount = Field(None, ge=1, description="uniform: smallest length, tokens (inclusive)")
    high: OptionalCount = Field(None, ge=1, description="uniform: largest length, tokens (inclusive)")
    mean: float | None = Field(
        None, gt=0, description="normal/lognormal: mean length, tokens (lognormal: of the lengths, not their log)"
    )
    std: float | None = Field(None, ge=0, description="normal/lognormal: standard deviation of the length, tokens")
    min: OptionalCount = Field(None, ge=1, description="normal/lognormal/zipf: smallest length, tokens (default 1)")
    max: OptionalCount = Field(
        None, ge=1, description="normal/lognormal: largest length (truncation); zipf: required upper bound"
    )
    a: float | None = Field(None, gt=0, description="zipf: exponent, P(k) proportional to k^-a")
    values: list[Count] | None = Field(None, description="empirical: observed lengths to resample, tokens")
    weights: list[float] | None = Field(
        None, description="empirical: relative weight of each entry of values (default equal)"
    )
    trace: str | None = Field(None, description="empirical: shipped trace id or file path whose lengths are resampled")
    column: Literal["prompt", "output"] | None = Field(
        None, description="empirical with trace: which lengths to use (default: the side this config describes)"
    )

    @model_validator(mode="before")
    @classmethod
    def _bare_count_is_fixed(cls, data: object) -> object:
        """``prompt: 512`` is shorthand for ``{dist: fixed, value: 512}`` (what a user writing a number means).

        A bool is not a count (``prompt: true`` stays an error), and the value is checked as ``value`` is."""
        if isinstance(data, int) and not isinstance(data, bool):
            return {"dist": "fixed", "value": data}
        if isinstance(data, (bool, float, str)):  # a likely slip: say what a length may be
            raise ValueError(
                "a length is a whole number of tokens (a fixed length, e.g. 512) or a distribution such as "
                "{dist: uniform, low: 100, high: 2000}"
            )
        return data

    @field_validator("dist")
    @classmethod
    def _dist_known(cls, name: str) -> str:
        return _known(LENGTHS, name, "length distribution")

    @model_validator(mode="after")
    def _parameters_match_dist(self) -> LengthConfig:
        spec = LENGTHS.get(self.dist)
        given = [p for p in PARAMETERS if getattr(self, p) is not None]
        takes = f"it takes {', '.join(spec.required) or 'no required parameters'}" + (
            f" and optionally {', '.join(spec.optional)}" if spec.optional else ""
        )
        missing = [p for p in spec.required if p not in given]
        if missing:
            raise ValueError(
                f"length distribution {self.dist!r} needs parameter {' and '.join(repr(p) for p in missing)} ({takes})"
            )
        unused = [p for p in given if p not in spec.required and p not in spec.optional]
        if unused:
            raise ValueError(
                f"parameter {' and '.join(repr(p) for p in unused)} is not used by length distribution "
                f"{self.dist!r} ({takes})"
            )
        spec.check(self)
        return self

    def describe(self) -> str:
        """Short text such as ``fixed(512)`` used in stream sources and result tables."""
        return LENGTHS.get(self.dist).describe(self)


class ColumnMap(_Strict):
    """Which columns (CSV) or keys (JSONL) of a generic trace hold arrival time, prompt and output lengths."""

    arrival: str | None = Field(None, description="arrival time column; omit for a length-only trace")
    prompt: str | None = Field(None, description="prompt token count column")
    output: str | None = Field(None, description="output (generated) token count column")
    arrival_unit: Literal["s", "ms", "us", "datetime"] | None = Field(
        None,
        description="unit of a numeric arrival column (s, ms, us) or datetime for date-time text; default s, or datetime for text",
    )


class TraceConfig(_Strict):
    """A real trace: a shipped one by ``name`` or any file by ``path``, and how to replay it.

    Processing order: load, keep the window [start_s, start_s + duration_s) of
    the trace's own timeline, sub-sample ``sample_fraction`` of the rows (seeded),
    re-base to t = 0, multiply times by ``time_scale``, clip lengths to
    ``max_prompt_tokens``/``max_output_tokens``.
    """

    name: str | None = Field(None, description="id of a shipped trace (`capsim list traces`), e.g. azure-conv-2023")
    path: str | None = Field(None, description="path of a trace file (relative paths: from the scenario file's folder)")
    format: str = Field("auto", description="file format: auto, azure, mooncake, vidur, csv, jsonl")
    columns: ColumnMap | None = Field(None, description="column mapping for the generic csv/jsonl formats")
    time_scale: float = Field(1.0, gt=0, description="multiply inter-arrival gaps by this (0.5 replays twice as fast)")
    sample_fraction: float = Field(1.0, gt=0, le=1, description="keep this random fraction of the rows (seeded)")
    start_s: float | None = Field(None, ge=0, description="start of the replay window, seconds into the trace")
    duration_s: float | None = Field(None, gt=0, description="length of the replay window, seconds of trace time")
    max_prompt_tokens: OptionalCount = Field(
        None, ge=1, description="clip longer prompts to this many tokens (e.g. the model's context window)"
    )
    max_output_tokens: OptionalCount = Field(None, ge=1, description="clip longer outputs to this many tokens")

    @field_validator("format")
    @classmethod
    def _format_known(cls, name: str) -> str:
        from traces.loaders import TRACE_FORMATS  # the loaders are imported only by a scenario that reads a trace

        return _known(TRACE_FORMATS, name, "trace format", extra=("auto",))

    @field_validator("name")
    @classmethod
    def _name_known(cls, name: str | None) -> str | None:
        if name is None:
            return None
        try:
            return _known(SHIPPED_TRACES, name, "shipped trace")
        except ValueError as exc:
            raise ValueError(f"{exc}; to load your own file use `path:` instead") from None

    @model_validator(mode="after")
    def _one_source(self) -> TraceConfig:
        if (self.name is None) == (self.path is None):
            raise ValueError("give exactly one of 'name' (a shipped trace id) or 'path' (a trace file)")
        if self.name is not None and (self.format != "auto" or self.columns is not None):
            raise ValueError("'format' and 'columns' apply to a `path`; a shipped trace's format is known")
        if self.columns is not None and self.format not in ("auto", "csv", "jsonl"):
            raise ValueError(f"'columns' is used by the generic csv/jsonl formats, not by format {self.format!r}")
        return self

    def label(self) -> str:
        """The shipped id, or the file name, for stream sources and messages."""
        return self.name if self.name is not None else Path(self.path).name


class ServeGenConfig(_Strict):
    """Where ServeGen per-client statistics live and which part of the day to draw from (``arrival: servegen``)."""

    path: str = Field(description="folder with ServeGen chunk-<id>-trace.csv and chunk-<id>-dataset.json files")
    start_s: float = Field(
        0.0, ge=0, lt=86_400, description="start time of day, seconds (the day has 144 ten-minute windows)"
    )
    clients: list[str] | None = Field(None, description="client ids (the <id> of chunk-<id>) to include; default all")

    @field_validator("clients", mode="before")
    @classmethod
    def _ids_as_text(cls, ids: object) -> object:
        return [str(i) for i in ids] if isinstance(ids, list) else ids


class WorkloadConfig(_Strict):
    """Traffic of a scenario: an arrival process and prompt/output lengths, synthetic or from a trace.

    - Synthetic: ``{arrival: poisson, qps: 8, prompt: {...}, output: {...}}``.
    - Trace replay: ``{arrival: trace, trace: {name: azure-conv-2023}}`` (optionally ``qps`` to rescale).
    - Real lengths, synthetic arrivals: ``{arrival: poisson, qps: 8, trace: {name: sharegpt-lengths}}``;
      (prompt, output) pairs are drawn together from the trace rows.

    With ``trace`` set, prompt and output lengths come from the trace unless
    ``prompt``/``output`` is given, which then overrides that side. Without a
    trace, unset ``prompt``/``output`` mean fixed 512 and fixed 128 tokens.
    """

    arrival: str = Field(
        "poisson", description="arrival process: poisson, gamma, constant, closed-loop, trace, servegen"
    )
    qps: float | None = Field(
        None,
        gt=0,
        description="mean request rate, req/s (open loop); with arrival trace, rescale the trace to this rate",
    )
    cv: float = Field(
        1.0, gt=0, description="gamma: coefficient of variation of inter-arrival gaps (1 = Poisson, > 1 burstier)"
    )
    concurrency: OptionalCount = Field(
        None, ge=1, description="closed-loop: number of users, each with one request in flight"
    )
    think_time_s: float = Field(
        0.0, ge=0, description="closed-loop: pause between a response and the user's next request, s"
    )
    think_time_dist: Literal["fixed", "exponential"] = Field(
        "fixed", description="closed-loop: each pause exactly think_time_s, or drawn (seeded) from an exponential "
        "with that mean, so users with equal request lengths drift apart instead of moving in lockstep"
    )
    ramp_up_s: float = Field(
        0.0, ge=0, allow_inf_nan=False, description="closed-loop: users start one by one, evenly over this many "
        "seconds, instead of all at t = 0 (vLLM's and genai-perf's concurrency modes start all at once: 0)"
    )
    prompt: LengthConfig | None = Field(
        None, description="prompt length distribution (default: from trace if set, else fixed 512); a bare number "
        "such as 512 means {dist: fixed, value: 512}"
    )
    output: LengthConfig | None = Field(
        None, description="output length distribution (default: from trace if set, else fixed 128); a bare number "
        "means a fixed length"
    )
    trace: TraceConfig | None = Field(
        None, description="real trace supplying lengths, and arrivals when arrival is trace"
    )
    servegen: ServeGenConfig | None = Field(
        None, description="servegen: the ServeGen data folder and start time of day"
    )
    max_total_tokens: OptionalCount = Field(
        None, ge=2, description="cap on prompt + output tokens of each request (e.g. the model's context); longer "
        "requests are clipped (output first, then prompt) or dropped, as length_cap says, and the count is reported"
    )
    length_cap: Literal["clip", "drop"] = Field(
        "clip", description="what max_total_tokens does to a longer request: 'clip' its lengths or 'drop' it"
    )
    images: ImagesConfig | None = Field(
        None, description="multimodal requests: images per request, tokens per image and the vision encoder "
        "(the image tokens join each prompt; see traces/images.py)"
    )
    sharing: SharingConfig | None = Field(
        None, description="synthetic prefix sharing (system-prompt, few-shot or multi-turn): gives each prompt "
        "block identities for the prefix-caching technique; see traces/sharing.py for each pattern's hit structure"
    )

    @field_validator("arrival")
    @classmethod
    def _arrival_known(cls, name: str) -> str:
        return _known(ARRIVALS, name, "arrival process")

    @field_validator("qps")
    @classmethod
    def _finite_rate(cls, qps: float | None) -> float | None:
        """An infinite rate would put every request at time 0 under a rate-based name; say how to ask for that."""
        if qps is not None and not math.isfinite(qps):
            raise ValueError(
                "the rate must be a finite number of requests/s; to send every request at once use "
                "arrival: closed-loop with concurrency equal to simulation.num_requests"
            )
        return qps

    @model_validator(mode="after")
    def _check_arrival_parameters(self) -> WorkloadConfig:
        process = ARRIVALS.get(self.arrival)
        defaults = {"cv": 1.0, "think_time_s": 0.0, "think_time_dist": "fixed", "ramp_up_s": 0.0}
        for param in ARRIVAL_PARAMETERS:
            value = getattr(self, param)
            at_default = value is None or (param in defaults and value == defaults[param])
            if param not in process.uses and not at_default:
                users = [n for n in ARRIVALS.names() if param in ARRIVALS.get(n).uses]
                raise ValueError(
                    f"{param!r} is not used by arrival {self.arrival!r} (it is used by {', '.join(users)}); "
                    f"remove it or change the arrival process"
                )
        process.check(self)
        if process.needs_trace and self.qps is not None and self.trace is not None and self.trace.time_scale != 1:
            raise ValueError("give either qps or trace.time_scale to set the replay speed, not both")
        return self

    def length_config(self, role: Literal["prompt", "output"]) -> LengthConfig | None:
        """The distribution used for ``role``; None means the lengths come from ``trace`` (or the arrival process).

        Why unset fields stay None instead of being filled with fixed 512/128:
        a config that is dumped and re-read, or gets a ``trace`` added by a
        sweep, must still take its lengths from the trace.
        """
        given = self.prompt if role == "prompt" else self.output
        if given is not None or self.trace is not None or ARRIVALS.get(self.arrival).supplies_lengths:
            return given
        default = DEFAULT_PROMPT_TOKENS if role == "prompt" else DEFAULT_OUTPUT_TOKENS
        return LengthConfig(dist="fixed", value=default)
