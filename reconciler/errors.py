"""Error vocabulary shared by every stage.

Two kinds, as in kopf: a ``PermanentError`` rejects a revision until the branch moves on (invalid
input, a check that failed); a ``TemporaryError`` is worth retrying with backoff (database down,
fetch failed). ``Problem`` is one finding of a check, printed as ``path[:line]: message``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Problem:
    """One finding of a check (in-memory result), located in the desired-state repository."""

    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        # A path or message with a control character (a file named "x\nmain.cf:1: fine") must not
        # forge a second line of output: such characters are printed escaped.
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        return _escape(f"{where}: {self.message}")


class ReconcilerError(Exception):
    """Base of every error the reconciler raises on purpose."""


class PermanentError(ReconcilerError):
    """The revision is wrong; retrying the same revision cannot help."""


class TemporaryError(ReconcilerError):
    """Something outside the revision failed; retrying later may help."""

    def __init__(self, message: str, delay: float = 5.0) -> None:
        super().__init__(message)
        self.delay = delay


class InvalidRevision(PermanentError):
    """A revision failed validation; carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(f"{len(problems)} problem(s) in revision")
        self.problems = sorted(set(problems), key=_problem_key)


class SourceError(ReconcilerError):
    """The source (repository path, revision) could not be read at all."""


class ToolError(ReconcilerError):
    """A Postfix or database tool could not be run (missing binary, crash)."""


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape(text: str) -> str:
    return _CONTROL.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), text)


def _problem_key(p: Problem) -> tuple[str, int, str]:
    return (p.path, p.line or 0, p.message)
