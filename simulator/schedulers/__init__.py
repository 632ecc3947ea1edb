"""Batch schedulers, one module each, registered by name in :data:`SCHEDULERS`.

Each shipped scheduler is declared by name with its module, imported at the first lookup of the name (why: a
scenario uses one scheduler; importing all of them slowed every one-shot command's start).
"""

from simulator.schedulers.base import SCHEDULERS, Plan, PrefillChunk, Scheduler, SchedulerParams

#: Each shipped scheduler's name and the module of this package that registers it (aliases live in the module).
_SHIPPED = {
    "fastswitch": "fastswitch",
    "orca": "orca",
    "sarathi": "sarathi",
    "sglang": "sglang",
    "static": "static",
    "vllm": "vllm",
}
for _name, _module in _SHIPPED.items():
    SCHEDULERS.declare(_name, f"{__name__}.{_module}")

__all__ = ["SCHEDULERS", "Plan", "PrefillChunk", "Scheduler", "SchedulerParams"]
