"""The apply stage: executes a Plan transactionally across files, built tables and MySQL rows.

Order (every step named in the journal and in errors):
  prepare   new files and tables are written beside the live ones (``.NAME.reconciler-new``),
            built with postmap/postalias there, and the live ones hard-linked to
            ``.NAME.reconciler-bak`` (same directory, same permissions: a secret never leaves it);
  journal   the write-ahead journal naming every file is fsynced into the state dir;
  rows      one InnoDB transaction applies every row change and records this host's applied
            revision and the apply id (its ``reconciler_hosts`` row), but is not committed yet;
  swap      new files are renamed into place;
  check     ``postfix check`` on the swapped-in configuration;
  service   reload or restart as the plan says (nothing when Postfix is stopped);
  health    master alive and every inet listener greeting 220;
  commit    the row transaction commits: the commit point. Files and rows switch together;
  finish    backups removed, inventory written, journal removed.
Any failure before ``commit`` rolls the rows back, renames the backups back and reloads (or, after
a failed health check, restarts) Postfix on the old configuration. After a crash, ``recover``
finishes or undoes the journalled apply, deciding by whether the apply id reached the database.

In a fleet (SPEC 6) the rows are shared: two hosts applying the same revision both plan its row
changes, and the second one's transaction conflicts with the first (a Galera certification failure,
error 1213, at commit on another node; a duplicate key or deadlock on the same node). That host
rolls its row transaction back, re-reads the rows causally (``wsrep_sync_wait``) and, when they are
exactly what its plan would have made them, goes on with a transaction that only records its own
row: its files are applied, the rows were written once. Otherwise the apply fails as temporary and
is retried with a fresh plan. The MySQL named lock taken around the rows only serialises the
agents on one database node (``GET_LOCK`` is per node under Galera); nothing relies on it. A
connection lost at the commit (the database node died) is settled on the next node of
``[mysql].host``: committed if the apply id is there, else as a conflict.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import json
import os
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import pymysql.err
import structlog

from reconciler.db import rebuild_digests
from reconciler.errors import ReconcilerError, TemporaryError
from reconciler.fleet import applied_apply_id, causal, record_applied
from reconciler.observed import domain_digests
from reconciler.parsecache import built_files
from reconciler.plan import Action, FileChange, Plan
from reconciler.postfix import ToolResult, backdate, beside, live_path, postalias, postfix_cmd, postmap, run_tool
from reconciler.state import Inventory, StateDir, atomic_write, fsync_dir
from reconciler.verify import check_health

log = structlog.get_logger("reconciler.apply")

NEW = ".reconciler-new"
BAK = ".reconciler-bak"
BUILD_DIR = ".reconciler-conf"  # the directory of the main.cf tables are built against
LOCK_NAME_PREFIX = "reconciler:"
LOCK_TIMEOUT_ENV = "RECONCILER_LOCK_TIMEOUT"  # seconds a command waits for the host lock (default 600)
# Row changes from which writing the touched domains' digests once beats per-row trigger upserts
# (tests lower it to run the bulk path on small plans).
BULK_ROWS = int(os.environ.get("RECONCILER_TEST_BULK_ROWS", "20000"))
FAULT_ENV = "RECONCILER_TEST_FAIL_AT"  # test-only: name of a step that must fail
CRASH_ENV = "RECONCILER_TEST_KILL_AT"  # test-only: name of a step where the process kills itself
DELAY_ENV = "RECONCILER_TEST_DELAY_AT"  # test-only: "STEP:SECONDS", a pause before that step (fleet races)
PAUSE_ENV = "RECONCILER_TEST_PAUSE_AT"  # test-only: name of a step where the apply waits (once) ...
PAUSE_FILE_ENV = "RECONCILER_TEST_PAUSE_FILE"  # ... until this file, which it creates, reads "go"


class Step(StrEnum):
    """The steps of an apply, in order."""

    PREPARE = "prepare"
    BUILD = "build"
    JOURNAL = "journal"
    ROWS = "rows"
    SWAP = "swap"
    CHECK = "check"
    SERVICE = "service"
    HEALTH = "health"
    COMMIT = "commit"
    FINISH = "finish"


class ApplyFailed(ReconcilerError):
    """A step failed; everything was rolled back (``rolled_back``) or could not be (see message).

    ``cause`` is what broke the step; ``reconciler.outcome`` decides from it whose fault it was.
    """

    def __init__(
        self, step: Step, message: str, *, rolled_back: bool = True, cause: BaseException | None = None
    ) -> None:
        super().__init__(f"{step.value}: {message}")
        self.step = step
        self.detail = message
        self.rolled_back = rolled_back
        self.cause = cause


class InjectedFault(Exception):
    """Raised by the test-only fault hook."""


def _fault(step: Step, index: int = 0) -> None:
    """Test-only hooks: fail (exception) or crash (SIGKILL, as a power loss) at a named step."""
    names = (step.value, f"{step.value}:{index}")
    delay = os.environ.get(DELAY_ENV, "")
    if delay and index == 0 and delay.rpartition(":")[0] == step.value:
        time.sleep(float(delay.rpartition(":")[2]))
    wanted = os.environ.get(FAULT_ENV)
    if wanted and wanted in names:
        raise InjectedFault(f"injected fault at {wanted}")
    crash = os.environ.get(CRASH_ENV)
    if crash and crash in names:
        os.kill(os.getpid(), signal.SIGKILL)
    pause, pause_file = os.environ.get(PAUSE_ENV), os.environ.get(PAUSE_FILE_ENV)
    if pause and pause_file and pause in names:
        _pause(Path(pause_file))


def _pause(marker: Path) -> None:
    """Test-only: wait at a step while a fault campaign kills something; once per marker file."""
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # paused before: later applies run through
    os.write(fd, f"paused {os.getpid()}\n".encode())
    os.close(fd)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not marker.read_text().startswith("go"):
        time.sleep(0.02)


@dataclass(frozen=True)
class ApplyResult:
    """What an apply did (in-memory result)."""

    changed: bool
    files: int = 0
    tables: int = 0
    rows: int = 0
    service: str = "none"
    warnings: tuple[str, ...] = ()
    duration: float = 0.0


@dataclass
class _Op:
    """One rename-able item of the journal: a live path, its new temp and its backup."""

    live: str
    new: str | None  # None: the live file is deleted
    backup: str | None  # None: the live file did not exist
    done: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"live": self.live, "new": self.new, "backup": self.backup}


@dataclass
class _Journal:
    apply_id: str
    revision: str | None
    config_dir: str
    phase: str
    ops: list[_Op] = field(default_factory=list)
    postfix_running: bool = False
    inventory: dict[str, Any] = field(default_factory=dict)  # the Inventory to write once committed

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "apply_id": self.apply_id,
                "revision": self.revision,
                "config_dir": self.config_dir,
                "phase": self.phase,
                "postfix_running": self.postfix_running,
                "inventory": self.inventory,
                "ops": [o.to_json() for o in self.ops],
            },
            indent=1,
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> _Journal:
        d = json.loads(data)
        ops = [_Op(o["live"], o["new"], o["backup"]) for o in d["ops"]]
        return cls(d["apply_id"], d["revision"], d["config_dir"], d["phase"], ops, d["postfix_running"], d["inventory"])


@contextlib.contextmanager
def host_lock(state: StateDir, timeout: float | None = None) -> Iterator[None]:
    """One apply at a time per host: an exclusive flock on the state dir's lock file.

    A second command waits for the first (``[state]`` lock, up to ``timeout`` seconds, default
    ``RECONCILER_LOCK_TIMEOUT`` or 600), saying once who holds it; then it gives up with a
    ``TemporaryError`` (``reconciler apply`` exits 2). The holder's pid and command are written
    into the lock file for that message.
    """
    if timeout is None:
        timeout = float(os.environ.get(LOCK_TIMEOUT_ENV, "600"))
    state.ensure()
    fd = os.open(state.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + timeout
    try:
        warned = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _lock_holder(state.lock_path)
                if time.monotonic() > deadline:
                    raise TemporaryError(
                        f"another reconcile holds the host lock {state.lock_path} ({holder}); "
                        f"gave up after {timeout:.0f} s"
                    ) from None
                if not warned:
                    log.warning("lock.waiting", lock=str(state.lock_path), holder=holder, timeout=timeout)
                    warned = True
                time.sleep(0.05)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} {' '.join(sys.argv[1:])[:200]}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def _lock_holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        text = ""
    return text or "unknown process"


def _chgrp(path: Path, group: str, mode: int) -> None:
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        gid = 0
    os.chown(path, 0 if os.geteuid() == 0 else -1, gid if os.geteuid() == 0 else -1)
    os.chmod(path, mode)


def _write_new(path: Path, content: bytes, mode: int, group: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError as exc:  # a full disk: say which file (os.write does not)
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    finally:
        os.close(fd)
    _chgrp(path, group, mode)
    backdate(path)


def _link_backup(live: Path) -> str | None:
    if not live.exists():
        return None
    backup = beside(live, BAK)
    with contextlib.suppress(FileNotFoundError):
        backup.unlink()
    os.link(live, backup)
    return str(backup)


# Errors of a row transaction that lost against another writer of the same rows: a certification
# failure or deadlock (1213), a lock wait timeout (1205), a duplicate key (1062), a failed commit (1180).
CONFLICT_CODES = frozenset({1213, 1205, 1062, 1180})
# The connection is gone (server died, killed, shut down): the outcome of a commit is unknown.
LOST_CODES = frozenset({2006, 2013, 2014, 2055, 1053, 1927, 2003})


def conflict(exc: BaseException) -> bool:
    """Whether ``exc`` says another transaction won the rows (retry or settle, never a bad revision)."""
    return isinstance(exc, pymysql.err.MySQLError) and bool(exc.args) and exc.args[0] in CONFLICT_CODES


def lost(exc: BaseException) -> bool:
    """Whether ``exc`` says the database connection is gone."""
    if isinstance(exc, pymysql.err.InterfaceError):
        return True
    return isinstance(exc, pymysql.err.OperationalError) and bool(exc.args) and exc.args[0] in LOST_CODES


class Applier:
    """Executes one Plan against the live host; see the module docstring for the steps.

    ``host`` and ``wave`` name this host's ``reconciler_hosts`` row; ``reconnect`` opens a new
    database connection (the next node of ``[mysql].host``) when the one in use is lost at commit.
    """

    def __init__(
        self,
        config_dir: Path,
        state: StateDir,
        conn: Any,
        health_timeout: float = 10.0,
        *,
        host: str = "",
        wave: int = 0,
        reconnect: Callable[[], Any] | None = None,
        rows_newer: Callable[[str], bool] | None = None,
    ) -> None:
        self.config_dir = config_dir
        self.state = state
        self.conn = conn
        self.health_timeout = health_timeout
        self.host = host
        self.wave = wave
        self.reconnect = reconnect
        # Whether a revision is newer than the plan's: the rows another host committed at a newer
        # revision are never written back to this plan's (a host that planned just before a push).
        self.rows_newer = rows_newer
        self.rows_written = True  # False when another host had written this plan's rows

    def apply(self, plan: Plan, *, postfix_running: bool) -> ApplyResult:
        started = time.monotonic()
        inventory = Inventory(
            plan.revision, plan.managed_files, tuple((t.name, t.type, t.builder) for t in plan.managed_tables)
        )
        journal = _Journal(
            uuid.uuid4().hex, plan.revision, str(self.config_dir), "prepare", [], postfix_running, inventory.to_json()
        )
        step = Step.PREPARE
        warnings: list[str] = []
        txn_open = False
        try:
            step = Step.PREPARE
            _fault(step)
            self._prepare(plan, journal)
            step = Step.BUILD
            _fault(step)
            self._build(plan, journal)
            step = Step.JOURNAL
            _fault(step)
            journal.phase = "prepared"
            atomic_write(self.state.journal_path, journal.to_json())
            step = Step.ROWS
            txn_open = True
            self._rows(plan, journal.apply_id)
            _fault(step)
            step = Step.SWAP
            journal.phase = "swapping"
            atomic_write(self.state.journal_path, journal.to_json())
            self._swap(journal)
            step = Step.CHECK
            _fault(step)
            if plan.files or plan.tables:
                warnings += self._postfix_check()
            step = Step.SERVICE
            _fault(step)
            if postfix_running and plan.service.action is not Action.NONE:
                self._service(plan.service.action)
            step = Step.HEALTH
            _fault(step)
            if postfix_running and plan.service.action is not Action.NONE:
                health = check_health(self.config_dir, self.health_timeout)
                if not health.ok:
                    raise ApplyFailed(step, health.detail)
            step = Step.COMMIT
            _fault(step)
            self._commit(plan, journal.apply_id)
        except Exception as exc:
            detail = exc.detail if isinstance(exc, ApplyFailed) else _describe(exc)
            log.warning("apply.rollback", step=step.value, error=detail)
            rolled = self._rollback(journal, step, txn_open, postfix_running)
            cause = exc.cause if isinstance(exc, ApplyFailed) else exc
            raise ApplyFailed(step, detail, rolled_back=rolled, cause=cause) from None
        # Past the commit point: only clean-up remains, and recovery would redo it.
        _fault(Step.COMMIT, 1)  # test-only: a crash right after the commit point must roll forward
        self._release_lock()
        self._finish(plan, journal)
        return ApplyResult(
            changed=True,
            files=len(plan.files),
            tables=len(plan.tables),
            rows=len(plan.rows) if self.rows_written else 0,
            service=plan.service.action.value if postfix_running else "none",
            warnings=tuple(warnings),
            duration=time.monotonic() - started,
        )

    # -- steps -----------------------------------------------------------------------------------

    def _prepare(self, plan: Plan, journal: _Journal) -> None:
        for change in plan.files:
            live = live_path(self.config_dir, change.name)
            if change.action is Action.DELETE:
                journal.ops.append(_Op(str(live), None, _link_backup(live)))
                continue
            if not change.name.startswith("/") and "/" in change.name:
                # A subdirectory of the config dir (postfix/sql/...); left in place on a rollback.
                live.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            new = beside(live, NEW)
            assert change.content is not None  # noqa: S101 - create/update always carry content
            _write_new(new, change.content, change.mode, change.group)
            journal.ops.append(_Op(str(live), str(new), _link_backup(live)))
        for table_change in plan.tables:
            if table_change.action is Action.DELETE:
                for suffix in table_change.table.built_suffixes:
                    live = Path(f"{live_path(self.config_dir, table_change.table.name)}{suffix}")
                    if live.exists():
                        journal.ops.append(_Op(str(live), None, _link_backup(live)))

    def _build(self, plan: Plan, journal: _Journal) -> None:
        files = {c.name: c for c in plan.files}
        if not any(c.action is Action.REBUILD for c in plan.tables):
            return
        with build_config(self.config_dir, files.get("main.cf")) as build_dir:
            self._build_tables(plan, journal, files, build_dir)

    def _build_tables(self, plan: Plan, journal: _Journal, files: Mapping[str, FileChange], build_dir: Path) -> None:
        for change in plan.tables:
            if change.action is not Action.REBUILD:
                continue
            table = change.table
            source_change = files.get(table.name)
            live_source = live_path(self.config_dir, table.name)
            tmp_source = beside(live_source, NEW)
            mode, group = 0o644, "root"
            if source_change is None:
                # Stale or missing built table: rebuild from the live source, beside the live table.
                content = live_source.read_bytes()
                st = live_source.stat()
                mode, group = st.st_mode & 0o777, _group_of(st.st_gid)
                tmp_source = beside(live_source, ".reconciler-src")
                _write_new(tmp_source, content, mode, group)
            else:
                mode, group = source_change.mode, source_change.group
            prebuilt = built_files(self.state.path / "parsed", table.build_key, table.name, table.built_suffixes)
            if prebuilt is not None and _copy_built(prebuilt, tmp_source, table.built_suffixes):
                log.info("table.reused", table=table.name)  # the staged check's build of the same bytes
            else:
                res = (postalias if table.builder == "postalias" else postmap)(build_dir, f"{table.type}:{tmp_source}")
                diags = [d.text for d in res.diagnostics]
                if res.returncode != 0 or diags:
                    raise ApplyFailed(Step.BUILD, f"{table.builder} {table.name}: " + "; ".join(diags or ["failed"]))
            for suffix in table.built_suffixes:
                built = Path(f"{tmp_source}{suffix}")
                _chgrp(built, group, mode)
                live = Path(f"{live_source}{suffix}")
                journal.ops.append(_Op(str(live), str(built), _link_backup(live)))
            if source_change is None:
                tmp_source.unlink()

    def _rows(self, plan: Plan, apply_id: str) -> None:
        """The row transaction (left open); settled as "written by another host" on a conflict."""
        try:
            self._write_rows(plan, apply_id)
        except pymysql.err.MySQLError as exc:
            if not conflict(exc):
                raise
            self._settle(plan, apply_id, exc)

    def _commit(self, plan: Plan, apply_id: str) -> None:
        """The commit point; a conflict or a lost connection is settled rather than rolled back blindly."""
        try:
            self.conn.commit()
            return
        except pymysql.err.MySQLError as exc:
            if conflict(exc):
                self._settle(plan, apply_id, exc)
            elif lost(exc) and self.reconnect is not None:
                with contextlib.suppress(Exception):
                    self.conn.close()
                self.conn = self.reconnect()
                if applied_apply_id(self.conn, self.host) == apply_id:
                    log.warning("apply.commit_confirmed", after="lost connection")
                    return
                self._settle(plan, apply_id, exc)
            else:
                raise
        self.conn.commit()

    def _settle(self, plan: Plan, apply_id: str, exc: BaseException) -> None:
        """After losing the rows to another writer: go on without row changes if they are as planned.

        Leaves a transaction open that records only this host's row; raises a temporary failure
        when the rows are not what the plan makes them (retried with a fresh plan).
        """
        with contextlib.suppress(Exception):
            self.conn.rollback()
        with contextlib.suppress(Exception), self.conn.cursor() as cur:
            cur.execute("SET @reconciler_digest_off = NULL")
        # Without row changes the conflict was on this host's own row (a report through another
        # node): recording it again is all there is to do.
        if plan.rows and not self._rows_as_planned(plan):
            why = f"row transaction lost to another writer ({exc.args[-1]}); retried"
            raise ApplyFailed(Step.ROWS, why, cause=TemporaryError(why))
        event = "apply.rows_written_by_another_host" if plan.rows else "apply.host_row_conflict"
        log.info(event, error=str(exc.args[-1]))
        self.rows_written = False
        self.conn.begin()
        with self.conn.cursor() as cur:
            record_applied(cur, self.host, self.wave, plan.revision or "", apply_id)

    def _rows_as_planned(self, plan: Plan) -> bool:
        """Whether every domain the plan touches holds exactly the rows the plan would leave (causal read)."""
        with self.conn.cursor() as cur:
            causal(cur)
        digests = {name.casefold(): d for name, d in domain_digests(self.conn, full_scan=True).items()}
        self.conn.rollback()  # end the read's snapshot
        wanted = {name.casefold(): d for name, d in plan.row_digests.items()}
        touched = {c.domain.casefold() for c in plan.rows}
        return all(digests.get(name) == wanted.get(name) for name in touched)

    def _write_rows(self, plan: Plan, apply_id: str) -> None:
        changes = plan.rows
        # A bulk change recomputes the per-domain digests once at the end (one scan) instead of
        # letting the triggers upsert them row by row; both happen inside this transaction.
        bulk = len(changes) >= BULK_ROWS
        with self.conn.cursor() as cur:
            cur.execute("SELECT GET_LOCK(%s, %s)", (LOCK_NAME_PREFIX + "rows", 30))
            got = cur.fetchone()
            if not got or got[0] != 1:
                raise TemporaryError("another host holds the reconciler's MySQL lock")
            if changes:
                causal(cur)
            self.conn.begin()
            if changes and self.rows_newer is not None:
                cur.execute("SELECT value FROM reconciler_state WHERE name = %s FOR UPDATE", ("applied_revision",))
                marker = cur.fetchone()
                at = str(marker[0]) if marker else ""
                if at and at != plan.revision and self.rows_newer(at):
                    why = f"the rows are at {at[:12]}, newer than this revision: another host applied it; retried"
                    raise ApplyFailed(Step.ROWS, why, cause=TemporaryError(why))
            if bulk:
                cur.execute("SET @reconciler_digest_off = 1")
            domain_ids: dict[str, int] = {}

            def domain_id(name: str) -> int:
                if name not in domain_ids:
                    cur.execute("SELECT id FROM virtual_domains WHERE name = %s", (name,))
                    row = cur.fetchone()
                    if row is None:
                        raise ApplyFailed(Step.ROWS, f"domain {name} vanished during the apply")
                    domain_ids[name] = int(row[0])
                return domain_ids[name]

            for c in changes:
                if c.table == "virtual_domains" and c.action is Action.CREATE:
                    cur.execute("INSERT INTO virtual_domains (name) VALUES (%s)", (c.key,))
                elif c.table == "virtual_domains" and c.action is Action.UPDATE:
                    cur.execute("UPDATE virtual_domains SET name = %s WHERE name = %s", (c.key, _v(c.before, "name")))
            user_inserts: list[tuple[int, str, str]] = []
            alias_inserts: list[tuple[int, str, str]] = []
            for c in changes:
                if c.action is Action.CREATE and c.after is not None and c.table != "virtual_domains":
                    # The bulk of a large plan: one tuple per new row, no statement yet.
                    after, ident = c.after, domain_id(c.domain)
                    if c.table == "virtual_users":
                        user_inserts.append((ident, after["email"], after["password"]))
                    else:
                        alias_inserts.append((ident, after["source"], after["destination"]))
                elif c.table == "virtual_users":
                    if c.action is Action.DELETE:
                        cur.execute("DELETE FROM virtual_users WHERE email = %s", (_v(c.before, "email"),))
                    elif c.action is Action.UPDATE:
                        cur.execute(
                            "UPDATE virtual_users SET email = %s, password = %s, domain_id = %s WHERE email = %s",
                            (_v(c.after, "email"), _v(c.after, "password"), domain_id(c.domain), _v(c.before, "email")),
                        )
                    else:
                        user_inserts.append((domain_id(c.domain), _v(c.after, "email"), _v(c.after, "password")))
                elif c.table == "virtual_aliases":
                    if c.action is Action.DELETE:
                        cur.execute(
                            "DELETE FROM virtual_aliases WHERE source = %s AND destination = %s",
                            (_v(c.before, "source"), _v(c.before, "destination")),
                        )
                    elif c.action is Action.UPDATE:
                        cur.execute(
                            "UPDATE virtual_aliases SET source = %s, destination = %s "
                            "WHERE source = %s AND destination = %s",
                            (
                                _v(c.after, "source"),
                                _v(c.after, "destination"),
                                _v(c.before, "source"),
                                _v(c.before, "destination"),
                            ),
                        )
                    else:
                        alias_inserts.append((domain_id(c.domain), _v(c.after, "source"), _v(c.after, "destination")))
            for start in range(0, len(user_inserts), 5000):
                cur.executemany(
                    "INSERT INTO virtual_users (domain_id, email, password) VALUES (%s, %s, %s)",
                    user_inserts[start : start + 5000],
                )
            for start in range(0, len(alias_inserts), 5000):
                cur.executemany(
                    "INSERT INTO virtual_aliases (domain_id, source, destination) VALUES (%s, %s, %s)",
                    alias_inserts[start : start + 5000],
                )
            for c in changes:
                if c.table == "virtual_domains" and c.action is Action.DELETE:
                    cur.execute("DELETE FROM virtual_domains WHERE name = %s", (_v(c.before, "name"),))
            if bulk:
                _store_digests(cur, plan, domain_id)
                cur.execute("SET @reconciler_digest_off = NULL")
            if changes:
                # The revision the shared rows are at; only a host that writes rows writes it, so
                # hosts that apply files only never conflict with each other.
                cur.execute(
                    "INSERT INTO reconciler_state (name, value) VALUES (%s, %s) "
                    "ON DUPLICATE KEY UPDATE value = VALUES(value)",
                    ("applied_revision", plan.revision or ""),
                )
            record_applied(cur, self.host, self.wave, plan.revision or "", apply_id)

    def _swap(self, journal: _Journal) -> None:
        for index, op in enumerate(journal.ops):
            _fault(Step.SWAP, index)
            if op.new is not None:
                os.replace(op.new, op.live)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(op.live)
            op.done = True
        fsync_dir(self.config_dir)

    def _postfix_check(self) -> list[str]:
        res = postfix_cmd(self.config_dir, "check", timeout=120)
        diags = res.diagnostics
        fatal = [d.text for d in diags if d.level in ("fatal", "panic", "error")]
        if res.returncode != 0 or fatal:
            raise ApplyFailed(Step.CHECK, "; ".join(fatal or [f"postfix check exited {res.returncode}"]))
        return [d.text for d in diags if d.level == "warning"]

    def _service(self, action: Action) -> None:
        if action is Action.RESTART:
            res = restart_postfix(self.config_dir)
        else:
            res = postfix_cmd(self.config_dir, "reload", timeout=60)
        if res.returncode != 0:
            detail = "; ".join(d.text for d in res.diagnostics) or f"exit {res.returncode}"
            cause: BaseException | None = None
            if postfix_cmd(self.config_dir, "status", timeout=30).returncode != 0:
                # The master died under us (killed, OOM): not the revision's fault, worth a retry.
                cause = TemporaryError("the Postfix master is not running")
                detail += " (the Postfix master is not running)"
            raise ApplyFailed(Step.SERVICE, f"postfix {action.value}: {detail}", cause=cause)

    def _release_lock(self) -> None:
        with contextlib.suppress(Exception), self.conn.cursor() as cur:
            cur.execute("SELECT RELEASE_LOCK(%s)", (LOCK_NAME_PREFIX + "rows",))

    def _finish(self, plan: Plan, journal: _Journal) -> None:
        journal.phase = "committed"
        atomic_write(self.state.journal_path, journal.to_json())
        _fault(Step.FINISH)
        finish_committed(journal)
        self.state.write_inventory(Inventory.from_json(journal.inventory))
        self.state.journal_path.unlink()
        fsync_dir(self.state.path)

    def _rollback(self, journal: _Journal, step: Step, txn_open: bool, postfix_running: bool) -> bool:
        if txn_open:
            with contextlib.suppress(Exception):
                self.conn.rollback()
            with contextlib.suppress(Exception), self.conn.cursor() as cur:
                cur.execute("SET @reconciler_digest_off = NULL")
            self._release_lock()
        undo_files(journal)
        ok = True
        if postfix_running and step in (Step.SWAP, Step.CHECK, Step.SERVICE, Step.HEALTH, Step.COMMIT):
            # A failed health check may have left the master throttling a service for 60 s, which a
            # reload does not clear: stop and start instead.
            restart = step in (Step.HEALTH, Step.SERVICE)
            ok = restore_service(self.config_dir, restart=restart, timeout=self.health_timeout)
        with contextlib.suppress(FileNotFoundError):
            self.state.journal_path.unlink()
        return ok


def repair_digests(conn: Any) -> None:
    """Rebuild ``reconciler_digest`` from every row and commit: the agent's own bookkeeping.

    Called by ``engine.apply`` when the observer found the stored digests stale, before the plan's
    row writes (whose triggers then update exact digests); never by a dry run.
    """
    with conn.cursor() as cur:
        rebuild_digests(cur)
    conn.commit()
    log.warning("digests.rebuilt", reason="reconciler_digest disagreed with the rows")


def _store_digests(cur: Any, plan: Plan, domain_id: Callable[[str], int]) -> None:
    """After a bulk write (triggers idle): the touched domains' digests, as the plan knows them.

    Once the plan ran, every domain it touched holds exactly the desired rows, whose digests
    the desired side computed while parsing; untouched domains kept theirs. Rows of deleted
    domains went by cascade, so their digest rows go too. The periodic full scan re-checks
    all of it against the rows (``observed.domain_digests``).
    """
    cur.execute("DELETE FROM reconciler_digest WHERE domain_id NOT IN (SELECT id FROM virtual_domains)")
    values = [(domain_id(name), *digest) for name, digest in sorted(plan.row_digests.items())]
    for start in range(0, len(values), 5000):
        cur.executemany(
            "INSERT INTO reconciler_digest (domain_id, users_n, users_x, aliases_n, aliases_x) "
            "VALUES (%s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE users_n = VALUES(users_n), "
            "users_x = VALUES(users_x), aliases_n = VALUES(aliases_n), aliases_x = VALUES(aliases_x)",
            values[start : start + 5000],
        )


@contextlib.contextmanager
def build_config(config_dir: Path, main_cf: FileChange | None) -> Iterator[Path]:
    """A private directory holding the main.cf the tables are built against: the new one.

    ``postmap -c DIR`` reads DIR/main.cf. The live one may not exist yet (a first apply onto
    Debian's "No configuration" install) or may be about to change, so tables are built against
    the main.cf of the plan (else the live one, else an empty one), in a 0700 directory inside
    the config dir (main.cf may hold a secret), removed afterwards.
    """
    build_dir = config_dir / f".build{BUILD_DIR}"
    shutil.rmtree(build_dir, ignore_errors=True)
    build_dir.mkdir(mode=0o700)
    try:
        if main_cf is not None and main_cf.content is not None:
            content = main_cf.content
        else:
            try:
                content = (config_dir / "main.cf").read_bytes()
            except FileNotFoundError:
                content = b""
        _write_new(build_dir / "main.cf", content, 0o600, "root")
        yield build_dir
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)


def _copy_built(prebuilt: list[Path], tmp_source: Path, suffixes: tuple[str, ...]) -> bool:
    """Copy the staged check's built files beside the new source; False (and nothing left) if one is gone."""
    targets = [Path(f"{tmp_source}{suffix}") for suffix in suffixes]
    try:
        for path, target in zip(prebuilt, targets, strict=True):
            shutil.copyfile(path, target)
    except OSError:
        for target in targets:
            target.unlink(missing_ok=True)
        return False
    return True


def _describe(exc: BaseException) -> str:
    """An error's text for the status: an OSError with its path, a database error with its message."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror + (f": {exc.filename}" if exc.filename else "")
    if isinstance(exc, pymysql.err.MySQLError) and exc.args:
        return f"database: {exc.args[-1]}"
    return str(exc)


def _v(values: Mapping[str, str] | None, key: str) -> str:
    if values is None:
        raise ValueError(f"row change without {key}")
    return values[key]


def _group_of(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return "root"


def undo_files(journal: _Journal) -> None:
    """Put every live path back as it was: backups renamed back, created files removed, temps gone."""
    for op in reversed(journal.ops):
        if op.backup is not None and os.path.exists(op.backup):
            os.replace(op.backup, op.live)
        elif op.backup is None and op.new is not None and _swapped(op):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(op.live)
        if op.new is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(op.new)
    cleanup_temps(Path(journal.config_dir))
    fsync_dir(Path(journal.config_dir))


def _swapped(op: _Op) -> bool:
    # A created file was swapped in when its temp no longer exists but the live path does.
    return op.done or (op.new is not None and not os.path.exists(op.new) and os.path.exists(op.live))


def finish_committed(journal: _Journal) -> None:
    """Complete a committed apply: any rename not yet done is done, backups removed."""
    for op in journal.ops:
        if op.new is not None and os.path.exists(op.new):
            os.replace(op.new, op.live)
        elif op.new is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(op.live)
        if op.backup is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(op.backup)
    cleanup_temps(Path(journal.config_dir))
    fsync_dir(Path(journal.config_dir))


def cleanup_temps(config_dir: Path, outside_paths: tuple[str, ...] = ()) -> None:
    """Remove leftovers of an apply that never reached its journal.

    In the config dir and its subdirectories, and beside each allowed outside table (only its own
    ``.NAME*.reconciler-*`` siblings: nothing else of /etc is looked at).
    """
    leftovers = list(config_dir.rglob(".*.reconciler-*"))
    for outside in outside_paths:
        path = Path(outside)
        if path.parent.is_dir():
            leftovers += path.parent.glob(f".{path.name}*.reconciler-*")
    for path in leftovers:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def restart_postfix(config_dir: Path) -> ToolResult:
    """Stop and start Postfix; under systemd, the system instance through systemctl.

    A ``postfix start`` run by the agent's service would put the new master into the agent's
    cgroup and sandbox (ProtectSystem, PrivateTmp); ``systemctl restart postfix`` keeps it in its own.
    """
    systemctl = shutil.which("systemctl")
    if os.environ.get("INVOCATION_ID") and systemctl and config_dir.resolve() == Path("/etc/postfix"):
        return run_tool([systemctl, "restart", "postfix.service"], timeout=120)
    postfix_cmd(config_dir, "stop", timeout=60)
    return postfix_cmd(config_dir, "start", timeout=60)


def restore_service(config_dir: Path, *, restart: bool, timeout: float) -> bool:
    """Bring Postfix back on the (restored) old configuration and confirm it is healthy."""
    if restart:
        restart_postfix(config_dir)
    else:
        postfix_cmd(config_dir, "reload", timeout=60)
    health = check_health(config_dir, timeout)
    if not health.ok:
        log.error("apply.rollback_unhealthy", detail=health.detail)
    return health.ok


def _recover_unreadable(state: StateDir, config_dir: Path, exc: Exception, health_timeout: float) -> str:
    """Recovery without a readable journal (torn by a power loss, or edited): put back what can be.

    Every backup beside a live file (``.NAME.reconciler-bak``) is renamed back and temporaries are
    removed, so every file an apply replaced or deleted is old again; the rows are whatever the
    database committed. Files the lost apply created stay. The inventory's revision is forgotten,
    so that the next apply plans from the live state alone and converges to its revision.
    """
    log.warning("apply.journal_unreadable", path=str(state.journal_path), error=str(exc).splitlines()[0])
    restored = 0
    if config_dir.is_dir():
        for backup in sorted(config_dir.rglob(f".*{BAK}")):  # subdirectories too
            live = backup.with_name(backup.name[1 : -len(BAK)])
            os.replace(backup, live)
            restored += 1
        cleanup_temps(config_dir)
        fsync_dir(config_dir)
    inventory = state.read_inventory()
    state.write_inventory(Inventory(None, inventory.files, inventory.tables))
    if restored and postfix_cmd(config_dir, "status", timeout=30).returncode == 0:
        restore_service(config_dir, restart=False, timeout=health_timeout)
    os.replace(state.journal_path, state.journal_path.with_name(f"{state.journal_path.name}.corrupt"))
    fsync_dir(state.path)
    log.info("apply.recovered", outcome="restored backups", restored=restored, revision=None)
    return "restored backups"


def recover(
    state: StateDir,
    conn: Any,
    config_dir: Path,
    health_timeout: float = 10.0,
    outside_paths: tuple[str, ...] = (),
    host: str = "",
) -> str | None:
    """Finish or undo an interrupted apply; returns what was done, None when there was nothing.

    Call with the host lock held. The apply committed iff its id reached this host's
    ``reconciler_hosts`` row (or, for a journal of an older version, ``reconciler_state``).
    Without a journal, leftovers of an apply killed before it wrote one are removed.
    """
    try:
        journal = _Journal.from_json(state.journal_path.read_bytes())
    except FileNotFoundError:
        if config_dir.is_dir():
            cleanup_temps(config_dir, outside_paths)
        return None
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        return _recover_unreadable(state, config_dir, exc, health_timeout)
    config_dir = Path(journal.config_dir)
    committed = journal.phase == "committed"
    if not committed and journal.phase == "swapping":
        committed = applied_apply_id(conn, host) == journal.apply_id
        if not committed:
            with conn.cursor() as cur:
                cur.execute("SELECT value FROM reconciler_state WHERE name = %s", ("last_apply_id",))
                row = cur.fetchone()
            committed = row is not None and row[0] == journal.apply_id
        conn.commit()
    if committed:
        finish_committed(journal)
        state.write_inventory(Inventory.from_json(journal.inventory))
        outcome = "finished"
    else:
        undo_files(journal)
        outcome = "undone"
    if journal.postfix_running:
        # Killed between "postfix stop" and "start" of a restart, Postfix is down: start it.
        running = postfix_cmd(config_dir, "status", timeout=30).returncode == 0
        if running:
            restore_service(config_dir, restart=False, timeout=health_timeout)
        else:
            postfix_cmd(config_dir, "start", timeout=60)
            check_health(config_dir, health_timeout)
    state.journal_path.unlink()
    fsync_dir(state.path)
    log.warning("apply.recovered", outcome=outcome, revision=journal.revision)
    return outcome
