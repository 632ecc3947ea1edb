"""The dashboard's set-up: shared sections plus 1-4 configurations, and the scenario file it stands for.

Why a scenario *file*: the set-up a user builds on the page is written as one
YAML file with a base scenario and a ``runs:`` list (one entry per
configuration), exactly the format ``capsim run`` reads. The page builds its
scenarios with the same merge rules the loader applies to that file, so the
downloaded YAML reproduces the comparison on the command line unchanged (a test
checks the round trip).

Shape of a set-up:

* ``shared``: the scenario sections every configuration shares -- ``name``,
  ``description``, ``seed``, ``model``, ``workload``, ``slo``, ``simulation``;
* ``configurations``: each a name, a ``deployment``, a ``scheduler`` (name and
  parameters), a ``router``, and ``extras``: any other overrides by dotted path
  (e.g. ``workload.qps: 8`` from a grid file, or a future scenario section).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import yaml

from capsim.errors import CapsimError
from simulator.config.loader import apply_updates, expand
from simulator.config.schema import Scenario, ScenarioFile

#: Scenario fields the sidebar edits once for all configurations.
SHARED_FIELDS: tuple[str, ...] = ("name", "description", "seed", "model", "workload", "slo", "simulation")
#: Scenario sections each configuration sets for itself.
CONFIG_SECTIONS: tuple[str, ...] = ("deployment", "scheduler", "router")
#: At most this many configurations are compared side by side.
MAX_CONFIGURATIONS = 4
#: Devices the 2nd, 3rd, 4th configuration start from when added on the page.
TEMPLATE_DEVICES: tuple[str, ...] = ("h100-sxm", "a100-80gb-sxm", "h200", "l40s")


@dataclass
class Configuration:
    """One candidate serving configuration. An empty ``name`` is replaced by :func:`auto_name`."""

    name: str = ""
    deployment: dict[str, Any] = field(default_factory=dict)
    scheduler: dict[str, Any] = field(default_factory=lambda: {"name": "vllm"})
    router: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class Setup:
    """Everything the page's inputs describe."""

    shared: dict[str, Any]
    configurations: list[Configuration]


def default_setup() -> Setup:
    """The comparison the page opens with: Llama-3.1-8B, Poisson 4 req/s with ShareGPT lengths, H100 vs A100.

    Kept small (500 requests) so that the first comparison renders in a few seconds.
    """
    shared = {
        "name": "what-if",
        "seed": 0,
        "model": "llama-3.1-8b",
        "workload": {"arrival": "poisson", "qps": 4, "trace": {"name": "sharegpt-lengths"}},
        "slo": {"ttft_s": 0.5, "tpot_s": 0.05, "attainment": 0.9},
        "simulation": {"num_requests": 500},
    }
    return Setup(shared, [template_configuration(0), template_configuration(1)])


def template_configuration(index: int) -> Configuration:
    """A starting point for the ``index``-th configuration (vLLM on one GPU of a different device each)."""
    device = TEMPLATE_DEVICES[index % len(TEMPLATE_DEVICES)]
    return Configuration(deployment={"device": device}, scheduler={"name": "vllm"})


def auto_name(cfg: Configuration) -> str:
    """``h100-sxm x2 tp2 vllm``: device, replicas, parallelism and scheduler, for unnamed configurations."""
    dep = cfg.deployment
    device = dep.get("device", "h100-sxm")
    parts = [device if isinstance(device, str) else str(device.get("name", "custom-device"))]
    for key, label in (("num_replicas", "x"), ("tp", "tp"), ("pp", "pp")):
        value = dep.get(key, 1)
        if value not in (1, None):
            parts.append(f"{label}{value}")
    parts.append(str(cfg.scheduler.get("name", "vllm")))
    if dep.get("engine") is not None:  # configurations that differ only in their engine profile stay apart
        parts.append(f"engine-{dep['engine']}")
    return " ".join(parts)


def resolved_names(configurations: list[Configuration]) -> list[str]:
    """Final, unique names: the given name or :func:`auto_name`, with ``#2``, ``#3`` added to repeats."""
    names: list[str] = []
    for cfg in configurations:
        base = cfg.name.strip() or auto_name(cfg)
        name, k = base, 2
        while name in names:
            name, k = f"{base} #{k}", k + 1
        names.append(name)
    return names


def run_entry(cfg: Configuration, name: str) -> dict[str, Any]:
    """The ``runs:`` entry of one configuration (sections left empty are omitted)."""
    entry: dict[str, Any] = {"name": name}
    for section in CONFIG_SECTIONS:
        value = getattr(cfg, section)
        if value:
            entry[section] = copy.deepcopy(value)
    for key, value in cfg.extras.items():
        if key not in ("name", "set"):
            entry[key] = copy.deepcopy(value)
    return entry


def to_file_data(setup: Setup) -> dict[str, Any]:
    """The scenario file (as a mapping) that the set-up stands for: shared base plus one run per configuration."""
    base = {k: copy.deepcopy(v) for k, v in setup.shared.items() if k in SHARED_FIELDS and v not in (None, "", {})}
    names = resolved_names(setup.configurations)
    base["runs"] = [run_entry(cfg, name) for cfg, name in zip(setup.configurations, names, strict=True)]
    return base


def scenario_data(setup: Setup) -> list[dict[str, Any]]:
    """Per configuration, the merged (not yet validated) scenario mapping -- what ``expand`` validates."""
    data = to_file_data(setup)
    base = {k: v for k, v in data.items() if k != "runs"}
    out = []
    for entry in data["runs"]:
        rest = {k: v for k, v in entry.items() if k != "name"}
        out.append({**apply_updates(base, rest), "name": entry["name"]})
    return out


def to_yaml(setup: Setup) -> str:
    """The set-up as a scenario YAML file that ``capsim run`` accepts unchanged."""
    header = "# Written by the capsim dashboard (`capsim app`); run it with `capsim run <this file>`.\n"
    return header + yaml.safe_dump(to_file_data(setup), sort_keys=False, allow_unicode=True)


def parse_yaml_text(text: str, source: str) -> dict[str, Any]:
    """Parse scenario YAML text (an upload) with the loader's error messages for bad syntax."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise CapsimError(f"malformed YAML ({problem})", where=f"{source}{line}", fix="fix the YAML syntax") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CapsimError(
            f"expected a mapping of sections (model:, deployment:, ...), got {type(data).__name__}",
            where=source,
            fix="start the file with keys such as 'model:' and 'workload:'",
        )
    return data


def _leaf_differences(base: Any, other: Any, prefix: str) -> dict[str, Any]:
    """Dotted-path overrides that turn ``base`` into ``other`` (mappings are compared key by key)."""
    if isinstance(base, dict) and isinstance(other, dict):
        out: dict[str, Any] = {}
        for key in list(base) + [k for k in other if k not in base]:
            if base.get(key) != other.get(key):
                out.update(_leaf_differences(base.get(key), other.get(key), f"{prefix}.{key}"))
        return out
    return {} if base == other else {prefix: copy.deepcopy(other)}


def setup_from_scenarios(scenarios: list[Scenario], base_name: str | None = None) -> tuple[Setup, list[str]]:
    """A set-up reproducing ``scenarios`` (the first :data:`MAX_CONFIGURATIONS`), and warnings for what was left out.

    Shared sections come from the first scenario; whatever another scenario sets differently becomes one of its
    dotted-path ``extras``, so the configurations are reproduced exactly (checked here; a warning says otherwise).
    """
    warnings: list[str] = []
    if len(scenarios) > MAX_CONFIGURATIONS:
        dropped = ", ".join(s.name for s in scenarios[MAX_CONFIGURATIONS:])
        warnings.append(f"the file has {len(scenarios)} configurations; the page compares the first "
                        f"{MAX_CONFIGURATIONS} (left out: {dropped})")
        scenarios = scenarios[:MAX_CONFIGURATIONS]
    first = scenarios[0]
    full0 = first.model_dump(mode="json")
    shared = {k: v for k, v in first.model_dump(mode="json", exclude_unset=True).items() if k in SHARED_FIELDS}
    shared["name"] = base_name or first.name
    configurations = []
    for sc in scenarios:
        full = sc.model_dump(mode="json")
        extras: dict[str, Any] = {}
        for key in SHARED_FIELDS:
            if key != "name":
                extras.update(_leaf_differences(full0.get(key), full.get(key), key))
        for key in full:  # sections the page has no dedicated inputs for (added to the schema later)
            if key not in SHARED_FIELDS and key not in CONFIG_SECTIONS and key in sc.model_fields_set:
                extras[key] = sc.model_dump(mode="json", include={key}, exclude_unset=True)[key]
        configurations.append(
            Configuration(
                name=sc.name,
                deployment=sc.deployment.model_dump(mode="json", exclude_unset=True),
                scheduler=sc.scheduler.model_dump(mode="json"),
                router=sc.router.model_dump(mode="json", exclude_unset=True),
                extras=extras,
            )
        )
    setup = Setup(shared, configurations)
    try:
        rebuilt = [Scenario.model_validate(d) for d in scenario_data(setup)]
    except Exception:  # noqa: BLE001 -- reported as a warning below; the page still shows the inputs
        rebuilt = []
    if [s.model_dump() for s in rebuilt] != [s.model_dump() for s in scenarios]:
        warnings.append("the page could not reproduce every configuration of the file exactly; check the inputs")
    return setup, warnings


def is_scenario_file(text: str) -> bool:
    """Whether ``text`` looks like a ``capsim run`` scenario (only scenario-file keys at the top level).

    Used to list examples: ``scenarios/`` also holds files for other commands (a capacity plan, say).
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return False
    return isinstance(data, dict) and set(data) <= set(ScenarioFile.model_fields)


def setup_from_text(text: str, source: str) -> tuple[Setup, list[str]]:
    """Read a scenario file's text (one scenario, or ``runs:``/``grid:``) into a set-up."""
    data = parse_yaml_text(text, source)
    name = data.get("name") if isinstance(data.get("name"), str) else None
    return setup_from_scenarios(expand(data, source), base_name=name)
