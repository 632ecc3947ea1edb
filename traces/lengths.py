"""Prompt and output length distributions, registered in :data:`LENGTHS`.

Why a registry of small classes: a scenario names a distribution
(``prompt: {dist: lognormal, mean: 1000, std: 800}``), each distribution
declares which parameters it takes so a typo or a missing parameter is caught
when the YAML is read, and a new distribution is one class.

All samplers are vectorised and return int64 arrays of lengths >= 1.

>>> import numpy as np
>>> from traces.config import LengthConfig
>>> cfg = LengthConfig(dist="uniform", low=10, high=20)
>>> x = sample_lengths(cfg, np.random.default_rng(0), 1000, role="prompt")
>>> int(x.min()) >= 10 and int(x.max()) <= 20
True
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from capsim.registry import Registry

if TYPE_CHECKING:
    from traces.config import LengthConfig

#: Every parameter field of :class:`traces.config.LengthConfig`; each distribution uses a subset.
PARAMETERS = ("value", "low", "high", "mean", "std", "min", "max", "a", "values", "weights", "trace", "column")

#: Largest support a bounded Zipf may have (its probability table is built explicitly).
ZIPF_MAX_SUPPORT = 10_000_000


class LengthDist:
    """Base class: parameters a distribution needs and how to sample it.

    ``required`` parameters must be set, ``optional`` ones may be; any other
    parameter is rejected, so ``{dist: uniform, value: 5}`` fails loudly
    instead of being ignored.
    """

    required: ClassVar[tuple[str, ...]] = ()
    optional: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""

    def check(self, cfg: LengthConfig) -> None:
        """Raise ValueError for parameter values that cannot work (required ones are already present)."""

    def sample(
        self, cfg: LengthConfig, rng: np.random.Generator, n: int, *, role: str, base_dir: Path | None
    ) -> np.ndarray:
        raise NotImplementedError

    def describe(self, cfg: LengthConfig) -> str:
        raise NotImplementedError


LENGTHS: Registry[LengthDist] = Registry("length distribution")


def register_length(name: str, *, aliases: tuple[str, ...] = ()):
    """Class decorator: register one (stateless) instance of the distribution under ``name``."""

    def decorate(cls: type[LengthDist]) -> type[LengthDist]:
        LENGTHS.add(name, cls(), aliases=aliases)
        return cls

    return decorate


def _bounds(cfg: LengthConfig) -> tuple[int, int | None]:
    return (cfg.min if cfg.min is not None else 1), cfg.max


def _check_bounds(cfg: LengthConfig) -> None:
    low, high = _bounds(cfg)
    if high is not None and high < low:
        raise ValueError(f"max ({high}) must be >= min ({low})")


def _truncated_normal(
    rng: np.random.Generator, n: int, loc: float, scale: float, lower: float, upper: float
) -> np.ndarray:
    """Normal(loc, scale) restricted to [lower, upper] by inverse-CDF sampling.

    Inverse CDF rather than rejection: exact for any bounds and one vectorised
    pass (about 10x faster than ``scipy.stats.truncnorm.rvs``). When the whole
    interval lies right of the mean it is mirrored, so the CDF values used are
    small numbers (full precision) instead of numbers close to 1.
    """
    if scale == 0:
        return np.full(n, np.clip(loc, lower, upper), dtype=np.float64)
    from scipy import special  # imported when a truncated normal is drawn, not when a scenario is validated

    a, b = (lower - loc) / scale, (upper - loc) / scale
    mirror = a > 0
    if mirror:
        a, b = -b, -a
    lo, hi = special.ndtr(a), special.ndtr(b)
    if not hi > lo:
        # Bounds dozens of std away from the mean: the mass underflows and the
        # distribution is, to double precision, a point at the nearer bound.
        z = np.full(n, b)  # b is the bound nearer the mean (mirrored or not)
        return loc + scale * (-z if mirror else z)
    z = special.ndtri(lo + (hi - lo) * rng.random(n))
    z = np.clip(z, a, b)  # guards the last ulp at the interval ends
    return loc + scale * (-z if mirror else z)


def _round_clip(x: np.ndarray, low: int, high: int | None) -> np.ndarray:
    out = np.rint(x)
    return np.clip(out, low, high if high is not None else np.inf).astype(np.int64)


@register_length("fixed", aliases=("constant",))
class Fixed(LengthDist):
    """Every request has ``value`` tokens."""

    required: ClassVar[tuple[str, ...]] = ("value",)
    description: ClassVar[str] = "every request has `value` tokens"

    def sample(self, cfg, rng, n, *, role, base_dir):
        return np.full(n, cfg.value, dtype=np.int64)

    def describe(self, cfg):
        return f"fixed({cfg.value})"


@register_length("uniform")
class Uniform(LengthDist):
    """Whole numbers drawn uniformly from ``low``..``high`` inclusive."""

    required: ClassVar[tuple[str, ...]] = ("low", "high")
    description: ClassVar[str] = "uniform whole numbers in [low, high], both inclusive"

    def check(self, cfg):
        if cfg.high < cfg.low:
            raise ValueError(f"high ({cfg.high}) must be >= low ({cfg.low})")

    def sample(self, cfg, rng, n, *, role, base_dir):
        return rng.integers(cfg.low, cfg.high, size=n, endpoint=True, dtype=np.int64)

    def describe(self, cfg):
        return f"uniform({cfg.low}..{cfg.high})"


@register_length("normal", aliases=("gaussian",))
class Normal(LengthDist):
    """Normal(``mean``, ``std``) truncated to [``min`` (default 1), ``max``] and rounded.

    Truncated (resampled), not clipped: clipping would pile probability mass on
    the bounds, which shows up as a spike of identical requests.
    """

    required: ClassVar[tuple[str, ...]] = ("mean", "std")
    optional: ClassVar[tuple[str, ...]] = ("min", "max")
    description: ClassVar[str] = "normal(mean, std) truncated to [min (default 1), max], rounded"

    def check(self, cfg):
        _check_bounds(cfg)

    def sample(self, cfg, rng, n, *, role, base_dir):
        low, high = _bounds(cfg)
        x = _truncated_normal(rng, n, cfg.mean, cfg.std, low - 0.5, (high + 0.5) if high is not None else np.inf)
        return _round_clip(x, low, high)

    def describe(self, cfg):
        return f"normal({cfg.mean:g}+-{cfg.std:g})"


@register_length("lognormal", aliases=("log-normal",))
class LogNormal(LengthDist):
    """Log-normal with the given ``mean`` and ``std`` *of the lengths* (not of their logarithm).

    Why lengths: those are what trace statistics report (e.g. Azure conv prompt
    mean 1155). The log-space parameters follow from the moment identities
    sigma^2 = ln(1 + (std/mean)^2), mu = ln(mean) - sigma^2/2. The result is
    truncated to [``min`` (default 1), ``max``] (resampled, not clipped), so a
    tight ``max`` lowers the realised mean.
    """

    required: ClassVar[tuple[str, ...]] = ("mean", "std")
    optional: ClassVar[tuple[str, ...]] = ("min", "max")
    description: ClassVar[str] = "log-normal with mean and std of the lengths, truncated to [min (default 1), max]"

    def check(self, cfg):
        if cfg.mean <= 0:
            raise ValueError(f"mean must be > 0 for a log-normal, got {cfg.mean}")
        _check_bounds(cfg)

    @staticmethod
    def log_params(mean: float, std: float) -> tuple[float, float]:
        """(mu, sigma) of log(length) for lengths with this mean and standard deviation."""
        sigma2 = np.log1p((std / mean) ** 2)
        return float(np.log(mean) - sigma2 / 2), float(np.sqrt(sigma2))

    def sample(self, cfg, rng, n, *, role, base_dir):
        low, high = _bounds(cfg)
        mu, sigma = self.log_params(cfg.mean, cfg.std)
        upper = np.log(high + 0.5) if high is not None else np.inf
        logs = _truncated_normal(rng, n, mu, sigma, np.log(max(low - 0.5, 1e-9)), upper)
        return _round_clip(np.exp(logs), low, high)

    def describe(self, cfg):
        return f"lognormal(mean {cfg.mean:g}, std {cfg.std:g})"


@register_length("zipf", aliases=("power-law",))
class Zipf(LengthDist):
    """Bounded power law: P(length = k) proportional to k^-a for k in [``min`` (default 1), ``max``].

    Bounded because an unbounded Zipf has an infinite mean for a <= 2 and
    produces prompts no model accepts; any a > 0 works on a finite support.
    """

    required: ClassVar[tuple[str, ...]] = ("a", "max")
    optional: ClassVar[tuple[str, ...]] = ("min",)
    description: ClassVar[str] = "P(k) ~ k^-a on [min (default 1), max]"

    def check(self, cfg):
        if cfg.a <= 0:
            raise ValueError(f"the zipf exponent a must be > 0, got {cfg.a}")
        _check_bounds(cfg)
        low, high = _bounds(cfg)
        if high - low + 1 > ZIPF_MAX_SUPPORT:
            raise ValueError(f"max - min + 1 must be <= {ZIPF_MAX_SUPPORT:,} for zipf, got {high - low + 1:,}")

    def sample(self, cfg, rng, n, *, role, base_dir):
        low, high = _bounds(cfg)
        support = np.arange(low, high + 1, dtype=np.float64)
        cdf = np.cumsum(support ** (-cfg.a))
        cdf /= cdf[-1]
        idx = np.searchsorted(cdf, rng.random(n), side="right")
        return (low + np.minimum(idx, len(support) - 1)).astype(np.int64)

    def describe(self, cfg):
        low, high = _bounds(cfg)
        return f"zipf(a={cfg.a:g}, {low}..{high})"


@register_length("empirical")
class Empirical(LengthDist):
    """Draw (with replacement) from observed lengths.

    Either an explicit ``values`` list (with optional ``weights``), or a
    ``trace`` (shipped id or file path) and its ``column`` (``prompt`` or
    ``output``; default: the side this distribution is used for). Sampling a
    trace column alone keeps its marginal distribution but not the pairing of
    prompt and output lengths -- set ``workload.trace`` to keep pairs.
    """

    optional: ClassVar[tuple[str, ...]] = ("values", "weights", "trace", "column")
    description: ClassVar[str] = "resample `values` (optional `weights`) or a `trace` column (prompt/output)"

    def check(self, cfg):
        if (cfg.values is None) == (cfg.trace is None):
            raise ValueError(
                "empirical needs exactly one of 'values' (a list of lengths) or 'trace' (a trace id or path)"
            )
        if cfg.values is not None:
            if len(cfg.values) == 0:
                raise ValueError("values must not be empty")
            if min(cfg.values) < 1:
                raise ValueError(f"values must be >= 1, got {min(cfg.values)}")
            if cfg.column is not None:
                raise ValueError("column is only used with trace")
        if cfg.weights is not None:
            if cfg.values is None:
                raise ValueError("weights are only used with values")
            if len(cfg.weights) != len(cfg.values):
                raise ValueError(f"weights has {len(cfg.weights)} entries but values has {len(cfg.values)}")
            if min(cfg.weights) < 0 or sum(cfg.weights) <= 0:
                raise ValueError("weights must be >= 0 with a positive sum")

    def _pool(self, cfg, role: str, base_dir: Path | None) -> tuple[np.ndarray, np.ndarray | None]:
        if cfg.values is not None:
            values = np.asarray(cfg.values, dtype=np.int64)
            if cfg.weights is None:
                return values, None
            p = np.asarray(cfg.weights, dtype=np.float64)
            return values, p / p.sum()
        from traces.replay import load_trace_source  # lazy: replay imports the loaders

        table, _ = load_trace_source(cfg.trace, base_dir=base_dir)
        return table[f"{cfg.column or role}_tokens"], None

    def sample(self, cfg, rng, n, *, role, base_dir):
        values, p = self._pool(cfg, role, base_dir)
        if p is None:
            return values[rng.integers(0, len(values), size=n)].astype(np.int64)
        return rng.choice(values, size=n, p=p).astype(np.int64)

    def describe(self, cfg):
        if cfg.trace is not None:
            return f"empirical({cfg.trace}{':' + cfg.column if cfg.column else ''})"
        return f"empirical({len(cfg.values)} values)"


def sample_lengths(
    cfg: LengthConfig, rng: np.random.Generator, n: int, *, role: str, base_dir: Path | None = None
) -> np.ndarray:
    """Draw ``n`` lengths (int64 >= 1) from the distribution ``cfg`` describes.

    ``role`` (``prompt`` or ``output``) is the default column of an empirical
    trace; ``base_dir`` anchors relative trace paths.
    """
    return LENGTHS.get(cfg.dist).sample(cfg, rng, n, role=role, base_dir=base_dir)


def describe_lengths(cfg: LengthConfig) -> str:
    """Short text such as ``lognormal(mean 1000, std 800)`` for stream sources and tables."""
    return LENGTHS.get(cfg.dist).describe(cfg)
