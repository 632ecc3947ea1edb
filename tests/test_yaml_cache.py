"""The on-disk cache of parsed YAML (capsim.yaml_cache) returns exactly what parsing returns, and falls back to
parsing whenever it cannot help (issue 19: the calibrated profile's parse was a twentieth of `capsim estimate`)."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest
import yaml

from capsim import yaml_cache
from capsim.yaml_cache import cache_dir, load_yaml

LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
REPO = Path(__file__).resolve().parents[1]
SHIPPED = [REPO / "hwmodels" / "devices.yaml", REPO / "hwmodels" / "calibration" / "profiles" / "h100-sxm.yaml"]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CAPSIM_CACHE_DIR", str(tmp_path))
    return tmp_path / "yaml"


def _entries(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.marshal")) if folder.is_dir() else []


def _same(a, b) -> None:
    """Equal, with the same types all the way down (1.0 is not 1, True is not 1) and the same key order."""
    assert type(a) is type(b)
    if isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            _same(a[key], b[key])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _same(x, y)
    else:
        assert a == b


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_a_cached_document_is_the_parsed_document(cache, path, monkeypatch):
    text = path.read_text(encoding="utf-8")
    parsed = yaml.load(text, Loader=LOADER)  # noqa: S506 -- a safe loader
    first = load_yaml(text, LOADER)
    assert len(_entries(cache)) == 1
    monkeypatch.setattr(yaml_cache.yaml, "load", lambda *a, **k: pytest.fail("parsed again"))
    second = load_yaml(text, LOADER)  # from the cache
    _same(first, parsed)
    _same(second, parsed)
    assert second is not first  # every caller gets its own objects, as from a parse


def test_another_text_is_another_entry_and_shared_anchors_stay_shared(cache):
    text = "base: &b {x: 1.5, y: [1, 2]}\nuse: *b\n"
    load_yaml(text, LOADER)
    doc = load_yaml(text, LOADER)
    assert doc["use"] is doc["base"]  # as yaml.load returns it
    load_yaml(text + "more: true\n", LOADER)
    assert len(_entries(cache)) == 2


def test_a_damaged_entry_is_parsed_again_and_rewritten(cache):
    text = "a: 1\nb: [0.1, 0.2]\n"
    load_yaml(text, LOADER)
    (entry,) = _entries(cache)
    entry.write_bytes(entry.read_bytes()[:-3] + b"xyz")
    assert load_yaml(text, LOADER) == {"a": 1, "b": [0.1, 0.2]}
    entry.write_bytes(b"")
    assert load_yaml(text, LOADER) == {"a": 1, "b": [0.1, 0.2]}
    assert load_yaml(text, LOADER) == {"a": 1, "b": [0.1, 0.2]}  # from the rewritten entry


def test_what_cannot_be_cached_is_parsed_every_time(cache, tmp_path, monkeypatch):
    assert load_yaml("day: 2024-01-02\n", LOADER) == {"day": datetime.date(2024, 1, 2)}  # marshal stores no dates
    assert _entries(cache) == []
    with pytest.raises(yaml.YAMLError):
        load_yaml("a: [1, 2\n", LOADER)
    assert _entries(cache) == []
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("CAPSIM_CACHE_DIR", str(blocked))  # no folder can be made here
    assert load_yaml("a: 1\n", LOADER) == {"a": 1}


def test_the_cache_can_be_turned_off_and_defaults_to_the_user_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("CAPSIM_CACHE_DIR", "off")
    assert cache_dir() is None
    assert load_yaml("a: 1\n", LOADER) == {"a": 1}
    monkeypatch.delenv("CAPSIM_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "capsim" / "yaml"
    assert os.fspath(cache_dir()).startswith(os.fspath(tmp_path))
