"""Batch schedulers, one module each, registered by name in :data:`SCHEDULERS`."""

from simulator.schedulers import fastswitch, orca, sarathi, static, vllm  # noqa: F401  (registration)
from simulator.schedulers.base import SCHEDULERS, Plan, PrefillChunk, Scheduler, SchedulerParams

__all__ = ["SCHEDULERS", "Plan", "PrefillChunk", "Scheduler", "SchedulerParams"]
