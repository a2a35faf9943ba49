"""The one classifier: every kind of error maps to one fault, and state, exit code and retry follow from it."""

from __future__ import annotations

import errno

import pymysql.err
import pytest

from reconciler.apply import ApplyFailed, InjectedFault, Step
from reconciler.engine import MassDeletionRefused, RevisionFailedBefore
from reconciler.errors import Fault, InvalidRevision, Problem, SourceError, TemporaryError, ToolError
from reconciler.outcome import classify, fault_of
from reconciler.secrets import SecretError
from reconciler.signatures import SignatureRejected
from reconciler.status import AgentState, AttemptResult

CASES: list[tuple[str, BaseException, Fault, AttemptResult]] = [
    ("invalid", InvalidRevision([Problem("postfix/main.cf", 3, "bad")]), Fault.REVISION, AttemptResult.REJECTED),
    ("unsigned", SignatureRejected("not signed"), Fault.REVISION, AttemptResult.REJECTED),
    ("mass-delete", MassDeletionRefused("too many"), Fault.REVISION, AttemptResult.REJECTED),
    ("failed-before", RevisionFailedBefore("failed before"), Fault.REVISION, AttemptResult.REJECTED),
    ("rolled-back", ApplyFailed(Step.HEALTH, "smtpd died", cause=InjectedFault("x")), Fault.REVISION, AttemptResult.FAILED),
    ("check-failed", ApplyFailed(Step.CHECK, "postfix check"), Fault.REVISION, AttemptResult.FAILED),
    ("secret-missing", SecretError("not found", ["relay_password"]), Fault.HOST, AttemptResult.ERROR),
    ("config-dir-permission", PermissionError(errno.EACCES, "Permission denied", "/etc/postfix"), Fault.HOST, AttemptResult.ERROR),
    ("read-only-fs", OSError(errno.EROFS, "Read-only file system", "/etc/postfix/x"), Fault.HOST, AttemptResult.ERROR),
    ("apply-permission", ApplyFailed(Step.PREPARE, "denied", cause=PermissionError(errno.EACCES, "denied")), Fault.HOST, AttemptResult.ERROR),
    ("database-down", TemporaryError("cannot connect to MySQL"), Fault.TEMPORARY, AttemptResult.ERROR),
    ("database-gone", pymysql.err.OperationalError(2013, "Lost connection"), Fault.TEMPORARY, AttemptResult.ERROR),
    ("certification-conflict", pymysql.err.OperationalError(1213, "Deadlock found"), Fault.TEMPORARY, AttemptResult.ERROR),
    ("rows-db-gone", ApplyFailed(Step.ROWS, "lost", cause=pymysql.err.OperationalError(2013, "Lost")), Fault.TEMPORARY, AttemptResult.ERROR),
    ("lock", TemporaryError("another apply holds the host lock"), Fault.TEMPORARY, AttemptResult.ERROR),
    ("fetch", SourceError("no such repository"), Fault.TEMPORARY, AttemptResult.ERROR),
    ("tool", ToolError("postconf missing"), Fault.TEMPORARY, AttemptResult.ERROR),
    ("disk-full", OSError(errno.ENOSPC, "No space left on device", "/var/lib/reconciler/x"), Fault.TEMPORARY, AttemptResult.ERROR),
    ("disk-full-in-apply", ApplyFailed(Step.PREPARE, "full", cause=OSError(errno.ENOSPC, "No space")), Fault.TEMPORARY, AttemptResult.ERROR),
    ("bug", KeyError("x"), Fault.TEMPORARY, AttemptResult.ERROR),
    ("bug-in-apply", ApplyFailed(Step.ROWS, "bug", cause=KeyError("x")), Fault.REVISION, AttemptResult.FAILED),
]  # fmt: skip


@pytest.mark.parametrize(("exc", "fault", "result"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_error_has_one_fault(exc: BaseException, fault: Fault, result: AttemptResult) -> None:
    """Each kind of error is the revision's, the host's or temporary, with the attempt result that goes with it."""
    outcome = classify(exc)
    assert fault_of(exc) is fault is outcome.fault
    assert outcome.result is result


def test_state_exit_code_and_parking_follow_from_the_fault() -> None:
    """Only the revision's faults park the head, set failed and exit 1; the others set degraded and exit 2."""
    for _, exc, fault, _ in CASES:
        outcome = classify(exc)
        assert outcome.parks is (fault is Fault.REVISION)
        assert outcome.state is (AgentState.FAILED if fault is Fault.REVISION else AgentState.DEGRADED)
        assert outcome.exit_code == (1 if fault is Fault.REVISION else 2)
        assert outcome.temporary is (fault is Fault.TEMPORARY)


def test_host_fault_names_the_secrets_and_the_unexpected_are_flagged() -> None:
    """A secret error carries the secret names; an error no stage raises on purpose asks for its traceback."""
    assert classify(SecretError("x", ["a", "b"])).missing_secrets == ("a", "b")
    assert classify(ApplyFailed(Step.PREPARE, "x", cause=SecretError("x", ["c"]))).missing_secrets == ("c",)
    assert classify(KeyError("x")).unexpected
    assert not classify(TemporaryError("x")).unexpected
    assert classify(OSError(errno.ENOSPC, "No space left on device", "/s/f")).error == "No space left on device: /s/f"
