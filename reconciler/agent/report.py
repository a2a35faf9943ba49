"""The agent's row in ``reconciler_hosts``: built from its status, sent without ever failing the loop.

Called by ``book.Book.publish`` after every change of state, and by the reconcile attempt as the
fleet's heartbeat (``reconcile.Reconciler.reconcile``); other hosts' wave checks read the rows.
"""

from __future__ import annotations

import contextlib

import structlog

from reconciler.db import connect
from reconciler.fleet import Report, report
from reconciler.models import AgentConfig
from reconciler.status import AgentState, Status

log = structlog.get_logger("reconciler.agent")


def fleet_row(host: str, wave: int, status: Status) -> Report:
    """Where this host stands, as its ``reconciler_hosts`` row."""
    last = status.last_attempt
    failed = status.head_revision if status.state is AgentState.FAILED else None
    error = last.error if last is not None and status.state in (AgentState.FAILED, AgentState.DEGRADED) else None
    if status.state is AgentState.WAITING:
        error = status.waiting_reason
    return Report(
        host=host,
        wave=wave,
        state=status.state.value,
        applied_revision=status.applied_revision,
        head_revision=status.head_revision,
        error=error,
        failed_revision=failed,
        waiting_for=tuple(status.waiting_for),
    )


def send(cfg: AgentConfig, row: Report) -> None:
    """Write ``row`` to the fleet table; a failure is logged (debug) and forgotten."""
    try:
        conn = connect(cfg.mysql, autocommit=True)
    except Exception as exc:
        log.debug("fleet.report_failed", error=str(exc))
        return
    try:
        report(conn, row)
    except Exception as exc:
        log.debug("fleet.report_failed", error=str(exc))
    finally:
        with contextlib.suppress(Exception):
            conn.close()
