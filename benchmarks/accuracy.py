"""Accuracy benchmark of the calibrated hardware models (not a timed test).

Prints two things, from the published GPU measurements in ``../shared/data``
(``--data-dir`` or ``$CAPSIM_SHARED_DATA``):

1. The held-out error table of ``capsim calibrate validate`` for the A100-80GB
   SXM, H100 SXM and H200: per operator class, median / p90 / max absolute
   percentage error and count over kernels measured at >= 20 us, for the
   calibrated model (2-fold cross-validation, hwmodels/calibration/folds.py)
   and the datasheet-only roofline, with the issue's targets marked.
2. An end-to-end check: capsim's predicted time of whole transformer layers
   (the sum of its operators, from the SHIPPED profiles) against the sum of the
   measured times of the same layer's operators, for every model, TP degree and
   token count in vidur's per-model tables (A100, H100), plus whole layers with
   attention for the one model vidur measured attention for (Llama-2-70B, TP2,
   A100: prefill chunks and decode batches). vidur's kernels are a different
   software stack (sarathi-serve, 2024, fp16) from the aiconfigurator tables
   the profiles were fitted on, so this is an out-of-source check.

    python benchmarks/accuracy.py                 # both parts (about 1.5 minutes)
    python benchmarks/accuracy.py --skip-heldout  # only the end-to-end check
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import pandas as pd

GPUS = ("a100-80gb-sxm", "h100-sxm", "h200")
LINEAR_OPS = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")
CAPSIM_LINEAR = ("qkv_proj", "o_proj", "mlp", "norm")


def _stats(pred: np.ndarray, meas: np.ndarray) -> str:
    e = np.abs(pred / meas - 1.0) * 100.0
    bias = np.median(pred / meas)
    return f"median {np.median(e):5.1f}  p90 {np.percentile(e, 90):5.1f}  max {e.max():6.1f}  (median ratio {bias:.3f})"


def heldout(df: pd.DataFrame) -> dict:
    from hwmodels.calibration.validate import cross_validate, format_table

    v = cross_validate(df, devices=list(GPUS))
    print("Held-out error, kernels measured >= 20 us (APE %; calibrated = 2-fold cross-validation):\n")
    print(format_table(v.table))
    for note in v.notes:
        print("note:", note, file=sys.stderr)
    return v.table


# ------------------------------------------------------------------- end to end


def _model_of(row: pd.Series):
    from simulator.models import model_from_dict

    return model_from_dict({
        "name": "vidur-shape", "num_layers": 1, "hidden_size": int(row["n_embd"]), "num_heads": int(row["n_head"]),
        "num_kv_heads": int(row["n_kv_head"]), "ffn_size": int(row["n_expanded_embd"]),
        "vocab_size": int(row["vocab_size"]), "mlp": "gated" if row["use_gated_mlp"] else "plain",
        "max_context": 1 << 20, "norm": "rmsnorm",
    })


def _layer_prices(model, device: str, tp: int, shape, ops: tuple[str, ...]) -> tuple[float, float]:
    """(calibrated, datasheet) seconds of one layer's ``ops`` for ``shape``."""
    from simulator.config.schema import DeploymentConfig, Scenario
    from simulator.system import build_system

    out = []
    for cal in ("profile", "datasheet"):
        sc = Scenario(model=model.model_dump(), deployment=DeploymentConfig(
            device=device, tp=tp, calibration=cal, activation_dtype="fp16", weight_dtype="fp16", kv_dtype="fp16",
            activation_reserve_gib=0))
        cost = build_system(sc).cost_model()
        out.append(sum(r.time_s for r in cost.breakdown(shape) if r.name in ops and r.scope == "layer"))
    return out[0], out[1]


def end_to_end(data_dir) -> dict:
    from hwmodels.calibration.importers.vidur import GPUS as VIDUR_GPUS
    from simulator.costmodel import BatchShape

    base = data_dir / "vidur" / "profiling"
    results = {}
    print("\nEnd-to-end: one transformer layer, capsim (sum of operators) vs the sum of vidur's measured operators")
    print("(out-of-source: profiles are fitted on aiconfigurator's kernels; APE %)\n")
    for gpu in ("a100", "h100"):
        device = VIDUR_GPUS[gpu]
        rows = []
        for path in sorted((base / "compute" / gpu).glob("*/*/mlp.csv")):
            df = pd.read_csv(path)
            df = df.drop_duplicates(["num_tokens", "num_tensor_parallel_workers"])
            model = _model_of(df.iloc[0])
            norms = [c for c in ("input_layernorm", "post_attention_layernorm") if f"time_stats.{c}.median" in df]
            for tp, part in df.groupby("num_tensor_parallel_workers"):
                if model.num_heads % int(tp):
                    continue
                # Every 8th token count keeps this quick; all shapes of the table are spread over.
                for _, r in part.iloc[::8].iterrows():
                    m = int(r["num_tokens"])
                    measured = sum(r[f"time_stats.{op}.median"] for op in (*LINEAR_OPS, *norms)) * 1e-3
                    unmodelled = sum(r.get(f"time_stats.{op}.median", 0.0) for op in ("attn_rope", "mlp_act", "add"))
                    cal, ds = _layer_prices(model, device, int(tp), BatchShape(prefill_chunks=((m, 0, True),)),
                                            CAPSIM_LINEAR)
                    rows.append((path.parent.name, int(tp), m, measured, unmodelled * 1e-3, cal, ds))
        t = pd.DataFrame(rows, columns=["model", "tp", "tokens", "measured", "unmodelled", "calibrated", "datasheet"])
        print(f"{device}: layer GEMMs + norms ({len(t)} shapes, {t['model'].nunique()} models, TP 1-8)")
        print(f"  calibrated  {_stats(t['calibrated'].to_numpy(), t['measured'].to_numpy())}")
        print(f"  datasheet   {_stats(t['datasheet'].to_numpy(), t['measured'].to_numpy())}")
        share = (t["unmodelled"] / (t["measured"] + t["unmodelled"])).median()
        print(f"  measured rotary + activation + residual-add kernels capsim has no operator for: median "
              f"{share:.1%} of the layer's non-attention time")
        results[device] = {"layer_linear": {
            "calibrated_median_ape": float(np.median(np.abs(t["calibrated"] / t["measured"] - 1) * 100)),
            "datasheet_median_ape": float(np.median(np.abs(t["datasheet"] / t["measured"] - 1) * 100)),
            "n": len(t), "unmodelled_share": float(share)}}

    # Whole layers with attention: Llama-2-70B at TP2 on the A100.
    mlp = pd.read_csv(base / "compute" / "a100" / "meta-llama" / "Llama-2-70b-hf" / "mlp.csv")
    mlp = mlp[mlp["num_tensor_parallel_workers"] == 2].drop_duplicates("num_tokens").set_index("num_tokens")
    attn = pd.read_csv(base / "compute_legacy" / "a100" / "attention_llama2-70b_tp2.csv")
    model = _model_of(mlp.iloc[0])
    linear_cols = [f"time_stats.{op}.median" for op in (*LINEAR_OPS, "input_layernorm", "post_attention_layernorm")]
    rows = []
    pre = attn[attn["is_prefill"] & (attn["kv_cache_size"] == 0)]
    for _, r in pre.iterrows():
        q = int(r["prefill_chunk_size"])
        if q not in mlp.index:
            continue
        measured = (mlp.loc[q, linear_cols].sum() + r["time_stats.attn_prefill.median"]) * 1e-3
        cal, ds = _layer_prices(model, "a100-80gb-sxm", 2, BatchShape(prefill_chunks=((q, 0, True),)),
                                (*CAPSIM_LINEAR, "attention_prefill"))
        rows.append(("prefill", q, measured, cal, ds))
    dec = attn[~attn["is_prefill"]]
    dec = dec[dec["kv_cache_size"].isin([128, 512, 1024, 2048, 4032]) & dec["batch_size"].isin([1, 4, 16, 32, 64, 128])]
    for _, r in dec.iterrows():
        b, c = int(r["batch_size"]), int(r["kv_cache_size"])
        if b not in mlp.index:
            continue
        measured = (mlp.loc[b, linear_cols].sum() + r["time_stats.attn_decode.median"]) * 1e-3
        cal, ds = _layer_prices(model, "a100-80gb-sxm", 2, BatchShape(decode_seqs=b, decode_context=b * (c + 1)),
                                (*CAPSIM_LINEAR, "attention_decode"))
        rows.append(("decode", b, measured, cal, ds))
    t = pd.DataFrame(rows, columns=["phase", "size", "measured", "calibrated", "datasheet"])
    print("\na100-80gb-sxm: whole Llama-2-70B layer at TP2 (GEMMs + norms + attention; collectives excluded)")
    for phase, part in t.groupby("phase"):
        print(f"  {phase:7} ({len(part):3} shapes) calibrated {_stats(part['calibrated'].to_numpy(), part['measured'].to_numpy())}")
        print(f"  {phase:7} ({len(part):3} shapes) datasheet  {_stats(part['datasheet'].to_numpy(), part['measured'].to_numpy())}")
        results.setdefault("a100-80gb-sxm", {})[f"layer_70b_tp2_{phase}"] = {
            "calibrated_median_ape": float(np.median(np.abs(part["calibrated"] / part["measured"] - 1) * 100)),
            "datasheet_median_ape": float(np.median(np.abs(part["datasheet"] / part["measured"] - 1) * 100)),
            "n": len(part)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--skip-heldout", action="store_true")
    parser.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    args = parser.parse_args()
    from hwmodels.calibration.importers import data_dir_available, import_all, resolve_data_dir

    if not data_dir_available(args.data_dir):
        raise SystemExit(f"shared data not found at {resolve_data_dir(args.data_dir)}; pass --data-dir")
    t0 = time.perf_counter()
    out = {}
    if not args.skip_heldout:
        df, _ = import_all(args.data_dir)
        out["heldout"] = heldout(df[df["device"].isin(GPUS)])
    out["end_to_end"] = end_to_end(resolve_data_dir(args.data_dir))
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
