"""The results store: one JSON file per evaluated configuration, keyed by what determines its result.

Why a content key: a sweep that is interrupted, extended by a grid value or
re-run after editing one field should recompute only the configurations that
changed. The key is a hash of the resolved scenario (``Scenario.model_dump``,
sorted-key JSON) and the capsim version, so a new release never reuses old
numbers. ``name`` and ``description`` are labels that cannot change a result,
so they are left out: the same configuration under another label is reused.

Only the driver process writes (workers return their results to it), and each
file is written to a temporary name and renamed, so an interrupted sweep never
leaves a half-written entry behind.

>>> from simulator.config.schema import Scenario
>>> scenario_key(Scenario(name="a")) == scenario_key(Scenario(name="b"))
True
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from capsim import __version__
from capsim.errors import CapsimError
from simulator.config.schema import Scenario

#: Scenario fields that only label a configuration; they do not enter the key.
LABEL_FIELDS = ("name", "description")


def scenario_payload(scenario: Scenario) -> dict[str, Any]:
    """The JSON-ready dump a worker rebuilds the scenario from (labels included)."""
    return scenario.model_dump(mode="json")


def scenario_key(scenario: Scenario | dict[str, Any], version: str = __version__) -> str:
    """Hex digest identifying the result of simulating ``scenario`` with capsim ``version``."""
    dump = scenario_payload(scenario) if isinstance(scenario, Scenario) else scenario
    content = {k: v for k, v in dump.items() if k not in LABEL_FIELDS}
    text = json.dumps({"scenario": content, "capsim_version": version}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class ResultStore:
    """A folder of ``<key>.json`` entries: ``{key, capsim_version, scenario, result}``.

    ``result`` is what :func:`simulator.sweep.worker.evaluate` returned (a
    ``status`` plus a summary, a bound verdict or an error message).
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CapsimError(
                f"cannot create the results store ({exc.strerror})", where=str(self.root), fix="choose another --out"
            ) from None

    def _path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored result for ``key``, or None (also for an unreadable entry, which is then recomputed)."""
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if entry.get("key") != key or entry.get("capsim_version") != __version__:
            return None
        return entry.get("result")

    def put(self, key: str, scenario: dict[str, Any], result: dict[str, Any]) -> None:
        entry = {"key": key, "capsim_version": __version__, "scenario": scenario, "result": result}
        path = self._path(key)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(entry, sort_keys=True, allow_nan=False))
        os.replace(tmp, path)

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("*.json"))
