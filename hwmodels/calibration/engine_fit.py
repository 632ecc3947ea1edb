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


#: TensorRT-LLM's XQA decode kernels (read a KV head once per group): first in the 0.7 releases, precompiled only
#: for 8 query heads per KV head in that generation (``docs/calibration-decisions.md``, E3 -- a post-hoc check).
XQA_FROM_RELEASE = (0, 7)
XQA_GROUP_SIZES = (8,)


def xqa_covered(row: E2ERow) -> bool:
    """Whether TensorRT-LLM's XQA kernel ran the row's grouped-query decode (so it did not re-read the KV heads).

    Why it matters: the fitted ``gqa_reread`` stands for the masked multi-head kernel, which reads a KV head once
    per query head; a row run through XQA read it once per group. Used only by the post-hoc check
    ``benchmarks/e2e_accuracy.py --xqa-rule``; the shipped profile does not depend on it.
    """
    from simulator.models.catalog import get_model

    release = tuple(int(x) for x in row.release.split(".")[:2])
    spec = get_model(row.model)
    group = spec.num_heads // spec.num_kv_heads if spec.num_kv_heads else 0
    return release >= XQA_FROM_RELEASE and spec.num_kv_heads < spec.num_heads and group in XQA_GROUP_SIZES


def row_terms(row: E2ERow, terms: dict[str, float], xqa_rule: bool = False) -> dict[str, float]:
    """The engine terms that price ``row``: ``terms``, with no KV re-read where ``xqa_rule`` and XQA ran the row."""
    if xqa_rule and xqa_covered(row):
        return {**terms, "gqa_reread": 0.0}
    return terms


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


#: The held-out measured / predicted ratios of the fitted engine profile, the end-to-end source of prediction
#: intervals (``simulator/intervals/residuals.py``).
RESIDUALS_FILE = "heldout_residuals.csv"
_RESIDUAL_COLUMNS = (
    "engine",
    "release",
    "device",
    "model",
    "tp",
    "batch",
    "isl",
    "osl",
    "kind",
    "predicted_s",
    "measured_s",
    "ratio",
)


def residual_rows(engine: str, priced: list[Priced], terms_of: dict[int, dict[str, float]]) -> list[dict[str, Any]]:
    """One row per held-out measurement: what ``engine``'s terms predict and the ratio measured / predicted."""
    out = []
    for p in priced:
        r = p.row
        if not r.held_out:
            continue
        predicted = p.with_terms(terms_of[r.tp])
        out.append(
            {
                "engine": engine,
                "release": r.release,
                "device": r.device,
                "model": r.model,
                "tp": r.tp,
                "batch": r.batch,
                "isl": r.isl,
                "osl": r.osl,
                "kind": r.kind,
                "predicted_s": f"{predicted:.6g}",
                "measured_s": f"{r.measured_s:.6g}",
                "ratio": f"{r.measured_s / predicted:.5f}",
            }
        )
    return out


def write_residuals(
    engine: str, priced: list[Priced], terms_of: dict[int, dict[str, float]], path: Path | None = None
) -> Path:
    """Write :func:`residual_rows` to ``data/e2e/heldout_residuals.csv`` (replacing that engine's rows)."""
    return replace_residual_rows({engine}, residual_rows(engine, priced, terms_of), path)


def replace_residual_rows(engines: set[str], rows: list[dict[str, Any]], path: Path | None = None) -> Path:
    """Replace the stored held-out rows of ``engines`` with ``rows`` (other engines' rows are kept, in order)."""
    import csv

    path = path or E2E_DIR / RESIDUALS_FILE
    kept = []
    if path.is_file():
        with path.open(encoding="utf-8") as f:
            kept = [row for row in csv.DictReader(f) if row["engine"] not in engines]
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=_RESIDUAL_COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(kept + rows)
    return path


def interval_coverage(
    priced: list[Priced], terms_of: dict[int, dict[str, float]], level: float = 0.9
) -> dict[str, dict[str, Any]]:
    """Empirical coverage of ``level`` prediction intervals on the held-out rows (the registered check).

    ``e2e leave-one-out``: each row's interval from the other held-out rows' ratios, around its with-profile
    prediction. ``kernel, kernels-only`` / ``kernel, with profile``: the kernel-error interval of the row's device
    (prefill rows: the prefill curves; throughput rows, mostly decode steps: the decode curves) around each
    prediction.
    """
    from hwmodels.calibration.profile import shipped_profile
    from simulator.intervals.residuals import PhaseResiduals, kernel_residuals

    qs = ((1 - level) / 2, (1 + level) / 2)
    held = [p for p in priced if p.row.held_out]
    with_profile = np.array([p.with_terms(terms_of[p.row.tp]) for p in held])
    measured = np.array([p.row.measured_s for p in held])
    ratios = measured / with_profile
    out: dict[str, dict[str, Any]] = {}

    def tally(name: str, inside: list[bool], widths: list[float]) -> None:
        out[name] = {
            "inside": int(sum(inside)),
            "n": len(inside),
            "coverage": sum(inside) / len(inside),
            "median_width_pct": float(np.median(widths)) * 100,
        }

    inside, widths = [], []
    for i in range(len(held)):
        lo, hi = PhaseResiduals(ratios=tuple(np.delete(ratios, i))).quantiles(qs)
        inside.append(bool(lo * with_profile[i] <= measured[i] <= hi * with_profile[i]))
        widths.append(hi - lo)
    tally("e2e leave-one-out, with profile", inside, widths)
    for label, predicted in (
        ("kernel, kernels-only", [p.kernels_s for p in held]),
        ("kernel, with profile", with_profile),
    ):
        inside, widths = [], []
        for p, pred in zip(held, predicted, strict=True):
            phase = "prefill" if p.row.kind == "prefill" else "decode"
            lo, hi = kernel_residuals(shipped_profile(p.row.device).doc, phase, p.row.weight_dtype).quantiles(qs)
            inside.append(bool(lo * pred <= p.row.measured_s <= hi * pred))
            widths.append(hi - lo)
        tally(label, inside, widths)
    return out


def format_coverage(cov: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'interval (90 %)':34s} {'inside':>6s} {'n':>3s} {'coverage':>8s} {'median width':>12s}"]
    for name, c in cov.items():
        lines.append(f"{name:34s} {c['inside']:6d} {c['n']:3d} {c['coverage']:8.0%} {c['median_width_pct']:11.0f}%")
    return "\n".join(lines)
