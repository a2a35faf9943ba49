"""Error vocabulary shared by every stage.

Three kinds of fault (``Fault``), decided in one place (``reconciler.outcome``): a
``PermanentError`` rejects a revision until the branch moves on (invalid input, a check that
failed); a ``HostError`` is the host's to fix (a missing secret) and is retried when it changes;
a ``TemporaryError`` is worth retrying with backoff (database down, fetch failed). ``Problem`` is
one finding of a check, printed as ``path[:line]: message``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from reconciler.vocab import CONTROL


class Fault(StrEnum):
    """Whose fault a failed reconcile is; what follows from each is in ``reconciler.outcome``."""

    REVISION = "revision"  # permanent until the branch moves on
    HOST = "host"  # retried when the host changes (a secret written, a permission fixed)
    TEMPORARY = "temporary"  # retried with backoff (database, fetch, lock, disk space)


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


class HostError(ReconcilerError):
    """The host lacks something the revision rightly needs (a secret file); fixed on the host, not in git."""

    def __init__(self, message: str, missing: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.missing = tuple(missing)  # names of the secrets that are not there


class TemporaryError(ReconcilerError):
    """Something outside the revision failed; retrying later (with backoff) may help."""


class InvalidRevision(PermanentError):
    """A revision failed validation; carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(f"{len(problems)} problem(s) in revision")
        self.problems = sorted(set(problems), key=_problem_key)


class SourceError(ReconcilerError):
    """The source (repository path, revision) could not be read at all."""


class ToolError(ReconcilerError):
    """A Postfix or database tool could not be run (missing binary, crash)."""


def _escape(text: str) -> str:
    return CONTROL.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), text)


def _problem_key(p: Problem) -> tuple[str, int, str]:
    return (p.path, p.line or 0, p.message)
