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
