"""Fit and check serving-engine profiles on published end-to-end measurements.

Why: kernel calibration cannot see what an engine adds around its kernels; only
end-to-end numbers can. The published tables we can reach (TensorRT-LLM's
static-batch session benchmark, ``data/e2e/trtllm_static.csv``) give whole-batch
times, so each row is predicted by :func:`simulator.estimate.estimate` (one
prefill of the batch, then ``osl - 1`` decode steps) and the engine's terms enter
that prediction linearly: the fit prices every row once with the kernels alone and
once per unit term, then solves for non-negative terms by least relative error.

The split and the rule are registered in ``docs/calibration-decisions.md``
(*Engine profiles*); ``benchmarks/e2e_accuracy.py`` prints the result.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from simulator.costmodel.iteration import OverheadTerms

E2E_DIR = Path(__file__).resolve().parent / "data" / "e2e"
E2E_DATA = "trtllm_static.csv"
FIT_TERMS = ("per_step_s", "per_sequence_s", "per_token_s", "per_layer_s", "gqa_reread")
#: Held-out rows of the registered split: every row of this model.
HELD_OUT_MODEL = "llama-2-70b"
_UNIT = {
    "per_step_s": OverheadTerms(per_iteration_s=1.0, name="unit"),
    "per_sequence_s": OverheadTerms(per_sequence_s=1.0, name="unit"),
    "per_token_s": OverheadTerms(per_token_s=1.0, name="unit"),
    "per_layer_s": OverheadTerms(per_layer_s=1.0, name="unit"),
    "per_collective_s": OverheadTerms(per_collective_s=1.0, name="unit"),
    "gqa_reread": OverheadTerms(gqa_reread=1.0, name="unit"),
}


@dataclass(frozen=True)
class E2ERow:
    """One published measurement, as the time capsim predicts (seconds) and how it was reported."""

    release: str
    device: str
    model: str
    weight_dtype: str
    kv_dtype: str
    tp: int
    batch: int
    isl: int
    osl: int
    metric: str  # first_token_ms | output_tokens_per_s | output_tokens_per_s_per_gpu
    value: float

    @property
    def held_out(self) -> bool:
        return self.model == HELD_OUT_MODEL

    @property
    def kind(self) -> str:
        return "prefill" if self.metric == "first_token_ms" else "throughput"

    @property
    def measured_s(self) -> float:
        """The measured time of what the row reports: the first-token iteration, or the whole static batch."""
        if self.metric == "first_token_ms":
            return self.value * 1e-3
        per_s = self.value * (self.tp if self.metric.endswith("per_gpu") else 1)
        return self.batch * self.osl / per_s

    def as_reported(self, time_s: float) -> float:
        """A predicted time in the row's own unit (ms, or output tokens/s overall or per GPU)."""
        if self.metric == "first_token_ms":
            return time_s * 1e3
        per_s = self.batch * self.osl / time_s
        return per_s / self.tp if self.metric.endswith("per_gpu") else per_s


def load_rows(text: str | None = None) -> list[E2ERow]:
    """The shipped TensorRT-LLM rows (or ``text`` in the same CSV form)."""
    import csv
    import io

    if text is None:
        text = (E2E_DIR / E2E_DATA).read_text(encoding="utf-8")
    out = []
    for r in csv.DictReader(io.StringIO(text)):
        out.append(
            E2ERow(
                r["release"],
                r["device"],
                r["model"],
                r["weight_dtype"],
                r["kv_dtype"],
                int(r["tp"]),
                int(r["batch"]),
                int(r["isl"]),
                int(r["osl"]),
                r["metric"],
                float(r["value"]),
            )
        )
    return out


def _system(row: E2ERow):
    from simulator.config.schema import Scenario
    from simulator.system import build_system

    scenario = Scenario(
        model=row.model,
        deployment={"device": row.device, "tp": row.tp, "weight_dtype": row.weight_dtype, "kv_dtype": row.kv_dtype},
        scheduler={"name": "vllm", "max_num_seqs": row.batch, "max_num_batched_tokens": row.batch * row.isl},
    )
    return build_system(scenario)


def _time(system, row: E2ERow, overheads: OverheadTerms | None) -> float:
    from simulator.estimate import estimate

    if row.isl + row.osl > system.model.max_context:
        # The published run went past the catalog's context (Falcon 180B: 2048 + 128); price what was run.
        system = replace(system, model=system.model.model_copy(update={"max_context": row.isl + row.osl}))
    est = estimate(replace(system, overheads=overheads), batch=row.batch, prompt=row.isl, output=row.osl)
    return est.prefill_s if row.kind == "prefill" else est.e2e_s


@dataclass(frozen=True)
class Priced:
    """A row priced with the kernels alone, and what each unit engine term adds to it (seconds per unit)."""

    row: E2ERow
    kernels_s: float
    per_unit: dict[str, float]

    def with_terms(self, terms: dict[str, float]) -> float:
        return self.kernels_s + sum(self.per_unit[k] * float(terms.get(k, 0.0)) for k in self.per_unit)


def price_rows(rows: list[E2ERow]) -> list[Priced]:
    """Each row priced once with no engine terms and once per unit term (the overhead is linear in them)."""
    out = []
    for row in rows:
        system = _system(row)
        base = _time(system, row, None)
        per_unit = {k: _time(system, row, unit) - base for k, unit in _UNIT.items()}
        out.append(Priced(row, base, per_unit))
    return out


def fit_terms(priced: list[Priced], fixed_by_tp: dict[int, dict[str, float]]) -> dict[str, float]:
    """Non-negative ``FIT_TERMS`` minimising the relative error over ``priced``.

    ``fixed_by_tp`` holds the terms that are not fitted (set from measurement), by TP degree: each row is
    priced with its own TP's.
    """
    from scipy.optimize import nnls

    a = np.array([[p.per_unit[k] / p.row.measured_s for k in FIT_TERMS] for p in priced])
    b = np.array([1.0 - p.with_terms(fixed_by_tp.get(p.row.tp, {})) / p.row.measured_s for p in priced])
    scale = np.maximum(np.abs(a).max(axis=0), 1e-30)  # columns of very different magnitude (per token vs per step)
    theta, _ = nnls(a / scale, b)
    return {k: float(f"{v:.4g}") for k, v in zip(FIT_TERMS, theta / scale, strict=True)}


def ape(predicted: np.ndarray, measured: np.ndarray) -> dict[str, Any]:
    e = np.abs(np.asarray(predicted) / np.asarray(measured) - 1.0) * 100.0
    if not e.size:
        return {"median_ape": float("nan"), "p90_ape": float("nan"), "n": 0}
    return {
        "median_ape": round(float(np.median(e)), 1),
        "p90_ape": round(float(np.percentile(e, 90)), 1),
        "n": int(e.size),
    }
