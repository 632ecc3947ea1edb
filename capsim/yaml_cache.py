"""Parsed shipped YAML kept on disk between runs, keyed by the text's hash.

Why: every simulation and one-shot command parses the device catalog, the model catalog and the device's
calibrated profile (89 KB of YAML for the H100). Even with libyaml, building the Python objects of the profile
took about 0.02 s, a twentieth of ``capsim estimate``. The parsed document of a given text never changes, so
it is stored once with :mod:`marshal` behind a SHA-256 of the bytes (which keeps dicts in order, floats bit for bit and shared sub-documents
shared) and read back in well under a millisecond.

The key is a SHA-256 of the text, the loader and the PyYAML and Python versions, so an edited file, another
loader or an upgrade never reads an old entry. Any failure -- no writable cache folder, a damaged entry, a
document marshal cannot store -- falls back to parsing, so the cache can only change how fast a document loads.
The folder is ``$CAPSIM_CACHE_DIR`` if set (``off`` turns the cache off), else ``$XDG_CACHE_HOME/capsim`` or
``~/.cache/capsim``.
"""

from __future__ import annotations

import hashlib
import marshal
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

_MISSING = object()


def cache_dir() -> Path | None:
    """Where parsed documents are kept, or None when caching is off."""
    configured = os.environ.get("CAPSIM_CACHE_DIR")
    if configured is not None:
        return None if configured.strip().lower() in ("", "off") else Path(configured) / "yaml"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "capsim" / "yaml"


def _key(text: str, loader: type) -> str:
    tag = f"{loader.__module__}.{loader.__qualname__}|pyyaml {yaml.__version__}|python {sys.version_info[:2]}"
    return hashlib.sha256(tag.encode() + b"\0" + text.encode("utf-8")).hexdigest()


def _read(path: Path) -> Any:
    try:
        blob = path.read_bytes()
        digest, data = blob[:32], blob[32:]
        if hashlib.sha256(data).digest() != digest:  # damaged: parse again (and rewrite it)
            return _MISSING
        return marshal.loads(data)
    except (OSError, EOFError, ValueError, TypeError):
        return _MISSING


def _write(path: Path, doc: Any) -> None:
    try:
        data = marshal.dumps(doc)
    except ValueError:  # e.g. a date: such a document is parsed every time
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(hashlib.sha256(data).digest() + data)
            os.replace(tmp, path)  # readers see the whole entry or none
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:
        return


def load_yaml(text: str, loader: type) -> Any:
    """``yaml.load(text, Loader=loader)``, read from the cache when this text was parsed before.

    ``loader`` must be a safe loader (its parse depends only on the text). Parse errors are raised as by
    ``yaml.load`` and nothing is cached for them.
    """
    folder = cache_dir()
    path = folder / f"{_key(text, loader)}.marshal" if folder is not None else None
    if path is not None and path.is_file():
        doc = _read(path)
        if doc is not _MISSING:
            return doc
    doc = yaml.load(text, Loader=loader)  # noqa: S506 -- callers pass a safe loader
    if path is not None:
        _write(path, doc)
    return doc
