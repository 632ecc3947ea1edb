"""User-facing errors.

Why a dedicated type: every mistake a user can make (a typo in a YAML key, an
unknown device, a model that does not fit, a corrupt trace row) must end in a
short message that names *where* the problem is and *how to fix it*, with a
non-zero exit and no traceback. Code raises :class:`CapsimError` with those
parts; the CLI prints :meth:`CapsimError.render` and exits with status 2.
"""

from __future__ import annotations


class CapsimError(Exception):
    """A problem in the user's input, explained for the user.

    ``where`` names the file, field or row (``"workload.qps"``,
    ``"trace.csv row 17"``); ``fix`` says what to do about it.

    >>> str(CapsimError("qps must be positive, got -1", where="workload.qps", fix="use a rate > 0"))
    'workload.qps: qps must be positive, got -1. Fix: use a rate > 0'
    """

    def __init__(self, problem: str, *, where: str | None = None, fix: str | None = None):
        self.problem = problem.rstrip(".")
        self.where = where
        self.fix = fix
        super().__init__(self.render())

    def render(self) -> str:
        text = f"{self.where}: {self.problem}" if self.where else self.problem
        if self.fix:
            text += f". Fix: {self.fix}"
        return text


class UnknownNameError(CapsimError):
    """A name that is not in a registry or catalog; the message suggests the closest names."""


class DoesNotFitError(CapsimError):
    """A model, with its parallelism, does not fit in the memory of the chosen devices."""


class TraceFormatError(CapsimError):
    """A trace file that is missing columns or has rows that cannot be used."""
