"""What the CLI tests share: the check that a result is a clear user error (the ``cli`` fixture is in conftest.py)."""

from __future__ import annotations


def assert_user_error(result, *fragments: str) -> str:
    """Exit 2, no traceback, no 'internal error', the message on stderr containing ``fragments``."""
    text = result.output
    assert result.exit_code == 2, text
    assert "Traceback" not in text and "internal error" not in text, text
    assert "error:" in result.stderr and "Fix:" in result.stderr, text
    flat = " ".join(result.stderr.split())  # undo console wrapping
    for fragment in fragments:
        assert fragment in flat, (fragment, flat)
    return flat
