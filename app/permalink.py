"""The page's whole set-up in its URL, so a reload or a shared link restores it.

Why the scenario YAML: it is already the set-up's complete, validated form (the download button writes it and
``capsim run`` accepts it), so the link holds exactly what a downloaded file would. It is compressed (zlib) and
written URL-safe (base64) into one query parameter, ``setup``; four configurations fit in well under 2 kB.
An uploaded trace file is not in the link (only its path, when one was given).
"""

from __future__ import annotations

import base64
import binascii
import zlib

from capsim.errors import CapsimError

#: The query parameter that holds the set-up.
PARAM = "setup"
#: Largest decompressed set-up accepted from a link (a guard against a crafted link that inflates to gigabytes).
MAX_TEXT_BYTES = 1_000_000


def encode(yaml_text: str) -> str:
    """The URL-safe form of a set-up's YAML."""
    return base64.urlsafe_b64encode(zlib.compress(yaml_text.encode("utf-8"), 9)).decode("ascii").rstrip("=")


def decode(value: str) -> str:
    """The YAML of a link's ``setup`` parameter; CapsimError when the link is damaged."""
    fix = "copy the whole link again, or load the scenario YAML from the sidebar"
    try:
        packed = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        inflater = zlib.decompressobj()
        raw = inflater.decompress(packed, MAX_TEXT_BYTES)
        if inflater.unconsumed_tail:
            raise CapsimError("the set-up in the link is too large", where=f"URL parameter {PARAM}", fix=fix)
        return raw.decode("utf-8")
    except (binascii.Error, zlib.error, UnicodeDecodeError, ValueError):
        raise CapsimError("the set-up in the link is damaged (not a capsim link)", where=f"URL parameter {PARAM}",
                          fix=fix) from None


#: The query parameter that holds the seeds per configuration (absent for the default, one seed).
SEEDS_PARAM = "seeds"


def encode_seeds(seeds: int) -> str | None:
    """The link's ``seeds`` value, or None for one seed (the default leaves the link as it was)."""
    return None if seeds <= 1 else str(int(seeds))


def decode_seeds(value: str | None, most: int) -> int:
    """Seeds per configuration from a link's ``seeds`` value (1 when absent); CapsimError when it is not 1..most."""
    if not value:
        return 1
    try:
        seeds = int(value)
    except ValueError:
        seeds = 0
    if not 1 <= seeds <= most:
        raise CapsimError(f"seeds per configuration {value!r} in the link is not a whole number from 1 to {most}",
                          where=f"URL parameter {SEEDS_PARAM}", fix="set the seeds in the sidebar's Simulation section")
    return seeds
