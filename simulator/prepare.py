"""A scenario resolved and checked, ready to simulate: what ``capsim validate`` runs and ``simulate`` starts from.

Why a module of its own: validating a scenario builds its system and request stream but runs nothing, so it need
not import the simulation runtime (SimPy, the replica loop, the recorder) that :mod:`simulator.engine` holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.admission import enforce, unservable_mask
from simulator.config.schema import Scenario
from simulator.power_units import gpu_capex, power_units
from simulator.system import System, build_system
from traces.build import build_requests
from traces.stream import RequestStream


@dataclass
class Prepared:
    """A scenario resolved and checked, ready to simulate (also what ``capsim validate`` runs)."""

    system: System
    stream: RequestStream
    unservable: np.ndarray  # requests that can never be served (dropped when simulation.oversized=drop)
    engines: int  # replicas x pipeline stages: batches in flight
    blocks_per_engine: int
    units: tuple  # power-drawing units beyond the GPUs, per engine (simulator.power_units)
    capex_usd_per_gpu: float  # one GPU's purchase price (NaN when none is given and none is needed)


def prepare(scenario: Scenario, *, system: System | None = None, stream: RequestStream | None = None) -> Prepared:
    """Resolve names, budget memory, build the request stream and apply the ``oversized`` policy."""
    system = system or build_system(scenario)
    sim = scenario.simulation
    if stream is None:
        stream = build_requests(
            scenario.workload, seed=scenario.seed, num_requests=sim.num_requests, duration_s=sim.duration_s
        )
    # Pipeline parallelism: a replica of pp stages keeps pp batches in flight (vLLM's "virtual
    # engines"), each taking the whole pipeline's latency per iteration while the stages overlap.
    # We model each in-flight batch as an engine with 1/pp of the replica's KV blocks.
    dep = system.deployment
    blocks_per_engine = system.memory.kv_blocks // dep.pp
    prompt, output = stream.prompt_tokens, stream.output_tokens
    scheduler = system.scheduler_cls(system.scheduler_params, None)  # its limits, without a replica
    scheduler.check_step_model(system.step)
    mask, reasons = unservable_mask(
        prompt,
        output,
        max_context=system.model.max_context,
        # A multi-token step (speculation) writes, then rolls back, a few slots beyond what it keeps.
        kv_capacity_tokens=blocks_per_engine * dep.block_size - (system.step.max_lookahead if system.step else 0),
        max_prefill_tokens=scheduler.max_prefill_tokens(),
    )
    enforce(mask, reasons, prompt, output, sim.oversized)
    # Energy units and purchase prices here, so a TCO scenario missing a price fails in `capsim validate` too.
    units, capex = power_units(system, dep.pp, scenario.cost), gpu_capex(system.device, scenario.cost)
    return Prepared(system, stream, mask, dep.num_replicas * dep.pp, blocks_per_engine, units, capex)
