"""The one place that decides how a failed reconcile ends (as kopf's ``execution`` does).

Every exception of a reconcile is sorted into one of three ``Fault`` kinds, and everything else
follows from the kind, here and nowhere else:

- ``revision``: the revision's fault (invalid, unsigned, mass deletion, a rolled-back apply).
  Permanent until the branch moves: the engine records it as failed, the agent parks the head in
  ``failed``, the CLI exits 1.
- ``host``: the host's fault (a missing or badly permissioned secret, a config-dir or state-dir
  permission). Nothing is recorded against the revision; the agent is ``degraded`` and retries
  when the host changes (the secrets dir is watched, and a slow timer catches the rest), its status
  naming the secrets it waits for; the CLI exits 2 (could not run).
- ``temporary``: database, fetch, lock, a full disk. Retried with backoff (agent ``degraded``),
  the CLI exits 2.

Called by ``engine.apply`` (whether to record the revision as failed), the agent loop (state,
retry, history) and the CLI (exit code, message). New kinds of error are added to ``fault_of``;
new consumers read ``Outcome``.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

import pymysql.err

from reconciler.apply import ApplyFailed
from reconciler.errors import (
    Fault,
    HostError,
    InvalidRevision,
    PermanentError,
    SourceError,
    TemporaryError,
    ToolError,
)
from reconciler.status import AgentState, AttemptResult

MAX_PROBLEMS = 20  # problems quoted in the status; the rest are counted
EXIT_FAIL, EXIT_ERROR = 1, 2  # SPEC 4: 1 rejected or failed and rolled back, 2 could not run

HOST_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})  # fixed on the host, not by waiting
SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})  # space may be freed: retried with backoff


@dataclass(frozen=True)
class Outcome:
    """The classified end of a failed attempt (in-memory result)."""

    fault: Fault
    result: AttemptResult
    error: str
    failed_step: str | None = None
    unexpected: bool = False  # not an error the reconciler raises on purpose: log the traceback
    missing_secrets: tuple[str, ...] = ()  # a host fault waiting for these secret files

    @property
    def temporary(self) -> bool:
        """Retried with backoff (database, fetch, lock, disk space)."""
        return self.fault is Fault.TEMPORARY

    @property
    def parks(self) -> bool:
        """The revision is not retried until the branch moves on."""
        return self.fault is Fault.REVISION

    @property
    def state(self) -> AgentState:
        """The agent's state after this outcome."""
        return AgentState.FAILED if self.fault is Fault.REVISION else AgentState.DEGRADED

    @property
    def exit_code(self) -> int:
        """``reconciler apply``'s exit code (SPEC 4)."""
        return EXIT_FAIL if self.fault is Fault.REVISION else EXIT_ERROR


def fault_of(exc: BaseException) -> Fault:
    """Whose fault ``exc`` is: the revision's, the host's, or nobody's yet (temporary)."""
    if isinstance(exc, ApplyFailed):
        # A step failed and was rolled back: the revision's fault, unless what broke the step was
        # the host or a temporary condition (database gone mid-apply, disk full, permission).
        cause = exc.cause
        if cause is not None and not isinstance(cause, ApplyFailed):
            kind = fault_of(cause)
            if kind is not Fault.REVISION and not _unexpected(cause):
                return kind
        return Fault.REVISION
    if isinstance(exc, HostError):
        return Fault.HOST
    if isinstance(exc, PermanentError):
        return Fault.REVISION
    if isinstance(exc, TemporaryError | SourceError | ToolError):
        return Fault.TEMPORARY
    if isinstance(exc, pymysql.err.OperationalError | pymysql.err.InterfaceError):
        return Fault.TEMPORARY  # server gone, lock wait, deadlock or certification conflict (1213)
    if isinstance(exc, OSError):
        return Fault.HOST if exc.errno in HOST_ERRNOS else Fault.TEMPORARY
    return Fault.TEMPORARY


def _unexpected(exc: BaseException) -> bool:
    return not isinstance(exc, TemporaryError | HostError | pymysql.err.MySQLError | OSError)


def _oserror_text(exc: OSError) -> str:
    if not exc.strerror:
        return f"{type(exc).__name__}: {exc}"
    return exc.strerror + (f": {exc.filename}" if exc.filename else "")


def classify(exc: BaseException) -> Outcome:
    """The outcome of an attempt that raised ``exc``."""
    fault = fault_of(exc)
    if isinstance(exc, ApplyFailed):
        error = str(exc) if exc.rolled_back else f"{exc} (ROLLBACK INCOMPLETE, check the host)"
        result = AttemptResult.FAILED if fault is Fault.REVISION else AttemptResult.ERROR
        missing = exc.cause.missing if isinstance(exc.cause, HostError) else ()
        return Outcome(fault, result, error, exc.step.value, missing_secrets=missing)
    if isinstance(exc, InvalidRevision):
        shown = [str(p) for p in exc.problems[:MAX_PROBLEMS]]
        more = len(exc.problems) - len(shown)
        lines = [*shown, *([f"... and {more} more"] if more > 0 else [])]
        return Outcome(fault, AttemptResult.REJECTED, f"{exc}: " + "; ".join(lines), "validate")
    if isinstance(exc, HostError):
        return Outcome(fault, AttemptResult.ERROR, str(exc), "plan", missing_secrets=exc.missing)
    if isinstance(exc, PermanentError):
        return Outcome(fault, AttemptResult.REJECTED, str(exc), "plan")
    if isinstance(exc, TemporaryError | SourceError | ToolError):
        return Outcome(fault, AttemptResult.ERROR, str(exc))
    if isinstance(exc, pymysql.err.OperationalError | pymysql.err.InterfaceError):
        return Outcome(fault, AttemptResult.ERROR, f"database: {exc.args[-1] if exc.args else exc}")
    if isinstance(exc, OSError):
        return Outcome(fault, AttemptResult.ERROR, _oserror_text(exc))
    return Outcome(fault, AttemptResult.ERROR, f"internal error: {type(exc).__name__}: {exc}", unexpected=True)
