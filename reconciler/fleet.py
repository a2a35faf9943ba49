"""The fleet's shared bookkeeping (SPEC section 6): ``reconciler_hosts`` rows, the fleet document, waves.

Layer: above ``db`` and ``status``, below the stages that use it. Callers: ``apply`` records the
host's applied revision and apply id inside its row transaction (``record_applied``) and crash
recovery looks that id up (``applied_apply_id``); the agent reports its state after every change
(``report``) and asks ``wave_check`` before applying a revision; ``GET /fleet``, the status page and
``reconciler status --fleet`` all read ``read_fleet``, which returns the one fleet document.

Galera facts this module is written for: a read on one node may not yet see a commit made on
another unless the session sets ``wsrep_sync_wait`` (``causal``); ``GET_LOCK`` is per node and
never used here; each host writes only its own row, so two hosts never conflict on this table.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pymysql.err
import structlog

from reconciler.db import Connection, connect
from reconciler.models import AgentConfig
from reconciler.status import Fleet, FleetHost

log = structlog.get_logger("reconciler.fleet")

# wsrep_sync_wait bit 1: a SELECT waits until the node has applied every write the cluster
# committed before it started. Harmless (an unknown variable) on a server without Galera.
SYNC_WAIT_READS = 1
# A host has a revision "applied and healthy" when its files are at it and it is synced, or only
# reports drift it may not revert ([policy].self_heal = false).
HEALTHY_STATES = frozenset({"synced", "out_of_sync"})
_UNKNOWN_VARIABLE = 1193
_NO_SUCH_TABLE = 1146


def causal(cur: Any, value: int = SYNC_WAIT_READS) -> None:
    """Make the session's reads causal on a Galera node (a no-op on a plain MariaDB)."""
    try:
        cur.execute("SET SESSION wsrep_sync_wait = %s", (value,))
    except pymysql.err.MySQLError as exc:
        if exc.args[0] != _UNKNOWN_VARIABLE:
            raise


def record_applied(cur: Any, host: str, wave: int, revision: str, apply_id: str) -> None:
    """In the apply's transaction: this host's files are at ``revision`` (synced) once it commits.

    A ``reconciler apply`` by hand leaves the row so; a running agent reports its own state next.
    """
    cur.execute(
        "INSERT INTO reconciler_hosts (name, wave, applied_revision, last_apply_id, state, last_seen) "
        "VALUES (%s, %s, %s, %s, 'synced', UTC_TIMESTAMP(6)) ON DUPLICATE KEY UPDATE wave = VALUES(wave), "
        "applied_revision = VALUES(applied_revision), last_apply_id = VALUES(last_apply_id), "
        "state = VALUES(state), last_error = NULL, waiting_for = '', last_seen = VALUES(last_seen), "
        "failed_revision = IF(failed_revision = VALUES(applied_revision), '', failed_revision)",
        (host, wave, revision, apply_id),
    )


def applied_apply_id(conn: Connection, host: str) -> str | None:
    """The id of the last apply this host committed (None: no row, or no table before init-db)."""
    with conn.cursor() as cur:
        causal(cur)
        try:
            cur.execute("SELECT last_apply_id FROM reconciler_hosts WHERE name = %s", (host,))
        except pymysql.err.ProgrammingError as exc:
            if exc.args[0] == _NO_SUCH_TABLE:
                return None
            raise
        row = cur.fetchone()
    return str(row[0]) if row else None


@dataclass(frozen=True)
class Report:
    """What an agent tells the fleet about itself (in-memory; one ``reconciler_hosts`` row)."""

    host: str
    wave: int
    state: str
    applied_revision: str | None
    head_revision: str | None
    error: str | None = None
    failed_revision: str | None = None
    waiting_for: tuple[str, ...] = ()


def report(conn: Connection, r: Report) -> None:
    """Upsert this host's row (autocommit connection); ``last_seen`` is the database's UTC now."""
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO reconciler_hosts (name, wave, applied_revision, head_revision, state, last_seen, "
            "last_error, failed_revision, waiting_for) VALUES (%s, %s, %s, %s, %s, UTC_TIMESTAMP(6), %s, %s, %s) "
            "ON DUPLICATE KEY UPDATE wave = VALUES(wave), applied_revision = VALUES(applied_revision), "
            "head_revision = VALUES(head_revision), state = VALUES(state), last_seen = VALUES(last_seen), "
            "last_error = VALUES(last_error), failed_revision = VALUES(failed_revision), "
            "waiting_for = VALUES(waiting_for)",
            (
                r.host,
                r.wave,
                r.applied_revision or "",
                r.head_revision or "",
                r.state,
                r.error,
                r.failed_revision or "",
                ",".join(r.waiting_for),
            ),
        )


def read_hosts(conn: Connection, host_timeout: float) -> Fleet:
    """Every ``reconciler_hosts`` row, by wave then name; ``stale`` past ``host_timeout`` unseen."""
    with conn.cursor() as cur:
        causal(cur)
        try:
            cur.execute(
                "SELECT name, wave, applied_revision, state, last_seen, last_error, head_revision, failed_revision, "
                "waiting_for, TIMESTAMPDIFF(MICROSECOND, last_seen, UTC_TIMESTAMP(6)) "
                "FROM reconciler_hosts ORDER BY wave, name"
            )
        except pymysql.err.ProgrammingError as exc:
            if exc.args[0] == _NO_SUCH_TABLE:
                return Fleet(hosts=[])
            raise
        rows = cur.fetchall()
    hosts = [
        FleetHost(
            name=name,
            wave=int(wave),
            applied_revision=applied or None,
            state=state,
            last_seen=seen.replace(tzinfo=UTC) if isinstance(seen, datetime) else datetime.now(UTC),
            error=error or None,
            head_revision=head or None,
            failed_revision=failed or None,
            waiting_for=[w for w in (waiting or "").split(",") if w],
            stale=ago is not None and int(ago) / 1e6 > host_timeout,
        )
        for name, wave, applied, state, seen, error, head, failed, waiting, ago in rows
    ]
    return Fleet(hosts=hosts)


def read_fleet(cfg: AgentConfig) -> Fleet:
    """The fleet document (``GET /fleet``, the status page, ``status --fleet``), read from the database."""
    conn = connect(cfg.mysql, autocommit=True)
    try:
        return read_hosts(conn, cfg.fleet.host_timeout)
    finally:
        with contextlib.suppress(Exception):
            conn.close()


@dataclass(frozen=True)
class WaveCheck:
    """Whether this host may apply a revision now (in-memory result of ``wave_check``)."""

    waiting_for: tuple[str, ...] = ()  # lower-wave hosts that do not have the revision applied and healthy
    failed: tuple[str, ...] = ()  # those of them that failed the revision: later waves keep the previous one
    expired: tuple[str, ...] = ()  # lower-wave hosts unseen for [fleet].host_timeout: they no longer hold
    reason: str = ""

    @property
    def ready(self) -> bool:
        return not self.waiting_for


def wave_check(fleet: Fleet, me: str, revision: str, waves: Mapping[str, int]) -> WaveCheck:
    """The wave rule of SPEC 6 for host ``me`` and ``revision``, whose host files give ``waves``.

    Counted are the hosts with a host file in the revision and a row in the fleet (seen at least
    once), in a lower wave than ``me``. Each must have the revision applied and be healthy, or
    be stale (unseen for ``host_timeout``). Pure.
    """
    mine = waves.get(me)
    if mine is None:
        return WaveCheck()
    waiting: list[str] = []
    failed: list[str] = []
    expired: list[str] = []
    for h in fleet.hosts:
        wave = waves.get(h.name)
        if h.name == me or wave is None or wave >= mine:
            continue
        if h.applied_revision == revision and h.state in HEALTHY_STATES:
            continue
        if h.stale:
            expired.append(h.name)
            continue
        waiting.append(h.name)
        if h.failed_revision == revision:
            failed.append(h.name)
    parts: list[str] = []
    short = revision[:12]
    if failed:
        parts.append(f"{_names(failed)} failed revision {short}: keeping the previous revision")
    pending = [n for n in waiting if n not in failed]
    if pending:
        parts.append(f"waiting for {_names(pending)} (lower wave) to apply revision {short}")
    if expired:
        parts.append(f"{_names(expired)} not seen for [fleet].host_timeout: no longer holding this wave")
    return WaveCheck(tuple(waiting), tuple(failed), tuple(expired), "; ".join(parts))


def _names(names: Iterable[str]) -> str:
    return ", ".join(sorted(names))
