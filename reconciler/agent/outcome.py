"""Classifies how a reconcile attempt ended, in one place (as kopf's ``execution`` does).

Called by the agent loop with whatever the engine raised. A permanent outcome (``rejected``,
``failed``) parks the branch head until it moves; a temporary one (``error``: database down, fetch
failed, host lock held) is retried with backoff.
"""

from __future__ import annotations

from dataclasses import dataclass

import pymysql.err

from reconciler.apply import ApplyFailed
from reconciler.errors import InvalidRevision, PermanentError, SourceError, TemporaryError, ToolError
from reconciler.status import AttemptResult

MAX_PROBLEMS = 20  # problems quoted in the status; the rest are counted


@dataclass(frozen=True)
class Outcome:
    """The classified end of a failed attempt (in-memory result)."""

    result: AttemptResult
    error: str
    failed_step: str | None = None
    unexpected: bool = False  # not an error the reconciler raises on purpose: log the traceback

    @property
    def temporary(self) -> bool:
        return self.result is AttemptResult.ERROR


def classify(exc: BaseException) -> Outcome:
    """The outcome of an attempt that raised ``exc``."""
    if isinstance(exc, ApplyFailed):
        error = str(exc) if exc.rolled_back else f"{exc} (ROLLBACK INCOMPLETE, check the host)"
        result = AttemptResult.ERROR if exc.temporary else AttemptResult.FAILED
        return Outcome(result, error, exc.step.value)
    if isinstance(exc, InvalidRevision):
        shown = [str(p) for p in exc.problems[:MAX_PROBLEMS]]
        more = len(exc.problems) - len(shown)
        lines = [*shown, *([f"... and {more} more"] if more > 0 else [])]
        return Outcome(AttemptResult.REJECTED, f"{exc}: " + "; ".join(lines), "validate")
    if isinstance(exc, PermanentError):
        return Outcome(AttemptResult.REJECTED, str(exc), "plan")
    if isinstance(exc, TemporaryError | SourceError | ToolError):
        return Outcome(AttemptResult.ERROR, str(exc))
    if isinstance(exc, pymysql.err.OperationalError | pymysql.err.InterfaceError):
        return Outcome(AttemptResult.ERROR, f"database: {exc.args[-1] if exc.args else exc}")
    if isinstance(exc, OSError):
        return Outcome(AttemptResult.ERROR, f"{type(exc).__name__}: {exc}")
    return Outcome(AttemptResult.ERROR, f"internal error: {type(exc).__name__}: {exc}", unexpected=True)
