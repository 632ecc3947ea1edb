"""Energy per unit and per tier, average power, rental and TCO prices per device and node (summary keys).

Why a module of its own: :mod:`simulator.metrics.summary` keeps its original energy and cost keys byte-identical
(``energy_j`` counts the GPUs and the devices techniques add, ``cost_usd`` is rental); everything here is new and
reads only the run's records and :class:`~simulator.metrics.result.RunInfo`:

* **per unit**: the GPUs (idle power always, TDP while their replica runs an iteration), each device a technique
  adds, each memory tier a technique uses (its ``idle_w``/``active_w``; active while its replica is busy, an upper
  bound), as ``energy.<unit>_j`` and ``avg_power.<unit>_w`` (present when the run uses more than its GPUs;
  a GPU-only run's ``energy_j`` is its GPUs' energy). A tier whose power is not given is listed in
  ``energy_unpowered_units`` and left out of the totals (unknown, not zero).
* **totals**: ``energy_total_j`` = ``energy_j`` + the tiers'; per finished request and per output token; the
  average power over the window; facility energy = total x PUE.
* **prices**: rental $/h of the deployment, per GPU and per node; with ``cost: {mode: tco}`` the TCO per hour
  (:mod:`simulator.metrics.tco`), per GPU and node, over the window and per million output tokens.

Not counted anywhere: host CPUs, NICs and switches, and (unless a PUE is given) cooling and power delivery.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from simulator.metrics.energy import energy_joules, unit_energy_joules
from simulator.metrics.result import PoolInfo, SimulationResult
from simulator.metrics.tco import tco_per_hour
from simulator.metrics.thermal_power import powered_busy_s

NAN = float("nan")

#: The fixed keys this module adds to the summary, with their meaning (merged into SUMMARY_KEYS).
ENERGY_COST_KEYS: dict[str, str] = {
    "energy_total_j": "energy over the window of everything the run uses: GPUs, devices techniques add and the "
    "memory tiers techniques use whose power is given (J); energy_j is the part without tiers",
    "energy_per_request_j": "energy_total_j per finished measured request (J)",
    "energy_total_per_output_token_j": "energy_total_j per output token of finished measured requests (J)",
    "avg_power_w": "average power over the window of everything in energy_total_j (W)",
    "avg_power_per_gpu_w": "average power of one GPU over the window (W)",
    "facility_energy_j": "energy_total_j x the cost section's PUE (1 without one): with cooling and power delivery (J)",
    "energy_unpowered_units": "units in use whose power the device entry does not give (left out of the totals)",
    "cost_mode": "how the run is priced for ranking: rental or tco (the scenario's cost.mode)",
    "rental_usd_per_hour": "rental price of the deployment per hour: GPUs and devices techniques add (USD)",
    "rental_usd_per_gpu_hour": "rental_usd_per_hour per GPU (USD)",
    "rental_usd_per_node_hour": "rental_usd_per_gpu_hour x cost.devices_per_node (USD)",
    "tco_usd_per_hour": "total cost of ownership per hour: capex amortised + electricity x PUE + hosting (USD; "
    "null without cost mode tco)",
    "tco_capex_usd_per_hour": "the capex part of tco_usd_per_hour (USD)",
    "tco_energy_usd_per_hour": "the electricity part of tco_usd_per_hour, at the run's average power x PUE (USD)",
    "tco_hosting_usd_per_hour": "the hosting part of tco_usd_per_hour, on the provisioned (TDP) power (USD)",
    "tco_usd_per_gpu_hour": "tco_usd_per_hour per GPU (USD)",
    "tco_usd_per_node_hour": "tco_usd_per_gpu_hour x cost.devices_per_node (USD)",
    "tco_cost_usd": "TCO over the window (USD)",
    "tco_per_million_output_tokens_usd": "TCO per million output tokens at the served rate (USD), as "
    "cost_per_million_output_tokens_usd is for rental",
}


def _ratio(num: float, den: float) -> float:
    if den is None or not math.isfinite(den) or den <= 0:
        return NAN
    return float(num) / float(den)


def _busy_replica_s(result: SimulationResult, pool: PoolInfo, t0: float, t1: float) -> float:
    """Seconds the pool's replicas spent in iterations inside [t0, t1], summed over its replicas."""
    it = result.iterations
    replica = it["replica"].to_numpy()
    mine = (replica >= pool.first_replica) & (replica < pool.first_replica + pool.num_replicas)
    start = it["start_s"].to_numpy(dtype=np.float64)[mine]
    end = it["end_s"].to_numpy(dtype=np.float64)[mine]
    return float(np.clip(np.minimum(end, t1) - np.maximum(start, t0), 0.0, None).sum())


def unit_energies(result: SimulationResult, t0: float, t1: float, window: float) -> tuple[dict[str, float], list[str]]:
    """Energy in J by unit (``gpu``, ``device.<name>``, ``tier.<name>``) over the window, and the units in use
    with no power figure."""
    energies: dict[str, float] = {"gpu": 0.0}
    unpowered: list[str] = []
    for pool in result.info.pool_views():
        busy = _busy_replica_s(result, pool, t0, t1)
        share = pool.gpu_share
        energies["gpu"] += energy_joules(
            window_s=window,
            busy_gpu_s=powered_busy_s(result.info, result.iterations, t0, t1, busy) * pool.gpus_per_replica,
            num_gpus=pool.num_gpus,
            idle_w=pool.idle_w * share,
            active_w=pool.tdp_w * share,
        )
        for unit in pool.units:
            joules = unit_energy_joules(unit, window_s=window, replicas=pool.num_replicas, busy_replica_s=busy)
            if math.isnan(joules):
                unpowered.append(unit.name)
                continue
            energies[unit.name] = energies.get(unit.name, 0.0) + joules
    return energies, sorted(set(unpowered))


def energy_cost_stats(
    result: SimulationResult,
    out: dict[str, Any],
    t0: float,
    t1: float,
    window: float,
    out_tokens: float,
    n_done: int,
    rental_per_s: float,
) -> dict[str, Any]:
    """The :data:`ENERGY_COST_KEYS` and the per-unit ``energy.*``/``avg_power.*`` keys of a run.

    ``out`` is the summary so far (its ``energy_j``, ``served_output_tps`` and ``num_gpus`` are read);
    ``rental_per_s`` is the deployment's rental price per second that the summary prices tokens at.
    """
    info = result.info
    cost = info.cost
    gpus = sum(p.gpus_used for p in info.pool_views())
    stats: dict[str, Any] = dict.fromkeys(ENERGY_COST_KEYS, NAN)
    stats["energy_unpowered_units"] = None
    stats["cost_mode"] = cost.mode
    stats["rental_usd_per_hour"] = rental_per_s * 3600.0
    stats["rental_usd_per_gpu_hour"] = _ratio(rental_per_s * 3600.0, gpus)
    stats["rental_usd_per_node_hour"] = stats["rental_usd_per_gpu_hour"] * cost.devices_per_node
    per_unit: dict[str, Any] = {}
    if math.isfinite(window) and window > 0:
        energies, unpowered = unit_energies(result, t0, t1, window)
        tiers = sum(j for name, j in energies.items() if name.startswith("tier."))
        total = float(out["energy_j"]) + tiers
        stats.update(
            {
                "energy_total_j": total,
                "energy_per_request_j": _ratio(total, n_done),
                "energy_total_per_output_token_j": _ratio(total, out_tokens),
                "avg_power_w": total / window,
                "avg_power_per_gpu_w": _ratio(energies["gpu"] / window, gpus),
                "facility_energy_j": total * cost.pue,
                "energy_unpowered_units": ", ".join(unpowered) if unpowered else None,
            }
        )
        if len(energies) > 1 or unpowered:  # a breakdown only where there is more than the GPUs to break down
            for name, joules in energies.items():
                per_unit[f"energy.{name}_j"] = joules
            for name, joules in energies.items():
                per_unit[f"avg_power.{name}_w"] = joules / window
    if cost.tco:
        stats.update(_tco_stats(result, stats, window, out, out_tokens, gpus))
    return {**stats, **per_unit}


def _tco_stats(
    result: SimulationResult, stats: dict[str, Any], window: float, out: dict[str, Any], out_tokens: float, gpus: float
) -> dict[str, float]:
    """TCO per hour and what follows from it (mode tco); NaN where the window (hence the power) is unknown."""
    info, cost = result.info, result.info.cost
    capex = provisioned = 0.0
    for pool in info.pool_views():
        capex += pool.gpus_used * pool.capex_usd_per_gpu
        provisioned += pool.gpus_used * pool.tdp_w
        for unit in pool.units:
            held = unit.count * pool.num_replicas
            if math.isfinite(unit.capex_usd):  # a tier is part of the server: no price of its own
                capex += held * unit.capex_usd
            if unit.powered:
                provisioned += held * float(unit.active_w)
    parts = tco_per_hour(cost, capex_usd=capex, avg_power_w=stats["avg_power_w"], provisioned_w=provisioned)
    per_hour = parts.total
    per_mtok = _ratio(per_hour / 3600.0 * 1e6, out["served_output_tps"])
    window_cost = per_hour * window / 3600.0
    if not math.isfinite(per_mtok):
        per_mtok = _ratio(window_cost * 1e6, out_tokens)
    per_gpu = _ratio(per_hour, gpus)
    return {
        "tco_usd_per_hour": per_hour,
        "tco_capex_usd_per_hour": parts.capex,
        "tco_energy_usd_per_hour": parts.energy,
        "tco_hosting_usd_per_hour": parts.hosting,
        "tco_usd_per_gpu_hour": per_gpu,
        "tco_usd_per_node_hour": per_gpu * cost.devices_per_node,
        "tco_cost_usd": window_cost,
        "tco_per_million_output_tokens_usd": per_mtok,
    }
