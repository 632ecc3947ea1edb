"""Serving-engine overheads beyond the kernels: per iteration, per sequence, per layer.

Why: a measured serving iteration is slower than the sum of its kernels -- the
engine schedules, prepares inputs, samples, detokenises and (without CUDA
graphs) launches kernels one by one, and at small batch or high TP that CPU
work is a large share of the step. These terms are engine-specific, so they are
separate, named *sets* (``deployment.overheads``), not folded into the kernel
curves:

* ``per_iteration_s`` + ``per_sequence_s * sequences``: the serial CPU path
  around every forward pass of a vLLM-v0-style engine -- the medians of
  ``schedule``, ``prepare_inputs_e2e``, ``sampler_e2e`` and
  ``process_model_outputs`` in vidur's CPU-overhead tables, fitted per TP degree
  as a line in the batch size;
* ``per_layer_s``: the slope of ``model_execution_e2e`` (CPU time to issue a
  forward pass) against the model's layer count at the same TP degree -- set to
  0 with a note where the models at a TP degree do not differ in layer count;
* the ``-ray`` variants add vidur's ``ray_comm_time`` per iteration for TP > 1
  (the Ray RPC of that engine's multi-GPU workers).

Source: vidur ``profiling/cpu_overheads_legacy/{a100,a40}_cpu_overheads.csv``
(commit 6d98aa8, MIT; milliseconds). Fitted sets are written to
``profiles/overheads.yaml`` by ``capsim calibrate fit``; ``none`` (all zero) is
always available.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from capsim.errors import CapsimError, UnknownNameError
from capsim.registry import normalise_name
from hwmodels.calibration.profile import dump_yaml, load_yaml_text

if TYPE_CHECKING:  # pandas is only needed to fit, not to look a set up in the engine
    import pandas as pd

OVERHEADS_FILE = "overheads.yaml"
OVERHEADS_FORMAT = "capsim-overheads/1"
SERIAL_TERMS = ("schedule", "prepare_inputs_e2e", "sampler_e2e", "process_model_outputs")
NONE_SET = {
    "description": "no engine overhead: CPU work fully overlapped with the GPU (e.g. async scheduling, CUDA graphs)",
    "by_tp": {1: {"per_iteration_s": 0.0, "per_sequence_s": 0.0, "per_layer_s": 0.0}},
}


def _layers_of(model: str, data_dir: Path | None) -> float | None:
    """Layer count of a vidur model id (``org/name``): from vidur's model_configs under ``data_dir`` when given,
    else from the counts shipped beside the tidy table (so a clone's refit finds them too)."""
    from hwmodels.calibration.layer_tables import model_layers

    n = model_layers(data_dir).get(model)
    return float(n) if n is not None else None


def _line(batch: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    """Least-relative-error line ``t ~ a + b * batch`` (a, b >= 0)."""
    a_mat = np.column_stack([np.ones_like(batch), batch]) / t[:, None]
    (a, b), *_ = np.linalg.lstsq(a_mat, np.ones_like(t), rcond=None)
    return max(float(a), 0.0), max(float(b), 0.0)


def _ape(pred: np.ndarray, t: np.ndarray) -> dict[str, float]:
    e = np.abs(pred / t - 1.0) * 100.0
    return {"median_ape": round(float(np.median(e)), 2), "p90_ape": round(float(np.percentile(e, 90)), 2),
            "n": int(e.size)}


def fit_overheads(df: pd.DataFrame, data_dir: Path | None = None) -> dict[str, Any]:
    """Fit the overhead sets of every device with ``cpu_overhead`` rows; returns the YAML document."""
    rows = df[df["op_class"] == "cpu_overhead"]
    sets: dict[str, Any] = {"none": NONE_SET}
    for device, part in rows.groupby("device"):
        gpu = normalise_name(device).split("-")[0]
        by_tp: dict[int, dict[str, Any]] = {}
        ray_by_tp: dict[int, float] = {}
        notes: list[str] = []
        for tp, sub in part.groupby("tp"):
            wide = sub.pivot_table(index=["model", "batch"], columns="op", values="measured_s", aggfunc="median")
            if not set(SERIAL_TERMS) <= set(wide.columns):
                continue
            wide = wide.dropna(subset=list(SERIAL_TERMS))
            serial = wide[list(SERIAL_TERMS)].sum(axis=1).to_numpy()
            batch = wide.index.get_level_values("batch").to_numpy(float)
            a, b = _line(batch, serial)
            # Leave-one-model-out error of the line, so the reported error is on unseen models.
            models = wide.index.get_level_values("model").to_numpy()
            held = np.full(len(serial), np.nan)
            for m in np.unique(models):
                train = models != m
                if train.sum() >= 2:
                    aa, bb = _line(batch[train], serial[train])
                    held[~train] = aa + bb * batch[~train]
            per_layer, layer_note = _per_layer(wide, data_dir)
            if layer_note:
                notes.append(f"tp={int(tp)}: {layer_note}")
            entry = {
                "per_iteration_s": float(f"{a:.4g}"), "per_sequence_s": float(f"{b:.4g}"),
                "per_layer_s": float(f"{per_layer:.4g}"),
                "rows": int(len(serial)), "models": sorted(set(models.tolist())),
                "fit_error": _ape(a + b * batch, serial),
            }
            if np.isfinite(held).any():
                entry["leave_one_model_out_error"] = _ape(held[np.isfinite(held)], serial[np.isfinite(held)])
            by_tp[int(tp)] = entry
            if "ray_comm_time" in wide and int(tp) > 1:
                ray_by_tp[int(tp)] = float(f"{np.median(wide['ray_comm_time'].dropna()):.4g}")
        if not by_tp:
            continue
        src = f"vidur profiling/cpu_overheads_legacy/{gpu}_cpu_overheads.csv (commit 6d98aa8, MIT)"
        base = {
            "description": f"vLLM-v0-style engine on {device} as profiled by vidur: serial CPU work per iteration "
                           "(schedule + prepare inputs + sampler + output processing) and per-layer issue cost",
            "source": src,
            "notes": notes,
            "by_tp": by_tp,
        }
        sets[f"vidur-{gpu}"] = base
        with_ray = {tp: {**e, "per_iteration_s": float(f"{e['per_iteration_s'] + ray_by_tp.get(tp, 0.0):.4g}"),
                         "ray_rpc_s": ray_by_tp.get(tp, 0.0)} for tp, e in by_tp.items()}
        sets[f"vidur-{gpu}-ray"] = {
            **base,
            "description": base["description"] + ", plus the Ray RPC of its multi-GPU workers per iteration (TP > 1)",
            "by_tp": with_ray,
        }
    return {"format": OVERHEADS_FORMAT, "sets": sets}


def _per_layer(wide: pd.DataFrame, data_dir: Path | None) -> tuple[float, str]:
    """Slope of model_execution_e2e (median per model) against layer count, or 0 with the reason."""
    if "model_execution_e2e" not in wide:
        return 0.0, "no model_execution_e2e column; per_layer_s = 0"
    med = wide["model_execution_e2e"].groupby(level="model").median()
    layers = {m: _layers_of(m, data_dir) for m in med.index}
    known = {m: v for m, v in layers.items() if v is not None}
    if len(set(known.values())) < 2:
        return 0.0, ("per_layer_s = 0: the models at this TP degree do not differ in layer count (or vidur "
                     "model_configs are absent), so a per-layer term is not identifiable")
    x = np.array([known[m] for m in known])
    y = np.array([med[m] for m in known])
    slope, _ = np.polyfit(x, y, 1)
    if slope <= 0:
        return 0.0, f"per_layer_s = 0: model_execution_e2e does not grow with layer count (slope {slope:.3g} s/layer)"
    return float(slope), ""


# ---------------------------------------------------------------------- lookups


def _shipped_doc() -> Mapping[str, Any]:
    entry = resources.files("hwmodels.calibration.profiles").joinpath(OVERHEADS_FILE)
    if not entry.is_file():
        return {"format": OVERHEADS_FORMAT, "sets": {"none": NONE_SET}}
    return load_yaml_text(entry.read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def overhead_sets() -> Mapping[str, Any]:
    """Every shipped overhead set by name (``none`` always included)."""
    doc = _shipped_doc()
    sets = dict(doc.get("sets") or {})
    sets.setdefault("none", NONE_SET)
    return sets


def overhead_terms(name: str, tp: int) -> dict[str, Any]:
    """``{per_iteration_s, per_sequence_s, per_layer_s, name}`` of set ``name`` at TP ``tp``.

    A TP degree the set was not measured at takes the nearest measured one
    (the name then says which, e.g. ``vidur-a100@tp4``).
    """
    sets = overhead_sets()
    key = normalise_name(name)
    if key not in sets:
        raise UnknownNameError(
            f"unknown overhead set {name!r}",
            where="deployment.overheads",
            fix=f"use one of {', '.join(sorted(sets))} (fitted by `capsim calibrate fit`)",
        )
    by_tp = {int(k): v for k, v in (sets[key].get("by_tp") or {}).items()}
    if not by_tp:
        raise CapsimError(f"overhead set {name!r} has no terms", where="deployment.overheads")
    use = tp if tp in by_tp else min(by_tp, key=lambda t: (abs(t - tp), t))
    e = by_tp[use]
    label = key if use == tp or key == "none" else f"{key}@tp{use}"
    return {"per_iteration_s": float(e.get("per_iteration_s", 0.0)), "per_sequence_s": float(e.get("per_sequence_s", 0.0)),
            "per_layer_s": float(e.get("per_layer_s", 0.0)), "name": label}


def write_overheads(doc: Mapping[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "# capsim serving-engine overhead sets -- written by `capsim calibrate fit`; see overheads.py.\n"
    path.write_text(header + dump_yaml(doc), encoding="utf-8")
    return path
