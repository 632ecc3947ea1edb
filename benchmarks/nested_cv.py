"""Nested cross-validation of the GEMM and attention curves: the split design decisions are made on.

The held-out table (``benchmarks/accuracy.py``) must not be used to choose
between designs of a curve -- that would tune the test split. This script
scores the SHIPPED designs (``hwmodels/calibration/correction.py`` ``DESIGNS``
and the families of ``curves.FORM_FOR_OP_CLASS``) on a split inside each outer
training fold only (:func:`hwmodels.calibration.validate.inner_predictions`):
the fold's shape groups alternate into two halves, each predicted by a fit on
the other. To compare a design change, run it before and after the change and
apply a rule written down beforehand; the log of such decisions is in
``docs/calibration-decisions.md``.

    python benchmarks/nested_cv.py                       # GEMM and attention on the A100, H100, H200 (~10 min)
    python benchmarks/nested_cv.py --op-class attention_prefill --device h200
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

GPUS = ("a100-80gb-sxm", "h100-sxm", "h200")
OP_CLASSES = ("gemm", "attention_prefill", "attention_decode")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--device", action="append", help="repeatable; default: the A100, H100 and H200")
    parser.add_argument("--op-class", action="append", choices=OP_CLASSES, help="repeatable; default: all three")
    parser.add_argument("--min-time-us", type=float, default=20.0)
    parser.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    args = parser.parse_args()

    from hwmodels.calibration.fit import datasets, is_primary, reference_peaks
    from hwmodels.calibration.folds import FOLDS, assign_folds
    from hwmodels.calibration.importers import load_measurements
    from hwmodels.calibration.validate import ape, inner_predictions, report_key

    t0 = time.perf_counter()
    devices, classes = tuple(args.device or GPUS), tuple(args.op_class or OP_CLASSES)
    df, _ = load_measurements(args.data_dir)
    df = df[df["device"].isin(devices) & df["op_class"].isin(classes)]
    folds = assign_folds(df)
    sets = datasets(df)
    out: dict[str, dict[str, float]] = {}
    print(f"{'device':15} {'op class':22} {'outer':>5} {'n':>6} | inner-split median / p90 APE % (>= {args.min_time_us:g} us)")
    for ds in sets:
        if not is_primary(ds, sets):
            continue
        part = df.loc[ds.index]
        peaks = reference_peaks(ds.device, df)
        for outer in FOLDS:
            pred = inner_predictions(part, ds, folds, outer, peaks)
            meas = part.loc[pred.index, "measured_s"]
            sel = (meas >= args.min_time_us * 1e-6) & pred.notna()
            if not sel.any():
                continue
            e = ape(pred[sel], meas[sel])
            key = f"{ds.device} {report_key(ds, True)} {outer}"
            out[key] = {"median_ape": round(float(np.median(e)), 2), "p90_ape": round(float(np.percentile(e, 90)), 2),
                        "n": int(sel.sum())}
            print(f"{ds.device:15} {report_key(ds, True):22} {outer:>5} {int(sel.sum()):>6} | "
                  f"{out[key]['median_ape']:6.2f} / {out[key]['p90_ape']:6.2f}", flush=True)
    if out:
        print(f"\nmean over cells: median {np.mean([v['median_ape'] for v in out.values()]):.2f}, "
              f"p90 {np.mean([v['p90_ape'] for v in out.values()]):.2f}")
    print(f"({time.perf_counter() - t0:.0f} s)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
