"""The observed stage: read-only facts about the live host.

Reads the managed files of the config directory (content, mode, group), which built tables are
missing or older than their source, the rows of the three tables and whether Postfix runs. Rows
are compared per domain by digests computed in SQL first, so unchanged domains cost one row of
a GROUP BY; full rows are streamed (server-side cursor) only for domains that differ. Called by
``diff``/``apply`` (through the CLI) and the agent; never writes anything.
"""

from __future__ import annotations

import grp
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pymysql.cursors
import structlog

from reconciler.db import DIGEST_JOINS, Connection
from reconciler.desired.types import Desired
from reconciler.plan import LiveFile, Observed
from reconciler.postfix import live_path, postfix_cmd
from reconciler.rows import DomainRows
from reconciler.state import Inventory
from reconciler.tables import TableDecl
from reconciler.vocab import Digest

log = structlog.get_logger("reconciler.observed")

_DIGEST_SQL = f"""
SELECT d.name, COALESCE(u.n, 0), COALESCE(u.x, 0), COALESCE(a.n, 0), COALESCE(a.x, 0)
FROM virtual_domains d {DIGEST_JOINS}
"""  # noqa: S608 - a constant: no value is formatted into it
_STORED_DIGEST_SQL = """
SELECT d.name, COALESCE(g.users_n, 0), COALESCE(g.users_x, 0), COALESCE(g.aliases_n, 0), COALESCE(g.aliases_x, 0)
FROM virtual_domains d LEFT JOIN reconciler_digest g ON g.domain_id = d.id
"""
_TRIGGER_COUNT_SQL = (
    "SELECT COUNT(*) FROM information_schema.TRIGGERS "
    "WHERE TRIGGER_SCHEMA = DATABASE() AND TRIGGER_NAME LIKE 'reconciler\\_%%'"
)
DIGEST_TRIGGERS = 7


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def read_live_file(path: Path) -> LiveFile | None:
    """A live file's content, mode and group, or None when it does not exist."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    return LiveFile(path.read_bytes(), st.st_mode & 0o7777, _group_name(st.st_gid))


def built_paths(config_dir: Path, table: TableDecl) -> list[Path]:
    """The files postmap/postalias make for a table."""
    source = live_path(config_dir, table.name)
    return [source.with_name(f"{source.name}{suffix}") for suffix in table.built_suffixes]


def stale_tables(config_dir: Path, tables: tuple[TableDecl, ...]) -> frozenset[str]:
    """Tables whose built file is missing or older than the source file."""
    stale: set[str] = set()
    for table in tables:
        try:
            source = live_path(config_dir, table.name).stat().st_mtime_ns
        except FileNotFoundError:
            stale.add(table.name)
            continue
        for built in built_paths(config_dir, table):
            try:
                if built.stat().st_mtime_ns < source:
                    stale.add(table.name)
            except FileNotFoundError:
                stale.add(table.name)
    return frozenset(stale)


def postfix_running(config_dir: Path) -> bool:
    """``postfix -c DIR status`` exits 0 only while the master runs."""
    return postfix_cmd(config_dir, "status", timeout=30).returncode == 0


Digests = dict[str, Digest]


def _digests(cur: Any, sql: str) -> Digests:
    cur.execute(sql)
    return {str(r[0]): (int(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in cur.fetchall()}


def read_digests(conn: Connection, *, full_scan: bool = False) -> tuple[Digests, bool]:
    """Per-domain (user count, digest, alias count, digest) of the live rows, and whether the stored ones are stale.

    With the triggers of schemas/mysql.sql in place, read from ``reconciler_digest`` (one row a
    domain), after checking its counts against the tables: a write that fires no trigger
    (TRUNCATE, a load with triggers off) falls back to hashing every row, as ``full_scan`` does
    (the agent's periodic row check). A stored table found wrong is reported stale, never repaired
    here: this is the observer, and a dry run writes nothing; ``apply`` and ``init-db`` repair it.
    """
    with conn.cursor() as cur:
        cur.execute(_TRIGGER_COUNT_SQL)
        row = cur.fetchone()
        triggers = row is not None and int(row[0]) == DIGEST_TRIGGERS
        if triggers and not full_scan:
            stored = _digests(cur, _STORED_DIGEST_SQL)
            cur.execute("SELECT (SELECT COUNT(*) FROM virtual_users), (SELECT COUNT(*) FROM virtual_aliases)")
            counts = cur.fetchone()
            if counts is not None and (
                int(counts[0]) == sum(d[0] for d in stored.values())
                and int(counts[1]) == sum(d[2] for d in stored.values())
            ):
                return stored, False
        scanned = _digests(cur, _DIGEST_SQL)
        stale = triggers and scanned != _digests(cur, _STORED_DIGEST_SQL)
        if stale:
            log.warning("digests.stale", reason="reconciler_digest disagrees with the rows")
        return scanned, stale


def domain_digests(conn: Connection, *, full_scan: bool = False) -> Digests:
    """The per-domain digests of the live rows (``read_digests`` without the staleness flag)."""
    return read_digests(conn, full_scan=full_scan)[0]


def read_domain_rows(conn: Connection, names: list[str]) -> dict[str, DomainRows]:
    """Full rows of the named domains, streamed with a server-side cursor."""
    out: dict[str, tuple[dict[str, tuple[str, str]], dict[tuple[str, str], tuple[str, str]]]] = {
        n: ({}, {}) for n in names
    }
    if not names:
        return {}
    for start in range(0, len(names), 500):
        chunk = names[start : start + 500]
        marks = ", ".join(["%s"] * len(chunk))  # placeholders only; values are bound by the driver
        with conn.cursor(pymysql.cursors.SSCursor) as cur:
            cur.execute(
                "SELECT d.name, u.email, u.password FROM virtual_users u "  # noqa: S608 - placeholders only
                f"JOIN virtual_domains d ON d.id = u.domain_id WHERE d.name IN ({marks})",
                chunk,
            )
            for name, email, password in cur:
                out[name][0][email.casefold()] = (email, password)
        with conn.cursor(pymysql.cursors.SSCursor) as cur:
            cur.execute(
                "SELECT d.name, a.source, a.destination FROM virtual_aliases a "  # noqa: S608 - placeholders only
                f"JOIN virtual_domains d ON d.id = a.domain_id WHERE d.name IN ({marks})",
                chunk,
            )
            for name, source, destination in cur:
                out[name][1][(source.casefold(), destination.casefold())] = (source, destination)
    return {n: DomainRows(u, a) for n, (u, a) in out.items()}


def observe(
    config_dir: Path,
    desired: Desired,
    inventory: Inventory,
    conn: Connection,
    secrets: Mapping[str, bytes],
    *,
    full_scan: bool = False,
) -> Observed:
    """Everything ``plan`` needs of the live host; reads only."""
    names = set(desired.files) | set(inventory.files)
    files = {}
    for name in names:
        live = read_live_file(live_path(config_dir, name))
        if live is not None:
            files[name] = live
    digests, stale_digests = read_digests(conn, full_scan=full_scan)
    # A domain is unchanged only when spelled exactly alike: a case-only difference is a rename.
    unchanged = frozenset(n for n, rows in desired.domains.items() if digests.get(n) == rows.digest())
    differing = sorted(set(digests) - unchanged)
    return Observed(
        files=files,
        managed_files=frozenset(inventory.files),
        managed_tables=inventory.tables,
        stale_tables=stale_tables(config_dir, desired.tables),
        domains=read_domain_rows(conn, differing),
        unchanged_domains=unchanged,
        postfix_running=postfix_running(config_dir),
        secrets=secrets,
        row_count=len(digests) + sum(d[0] + d[2] for d in digests.values()),
        stale_digests=stale_digests,
    )
