"""Scenarios whose request and iteration tables are fingerprinted (see tests/test_fingerprints.py).

Why these: together they reach every pricing branch the engine has -- datasheet and calibrated pricing,
A100 decode runs cut into pieces by FlashAttention-2's split count, tensor and pipeline parallelism,
a mixture-of-experts model, every scheduler, preemption under a tiny KV budget, a load-dependent router
and a real trace -- so a refactor that changes any number anywhere changes a fingerprint.
"""

from __future__ import annotations

import hashlib

import numpy as np

BASE = {
    "seed": 7,
    "model": "llama-2-7b",
    "deployment": {"device": "a100-80gb-sxm"},
    "scheduler": {"name": "vllm"},
    "workload": {
        "arrival": "poisson",
        "qps": 6,
        "prompt": {"dist": "uniform", "low": 16, "high": 2000},
        "output": {"dist": "uniform", "low": 1, "high": 400},
    },
    "simulation": {"num_requests": 300},
}


def _with(**sections) -> dict:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BASE.items()}
    for key, value in sections.items():
        out[key] = value
    return out


CASES: dict[str, dict] = {
    "vllm-a100-profile": _with(),
    "vllm-a100-datasheet": _with(deployment={"device": "a100-80gb-sxm", "calibration": "datasheet"}),
    "sarathi-h100-tp2": _with(
        model="llama-3.1-8b",
        deployment={"device": "h100-sxm", "tp": 2, "num_replicas": 2},
        scheduler={"name": "sarathi", "chunk_size": 512},
        router={"name": "least-outstanding"},
    ),
    "orca-h200": _with(deployment={"device": "h200"}, scheduler={"name": "orca", "max_batch_size": 16}),
    "static-a100": _with(scheduler={"name": "static", "batch_size": 8},
                         workload={**BASE["workload"], "qps": 2}),
    "vllm-preempt": _with(deployment={"device": "a100-80gb-sxm", "memory_utilization": 0.165,
                                      "activation_reserve_gib": 0.0},
                          scheduler={"name": "vllm", "max_num_seqs": 16},
                          workload={**BASE["workload"], "prompt": {"dist": "uniform", "low": 16, "high": 600}}),
    "vllm-pp2-overheads": _with(model="llama-2-13b", deployment={"device": "a100-80gb-sxm", "pp": 2,
                                                                 "overheads": "vidur-a100"}),
    "moe-h100-tp2": _with(model="mixtral-8x7b", deployment={"device": "h100-sxm", "tp": 2},
                          workload={**BASE["workload"], "qps": 3}),
    "trace-azure-l40s": _with(model="llama-3.1-8b", deployment={"device": "l40s", "num_replicas": 2},
                              workload={"arrival": "trace", "trace": {"name": "azure-conv-2023"}},
                              simulation={"num_requests": 400}),
}


def table_digest(frame) -> str:
    """A digest of a table's exact values (float bits included), stable across pandas versions."""
    h = hashlib.sha256()
    for name in frame.columns:
        h.update(str(name).encode())
        col = frame[name].to_numpy()
        if col.dtype == object:
            h.update("\x1f".join(map(str, col.tolist())).encode())
        else:
            h.update(np.ascontiguousarray(col.astype(np.float64 if col.dtype.kind == "f" else col.dtype)).tobytes())
    return h.hexdigest()[:20]


#: Cases that leave ``deployment.engine`` to its default (since ``vllm`` became the default engine profile). Every
#: other case was stored when the default was ``none`` (kernels alone) and pins it, so its hashes never moved.
DEFAULT_ENGINE_CASES = ("vllm-h100-tp2-default-engine",)

CASES["vllm-h100-tp2-default-engine"] = _with(model="llama-3.1-8b", deployment={"device": "h100-sxm", "tp": 2},
                                          workload={**BASE["workload"], "qps": 10})


def pinned(case: dict, name: str = "") -> dict:
    """``case`` with ``deployment.engine: none`` unless it names an engine (or an overhead set) itself or is one of
    :data:`DEFAULT_ENGINE_CASES`."""
    dep = case["deployment"]
    if name in DEFAULT_ENGINE_CASES or "engine" in dep or "overheads" in dep:
        return case
    return {**case, "deployment": {**dep, "engine": "none"}}


def fingerprints(case: dict, name: str = "") -> dict[str, str]:
    from simulator.config.schema import Scenario
    from simulator.engine import simulate

    out = simulate(Scenario.model_validate(pinned(case, name)))
    return {"requests": table_digest(out.result.requests), "iterations": table_digest(out.result.iterations)}


if __name__ == "__main__":  # regenerate: python tests/fingerprint_cases.py > tests/data/fingerprints.json
    import json

    print(json.dumps({name: fingerprints(case, name) for name, case in CASES.items()}, indent=1, sort_keys=True))
