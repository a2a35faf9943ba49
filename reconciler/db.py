"""MySQL access: connecting with the agent's configuration and creating the tables.

Low layer used by ``observed`` (reads rows), ``apply`` (one transaction) and the CLI (``init-db``).
Every statement is parameterised; no SQL is ever built from values by string formatting. The
password comes from ``[mysql].password_file`` and is never logged or put into an exception text.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pymysql
import pymysql.connections

from reconciler.errors import TemporaryError
from reconciler.models import MysqlConfig

SCHEMA_VERSION = "1"


def read_password(path: str) -> str:
    """The password in ``path`` with one trailing newline dropped ("" when no file is configured)."""
    if not path:
        return ""
    text = Path(path).read_text(encoding="utf-8")
    return text[:-1] if text.endswith("\n") else text


def connect(cfg: MysqlConfig, *, autocommit: bool = False) -> pymysql.connections.Connection[pymysql.cursors.Cursor]:
    """Open a connection; an unreachable server is a ``TemporaryError`` (retry with backoff)."""
    try:
        password = read_password(cfg.password_file)
    except OSError as exc:
        raise TemporaryError(f"cannot read [mysql].password_file {cfg.password_file}: {exc.strerror}") from None
    try:
        return pymysql.connect(
            user=cfg.user,
            password=password,
            database=cfg.database,
            host=None if cfg.unix_socket else cfg.host,
            port=cfg.port,
            unix_socket=cfg.unix_socket or None,
            charset="utf8mb4",
            autocommit=autocommit,
            connect_timeout=5,
            read_timeout=600,
            write_timeout=600,
        )
    except pymysql.err.OperationalError as exc:
        # The exception text of a failed login can echo the user but never the password.
        raise TemporaryError(f"cannot connect to MySQL as {cfg.user}: {exc.args[-1]}") from None


def schema_statements() -> list[str]:
    """The DDL of SPEC section 2, statement by statement."""
    text = resources.files("reconciler").joinpath("sql/mysql.sql").read_text(encoding="utf-8")
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return [stmt.strip() for stmt in body.split(";") if stmt.strip()]


def init_db(conn: pymysql.connections.Connection[pymysql.cursors.Cursor]) -> None:
    """Create the tables if missing and record the schema version; safe to run any number of times."""
    with conn.cursor() as cur:
        for stmt in schema_statements():
            cur.execute(stmt)
        cur.execute(
            "INSERT INTO reconciler_state (name, value) VALUES (%s, %s) ON DUPLICATE KEY UPDATE value = VALUES(value)",
            ("schema_version", SCHEMA_VERSION),
        )
    conn.commit()
