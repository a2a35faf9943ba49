"""``reconciler diff`` and ``reconciler apply``: one reconcile from the command line, planned or applied.

Called through ``reconciler.cli.main``. Which of the exit codes 1 and 2 a failed apply gets is
decided by ``reconciler.outcome``: the revision's fault exits 1, the host's (a missing secret) or a
temporary one (database, lock, disk space) exits 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from reconciler.cli.config import EXIT_ERROR, EXIT_FAIL, EXIT_OK, read_config
from reconciler.errors import ReconcilerError


def cmd_diff(args: argparse.Namespace) -> int:
    """Dry run: print what ``apply`` would change; exit 0 in sync, 1 changes pending."""
    from reconciler.engine import diff
    from reconciler.errors import InvalidRevision
    from reconciler.render import plan_json, plan_text

    cfg = read_config(args.config)
    try:
        planned = diff(cfg, args.rev)
    except InvalidRevision as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"reconciler: revision is invalid: {len(exc.problems)} problem(s)", file=sys.stderr)
        return EXIT_ERROR
    if args.format == "json":
        sys.stdout.write(plan_json(planned.plan))
    else:
        sys.stdout.write(plan_text(planned.plan, colour=sys.stdout.isatty()))
    return EXIT_OK if planned.plan.empty else EXIT_FAIL


def cmd_apply(args: argparse.Namespace) -> int:
    """One transactional reconcile; exit 0 applied or nothing to do, 1 rejected or rolled back, 2 could not run.

    Which of 1 and 2 is decided by ``reconciler.outcome``: the revision's fault exits 1, the
    host's (a missing secret) or a temporary one (database, lock, disk space) exits 2.
    """
    import pymysql.err

    from reconciler.apply import ApplyFailed, Faults
    from reconciler.engine import apply
    from reconciler.errors import Fault, InvalidRevision
    from reconciler.outcome import classify

    cfg = read_config(args.config)
    try:
        planned, result = apply(cfg, args.rev, retry_failed=args.rev is not None, faults=Faults.from_env(os.environ))
    except InvalidRevision as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"reconciler: revision rejected: {len(exc.problems)} problem(s); nothing changed", file=sys.stderr)
        return EXIT_FAIL
    except (ReconcilerError, pymysql.err.MySQLError, OSError) as exc:
        outcome = classify(exc)
        if isinstance(exc, ApplyFailed):
            state = "rolled back" if exc.rolled_back else "ROLLBACK INCOMPLETE, check the host"
            message = f"apply failed at step {exc.step.value}: {exc.detail}; {state}"
        else:
            message = outcome.error
        if outcome.fault is Fault.HOST:
            message += "; the host must fix this (the revision is not marked failed)"
        elif outcome.fault is Fault.TEMPORARY:
            message += "; temporary, try again later"
        print(f"reconciler: {message}", file=sys.stderr)
        return outcome.exit_code
    rev = (planned.snapshot.revision or "")[:12]
    if not result.changed:
        print(f"revision {rev}: in sync, nothing to do")
    else:
        print(
            f"revision {rev}: applied {result.files} file(s), {result.tables} table(s), {result.rows} row(s); "
            f"postfix {result.service} ({result.duration:.2f} s)"
        )
        for warning in result.warnings:
            print(f"postfix check: warning: {warning}", file=sys.stderr)
    return EXIT_OK
