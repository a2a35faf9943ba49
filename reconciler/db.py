"""MySQL access: connecting with the agent's configuration and creating the tables.

Low layer used by ``observed`` (reads rows), ``apply`` (one transaction) and the CLI (``init-db``).
Every statement is parameterised; no SQL is ever built from values by string formatting. The
password comes from ``[mysql].password_file`` and is never logged or put into an exception text.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import pymysql
import pymysql.connections
import structlog

from reconciler.errors import TemporaryError
from reconciler.models import MysqlConfig

SCHEMA_VERSION = "4"
# The three mail tables of SPEC section 2, which Postfix's lookups and every import read.
MAIL_TABLES = ("virtual_domains", "virtual_users", "virtual_aliases")
# An open connection to the agent's database, as every stage that reads or writes rows takes it.
# (pymysql's class is generic only in its type stubs: subscripted for the type checker alone.)
if TYPE_CHECKING:
    Connection: TypeAlias = pymysql.connections.Connection[pymysql.cursors.Cursor]
else:
    Connection = pymysql.connections.Connection
log = structlog.get_logger("reconciler.db")


# The per-domain digests over every row; the triggers of mysql.sql keep reconciler_digest equal to it.
DIGEST_JOINS = """
LEFT JOIN (SELECT domain_id, COUNT(*) AS n,
                  BIT_XOR(CAST(CONV(LEFT(MD5(CONCAT(email, CHAR(0 USING utf8mb4), password)), 16), 16, 10)
                          AS UNSIGNED)) AS x
           FROM virtual_users GROUP BY domain_id) u ON u.domain_id = d.id
LEFT JOIN (SELECT domain_id, COUNT(*) AS n,
                  BIT_XOR(CAST(CONV(LEFT(MD5(CONCAT(source, CHAR(0 USING utf8mb4), destination)), 16), 16, 10)
                          AS UNSIGNED)) AS x
           FROM virtual_aliases GROUP BY domain_id) a ON a.domain_id = d.id
"""
_REBUILD_SQL = (
    "INSERT INTO reconciler_digest (domain_id, users_n, users_x, aliases_n, aliases_x) "
    "SELECT d.id, COALESCE(u.n, 0), COALESCE(u.x, 0), COALESCE(a.n, 0), COALESCE(a.x, 0) "
    "FROM virtual_domains d " + DIGEST_JOINS
)


def read_password(path: str) -> str:
    """The password in ``path`` with one trailing newline dropped ("" when no file is configured)."""
    if not path:
        return ""
    text = Path(path).read_text(encoding="utf-8")
    return text[:-1] if text.endswith("\n") else text


def connect(cfg: MysqlConfig, *, autocommit: bool = False) -> Connection:
    """Open a connection to the first server of ``[mysql].host`` that answers (a list is tried in order).

    An unreachable database (every server down) is a ``TemporaryError`` (retry with backoff). A
    Galera node that answers but has left the cluster's primary component is skipped too: it
    refuses every statement until it rejoins.
    """
    try:
        password = read_password(cfg.password_file)
    except OSError as exc:
        raise TemporaryError(f"cannot read [mysql].password_file {cfg.password_file}: {exc.strerror}") from None
    targets: list[tuple[str | None, int]] = [(None, cfg.port)] if cfg.unix_socket else list(cfg.endpoints())
    errors: list[str] = []
    for host, port in targets:
        try:
            conn = pymysql.connect(
                user=cfg.user,
                password=password,
                database=cfg.database,
                host=host,
                port=port,
                unix_socket=cfg.unix_socket or None,
                ssl_disabled=bool(cfg.unix_socket) or None,  # TLS on a local socket guards nothing, costs 40 ms
                charset="utf8mb4",
                autocommit=autocommit,
                connect_timeout=5,
                read_timeout=600,
                write_timeout=600,
            )
        except pymysql.err.OperationalError as exc:
            # The exception text of a failed login can echo the user but never the password.
            errors.append(f"{host or cfg.unix_socket}:{port}: {exc.args[-1]}")
            continue
        if len(targets) > 1 and not _ready(conn):
            errors.append(f"{host}:{port}: not ready (outside the cluster's primary component)")
            conn.close()
            continue
        if errors:
            log.warning("db.failover", server=f"{host}:{port}", skipped=errors)
        return conn
    raise TemporaryError(f"cannot connect to MySQL as {cfg.user}: " + "; ".join(errors))


def missing_mail_tables(conn: Connection) -> list[str]:
    """Which of ``MAIL_TABLES`` the connection's database lacks (or its user cannot see), in that order."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = DATABASE() AND table_name IN (%s, %s, %s)",
            MAIL_TABLES,
        )
        present = {str(row[0]) for row in cur.fetchall()}
    return [table for table in MAIL_TABLES if table not in present]


def server_of(conn: Connection) -> str:
    """``host:port`` of a connection (for logs and the status)."""
    return f"{getattr(conn, 'host', '?')}:{getattr(conn, 'port', '?')}"


def _ready(conn: Connection) -> bool:
    """Whether a server accepts queries: not a Galera node outside the primary component."""
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW STATUS LIKE 'wsrep_ready'")
            row = cur.fetchone()
    except pymysql.err.MySQLError:
        return False
    return row is None or str(row[1]).upper() == "ON"


def schema_statements() -> list[str]:
    """The DDL of SPEC section 2, statement by statement (``DELIMITER`` lines as the client reads them)."""
    text = resources.files("reconciler").joinpath("sql/mysql.sql").read_text(encoding="utf-8")
    statements: list[str] = []
    delimiter = ";"
    current: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.upper().startswith("DELIMITER "):
            delimiter = stripped.split(None, 1)[1]
            continue
        if not current and (not stripped or stripped.startswith("--")):
            continue
        current.append(line)
        if stripped.endswith(delimiter):
            stmt = "\n".join(current).strip()
            statements.append(stmt[: -len(delimiter)].strip())
            current = []
    return statements


def init_db(conn: pymysql.connections.Connection[pymysql.cursors.Cursor]) -> bool:
    """Create the tables (and the digest triggers) if missing; safe to run any number of times.

    Returns whether the digest triggers exist. Without the TRIGGER privilege (or with binary
    logging and no SUPER) they cannot be created: the agent then hashes every row on each check.
    """
    triggers = True
    with conn.cursor() as cur:
        for stmt in schema_statements():
            if stmt.upper().startswith("CREATE TRIGGER"):
                name = stmt.split()[2]
                try:
                    # Replace, not keep: an older definition would count rows differently.
                    cur.execute(f"DROP TRIGGER IF EXISTS {name}")
                    cur.execute(stmt)
                except pymysql.err.MySQLError as exc:
                    triggers = False
                    log.warning("init_db.no_triggers", error=str(exc.args[-1]))
                continue
            cur.execute(stmt)
        if triggers:
            rebuild_digests(cur)
        cur.execute(
            "INSERT INTO reconciler_state (name, value) VALUES (%s, %s) ON DUPLICATE KEY UPDATE value = VALUES(value)",
            ("schema_version", SCHEMA_VERSION),
        )
    conn.commit()
    return triggers


def rebuild_digests(cur: Any) -> None:
    """Recompute ``reconciler_digest`` from every row (in the caller's transaction)."""
    cur.execute("DELETE FROM reconciler_digest")
    cur.execute(_REBUILD_SQL)
