"""Calibrated device profiles: loading, and looking up the curve for an operator.

Why a separate file per device: a profile is data with provenance (what it was
fitted on, its held-out error), written by ``capsim calibrate fit`` and shipped
for the A100-80GB SXM, H100 SXM and H200 (``profiles/<device id>.yaml``). The
cost model uses a device's shipped profile by default; a scenario sets
``deployment.calibration: datasheet`` to price with the catalog's constant
efficiencies instead, or points ``calibration_profile`` of an inline device at
any profile file.

>>> p = shipped_profile("h100-sxm")
>>> p.curve("gemm", "bf16").form
'gemm-v1'
"""

from __future__ import annotations

import gc
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from capsim.errors import CapsimError
from capsim.registry import normalise_name
from capsim.yaml_cache import load_yaml
from hwmodels.calibration import correction, curves

PROFILE_FORMAT = "capsim-calibration-profile/1"
_SIXTEEN_BIT = ("bf16", "fp16")
_ORIGIN_ORDER = ("measure", "aiconfigurator", "vidur")


@dataclass(frozen=True, eq=False)
class Curve:
    """One fitted curve of a profile: its family, parameters and where it came from."""

    key: str  # operators key ("gemm", "elementwise:norm") or collective op class
    dtype: str
    form: str
    params: Mapping[str, Any]
    source: str
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class DeviceProfile:
    """A calibrated profile of one device (the parsed YAML, with lookups)."""

    name: str
    device: str
    path: str
    doc: Mapping[str, Any]

    def curve(self, key: str, dtype: str) -> Curve | None:
        """The curve for operator ``key`` in format ``dtype`` (bf16 and fp16 stand in for each other)."""
        by_dtype = self.doc.get("operators", {}).get(key) or {}
        for candidate in (dtype, *(_SIXTEEN_BIT if dtype in _SIXTEEN_BIT else ())):
            entry = by_dtype.get(candidate)
            if entry:
                return Curve(key, candidate, entry["form"], entry["params"], entry.get("source", ""), entry)
        return None

    def collective(self, op_class: str, group_size: int, *, links: tuple[str, ...] = ("nvswitch", "nvlink-pair"),
                   dtypes: tuple[str, ...] = ("fp16", "bf16")) -> Curve | None:
        """The alpha-beta curve of a ``op_class`` collective over ``group_size`` ranks inside a node.

        Prefers NCCL (``nccl_<op_class>``, what every engine can use at any size)
        over engine-specific kernels, then the source order measure > aiconfigurator > vidur.
        """
        entries = [e for e in self.doc.get("collectives", {}).get(op_class, []) or []
                   if int(e.get("group_size", 0)) == int(group_size) and e.get("link") in links
                   and e.get("dtype") in dtypes]
        if not entries:
            return None

        def rank(e: Mapping[str, Any]) -> tuple:
            nccl = e.get("op") == f"nccl_{op_class}"
            origin = e.get("source", "")
            return (0 if nccl else 1,
                    _ORIGIN_ORDER.index(origin) if origin in _ORIGIN_ORDER else len(_ORIGIN_ORDER),
                    links.index(e.get("link")))

        best = min(entries, key=rank)
        return Curve(op_class, best.get("dtype", ""), best["form"], best["params"], best.get("source", ""), best)

    @property
    def operator_keys(self) -> list[str]:
        return sorted(self.doc.get("operators", {}))


_FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml_text(text: str) -> Any:
    """Parse YAML with libyaml when available (read back from :mod:`capsim.yaml_cache` when this text was parsed
    before), with the cyclic garbage collector paused.

    Profiles are read at every simulation's start, inside a process that already
    holds a large heap (pandas, the trace): the thousands of small containers a
    parse creates would otherwise trigger a full collection over that heap, which
    costs more than the parse itself (measured: 0.05 s vs 0.007 s).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        return load_yaml(text, _FAST_LOADER)  # a safe loader; parsed once per text (capsim.yaml_cache)
    finally:
        if enabled:
            gc.enable()


class _NoAliases(yaml.SafeDumper):
    """Write repeated sub-documents in full (profiles are read by people, not only by code)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _short_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = len(data) <= 6 and all(isinstance(v, int | float | str) and len(str(v)) < 40 for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_NoAliases.add_representer(list, _short_list)


def dump_yaml(doc: Mapping[str, Any]) -> str:
    """YAML text of a profile / overhead document, keys in insertion order, no anchors."""
    return yaml.dump(dict(doc), Dumper=_NoAliases, sort_keys=False, width=110)


def _check(doc: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(doc, Mapping) or doc.get("format") != PROFILE_FORMAT:
        raise CapsimError(
            "not a capsim calibration profile",
            where=where,
            fix=f"a profile is the YAML written by `capsim calibrate fit` (format: {PROFILE_FORMAT})",
        )
    for key, by_dtype in (doc.get("operators") or {}).items():
        for dtype, entry in (by_dtype or {}).items():
            if not isinstance(entry, Mapping) or "form" not in entry or "params" not in entry:
                raise CapsimError("curve entry needs 'form' and 'params'", where=f"{where}: operators.{key}.{dtype}")
            fam = curves.family(entry["form"])
            # A fact-gated parameter (``Family.gated_by``) or a later term (``Family.added_later``) that an older
            # profile lacks means its term is absent: held at 0, that profile prices exactly as it did.
            optional = {gate[0] for gate in fam.gated_by} | set(fam.added_later)
            missing = [p.name for p in fam.params if p.name not in entry["params"] and p.name not in optional]
            missing += [t for t in fam.table_params if t not in entry["params"]]
            if missing:
                raise CapsimError(
                    f"curve {entry['form']} lacks parameter(s) {', '.join(missing)}",
                    where=f"{where}: operators.{key}.{dtype}.params",
                    fix="re-run `capsim calibrate fit` to regenerate the profile",
                )
            _check_row_bands(entry["params"], f"{where}: operators.{key}.{dtype}.params.correction.row_bands")
            if "correction" in entry["params"]:
                problem = correction.grid_problem(entry["params"]["correction"], entry["form"])
                if problem:
                    raise CapsimError(f"residual surface: {problem}",
                                      where=f"{where}: operators.{key}.{dtype}.params.correction",
                                      fix="re-run `capsim calibrate fit` to regenerate the profile")
    return doc


def _check_row_bands(params: Mapping[str, Any], where: str) -> None:
    """A GEMM surface's row bands (``fit.GEMM_ROW_BANDS``) must be ``[m_min, m_max, k_min, band]`` rows, band > 0."""
    corr = params.get("correction")
    bands = corr.get("row_bands") if isinstance(corr, Mapping) else None
    if bands is None:
        return
    ok = isinstance(bands, list) and bands and all(
        isinstance(b, list) and len(b) == 4 and all(isinstance(v, int | float) for v in b) and b[3] > 0 for b in bands)
    if not ok:
        raise CapsimError("row_bands must be a list of [m_min, m_max, k_min, band] rows of numbers with band > 0",
                          where=where, fix="re-run `capsim calibrate fit` to regenerate the profile")


def load_profile(path: str | Path) -> DeviceProfile:
    """Read and check a profile YAML file."""
    path = Path(path)
    if not path.is_file():
        raise CapsimError("calibration profile not found", where=str(path),
                          fix="give the path of a YAML written by `capsim calibrate fit`")
    try:
        doc = load_yaml_text(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise CapsimError(f"cannot parse the profile: {err}", where=str(path)) from None
    doc = _check(doc, str(path))
    return DeviceProfile(path.stem, normalise_name(doc.get("device", path.stem)), str(path), doc)


def _shipped_dir():
    return resources.files("hwmodels.calibration.profiles")


def shipped_profile_names() -> list[str]:
    """Device ids with a shipped profile."""
    return sorted(p.name[:-5] for p in _shipped_dir().iterdir() if p.name.endswith(".yaml")
                  and not p.name.startswith(("overheads", "engines")))


@cache
def shipped_profile(device: str) -> DeviceProfile | None:
    """The shipped profile of catalog device ``device`` (its canonical id), or None."""
    name = normalise_name(device)
    entry = _shipped_dir().joinpath(f"{name}.yaml")
    if not entry.is_file():
        return None
    with resources.as_file(entry) as path:
        return load_profile(path)


def resolve_profile(ref: str) -> DeviceProfile:
    """A profile by shipped device id or by file path (``calibration_profile`` of a device)."""
    shipped = shipped_profile(ref) if "/" not in ref and not ref.endswith((".yaml", ".yml")) else None
    if shipped is not None:
        return shipped
    path = Path(ref)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return load_profile(path)
    raise CapsimError(
        f"no calibration profile {ref!r}",
        where="device.calibration_profile",
        fix=f"use a shipped profile ({', '.join(shipped_profile_names())}) or the path of a profile YAML",
    )
