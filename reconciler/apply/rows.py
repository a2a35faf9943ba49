"""The rows of an apply: one InnoDB transaction, its typed row writer, and settling a lost race.

Called by the ``Applier``'s rows and commit steps and its rollback (``RowTransaction``), and by
``engine.apply`` (``repair_digests``). Every statement is parameterised.

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import pymysql.cursors
import pymysql.err
import structlog

from reconciler.apply.faults import BULK_ROWS
from reconciler.apply.steps import ApplyFailed, Step
from reconciler.db import Connection, rebuild_digests
from reconciler.errors import TemporaryError
from reconciler.fleet import applied_apply_id, causal, record_applied
from reconciler.observed import domain_digests
from reconciler.plan import Action, Plan, RowChange
from reconciler.vocab import Table

log = structlog.get_logger("reconciler.apply")

Cursor = pymysql.cursors.Cursor
LOCK_NAME_PREFIX = "reconciler:"
# Errors of a row transaction that lost against another writer of the same rows: a certification
# failure or deadlock (1213), a lock wait timeout (1205), a duplicate key (1062), a failed commit (1180).
CONFLICT_CODES = frozenset({1213, 1205, 1062, 1180})
# The connection is gone (server died, killed, shut down): the outcome of a commit is unknown.
LOST_CODES = frozenset({2006, 2013, 2014, 2055, 1053, 1927, 2003})
BATCH = 5000  # rows per executemany


def conflict(exc: BaseException) -> bool:
    """Whether ``exc`` says another transaction won the rows (retry or settle, never a bad revision)."""
    return isinstance(exc, pymysql.err.MySQLError) and bool(exc.args) and exc.args[0] in CONFLICT_CODES


def lost(exc: BaseException) -> bool:
    """Whether ``exc`` says the database connection is gone."""
    if isinstance(exc, pymysql.err.InterfaceError):
        return True
    return isinstance(exc, pymysql.err.OperationalError) and bool(exc.args) and exc.args[0] in LOST_CODES


def repair_digests(conn: Connection) -> None:
    """Rebuild ``reconciler_digest`` from every row and commit: the agent's own bookkeeping.

    Called by ``engine.apply`` when the observer found the stored digests stale, before the plan's
    row writes (whose triggers then update exact digests); never by a dry run.
    """
    with conn.cursor() as cur:
        rebuild_digests(cur)
    conn.commit()
    log.warning("digests.rebuilt", reason="reconciler_digest disagreed with the rows")


@dataclass(frozen=True)
class _Members:
    """A table of rows that belong to a domain: the two columns of a new row and its INSERT."""

    columns: tuple[str, str]
    insert: str


# Keyed by Table, looked up by a RowChange's table name (a Table hashes and compares as its name);
# in the order their new rows are inserted.
_MEMBERS: Mapping[str, _Members] = {
    Table.USERS: _Members(
        ("email", "password"), "INSERT INTO virtual_users (domain_id, email, password) VALUES (%s, %s, %s)"
    ),
    Table.ALIASES: _Members(
        ("source", "destination"), "INSERT INTO virtual_aliases (domain_id, source, destination) VALUES (%s, %s, %s)"
    ),
}


class RowWriter:
    """A plan's row changes written on the open transaction's cursor, in the order foreign keys need.

    Domains are created and renamed first; then their users and aliases are deleted, updated, and
    inserted in batches (the bulk of a large plan: one tuple per new row, no statement each);
    domains are deleted last (their rows go by cascade).
    """

    def __init__(self, cur: Cursor) -> None:
        self.cur = cur
        self._domain_ids: dict[str, int] = {}
        self._inserts: dict[str, list[tuple[int, str, str]]] = {table: [] for table in _MEMBERS}
        self._changes: dict[str, Callable[[RowChange], None]] = {Table.USERS: self._user, Table.ALIASES: self._alias}

    def write(self, changes: Sequence[RowChange]) -> None:
        domains, create = Table.DOMAINS, Action.CREATE
        for c in changes:
            if c.table == domains:
                self._domain(c)
        inserts, domain_id = self._inserts, self.domain_id
        for c in changes:
            if c.table == domains:
                continue
            after = c.after
            if c.action is create and after is not None:
                # The bulk of a large plan: one tuple per new row, no statement yet.
                first, second = _MEMBERS[c.table].columns
                inserts[c.table].append((domain_id(c.domain), after[first], after[second]))
            else:
                self._changes[c.table](c)
        for table, members in _MEMBERS.items():
            rows = inserts[table]
            for start in range(0, len(rows), BATCH):
                self.cur.executemany(members.insert, rows[start : start + BATCH])
        for c in changes:
            if c.table == domains and c.action is Action.DELETE:
                self.cur.execute("DELETE FROM virtual_domains WHERE name = %s", (_v(c.before, "name"),))

    def domain_id(self, name: str) -> int:
        """The id of domain ``name`` (which this transaction may just have created)."""
        if name not in self._domain_ids:
            self.cur.execute("SELECT id FROM virtual_domains WHERE name = %s", (name,))
            row = self.cur.fetchone()
            if row is None:
                raise ApplyFailed(Step.ROWS, f"domain {name} vanished during the apply")
            self._domain_ids[name] = int(row[0])
        return self._domain_ids[name]

    def _domain(self, c: RowChange) -> None:
        if c.action is Action.CREATE:
            self.cur.execute("INSERT INTO virtual_domains (name) VALUES (%s)", (c.key,))
        elif c.action is Action.UPDATE:
            self.cur.execute("UPDATE virtual_domains SET name = %s WHERE name = %s", (c.key, _v(c.before, "name")))

    def _user(self, c: RowChange) -> None:
        if c.action is Action.DELETE:
            self.cur.execute("DELETE FROM virtual_users WHERE email = %s", (_v(c.before, "email"),))
        elif c.action is Action.UPDATE:
            self.cur.execute(
                "UPDATE virtual_users SET email = %s, password = %s, domain_id = %s WHERE email = %s",
                (_v(c.after, "email"), _v(c.after, "password"), self.domain_id(c.domain), _v(c.before, "email")),
            )
        else:
            self._inserts[Table.USERS].append((self.domain_id(c.domain), _v(c.after, "email"), _v(c.after, "password")))

    def _alias(self, c: RowChange) -> None:
        if c.action is Action.DELETE:
            self.cur.execute(
                "DELETE FROM virtual_aliases WHERE source = %s AND destination = %s",
                (_v(c.before, "source"), _v(c.before, "destination")),
            )
        elif c.action is Action.UPDATE:
            self.cur.execute(
                "UPDATE virtual_aliases SET source = %s, destination = %s WHERE source = %s AND destination = %s",
                (
                    _v(c.after, "source"),
                    _v(c.after, "destination"),
                    _v(c.before, "source"),
                    _v(c.before, "destination"),
                ),
            )
        else:
            self._inserts[Table.ALIASES].append(
                (self.domain_id(c.domain), _v(c.after, "source"), _v(c.after, "destination"))
            )

    def store_digests(self, plan: Plan) -> None:
        """After a bulk write (triggers idle): the touched domains' digests, as the plan knows them.

        Once the plan ran, every domain it touched holds exactly the desired rows, whose digests
        the desired side computed while parsing; untouched domains kept theirs. Rows of deleted
        domains went by cascade, so their digest rows go too. The periodic full scan re-checks
        all of it against the rows (``observed.domain_digests``).
        """
        self.cur.execute("DELETE FROM reconciler_digest WHERE domain_id NOT IN (SELECT id FROM virtual_domains)")
        values = [(self.domain_id(name), *digest) for name, digest in sorted(plan.row_digests.items())]
        for start in range(0, len(values), BATCH):
            self.cur.executemany(
                "INSERT INTO reconciler_digest (domain_id, users_n, users_x, aliases_n, aliases_x) "
                "VALUES (%s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE users_n = VALUES(users_n), "
                "users_x = VALUES(users_x), aliases_n = VALUES(aliases_n), aliases_x = VALUES(aliases_x)",
                values[start : start + BATCH],
            )


def _v(values: Mapping[str, str] | None, key: str) -> str:
    if values is None:
        raise ValueError(f"row change without {key}")
    return values[key]


class RowTransaction:
    """This host's row transaction of one apply: opened by the rows step, committed at the commit point.

    ``host`` and ``wave`` name this host's ``reconciler_hosts`` row; ``reconnect`` opens a new
    database connection (the next node of ``[mysql].host``) when the one in use is lost at commit;
    ``bulk_rows`` is the number of row changes from which the bulk path is taken.
    """

    def __init__(
        self,
        conn: Connection,
        *,
        host: str = "",
        wave: int = 0,
        reconnect: Callable[[], Connection] | None = None,
        rows_newer: Callable[[str], bool] | None = None,
        bulk_rows: int = BULK_ROWS,
    ) -> None:
        self.conn = conn
        self.host = host
        self.wave = wave
        self.reconnect = reconnect
        # Whether a revision is newer than the plan's: the rows another host committed at a newer
        # revision are never written back to this plan's (a host that planned just before a push).
        self.rows_newer = rows_newer
        self.bulk_rows = bulk_rows
        self.rows_written = True  # False when another host had written this plan's rows

    def write(self, plan: Plan, apply_id: str) -> None:
        """The rows step: the transaction (left open); settled as "written by another host" on a conflict."""
        try:
            self._write(plan, apply_id)
        except pymysql.err.MySQLError as exc:
            if not conflict(exc):
                raise
            self._settle(plan, apply_id, exc)

    def commit(self, plan: Plan, apply_id: str) -> None:
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

    def rollback(self) -> None:
        """Undo the rows: rolled back, triggers back on, the named lock released (the node may be gone)."""
        with contextlib.suppress(Exception):
            self.conn.rollback()
        with contextlib.suppress(Exception), self.conn.cursor() as cur:
            cur.execute("SET @reconciler_digest_off = NULL")
        self.release_lock()

    def release_lock(self) -> None:
        with contextlib.suppress(Exception), self.conn.cursor() as cur:
            cur.execute("SELECT RELEASE_LOCK(%s)", (LOCK_NAME_PREFIX + "rows",))

    def _write(self, plan: Plan, apply_id: str) -> None:
        changes = plan.rows
        # A bulk change recomputes the per-domain digests once at the end (one scan) instead of
        # letting the triggers upsert them row by row; both happen inside this transaction.
        bulk = len(changes) >= self.bulk_rows
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
            writer = RowWriter(cur)
            writer.write(changes)
            if bulk:
                writer.store_digests(plan)
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
