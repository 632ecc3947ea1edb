"""Intra-GPU partitioning: a prefill worker and a decode worker on the same GPUs, splitting their SMs and sharing
one copy of the weights and one KV cache (semi-PD, Hong et al. 2025; Nexus, Shi et al. 2025).

Why not two pools: disaggregation across GPUs pays a KV transfer per request and keeps two weight copies;
partitioning keeps both phases on every GPU, each with its own batch and scheduler, so neither stalls the other
(no prefill in the decode batch), with no transfer. What it pays instead is speed: each phase gets a share of
the SMs, and both draw on the same HBM.

How capsim prices a worker with SM share ``s`` (the rest of the cost model is unchanged):

* **Compute** scales with the SMs: peak FLOP/s x ``s``.
* **Memory bandwidth** does not: a fraction ``bandwidth_saturation`` of the SMs already keeps enough loads in
  flight to saturate HBM, so a worker alone attains ``B x min(1, s / bandwidth_saturation)`` -- the concave,
  diminishing-returns curve of latency against SMs that Nexus describes. ``bandwidth_saturation`` is an input,
  not a derived figure: measure it (a bandwidth-bound kernel on a growing share of SMs) for your GPU.
* **Contention.** When both workers are busy and their attainable bandwidths add up to more than ``B``, they
  share it in that proportion; a worker whose partner is idle draws what its SMs can alone. The switch happens
  at iteration boundaries: when a worker starts or stops working, its partner's run in flight ends at its next
  boundary and is re-priced (:class:`Contention`).
* **Memory.** One copy of the weights; the KV cache is what is left after the weights and *both* workers'
  activation reserves, shared block by block (a request's KV never moves: the hand-off is free).

The split is ``prefill_share``, fixed, or moved by semi-PD's SLO-aware controller (``resplit``,
:class:`Resplitter`), each move pausing both workers for ``switch_cost_s``.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from capsim.errors import CapsimError, DoesNotFitError
from simulator.memory_plan import GIB
from simulator.pools.systems import SERVING_SYSTEMS, PoolView, ServingParams, ServingSystem
from simulator.system import System


class ResplitConfig(BaseModel):
    """semi-PD's SLO-aware dynamic partitioning: move SMs to the phase closer to missing its target."""

    model_config = ConfigDict(extra="forbid")

    interval_s: float = Field(1.0, gt=0, allow_inf_nan=False, description="How often the split is reconsidered, s.")
    step: float = Field(0.1, gt=0, lt=1, allow_inf_nan=False, description="Share of SMs moved per adjustment.")
    min_share: float = Field(0.1, gt=0, lt=1, allow_inf_nan=False, description="Least prefill share.")
    max_share: float = Field(0.9, gt=0, lt=1, allow_inf_nan=False, description="Most prefill share.")
    hysteresis: float = Field(
        0.2, ge=0, allow_inf_nan=False,
        description="Move only when one phase's pressure exceeds the other's by this fraction (no flapping).",
    )
    switch_cost_s: float = Field(
        0.005, ge=0, allow_inf_nan=False,
        description="Both workers pause this long when the split changes (re-partitioning the SMs); an input: "
        "semi-PD reports a low-overhead switch without a figure capsim can use, 5 ms is a placeholder.",
    )


class PartitionParams(ServingParams):
    prefill_share: float = Field(
        0.5, gt=0, lt=1, allow_inf_nan=False,
        description="Fraction of each GPU's SMs given to the prefill worker; the decode worker gets the rest.",
    )
    bandwidth_saturation: float = Field(
        0.5, gt=0, le=1, allow_inf_nan=False,
        description="Fraction of the SMs at which a memory-bound kernel reaches the full HBM bandwidth (an input: "
        "measure it for your GPU; 0.5 is a placeholder, not a published figure).",
    )
    resplit: ResplitConfig | None = Field(
        None, description="SLO-aware dynamic re-split (semi-PD); None keeps prefill_share fixed. Needs slo.ttft_s "
        "and slo.tpot_s: the pressures are each phase's predicted latency over its target."
    )


@SERVING_SYSTEMS.register("semi-pd", aliases=("intra-gpu", "sm-partition", "nexus"))
class SemiPD(ServingSystem):
    """Prefill and decode workers side by side on the same GPUs, SMs split between them, one weight copy and one
    KV cache shared (semi-PD, Nexus): no prefill stalls the decode batch, and no KV moves."""

    Params = PartitionParams
    roles = ("prefill", "decode")
    required = ("prefill", "decode")
    colocated = True
    summary = "prefill and decode workers share each GPU: SM split, one weight copy, one KV cache, no transfer"
    sources = (
        "Hong et al., semi-PD: Towards Efficient LLM Serving via Phase-Wise Disaggregated Computation and Unified "
        "Storage, arXiv 2504.19867, 2025",
        "Shi et al., Nexus: Proactive Intra-GPU Disaggregation of Prefill and Decode in LLM Serving, arXiv "
        "2507.06608, 2025",
    )

    def entry(self, rid: int) -> PoolView:
        return self.by_role["prefill"][0]

    def after_prefill(self, rid: int, source: PoolView) -> PoolView | None:
        return self.by_role["decode"][0]


def attainable_shares(params: PartitionParams, *, both_busy: bool = True,
                      prefill_share: float | None = None) -> tuple[float, float, float, float]:
    """(compute, bandwidth) shares of the prefill and the decode worker: ``(cp, bp, cd, bd)``; with
    ``both_busy`` the two share the HBM, otherwise each gets what its SMs can draw alone."""
    sp = params.prefill_share if prefill_share is None else prefill_share
    sd = 1.0 - sp
    ap = min(1.0, sp / params.bandwidth_saturation)
    ad = min(1.0, sd / params.bandwidth_saturation)
    total = ap + ad
    if both_busy and total > 1.0:  # they share the HBM in proportion to what each could draw alone
        ap, ad = ap / total, ad / total
    return sp, ap, sd, ad


class CostsBySplit:
    """Cost models of both workers at a prefill share, alone and sharing the HBM (memoised by share)."""

    def __init__(self, prefill: System, decode: System, params: PartitionParams, prompts):
        self.systems = {"prefill": prefill, "decode": decode}
        self.params = params
        self.prompts = prompts
        self._memo: dict[float, dict[str, dict[str, object]]] = {}

    def at(self, share: float) -> dict[str, dict[str, object]]:
        """``{"alone": {"prefill": cm, "decode": cm}, "shared": {...}}`` at prefill share ``share``."""
        key = round(share, 6)
        if key not in self._memo:
            out = {}
            for mode, busy in (("alone", False), ("shared", True)):
                cp, bp, cd, bd = attainable_shares(self.params, both_busy=busy, prefill_share=key)
                p = partitioned(self.systems["prefill"], cp, bp).cost_model()
                if self.systems["prefill"].scheduler_cls.lone_prefills:
                    p.prime_lone_prefills(self.prompts)
                out[mode] = {"prefill": p, "decode": partitioned(self.systems["decode"], cd, bd).cost_model()}
            self._memo[key] = out
        return self._memo[key]


class Contention:
    """Switches each worker's pricing between "alone" and "sharing the HBM" as its partner on the same GPUs
    starts and stops working (each worker is told through ``Replica.on_busy``), at the pair's current split. A
    worker whose pricing changes is poked, so a decode run in flight ends at its next iteration boundary and is
    re-priced from there."""

    def __init__(self, pairs, costs: CostsBySplit, share: float):
        self.pairs = pairs
        self.costs = costs
        self.partner, self.role, self.pair_of = {}, {}, {}
        self.split = [share] * len(pairs)
        for i, (prefill, decode) in enumerate(pairs):
            self.partner[id(prefill)], self.partner[id(decode)] = decode, prefill
            self.role[id(prefill)], self.role[id(decode)] = "prefill", "decode"
            for worker in (prefill, decode):
                self.pair_of[id(worker)] = i
                worker.on_busy = self.changed
                worker.cost = costs.at(share)["alone"][self.role[id(worker)]]

    def _price(self, worker) -> None:
        partner = self.partner[id(worker)]
        mode = "shared" if partner._busy else "alone"
        cost = self.costs.at(self.split[self.pair_of[id(worker)]])[mode][self.role[id(worker)]]
        if worker.cost is not cost:
            worker.cost = cost
            if worker._busy:
                worker.poke()

    def changed(self, worker, busy: bool) -> None:
        self._price(self.partner[id(worker)])

    def resplit(self, i: int, share: float, now: float, pause: float) -> None:
        """Pair ``i`` moves to prefill share ``share``: both workers pause, then run at the new split."""
        self.split[i] = share
        for worker in self.pairs[i]:
            worker.stall_until = max(worker.stall_until, now + pause)
            self._price(worker)
            worker.poke()


class Resplitter:
    """semi-PD's SLO-aware dynamic partitioning (a SimPy process).

    Every ``interval_s`` it measures the SLO attainment of each phase over the requests of that interval: TTFT of
    the requests whose first token came out in it, TPOT of the requests that finished in it. When one phase is
    below the goal (``slo.attainment``) and the other is above it by ``hysteresis`` (or the other has no
    requests), ``step`` of every GPU's SMs move to the failing phase (within ``min_share``..``max_share``) and both
    workers pause ``switch_cost_s``. Both meeting the goal, or both missing it, leaves the split alone.
    """

    def __init__(self, env, contention: Contention, cfg: ResplitConfig, ttft_s: float, tpot_s: float, goal: float,
                 table):
        self.env, self.c, self.cfg = env, contention, cfg
        self.ttft_s, self.tpot_s, self.goal, self.table = ttft_s, tpot_s, goal, table
        self.changes = 0
        self.history: list[tuple[float, float]] = []  # (time, new prefill share)

    def run(self):
        env, table = self.env, self.table
        while table.finished_count < table.n:
            yield env.timeout(self.cfg.interval_s)
            self.consider()

    def attainments(self) -> tuple[float, float]:
        """(TTFT, TPOT) attainment over the last interval; NaN where no request completed that phase."""
        t, now = self.table, self.env.now
        since = now - self.cfg.interval_s
        first = t.first_token_s
        with np.errstate(invalid="ignore"):
            fresh = (first > since) & (first <= now)
            ttft = float(np.mean(first[fresh] - t.arrival_s[fresh] <= self.ttft_s)) if fresh.any() else math.nan
            done = (t.finish_s > since) & (t.finish_s <= now) & (t.output > 1)
            tpot = (t.finish_s[done] - first[done]) / (t.output[done] - 1)
            tpot_ok = float(np.mean(tpot <= self.tpot_s)) if done.any() else math.nan
        return ttft, tpot_ok

    def consider(self) -> None:
        cfg, goal = self.cfg, self.goal
        ttft, tpot = self.attainments()
        share = self.c.split[0]
        new = share
        ttft_low = ttft < goal
        tpot_low = tpot < goal
        if ttft_low and not tpot_low and (math.isnan(tpot) or tpot >= goal + cfg.hysteresis * (1 - goal)):
            new = min(share + cfg.step, cfg.max_share)
        elif tpot_low and not ttft_low and (math.isnan(ttft) or ttft >= goal + cfg.hysteresis * (1 - goal)):
            new = max(share - cfg.step, cfg.min_share)
        if abs(new - share) > 1e-9:
            self.changes += 1
            self.history.append((self.env.now, new))
            for i in range(len(self.c.pairs)):
                self.c.resplit(i, new, self.env.now, cfg.switch_cost_s)


def partitioned(system: System, compute: float, bandwidth: float) -> System:
    """``system`` with its GPU's peak FLOP/s and HBM bandwidth scaled to one worker's shares."""
    roof = system.roofline
    return replace(system, roofline=replace(roof, peak_flops=roof.peak_flops * compute,
                                            memory_bandwidth=roof.memory_bandwidth * bandwidth,
                                            compute_share=compute, bandwidth_share=bandwidth))


def shared_kv_blocks(prefill: System, decode: System) -> int:
    """KV blocks per engine of a GPU group running both workers: memory less one weight copy and both reserves."""
    for field in ("device", "tp", "pp", "block_size", "kv_dtype", "weight_dtype", "num_replicas"):
        a = getattr(prefill.deployment, field) if field != "device" else prefill.device.name
        b = getattr(decode.deployment, field) if field != "device" else decode.device.name
        if a != b:
            raise CapsimError(
                f"the prefill and decode workers of semi-pd share GPUs, so their {field} must match "
                f"(prefill {a!r}, decode {b!r})",
                where=f"pools.*.{field}", fix=f"give both pools the same {field}",
            )
    mem_p, mem_d = prefill.memory, decode.memory
    kv_bytes = mem_d.usable_bytes - mem_d.weights_bytes - mem_d.reserve_bytes - mem_p.reserve_bytes
    blocks = int(kv_bytes // (mem_d.kv_bytes_per_token * mem_d.block_size)) if kv_bytes > 0 else 0
    if blocks < 1:
        raise DoesNotFitError(
            f"{decode.model.name} on {decode.device.name}: one weight copy ({mem_d.weights_bytes / GIB:.1f} GiB) "
            f"and both workers' activation reserves ({(mem_p.reserve_bytes + mem_d.reserve_bytes) / GIB:.1f} GiB) "
            "leave no room for the KV cache",
            where="pools", fix="raise tp or memory_utilization, or lower the workers' token budgets",
        )
    return blocks // decode.deployment.pp
