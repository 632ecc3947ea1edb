"""Serving-engine profiles: the time an engine adds to every iteration beyond its kernels.

Why: calibrated kernels are right, yet a served step is slower than their sum --
the engine schedules, builds inputs, samples and detokenises on the host, launches
kernels one by one where the step is not captured in a CUDA graph, and waits on
small all-reduces. How much depends on the engine, not the GPU kernels, so it is a
named profile (``deployment.engine``) rather than a change to the kernel curves.

A profile is one entry of ``profiles/engines.yaml`` with up to six terms, five in
seconds (the unit is in the name) and one dimensionless:

* ``per_step_s``        once per iteration;
* ``per_sequence_s``    per sequence that produces a token in the iteration;
* ``per_token_s``       per token fed to the model (prefill tokens + decode sequences);
* ``per_layer_s``       per layer per iteration;
* ``per_collective_s``  per collective per iteration (two all-reduces per layer under TP);
* ``gqa_reread``        fraction of the extra KV bytes a decode-attention kernel reads when it loads each
  KV head once per query head rather than once per group (priced at the device's memory bandwidth).

A profile may name ``inherits`` (another profile, or one of the overhead sets of
``profiles/overheads.yaml`` fitted from Vidur's CPU tables): its terms at the
deployment's TP start from the parent's and are then overridden by its own
``terms`` and by its ``by_tp`` entry nearest the TP degree. The overhead sets are
engine profiles too (``deployment.engine: vidur-a100``), so users meet one concept:
``deployment.overheads`` is its older name (see :func:`engine_name_of`).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from importlib import resources
from typing import Any

from capsim.errors import CapsimError, UnknownNameError
from capsim.registry import normalise_name
from hwmodels.calibration.overheads import overhead_sets, overhead_terms
from hwmodels.calibration.profile import load_yaml_text

ENGINES_FILE = "engines.yaml"
ENGINES_FORMAT = "capsim-engines/1"
TERMS = ("per_step_s", "per_sequence_s", "per_token_s", "per_layer_s", "per_collective_s", "gqa_reread")
_MAX_DEPTH = 8


@lru_cache(maxsize=1)
def engine_profiles() -> Mapping[str, Any]:
    """Every shipped engine profile by name (``none`` always included)."""
    entry = resources.files("hwmodels.calibration.profiles").joinpath(ENGINES_FILE)
    doc = load_yaml_text(entry.read_text(encoding="utf-8")) if entry.is_file() else {}
    if doc and doc.get("format") != ENGINES_FORMAT:
        raise CapsimError(
            f"{ENGINES_FILE} has format {doc.get('format')!r}, expected {ENGINES_FORMAT!r}",
            where="hwmodels/calibration/profiles/engines.yaml",
        )
    profiles = dict(doc.get("engines") or {})
    profiles.setdefault("none", {"description": "no engine overhead: the kernels alone"})
    return profiles


def engine_names() -> list[str]:
    """Names ``deployment.engine`` accepts: the engine profiles, then the Vidur overhead sets."""
    return sorted(engine_profiles()) + sorted(set(overhead_sets()) - set(engine_profiles()))


def _unknown(name: str, where: str) -> UnknownNameError:
    return UnknownNameError(
        f"unknown engine profile {name!r}",
        where=where,
        fix=f"use one of {', '.join(engine_names())} (`capsim calibrate engines` lists them with their terms)",
    )


def engine_terms(name: str, tp: int, *, where: str = "deployment.engine") -> dict[str, Any]:
    """The terms of profile ``name`` at TP degree ``tp``: the five ``TERMS`` (seconds) and ``name``.

    ``name`` says which TP entry was used where the profile was not fitted at ``tp``
    (``vidur-a100@tp4``), so results never hide an extrapolation.
    """
    return _resolve(normalise_name(name), int(tp), where, 0)


def _resolve(key: str, tp: int, where: str, depth: int) -> dict[str, Any]:
    if depth > _MAX_DEPTH:
        raise CapsimError(f"engine profile {key!r}: 'inherits' goes round in a circle", where=where)
    profiles = engine_profiles()
    if key not in profiles:
        if key in overhead_sets():
            t = overhead_terms(key, tp)
            return {
                "per_step_s": t["per_iteration_s"],
                "per_sequence_s": t["per_sequence_s"],
                "per_token_s": 0.0,
                "per_layer_s": t["per_layer_s"],
                "per_collective_s": 0.0,
                "gqa_reread": 0.0,
                "name": t["name"],
            }
        raise _unknown(key, where)
    entry = profiles[key]
    parent = entry.get("inherits")
    out: dict[str, Any] = dict.fromkeys(TERMS, 0.0)
    label = key
    if parent:
        base = _resolve(normalise_name(str(parent)), tp, where, depth + 1)
        out.update({k: base[k] for k in TERMS})
        if "@" in base["name"]:
            label += "@" + base["name"].split("@", 1)[1]
    out.update({k: float(v) for k, v in (entry.get("terms") or {}).items() if k in TERMS})
    by_tp = {int(k): v for k, v in (entry.get("by_tp") or {}).items()}
    if by_tp:
        use = tp if tp in by_tp else min(by_tp, key=lambda t: (abs(t - tp), t))
        out.update({k: float(v) for k, v in (by_tp[use] or {}).items() if k in TERMS})
        if use != tp:
            label = f"{key}@tp{use}"
    out["name"] = label
    return out


#: The profile of a deployment that names none (``deployment.engine`` unset, no ``overheads``) on a device whose
#: catalog entry does not name its own (``DeviceSpec.serving_engine``): a current vLLM with CUDA graphs, the
#: engine most GPU deployments run, and the one profile with a held-out check on published runs of its engine
#: (docs/engine-profiles.md). ``engine: none`` prices the kernels alone.
DEFAULT_ENGINE = "vllm"


def engine_name_of(engine: str | None, overheads: str, device_default: str | None = None) -> str:
    """The one profile a deployment names: ``engine``, else the older ``overheads`` field, else the device's
    own default (``DeviceSpec.serving_engine``), else :data:`DEFAULT_ENGINE`."""
    if engine is None:
        if overheads != "none":
            return overheads
        return device_default if device_default is not None else DEFAULT_ENGINE
    if overheads != "none" and normalise_name(engine) != normalise_name(overheads):
        raise CapsimError(
            f"deployment.overheads ({overheads!r}) and deployment.engine ({engine!r}) both name engine terms",
            where="deployment.overheads",
            fix=f"keep only `engine: {engine}` (`overheads` is the older name of `engine`; "
            f"`engine: {overheads}` gives the overhead set you named)",
        )
    return engine


def describe(name: str) -> Mapping[str, Any]:
    """The registry entry of a profile (for listings); overhead sets describe themselves."""
    key = normalise_name(name)
    profiles = engine_profiles()
    if key in profiles:
        return profiles[key]
    if key in overhead_sets():
        return overhead_sets()[key]
    raise _unknown(name, "engine")
