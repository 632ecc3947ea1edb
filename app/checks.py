"""Check a set-up before running it, attaching every problem to the field that caused it.

Why here and not at run time: a capacity engineer editing the sidebar should
see "tp=3 does not divide the 32 attention heads" under the ``tp`` box as soon
as they type it, not a traceback after clicking run. Everything a run would
reject up front -- the schema, catalog names, scheduler parameters, memory fit,
a trace file with missing columns, requests that can never be served -- is
checked here with the same code the simulator uses, and reported as
:class:`Issue` objects whose ``path`` names a widget of the page:

* shared fields: ``model``, ``workload.qps``, ``workload.trace``, ``slo.ttft_s``, ``simulation.num_requests``, ...
* configuration ``i`` (0-based): ``cfg{i}.deployment.tp``, ``cfg{i}.scheduler.chunk_size``, ``cfg{i}.extras``,
  or ``cfg{i}`` for a problem of the configuration as a whole.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import ValidationError

from app.setup import CONFIG_SECTIONS, Setup, scenario_data, to_file_data
from capsim.errors import CapsimError
from simulator.admission import enforce, unservable_mask
from simulator.config.schema import Scenario
from simulator.system import build_system
from traces.build import build_requests
from traces.stream import RequestStream


@dataclass(frozen=True)
class Issue:
    """One problem, for the widget at ``path``."""

    path: str
    message: str


@dataclass
class CheckResult:
    """Validated scenarios (None where a configuration has a problem) and every problem found."""

    scenarios: list[Scenario | None]
    issues: list[Issue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.issues and all(s is not None for s in self.scenarios)


def config_path(index: int, where: str = "") -> str:
    """``cfg1.deployment.tp`` for ``where='deployment.tp'`` in configuration 1."""
    return f"cfg{index}" + (f".{where}" if where else "")


def _loc_text(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc if not isinstance(part, int))


def _pydantic_issues(exc: ValidationError) -> list[tuple[str, str]]:
    """(field path, message) for each error pydantic reports."""
    out = []
    for err in exc.errors():
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            msg = "unknown field (check the spelling)"
        elif "input" in err and err.get("type") != "missing" and not isinstance(err["input"], dict):
            msg = f"{msg} (got {err['input']!r})"
        out.append((_loc_text(tuple(err.get("loc", ()))), msg))
    return out


def error_message(exc: CapsimError) -> str:
    """The problem and its fix, without the location (the page shows it next to the field)."""
    return exc.problem + (f". Fix: {exc.fix}" if exc.fix else "")


def _section(path: str) -> str:
    return re.split(r"[.\[]", path, maxsplit=1)[0]


def _shared_issues(base: dict[str, Any]) -> tuple[Scenario | None, list[Issue]]:
    try:
        return Scenario.model_validate(base), []
    except ValidationError as exc:
        return None, [Issue(path or "workload", msg) for path, msg in _pydantic_issues(exc)]


def _stream(scenario: Scenario) -> tuple[RequestStream | None, list[Issue]]:
    """The request stream of the shared workload (catches trace files with missing columns or bad rows)."""
    sim = scenario.simulation
    try:
        stream = build_requests(
            scenario.workload, seed=scenario.seed, num_requests=sim.num_requests, duration_s=sim.duration_s
        )
    except CapsimError as exc:
        where = exc.where or ""
        if _section(where) in ("workload", "simulation"):
            path = where
        elif scenario.workload.trace is not None:
            path = "workload.trace"  # a problem inside the trace file (the error names the file and row)
        else:
            path = "workload"
        return None, [Issue(path, error_message(exc) + (f" ({where})" if where and path != where else ""))]
    return stream, []


def _config_issue_path(index: int, where: str, overridden: set[str]) -> str:
    """Which widget shows a problem the simulator reported at ``where`` for configuration ``index``."""
    section = _section(where)
    if section in CONFIG_SECTIONS:
        return config_path(index, where)
    if section == "techniques":  # techniques[1].k -> the widget of that technique's parameter
        return config_path(index, re.sub(r"\[(\d+)\]", r".\1", where.split(" ")[0]))
    if section in overridden:
        return config_path(index, "extras")
    if section in ("model", "workload", "slo", "simulation", "seed"):
        return where
    return config_path(index)


def check_setup(setup: Setup) -> CheckResult:
    """Validate every configuration of ``setup``; see the module docstring for the paths of the issues."""
    data = scenario_data(setup)
    shared, issues = _shared_issues({k: v for k, v in to_file_data(setup).items() if k != "runs"})
    stream = None
    if shared is not None:
        stream, stream_issues = _stream(shared)
        issues += stream_issues
    seen = {(i.path, i.message) for i in issues}
    scenarios: list[Scenario | None] = []
    for index, (cfg, merged) in enumerate(zip(setup.configurations, data, strict=True)):
        overridden = {_section(k) for k in cfg.extras}
        found: list[Issue] = []
        scenario: Scenario | None = None
        try:
            scenario = Scenario.model_validate(merged)
        except ValidationError as exc:
            for path, msg in _pydantic_issues(exc):
                if (path, msg) in seen:
                    continue  # already shown under the shared field
                found.append(Issue(_config_issue_path(index, path, overridden), msg))
        if scenario is not None:
            found += _system_issues(index, scenario, stream if not overridden & {"workload", "seed"} else None,
                                    overridden)
        for issue in found:
            if (issue.path, issue.message) not in seen:
                seen.add((issue.path, issue.message))
                issues.append(issue)
        scenarios.append(scenario if not found else None)
    if shared is None or any(not _section(i.path).startswith("cfg") for i in issues):
        scenarios = [None] * len(scenarios)
    return CheckResult(scenarios, issues)


def _system_issues(
    index: int, scenario: Scenario, stream: RequestStream | None, overridden: set[str]
) -> list[Issue]:
    """Names, parameters and memory fit (``build_system``), then requests that could never be served."""
    try:
        system = build_system(scenario)
    except CapsimError as exc:
        return [Issue(_config_issue_path(index, exc.where or "", overridden), error_message(exc))]
    if stream is None or scenario.simulation.oversized != "error":
        return []
    mask, reasons = unservable_mask(
        stream.prompt_tokens,
        stream.output_tokens,
        max_context=system.model.max_context,
        kv_capacity_tokens=system.memory.kv_capacity_tokens,
        max_prefill_tokens=system.scheduler_cls(system.scheduler_params, None).max_prefill_tokens(),
    )
    # Requests longer than the model's context are a property of the model and the workload, the same in every
    # configuration: shown once, at the workload, rather than repeated in each configuration's tab.
    shared = "model" not in overridden and "workload" not in overridden
    groups = ([r for r in reasons if r.kind == "context"], [r for r in reasons if r.kind != "context"]) if shared \
        else ([], reasons)
    issues = []
    for group, path in zip(groups, ("workload", config_path(index)), strict=True):
        if not group:
            continue
        try:
            enforce(np.logical_or.reduce([r.mask for r in group]), group, stream.prompt_tokens,
                    stream.output_tokens, "error")
        except CapsimError as exc:
            issues.append(Issue(path, error_message(exc)))
    return issues
