"""The held-out split: which rows a fit may see, and which it is judged on.

Why a fixed rule: the errors we report are only honest if the split is decided
by the data's shapes before any fit is looked at, and never tuned afterwards.
Every row gets one of two folds, ``A`` or ``B``; validation fits on one fold
and measures the error on the other, both ways round (2-fold cross-validation),
so every row is predicted by a fit that did not see it. Rules, first match wins:

1. A ``family`` already in the row (set by ``measure`` or by hand) is kept.
2. Rows from a named model (vidur's per-model tables, our own sweeps) split BY
   MODEL SIZE: hidden size <= 5120 (phi-2, Llama-2-7B, Llama-3-8B, InternLM-20B,
   the 7B/8B class) is ``A``; larger (CodeLlama-34B, Llama-2/3-70B, Qwen-72B,
   the 70B class) is ``B``. So the 7B/8B fit is judged on 70B shapes and vice versa.
3. GEMM shape grids with no model (aiconfigurator): the weight shape (n, k)
   decides, in a checkerboard over the grid's sorted n and k values -- every
   held-out weight shape has its grid neighbours in the other fold, as a new
   model's layer shapes fall between the shapes a profile was fitted on.
4. Attention grids with no model: the head configuration (query heads, KV heads)
   decides, alternating over the sorted configurations of each head size -- a
   head configuration is what a model (at a TP degree) fixes. Every head size
   stays in both folds because the attention curves keep one peak fraction per
   head size (64/128/192/256), which cannot be extrapolated to an unseen size.
5. Collectives and copies: the message size, alternating over sorted sizes per
   (op, group size, link).

Rows from a single model that rule 2 cannot split (vidur's one attention table)
get fold ``X``: they are only ever used as an out-of-source check.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SPLIT_SUMMARY = (
    "2-fold held-out split: model-shaped rows by model size (hidden <= 5120, the 7B/8B class, vs larger, the "
    "70B class); GEMM grids by weight shape (checkerboard over sorted n and k); attention grids by head "
    "configuration (alternating query/KV head counts within each head size); collectives by message size "
    "(alternating). Every row is predicted by the fit on the other fold."
)
"""One-paragraph statement of the split, recorded in every profile."""

SMALL_MODEL_MAX_HIDDEN = 5120
"""Hidden sizes up to this are the 7B/8B class (fold A); larger ones the 70B class (fold B)."""

FOLDS = ("A", "B")


def _alternate(values: pd.Series) -> np.ndarray:
    """Parity of each value's rank among the sorted distinct values (0, 1, 0, 1, ...)."""
    ranks = {v: i for i, v in enumerate(sorted(values.dropna().unique()))}
    return values.map(ranks).fillna(0).to_numpy(dtype=int) % 2


def _checkerboard(df: pd.DataFrame) -> np.ndarray:
    return (_alternate(df["n"]) + _alternate(df["k"])) % 2


def assign_folds(df: pd.DataFrame) -> pd.Series:
    """Fold label (``A``, ``B`` or ``X``) of every row of a schema table (same index)."""
    fold = pd.Series("", index=df.index, dtype=object)
    preset = df["family"].astype(str).str.len() > 0
    fold[preset] = df.loc[preset, "family"]

    hidden = df["hidden"]
    by_model = ~preset & hidden.notna() & (df["model"].astype(str).str.len() > 0)
    single_model_attention = by_model & df["op_class"].str.startswith("attention")
    models_per_attention = df.loc[single_model_attention].groupby("device")["model"].nunique()
    for device, n_models in models_per_attention.items():
        if n_models < 2:
            rows = single_model_attention & (df["device"] == device)
            fold[rows] = "X"
            by_model &= ~rows
    fold[by_model] = np.where(hidden[by_model] <= SMALL_MODEL_MAX_HIDDEN, "A", "B")

    rest = fold == ""
    gemm = rest & (df["op_class"] == "gemm")
    for _, idx in df[gemm].groupby(["device", "dtype", "source_group"] if "source_group" in df else
                                   ["device", "dtype"]).groups.items():
        part = df.loc[idx]
        fold[idx] = np.where(_checkerboard(part) == 0, "A", "B")

    attn = rest & df["op_class"].str.startswith("attention")
    for _, idx in df[attn].groupby(["device", "op_class"]).groups.items():
        part = df.loc[idx]
        config = list(zip(part["head_dim"], part["heads"], part["kv_heads"], strict=True))
        order: dict[tuple, int] = {}
        for dh in sorted({c[0] for c in config}):
            for i, c in enumerate(sorted(c for c in set(config) if c[0] == dh)):
                order[c] = i
        fold[idx] = ["A" if order[c] % 2 == 0 else "B" for c in config]

    other = (fold == "")
    for _, idx in df[other].groupby(["device", "op_class", "op", "group_size", "link"], dropna=False).groups.items():
        part = df.loc[idx]
        size = part["nbytes"] if part["nbytes"].notna().any() else part["batch"]
        fold[idx] = np.where(_alternate(size) == 0, "A", "B")
    return fold
