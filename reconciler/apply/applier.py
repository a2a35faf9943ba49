"""The Applier: executes one Plan on the live host, a table of steps run by one loop.

Called by ``engine.apply``. The steps (``Step``, each named in the journal and in errors):
  prepare   new files are written beside the live ones and the live ones backed up (``files``);
  build     tables are built with postmap/postalias beside the live ones (``files``);
  journal   the write-ahead journal naming every file is fsynced into the state dir (``journal``);
  rows      one InnoDB transaction applies every row change and records this host's applied
            revision and the apply id (its ``reconciler_hosts`` row), but is not committed yet (``rows``);
  swap      new files are renamed into place;
  check     ``postfix check`` on the swapped-in configuration (``service``);
  service   reload or restart as the plan says (nothing when Postfix is stopped);
  health    master alive and every inet listener greeting 220;
  commit    the row transaction commits: the commit point. Files and rows switch together;
  finish    backups removed, inventory written, journal removed.
Any failure before ``commit`` rolls the rows back, renames the backups back and reloads (or, after
a failed health check, restarts) Postfix on the old configuration. After a crash, ``recover``
finishes or undoes the journalled apply, deciding by whether the apply id reached the database.

The loop calls the one fault hook (``Faults.at``) at the point each step declares (``Hook``).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from functools import partial
from pathlib import Path

import pymysql.err
import structlog

from reconciler.apply import files
from reconciler.apply.faults import NO_FAULTS, Faults
from reconciler.apply.journal import Journal, Phase
from reconciler.apply.rows import RowTransaction
from reconciler.apply.service import confirm_health, postfix_check, restore_service, take_change
from reconciler.apply.steps import ApplyFailed, ApplyResult, Step
from reconciler.db import Connection
from reconciler.plan import Action, Plan
from reconciler.state import Inventory, StateDir, fsync_dir

log = structlog.get_logger("reconciler.apply")


class Hook(Enum):
    """Where the loop calls the fault hook for a step."""

    BEFORE = "before"  # before the step's work
    AFTER = "after"  # once the step's work is done (rows: the transaction written, still open)
    EACH = "each"  # the step calls it before each of its items (swap: before each rename, ``swap:N``)


@dataclass
class _Run:
    """One apply in progress (in memory): the plan, its journal and how far it got."""

    plan: Plan
    journal: Journal
    postfix_running: bool
    step: Step = Step.PREPARE
    txn_open: bool = False  # the rows step began: a rollback must end the transaction
    warnings: list[str] = field(default_factory=list)

    @property
    def service(self) -> bool:
        """Whether the plan's reload or restart is taken (not when Postfix is stopped)."""
        return self.postfix_running and self.plan.service.action is not Action.NONE


# A step's work, given the apply in progress.
StepFn = Callable[[_Run], None]


class Applier:
    """Executes one Plan against the live host; see the module docstring for the steps.

    ``host`` and ``wave`` name this host's ``reconciler_hosts`` row; ``reconnect`` opens a new
    database connection (the next node of ``[mysql].host``) when the one in use is lost at commit;
    ``rows_newer`` says whether a revision is newer than the plan's (the rows another host committed
    at a newer revision are never written back); ``faults`` are the test hooks (none by default).
    """

    def __init__(
        self,
        config_dir: Path,
        state: StateDir,
        conn: Connection,
        health_timeout: float = 10.0,
        *,
        host: str = "",
        wave: int = 0,
        reconnect: Callable[[], Connection] | None = None,
        rows_newer: Callable[[str], bool] | None = None,
        faults: Faults = NO_FAULTS,
    ) -> None:
        self.config_dir = config_dir
        self.state = state
        self.health_timeout = health_timeout
        self.faults = faults
        self.rows = RowTransaction(
            conn, host=host, wave=wave, reconnect=reconnect, rows_newer=rows_newer, bulk_rows=faults.bulk_rows
        )

    @property
    def conn(self) -> Connection:
        """The database connection in use (a new one after a connection lost at commit)."""
        return self.rows.conn

    @property
    def rows_written(self) -> bool:
        """False when another host had written this plan's rows."""
        return self.rows.rows_written

    def steps(self) -> tuple[tuple[Step, StepFn, Hook], ...]:
        """The steps before the commit point, in order, each with where its fault hook fires."""
        return (
            (Step.PREPARE, self._prepare, Hook.BEFORE),
            (Step.BUILD, self._build, Hook.BEFORE),
            (Step.JOURNAL, self._journal, Hook.BEFORE),
            (Step.ROWS, self._rows, Hook.AFTER),
            (Step.SWAP, self._swap, Hook.EACH),
            (Step.CHECK, self._check, Hook.BEFORE),
            (Step.SERVICE, self._service, Hook.BEFORE),
            (Step.HEALTH, self._health, Hook.BEFORE),
            (Step.COMMIT, self._commit, Hook.BEFORE),
        )

    def apply(self, plan: Plan, *, postfix_running: bool) -> ApplyResult:
        started = time.monotonic()
        inventory = Inventory(plan.revision, plan.managed_files, tuple(plan.managed_tables))
        apply_id = uuid.uuid4().hex
        journal = Journal(
            apply_id, plan.revision, str(self.config_dir), Phase.PREPARE, [], postfix_running, inventory.to_json()
        )
        run = _Run(plan, journal, postfix_running)
        try:
            for step, work, hook in self.steps():
                run.step = step
                if hook is Hook.BEFORE:
                    self.faults.at(step)
                work(run)
                if hook is Hook.AFTER:
                    self.faults.at(step)
        except Exception as exc:
            detail = exc.detail if isinstance(exc, ApplyFailed) else _describe(exc)
            log.warning("apply.rollback", step=run.step.value, error=detail)
            rolled = self._rollback(run)
            cause = exc.cause if isinstance(exc, ApplyFailed) else exc
            raise ApplyFailed(run.step, detail, rolled_back=rolled, cause=cause) from None
        # Past the commit point: only clean-up remains, and recovery would redo it.
        self.faults.at(Step.COMMIT, 1)  # a crash right after the commit point must roll forward
        self.rows.release_lock()
        self._finish(journal)
        return ApplyResult(
            changed=True,
            files=len(plan.files),
            tables=len(plan.tables),
            rows=len(plan.rows) if self.rows_written else 0,
            service=plan.service.action.value if postfix_running else "none",
            warnings=tuple(run.warnings),
            duration=time.monotonic() - started,
        )

    # -- steps (in order) --------------------------------------------------------------------------

    def _prepare(self, run: _Run) -> None:
        files.prepare(run.plan, self.config_dir, run.journal)

    def _build(self, run: _Run) -> None:
        files.build(run.plan, self.config_dir, self.state.path / "parsed", run.journal)

    def _journal(self, run: _Run) -> None:
        run.journal.write(self.state, Phase.PREPARED)

    def _rows(self, run: _Run) -> None:
        run.txn_open = True
        self.rows.write(run.plan, run.journal.apply_id)

    def _swap(self, run: _Run) -> None:
        run.journal.write(self.state, Phase.SWAPPING)
        files.swap(run.journal, partial(self.faults.at, Step.SWAP))

    def _check(self, run: _Run) -> None:
        if run.plan.files or run.plan.tables:
            run.warnings += postfix_check(self.config_dir)

    def _service(self, run: _Run) -> None:
        if run.service:
            take_change(self.config_dir, run.plan.service.action)

    def _health(self, run: _Run) -> None:
        if run.service:
            confirm_health(self.config_dir, self.health_timeout)

    def _commit(self, run: _Run) -> None:
        self.rows.commit(run.plan, run.journal.apply_id)

    def _finish(self, journal: Journal) -> None:
        journal.write(self.state, Phase.COMMITTED)
        self.faults.at(Step.FINISH)
        files.finish_committed(journal)
        self.state.write_inventory(Inventory.from_json(journal.inventory))
        self.state.journal_path.unlink()
        fsync_dir(self.state.path)

    def _rollback(self, run: _Run) -> bool:
        """Undo a failed apply: rows rolled back, files put back, Postfix back on the old configuration."""
        if run.txn_open:
            self.rows.rollback()
        files.undo_files(run.journal)
        ok = True
        if run.postfix_running and run.step in (Step.SWAP, Step.CHECK, Step.SERVICE, Step.HEALTH, Step.COMMIT):
            # A failed health check may have left the master throttling a service for 60 s, which a
            # reload does not clear: stop and start instead.
            restart = run.step in (Step.HEALTH, Step.SERVICE)
            ok = restore_service(self.config_dir, restart=restart, timeout=self.health_timeout)
        with contextlib.suppress(FileNotFoundError):
            self.state.journal_path.unlink()
        return ok


def _describe(exc: BaseException) -> str:
    """An error's text for the status: an OSError with its path, a database error with its message."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror + (f": {exc.filename}" if exc.filename else "")
    if isinstance(exc, pymysql.err.MySQLError) and exc.args:
        return f"database: {exc.args[-1]}"
    return str(exc)
