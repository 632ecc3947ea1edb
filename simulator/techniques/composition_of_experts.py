"""Composition of Experts (CoE): many models kept in a capacity tier, switched into device memory on demand.

Why: a composition of many small expert models (Samba-CoE: 150 experts, a trillion parameters in all) serves
requests addressed to one expert each. Keeping every expert in HBM takes a rack of accelerators; keeping them
in a slower, larger tier (the SN40L's DDR, a GPU server's host DRAM) and copying the requested expert into
HBM when it is needed trades memory for *model-switch* time, and how fast that copy is decides whether the
composition is usable (Prabhakar et al., MICRO 2024).

How capsim models it:

* **Experts.** ``experts`` names the models of the composition. They share the scenario's model architecture
  (fine-tunes of one base model), so a batch of any one expert costs what the
  scenario's model costs; only which one is resident differs. Each request is addressed to one expert, drawn
  once per simulation from ``popularity`` (default uniform) with the scenario's seed (its own random stream,
  so the workload's draws are unchanged).
* **Memory.** ``hbm_slots`` experts are resident in device memory at once: every slot holds one expert's
  weights per device, so slots beyond the first take their bytes from the KV cache (``MemoryTerms.reserved``).
  All experts live in the capacity tier ``tier``, which must hold them (when the tier gives a capacity).
* **Switch time** of one expert, per device (each device copies its own shard over its own link, in
  parallel): ``weight bytes per device / link bandwidth + link latency``, over the device's link between its
  memory and ``tier`` (``DeviceSpec.link_between``): the SN40L's DDR->HBM path, a GPU's PCIe link to host DRAM.
  The RDU-vs-GPU comparison is therefore the ratio of the two links, nothing else.
* **Scheduling** (:class:`ResidencyGate`, wrapping the scenario's scheduler on each replica): the scheduler only
  sees waiting requests of resident experts, so every batch mixes resident experts only. A request for a
  non-resident expert waits. When a slot is free, its expert is loaded at once; when every slot is taken, the
  replica first finishes the resident experts' work (no new admissions are withheld from them), then evicts
  the least recently admitted expert and loads the expert of the longest-waiting request. While it loads, the
  replica runs nothing (the copy is priced as a stall; the decodes of other resident experts wait too).
  ``max_wait_s`` bounds the starvation of a rare expert: once the longest-waiting request of a non-resident
  expert has waited that long, resident experts admit only requests older than it until the switch (so the
  switch cannot starve the experts it evicts in turn).
* **Results.** Each request's ``expert``, the switches it triggered (``switches``) and their time (``switch_s``) are columns of the
  request table; the summary adds the switches and their total time, overall and per expert.

Not modelled: overlapping a copy with the compute of other resident experts; a router that sends an expert's
requests to a replica where it is resident (each replica keeps its own residency; the scenario's router does
not know the experts); the CoE router model that picks the expert for a prompt (requests come addressed);
experts of different architectures or sizes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from capsim.errors import CapsimError, DoesNotFitError
from capsim.types import Count
from simulator.costmodel.precision import bytes_per_element
from simulator.memory_plan import GIB, weights_per_gpu
from simulator.techniques.base import TECHNIQUES, MemoryTerms, Technique, TechniqueParams
from simulator.techniques.context import BuildContext

SEED_STREAM = 17
"""``spawn_key`` of the random stream that addresses requests to experts (others: 1 router, 2 step, 3 clients)."""


class CompositionOfExpertsParams(TechniqueParams):
    """Parameters of Composition of Experts (units in each description)."""

    experts: list[str] = Field(
        min_length=1,
        description="Names of the expert models (each a fine-tune of the scenario's model: same architecture "
        "and size). Requests are addressed to one of them.",
    )
    popularity: dict[str, float] | None = Field(
        None,
        description="Relative share of requests per expert, by name (normalised; experts not listed get none). "
        "Default: uniform over experts.",
    )
    hbm_slots: Count = Field(
        1,
        gt=0,
        description="Experts resident in device memory at once; each slot holds one expert's weights "
        "per device (slots beyond the first take their bytes from the KV cache).",
    )
    tier: str = Field(
        "host",
        description="Memory tier holding every expert, by name ('ddr' on the sn40l; 'host' -- host DRAM over "
        "PCIe -- on a GPU); switches copy over the device's link between its memory and this tier.",
    )
    max_wait_s: float | None = Field(
        None,
        gt=0,
        description="Once the oldest request of a non-resident expert has waited this long (s), "
        "resident experts admit no new requests until it is switched in. Default: no bound.",
    )

    @field_validator("experts")
    @classmethod
    def _unique(cls, names: list[str]) -> list[str]:
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"expert names must be unique; repeated: {', '.join(dupes)}")
        return names


@dataclass(frozen=True)
class ExpertPool:
    """The composition as built: experts, their request shares, slots and one expert's switch time."""

    experts: tuple[str, ...]
    shares: tuple[float, ...]
    slots: int
    switch_s: float
    bytes_per_device: float
    link: str
    max_wait_s: float | None

    def bind(self, table: Any, seed: int) -> BoundPool:
        """Address this simulation's requests to experts (a stream of its own, so other draws are unchanged)."""
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SEED_STREAM,)))
        expert_of = rng.choice(len(self.experts), size=table.n, p=np.asarray(self.shares))
        return BoundPool(self, expert_of.astype(np.int64), table)


class BoundPool:
    """One simulation's expert addressing and switch records; wraps each replica's scheduler."""

    def __init__(self, pool: ExpertPool, expert_of: np.ndarray, table: Any):
        self.pool = pool
        self.expert_of = expert_of
        self.expert_list = expert_of.tolist()  # per-request lookups in the gate's loop are Python-fast
        self.arrival = table.arrival_s.tolist()
        self.table = table
        self.switch_s = np.zeros(len(expert_of))  # the switch time each request triggered (0: none)
        self.switch_count = np.zeros(len(expert_of), dtype=np.int64)  # switches each request triggered
        self.switches = np.zeros(len(pool.experts), dtype=np.int64)

    def attach(self, replica: Any) -> None:
        """Gate ``replica``'s scheduler: it batches requests of resident experts only."""
        replica.scheduler = ResidencyGate(replica.scheduler, replica, self)

    def annotate(self, frame: Any) -> None:
        """Add each request's expert and the switch time it triggered to the request frame."""
        names = np.asarray(self.pool.experts, dtype=object)
        frame["expert"] = names[self.expert_of]
        frame["switch_s"] = self.switch_s
        frame["switches"] = self.switch_count


class ResidencyGate:
    """A scheduler wrapper: the inner scheduler sees only waiting requests of the experts resident on this replica.

    Everything but :meth:`plan` is the inner scheduler's (``__getattr__``), so preemption, retirement and the
    engine's other calls are unchanged.
    """

    def __init__(self, inner: Any, replica: Any, bound: BoundPool):
        self.inner = inner
        self.replica = replica
        self.bound = bound
        self.resident: list[int] = []  # least recently admitted first

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def plan(self):
        st = self.inner.state
        waiting = st.waiting
        if not waiting:
            return self.inner.plan()
        expert = self.bound.expert_list
        resident = self.resident
        hidden = [r for r in waiting if expert[r] not in resident]
        if not hidden:
            return self._planned(self.inner.plan())
        arrival = self.bound.arrival
        oldest = min(hidden, key=arrival.__getitem__)  # the longest-waiting request of a non-resident expert
        if len(resident) < self.bound.pool.slots:  # a free slot: load its expert now
            return self._switch(oldest)
        visible = deque(r for r in waiting if expert[r] in resident)
        held: list[int] = []
        wait = self.bound.pool.max_wait_s
        if wait is not None and st.now - arrival[oldest] >= wait:
            # It has waited too long: resident experts admit only requests older than it, then the switch comes.
            cut = arrival[oldest]
            held = [r for r in visible if arrival[r] > cut]
            visible = deque(r for r in visible if arrival[r] <= cut)
        st.waiting = visible
        try:
            plan = self.inner.plan()
        finally:
            left = st.waiting  # what the scheduler left, with any sequence it preempted in front
            left.extend(held)
            left.extend(hidden)
            st.waiting = left
        if plan is not None or st.running:
            return self._planned(plan)
        return self._switch(oldest)

    def _planned(self, plan):
        """Mark the experts of newly admitted requests most recently used (the LRU order of eviction)."""
        if plan is not None and plan.prefill and self.bound.pool.slots > 1:
            resident, expert = self.resident, self.bound.expert_list
            for chunk in plan.prefill:
                e = expert[chunk.rid]
                if resident[-1] != e:
                    resident.remove(e)
                    resident.append(e)
        return plan

    def _switch(self, rid: int):
        """Load the expert of ``rid`` (evicting the least recently admitted one if every slot is taken): the
        replica stalls for the switch time and plans again after it."""
        bound, pool = self.bound, self.bound.pool
        e = bound.expert_list[rid]
        if len(self.resident) >= pool.slots:
            self.resident.pop(0)
        self.resident.append(e)
        bound.switches[e] += 1
        bound.switch_s[rid] += pool.switch_s
        bound.switch_count[rid] += 1
        if pool.switch_s <= 0.0:
            return self.plan()
        self.replica.stall_until = self.inner.state.now + pool.switch_s
        return None


@TECHNIQUES.register("composition-of-experts", aliases=("coe", "model-switching"))
class CompositionOfExperts(Technique):
    Params = CompositionOfExpertsParams
    exclusive = ("gate",)
    summary = "Many expert models live in a capacity tier (DDR, host DRAM); the requested one is switched into HBM."
    mechanism = __doc__
    sources = (
        "Prabhakar et al. SambaNova SN40L: Scaling the AI Memory Wall with Dataflow and Composition of Experts. "
        "MICRO 2024 (arXiv 2405.07518): Samba-CoE, 150 experts in DDR, switched into HBM; model switching "
        "15x to 31x faster than a DGX H100 reloading from host memory.",
    )

    def _weights_per_device(self, ctx: BuildContext) -> float:
        dep = ctx.deployment
        wb = bytes_per_element(dep.weight_dtype, field="deployment.weight_dtype")
        return weights_per_gpu(ctx.model, dep.tp, dep.pp, wb)

    def _shares(self) -> tuple[float, ...]:
        p = self.params
        if p.popularity is None:
            return tuple(1.0 / len(p.experts) for _ in p.experts)
        for name, share in p.popularity.items():
            if name not in p.experts:
                raise CapsimError(
                    f"popularity names expert {name!r}, which is not in experts ({', '.join(p.experts)})",
                    where=f"{self.where}.popularity.{name}",
                    fix="list it in experts, or remove it from popularity",
                )
            if not share >= 0:
                raise CapsimError(
                    f"popularity of {name!r} must be >= 0, got {share}",
                    where=f"{self.where}.popularity.{name}",
                    fix="give a non-negative share",
                )
        total = sum(p.popularity.values())
        if not total > 0:
            raise CapsimError(
                "popularity gives every expert a zero share",
                where=f"{self.where}.popularity",
                fix="give at least one expert a positive share",
            )
        return tuple(p.popularity.get(name, 0.0) / total for name in p.experts)

    def memory(self, terms: MemoryTerms, ctx: BuildContext) -> MemoryTerms:
        p, dev = self.params, ctx.device
        w = self._weights_per_device(ctx)
        usable = dev.memory_bytes * ctx.deployment.memory_utilization
        if p.hbm_slots * w > usable:
            raise DoesNotFitError(
                f"{p.hbm_slots} expert slot(s) of {w / GIB:.1f} GiB per device need {p.hbm_slots * w / GIB:.1f} GiB, "
                f"more than the {usable / GIB:.1f} GiB of {dev.name}'s memory in use",
                where=f"{self.where}.hbm_slots",
                fix="lower hbm_slots, or raise tp to shard each expert further",
            )
        tier = dev.tier(p.tier, where=f"{self.where}.tier")
        if tier.name == dev.main_tier:
            raise CapsimError(
                f"tier {tier.name!r} is the device memory the experts are switched into",
                where=f"{self.where}.tier",
                fix="name a capacity tier: ddr (sn40l) or host",
            )
        held = len(p.experts) * w
        if tier.capacity_gib is not None and held > tier.capacity_gib * GIB:
            raise DoesNotFitError(
                f"{len(p.experts)} experts of {w / GIB:.1f} GiB per device need {held / GIB:.1f} GiB of tier "
                f"{tier.name!r}, which holds {tier.capacity_gib:g} GiB per device",
                where=f"{self.where}.experts",
                fix="list fewer experts, raise tp, or use a larger tier",
            )
        self._shares()  # refuse a bad popularity mix when the system is built
        return terms.plus(
            reserved=(p.hbm_slots - 1) * w,
            note=f"{p.hbm_slots} resident expert slot(s) of {w / GIB:.1f} GiB per device; {len(p.experts)} experts "
            f"in tier {tier.name!r}",
        )

    def gate(self, ctx: BuildContext) -> ExpertPool:
        p, dev = self.params, ctx.device
        link = dev.transfer_link(dev.main_tier, p.tier, where=f"{self.where}.tier")
        w = self._weights_per_device(ctx)
        return ExpertPool(
            experts=tuple(p.experts),
            shares=self._shares(),
            slots=p.hbm_slots,
            switch_s=w / link.bandwidth + link.latency_s,
            bytes_per_device=w,
            link=link.name,
            max_wait_s=p.max_wait_s,
        )


__all__ = ["BoundPool", "CompositionOfExperts", "CompositionOfExpertsParams", "ExpertPool", "ResidencyGate"]
