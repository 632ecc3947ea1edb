"""What ``capsim estimate`` prices: a model and a deployment from flags, YAML files or a scenario's deployment.

Why a module of its own: ``estimate`` should take the same inputs as ``run`` (catalog ids, inline model and
device files, a scenario file's deployment) and every mistake should name the *flag* the user typed, not the
scenario field behind it. The rule is simple: start from ``--scenario``'s model and deployment (or the
built-in defaults), then each flag given replaces its field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capsim.errors import CapsimError

DEFAULT_MODEL = "llama-3.1-8b"
DEFAULT_DEVICE = "h100-sxm"

#: Scenario field (or prefix) -> the ``capsim estimate`` flag that sets it, for error messages.
FLAGS: dict[str, str] = {
    "model": "--model",
    "deployment.device": "--device",
    "deployment.tp": "--tp",
    "deployment.pp": "--pp",
    "deployment.weight_dtype": "--weight-dtype",
    "deployment.kv_dtype": "--kv-dtype",
    "deployment.activation_dtype": "--activation-dtype",
    "deployment.engine": "--engine",
    "deployment.overheads": "--overheads",
    "deployment.calibration": "--calibration",
    "deployment.memory_utilization": "--memory-utilization",
    "deployment.activation_reserve_gib": "--activation-reserve-gib",
}


def flag_for(where: str | None) -> str | None:
    """The flag behind scenario field ``where`` (``model.hidden_size`` -> ``--model``), or None."""
    if not where:
        return None
    for field, flag in sorted(FLAGS.items(), key=lambda kv: -len(kv[0])):
        if where == field or where.startswith(field + ".") or where.startswith(field + "["):
            return flag
    return None


@dataclass(frozen=True)
class EstimateInputs:
    """The model (catalog id or inline mapping) and deployment fields ``capsim estimate`` prices."""

    model: str | dict[str, Any]
    deployment: dict[str, Any]


def _id_or_file(value: str, flag: str, what: str) -> str | dict[str, Any]:
    """A catalog id, or the mapping in a YAML file when ``value`` names one (``.yaml``/``.yml`` or an existing
    file)."""
    path = Path(value)
    if not (value.endswith((".yaml", ".yml")) or path.is_file()):
        return value
    from simulator.config.loader import read_yaml  # only for a file: a catalog id needs no YAML reader
    if not path.is_file():
        raise CapsimError(
            f"no such {what} file {value!r}",
            where=flag,
            fix=f"check the path, or give a catalog {what} id (`capsim list {what}s`)",
        )
    try:
        data = read_yaml(path)
    except CapsimError as exc:
        raise CapsimError(exc.problem, where=flag, fix=exc.fix) from None
    if not isinstance(data, dict) or not data:
        raise CapsimError(
            f"{value!r} does not hold a {what} mapping",
            where=flag,
            fix=f"write the {what}'s fields as a YAML mapping (see `capsim list {what}s`)",
        )
    return data


def resolve(
    *,
    scenario_file: Path | None = None,
    model: str | None = None,
    device: str | None = None,
    **fields: Any,
) -> EstimateInputs:
    """The inputs, from ``scenario_file``'s model and deployment overridden by the flags that are not None.

    ``fields`` are deployment fields by name (``tp``, ``weight_dtype``, ``engine``, ...).
    """
    base_model: str | dict[str, Any] = DEFAULT_MODEL
    deployment: dict[str, Any] = {"device": DEFAULT_DEVICE}
    if scenario_file is not None:
        from simulator.config.loader import load_scenarios

        try:
            scenarios = load_scenarios(scenario_file)
        except CapsimError as exc:
            raise CapsimError(
                exc.problem, where=f"--scenario ({exc.where})" if exc.where else "--scenario", fix=exc.fix
            ) from None
        first = scenarios[0]
        if first.pools is not None:
            raise CapsimError(
                f"{scenario_file} deploys pools; estimate prices one deployment",
                where="--scenario",
                fix="give a scenario with one deployment, or pass --model/--device/--tp instead",
            )
        base_model = first.model
        deployment = first.deployment.model_dump(exclude_unset=True)
        deployment.pop("num_replicas", None)
    if model is not None:
        base_model = _id_or_file(model, "--model", "model")
    if device is not None:
        deployment["device"] = _id_or_file(device, "--device", "device")
    deployment.update({k: v for k, v in fields.items() if v is not None})
    return EstimateInputs(base_model, deployment)
