"""Help texts are printed as written: rich console markup must not swallow bracketed text such as ``capsim[ray]``."""

from __future__ import annotations

import re

import typer
from typer.testing import CliRunner

from simulator.cli import app


def _commands(command, path: tuple[str, ...] = ()):
    """Every command under ``command`` with the words that invoke it (typer may bundle its own click)."""
    yield path, command
    for name, sub in (getattr(command, "commands", None) or {}).items():
        yield from _commands(sub, (*path, name))


def _bracketed_words(text: str) -> set[str]:
    """Words of a help text that hold square brackets (``'capsim[ray]'``), as a reader would type them."""
    return {w.strip("'\".,;:()") for w in text.split() if re.search(r"\[[^\]]*\]", w)}


def test_every_bracketed_word_of_a_help_text_is_shown():
    root = typer.main.get_command(app)
    checked = 0
    for path, command in _commands(root):
        texts = [command.help or ""] + [getattr(p, "help", None) or "" for p in command.params]
        words = set().union(*(_bracketed_words(t.replace("\\[", "[")) for t in texts))
        if not words:
            continue
        result = CliRunner().invoke(app, [*path, "--help"], terminal_width=200)
        assert result.exit_code == 0, result.output
        shown = " ".join(result.output.split())
        for word in words:
            assert word in shown, (path, word)
            checked += 1
    assert checked >= 2  # at least --ray of sweep/plan and --backend of calibrate measure
