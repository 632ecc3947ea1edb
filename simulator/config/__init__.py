"""Scenario configuration: the pydantic schema and the YAML loader."""

from typing import TYPE_CHECKING

from capsim.lazy import lazy_exports

# Names resolve on first use (PEP 562): the schema is imported by every command that builds a scenario, the YAML
# loader only by those that read a scenario file (``capsim estimate`` reads none).
_EXPORTS = {
    "load_scenarios": "simulator.config.loader",
    "parse_override": "simulator.config.loader",
    "read_yaml": "simulator.config.loader",
    "DeploymentConfig": "simulator.config.schema",
    "RouterConfig": "simulator.config.schema",
    "Scenario": "simulator.config.schema",
    "ScenarioFile": "simulator.config.schema",
    "SchedulerConfig": "simulator.config.schema",
    "SimulationConfig": "simulator.config.schema",
}
__getattr__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # for type checkers and editors
    from simulator.config.loader import load_scenarios, parse_override, read_yaml  # noqa: F401
    from simulator.config.schema import (  # noqa: F401
        DeploymentConfig,
        RouterConfig,
        Scenario,
        ScenarioFile,
        SchedulerConfig,
        SimulationConfig,
    )

__all__ = [
    "DeploymentConfig",
    "RouterConfig",
    "Scenario",
    "ScenarioFile",
    "SchedulerConfig",
    "SimulationConfig",
    "load_scenarios",
    "parse_override",
    "read_yaml",
]
