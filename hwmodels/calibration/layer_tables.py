"""Vidur's whole-layer tables, shipped as a compact extract so a clone can run the whole-layer check.

Why: ``benchmarks/accuracy.py`` compares capsim's price of a whole transformer layer with the sum of
Vidur's measured operators *of the same row* (one model, TP degree and token count), and the shipped tidy
table (``kernel_measurements.csv.gz``) keeps one row per operator, without the model-config columns that
row grouping needs. This module keeps, from Vidur's raw ``mlp.csv`` tables (A100 and H100) and its one
attention table (Llama-2-70B, TP2, A100), exactly the columns that check reads, values unaltered, plus each
Vidur model's layer count (which the engine-overhead fit needs for its per-layer term). Source: github.com/
microsoft/vidur (MIT, Copyright (c) Microsoft Corporation; commits in ``data/SOURCES.md``).

    python -m hwmodels.calibration.layer_tables --data-dir DIR   # rebuild the extract from the raw tables
"""

from __future__ import annotations

import argparse
from functools import lru_cache
from pathlib import Path

import pandas as pd
import yaml

DATA = Path(__file__).resolve().parent / "data"
LAYERS_FILE = DATA / "vidur_layers.csv.gz"
ATTENTION_FILE = DATA / "vidur_attention_llama2-70b_tp2.csv.gz"
MODEL_LAYERS_FILE = DATA / "vidur_model_layers.csv"

LAYER_GPUS = ("a100", "h100")
"""Vidur compute folders the whole-layer check covers (the calibrated catalog devices)."""
CONFIG_COLS = ("n_head", "n_kv_head", "n_embd", "n_expanded_embd", "vocab_size", "use_gated_mlp", "num_tokens",
               "num_tensor_parallel_workers")
TIMED_OPS = ("input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj", "post_attention_layernorm",
             "mlp_up_proj", "mlp_act", "mlp_down_proj", "add")
ATTENTION_COLS = ("batch_size", "prefill_chunk_size", "kv_cache_size", "is_prefill", "time_stats.attn_prefill.median",
                  "time_stats.attn_decode.median")
ATTENTION_RAW = Path("compute_legacy") / "a100" / "attention_llama2-70b_tp2.csv"


def _gzip_csv(df: pd.DataFrame, path: Path) -> None:
    """Write with shortest round-trip floats (values unaltered) and a fixed gzip header (reproducible bytes)."""
    df.to_csv(path, index=False, compression={"method": "gzip", "mtime": 0, "compresslevel": 9})


def extract_from_raw(data_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(layers, attention) read from Vidur's raw tables under ``data_dir/vidur``."""
    base = Path(data_dir) / "vidur" / "profiling"
    frames = []
    for gpu in LAYER_GPUS:
        for path in sorted((base / "compute" / gpu).glob("*/*/mlp.csv")):
            df = pd.read_csv(path)
            timed = [f"time_stats.{op}.median" for op in TIMED_OPS if f"time_stats.{op}.median" in df]
            part = df[list(CONFIG_COLS) + timed].copy()
            part.insert(0, "model", f"{path.parent.parent.name}/{path.parent.name}")
            part.insert(0, "gpu", gpu)
            frames.append(part)
    layers = pd.concat(frames, ignore_index=True)
    attention = pd.read_csv(base / ATTENTION_RAW)[list(ATTENTION_COLS)]
    return layers, attention


def _raw_model_layers(data_dir: Path) -> pd.DataFrame:
    """``num_layers`` of each of Vidur's model configs (``vidur/model_configs/<org>/<name>.yml``)."""
    counts = []
    for path in sorted((Path(data_dir) / "vidur" / "model_configs").glob("*/*.yml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if "num_layers" in doc:
            counts.append((f"{path.parent.name}/{path.stem}", int(doc["num_layers"])))
    return pd.DataFrame(counts, columns=["model", "num_layers"])


def write_extract(data_dir: Path) -> list[Path]:
    """Rebuild the shipped extract from the raw tables; returns the files written."""
    layers, attention = extract_from_raw(data_dir)
    _gzip_csv(layers, LAYERS_FILE)
    _gzip_csv(attention, ATTENTION_FILE)
    _raw_model_layers(data_dir).to_csv(MODEL_LAYERS_FILE, index=False)
    return [LAYERS_FILE, ATTENTION_FILE, MODEL_LAYERS_FILE]


def shipped_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    """(layers, attention) as shipped."""
    return pd.read_csv(LAYERS_FILE), pd.read_csv(ATTENTION_FILE)


def layer_tables(data_dir: Path | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The raw tables when a raw-data folder holding Vidur's is given, else the shipped extract."""
    if data_dir is not None and (Path(data_dir) / "vidur" / "profiling" / "compute").is_dir():
        return extract_from_raw(data_dir)
    return shipped_tables()


@lru_cache(maxsize=4)
def model_layers(data_dir: Path | None = None) -> dict[str, int]:
    """Layer count per Vidur model id (``org/name``): from the raw model configs when given, else shipped."""
    if data_dir is not None and (Path(data_dir) / "vidur" / "model_configs").is_dir():
        df = _raw_model_layers(data_dir)
    else:
        df = pd.read_csv(MODEL_LAYERS_FILE)
    return dict(zip(df["model"], df["num_layers"].astype(int), strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, type=Path, help="raw-data folder holding vidur/profiling")
    args = parser.parse_args()
    for path in write_extract(args.data_dir):
        print(path)


if __name__ == "__main__":
    main()
