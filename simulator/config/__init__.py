"""Scenario configuration: the pydantic schema and the YAML loader."""

from simulator.config.loader import load_scenarios, parse_override, read_yaml
from simulator.config.schema import (
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
