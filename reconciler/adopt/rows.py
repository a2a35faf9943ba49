"""Reading the three mail tables for an import, in one consistent snapshot, as text rows.

Called by ``reconciler.adopt.domains`` (which checks the rows and writes the domain files) and by
tests that compare the readers. With the ``mariadb`` client on PATH, the rows come through it in
batch mode; else through PyMySQL. Either way they are strings, as the client prints them: ids are
only named in messages and matched as keys. ``read_lines`` is the fast path's reader: the client's
lines as they are, without row ids, each chunk checked while the client is still sending the next.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pymysql.cursors

from reconciler.db import MAIL_TABLES, Connection, connect, missing_mail_tables, read_password
from reconciler.errors import ReconcilerError, TemporaryError
from reconciler.models import AgentConfig
from reconciler.vocab import MASK

_DOMAINS_SQL = "SELECT id, name FROM virtual_domains"
_USERS_SQL = "SELECT id, domain_id, email, password FROM virtual_users"
_ALIASES_SQL = "SELECT id, domain_id, source, destination FROM virtual_aliases"
# The fast path's: one column per row, printed raw (no row ids: a row with a problem is named by the
# row-by-row path, which reads again). The client then has one field a row to pass on, unescaped;
# a value holding a tab or a newline would change the lines, which the checks or the row counts
# (FOUND_ROWS() after each table) catch.
# The tab is CHAR(9 ...), not '\t': the server may run with NO_BACKSLASH_ESCAPES.
_DOMAIN_LINES_SQL = "SELECT CONCAT(id, CHAR(9 USING utf8mb4), name) FROM virtual_domains"
# How many mailboxes each domain has (the domain_id index, about a fifth of reading the rows): a
# domain whose last mailbox has arrived can be written while the rest are still coming.
_USER_COUNTS_SQL = "SELECT CONCAT(domain_id, CHAR(9 USING utf8mb4), COUNT(*)) FROM virtual_users GROUP BY domain_id"
_USER_LINES_SQL = (
    "SELECT CONCAT(domain_id, CHAR(9 USING utf8mb4), email, CHAR(9 USING utf8mb4), password) FROM virtual_users"
)
_ALIAS_LINES_SQL = (
    "SELECT CONCAT(domain_id, CHAR(9 USING utf8mb4), source, CHAR(9 USING utf8mb4), destination) FROM virtual_aliases"
)
# Whether virtual_users has a unique key on email alone (the guide's and ours): then no address can
# be there twice, and the fast path need not look for one.
_UNIQUE_EMAIL_SQL = (
    "SELECT COUNT(*) FROM (SELECT INDEX_NAME FROM information_schema.STATISTICS "
    "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'virtual_users' AND NON_UNIQUE = 0 "
    "GROUP BY INDEX_NAME HAVING COUNT(*) = 1 AND MAX(COLUMN_NAME) = 'email' AND MAX(SUB_PART) IS NULL) AS u"
)
_MARK = "--reconciler-import-next-table--"
# The mark after each section, with the row count of the section just sent.
_MARK_SQL = "SELECT CONCAT('--reconciler-import-next-table--', CHAR(9 USING utf8mb4), FOUND_ROWS())"
# The sections in the order sent: three small ones read whole, then the aliases, then the users (so
# that a domain is complete with its last mailbox).
_SECTIONS = (_UNIQUE_EMAIL_SQL, _DOMAIN_LINES_SQL, _USER_COUNTS_SQL, _ALIAS_LINES_SQL, _USER_LINES_SQL)
_HEAD, _ALIASES, _USERS = 3, 3, 4  # sections before the lines; the aliases' and users' section numbers
_CHUNK = 1 << 20
_UNESCAPE = {"t": "\t", "n": "\n", "0": "\0", "\\": "\\", "r": "\r", "b": "\b", "Z": "\x1a"}
_ESCAPED = re.compile(r"\\(.)")
# Rows as text: (id, name) of the domains, (id, domain_id, email, password) of the users and
# (id, domain_id, source, destination) of the aliases.
Tables = tuple[list[tuple[str, str]], list[tuple[str, str, str, str]], list[tuple[str, str, str, str]]]


class LineSink(Protocol):
    """What the fast path's reader hands the client's output to (``reconciler.adopt.bulk.Collector``)."""

    def head(self, emails_unique: bool, domains: list[tuple[str, str]], user_counts: dict[str, int]) -> bool:
        """The small sections: whether emails are kept unique, (id, name) of the domains, mailboxes by domain id.

        False when the fast path cannot take them.
        """

    def aliases(self, chunk: str, lines: list[str]) -> bool:
        """A chunk of whole alias lines (each ending with a newline), as text and split.

        False when the fast path cannot take it.
        """

    def users(self, chunk: str, lines: list[str]) -> bool:
        """A chunk of whole mailbox lines, as ``aliases``."""


def client_program(cfg: AgentConfig) -> str | None:
    """The ``mariadb`` (or ``mysql``) client to read the tables with, None to read with PyMySQL."""
    client = shutil.which("mariadb") or shutil.which("mysql")
    return client if client is not None and isinstance(cfg.mysql.host, str) else None


def require_tables(cfg: AgentConfig) -> None:
    """Stop an import (exit 2, one line) when the database lacks a mail table, before anything is read.

    Without it the mariadb client's multi-line error (the failing statement echoed between dashes)
    would be the message.
    """
    conn = connect(cfg.mysql)
    try:
        missing = missing_mail_tables(conn)
    finally:
        conn.close()
    if missing:
        raise ReconcilerError(
            f"database {cfg.mysql.database} has no table {', '.join(missing)} (or {cfg.mysql.user} cannot see it); "
            f"an import reads {', '.join(MAIL_TABLES)} (SPEC section 2): nothing was written"
        )


def read_tables(cfg: AgentConfig) -> Tables:
    """The three mail tables, read in one consistent snapshot.

    With the ``mariadb`` client on PATH (Debian's mariadb-client), through it in batch mode: its C
    row parsing reads a million rows about ten times faster than PyMySQL's. Else with PyMySQL.
    """
    client = client_program(cfg)
    if client is not None:
        return read_tables_client(cfg, client)
    return read_tables_pymysql(cfg)


def read_tables_pymysql(cfg: AgentConfig) -> Tables:
    """``read_tables`` through PyMySQL (a server-side cursor per table, one snapshot)."""
    conn = connect(cfg.mysql)
    try:
        with conn.cursor() as cur:
            cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            cur.execute(_DOMAINS_SQL)
            domains = [(str(i), str(n)) for i, n in cur.fetchall()]
        users, aliases = list(_stream(conn, _USERS_SQL)), list(_stream(conn, _ALIASES_SQL))
        conn.rollback()
    finally:
        conn.close()
    return domains, users, aliases


def _stream(conn: Connection, sql: str) -> Iterator[tuple[str, str, str, str]]:
    with conn.cursor(pymysql.cursors.SSCursor) as cur:
        cur.execute(sql)
        for ident, domain_id, a, b in cur:
            yield str(ident), str(domain_id), str(a), "NULL" if b is None else str(b)


def read_lines(cfg: AgentConfig, client: str, sink: LineSink) -> bool:
    """The tables as lines through ``client``, handed to ``sink`` as they arrive (each chunk of aliases and users).

    False (the client stopped) as soon as the sink refuses something or the output is not as
    expected (a line count that is not the section's row count included): the caller then reads
    again row by row. A client that fails is a ``TemporaryError``, as in ``read_tables``.
    """
    script = "".join(f"{sql}; {_MARK_SQL}; " for sql in _SECTIONS)
    script = (
        "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ; START TRANSACTION WITH CONSISTENT SNAPSHOT; "
        f"{script}COMMIT;"
    )
    with tempfile.TemporaryDirectory(prefix="reconciler-import-") as tmp:
        argv = [client, f"--defaults-file={_defaults_file(cfg, Path(tmp))}", "--batch", "--skip-column-names"]
        with (Path(tmp) / "stderr").open("w+b") as err:
            proc = subprocess.Popen(
                [*argv, "--quick", "--raw", cfg.mysql.database],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
            )
            taken = False
            try:
                stdin, stdout = proc.stdin, proc.stdout
                if stdin is None or stdout is None:  # cannot happen: both are pipes
                    raise ReconcilerError("the mariadb client started without its pipes")
                stdin.write(script.encode())
                stdin.close()
                taken = _sections(stdout.fileno(), sink)
                stdout.close()
            finally:
                if not taken:
                    proc.kill()
                proc.wait()
            err.seek(0)
            detail = err.read().decode("utf-8", "replace").strip()
    if taken and proc.returncode != 0:
        raise _client_failed(cfg, detail)
    return taken


def _sections(fd: int, sink: LineSink) -> bool:
    """Split the client's output at the marks and hand it to ``sink``: the small sections whole, then the lines.

    False when the sink refuses, or a section's line count is not the row count its mark gives (a
    value held a newline).
    """
    with contextlib.suppress(OSError):  # a larger pipe: the client keeps sending while a chunk is taken
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _CHUNK)
    head: list[str] = []  # the small sections' text, section after section
    counts: list[int] = []  # the row counts the marks give
    lines_in = [0] * len(_SECTIONS)  # lines seen in each section
    carry = b""
    while True:
        chunk = os.read(fd, _CHUNK)
        end = chunk.rfind(b"\n") + 1 if chunk else len(carry) + len(chunk)
        if chunk and not end:
            carry += chunk
            continue
        text = (carry + chunk[:end]).decode("utf-8", "replace")
        carry = chunk[end:]
        for i, piece in enumerate(text.split(f"{_MARK}\t")):
            if i:
                count, newline, piece = piece.partition("\n")
                if not newline or not count.isdigit() or len(counts) == len(_SECTIONS):
                    return False
                counts.append(int(count))
                if len(counts) == _HEAD and not _head(head, counts, sink):
                    return False
            section = len(counts)
            if section < _HEAD:
                head.append(piece)
                lines_in[section] += piece.count("\n")
                continue
            if section == len(_SECTIONS):
                if piece:
                    return False  # nothing comes after the last mark
                continue
            lines = piece.split("\n")
            lines.pop()  # after the last newline: empty (the sink wants whole lines)
            lines_in[section] += len(lines)
            if not (sink.aliases if section == _ALIASES else sink.users)(piece, lines):
                return False
        if not chunk:
            break
    return counts == lines_in


def _head(head: list[str], counts: list[int], sink: LineSink) -> bool:
    """The three small sections, parsed and handed to ``sink``; False when they are not as expected."""
    rows = [line.split("\t") for line in "".join(head).split("\n")[:-1]]
    unique, domains, user_counts = rows[:1], rows[1 : 1 + counts[1]], rows[1 + counts[1] :]
    if len(rows) != sum(counts) or len(unique) != 1 or any(len(r) != 2 for r in domains + user_counts):
        return False  # a name with a tab or a newline, say
    if not all(r[1].isdigit() for r in user_counts):
        return False
    return sink.head(unique[0] != ["0"], [(r[0], r[1]) for r in domains], {r[0]: int(r[1]) for r in user_counts})


def _client_failed(cfg: AgentConfig, detail: str) -> TemporaryError:
    """The error for a client that could not read the tables (the password masked if it echoes it)."""
    password = read_password(cfg.mysql.password_file)
    if password:
        detail = detail.replace(password, MASK)
    return TemporaryError(f"cannot read the mail tables as {cfg.mysql.user}: {detail}")


def read_tables_client(cfg: AgentConfig, client: str) -> Tables:
    """``read_tables`` through the ``mariadb`` client: tab-separated, escaped, one snapshot.

    Its credentials go in a defaults file (mode 0600, in a private temporary directory removed
    right after), never on the command line.
    """
    m = cfg.mysql
    script = (
        "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ; START TRANSACTION WITH CONSISTENT SNAPSHOT; "
        f"{_DOMAINS_SQL}; SELECT '{_MARK}'; {_USERS_SQL}; SELECT '{_MARK}'; {_ALIASES_SQL}; COMMIT;"
    )
    with tempfile.TemporaryDirectory(prefix="reconciler-import-") as tmp:
        defaults = _defaults_file(cfg, Path(tmp))
        res = subprocess.run(
            [client, f"--defaults-file={defaults}", "--batch", "--skip-column-names", "--quick", m.database],
            input=script.encode(),
            capture_output=True,
            check=False,
            timeout=3600,
        )
    if res.returncode != 0:
        raise _client_failed(cfg, res.stderr.decode("utf-8", "replace").strip())
    parts = res.stdout.decode("utf-8", "replace").split(f"{_MARK}\n")
    if len(parts) != 3:
        raise ReconcilerError("unexpected output of the mariadb client while reading the mail tables")
    domains: list[tuple[str, str]] = [(f[0], f[1]) for f in _fields(parts[0], 2)]
    users: list[tuple[str, str, str, str]] = [(f[0], f[1], f[2], f[3]) for f in _fields(parts[1], 4)]
    aliases: list[tuple[str, str, str, str]] = [(f[0], f[1], f[2], f[3]) for f in _fields(parts[2], 4)]
    return domains, users, aliases


def _defaults_file(cfg: AgentConfig, tmp: Path) -> Path:
    """The client's credentials as a defaults file (mode 0600) in the private directory ``tmp``."""
    m = cfg.mysql
    options = [
        "[client]",
        f"user={m.user}",
        f"password={read_password(m.password_file)}",
        "default-character-set=utf8mb4",
    ]
    options += [f"socket={m.unix_socket}"] if m.unix_socket else [f"host={m.host}", f"port={m.port}", "protocol=tcp"]
    defaults = tmp / "client.cnf"
    fd = os.open(defaults, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write("\n".join(options) + "\n")
    return defaults


def _fields(text: str, width: int) -> Iterator[list[str]]:
    """Rows of the client's batch output: tab-separated; tab, newline and backslash escaped."""
    for line in text.split("\n"):
        if not line:
            continue
        fields = line.split("\t")
        if "\\" in line:
            fields = [_ESCAPED.sub(lambda m: _UNESCAPE.get(m.group(1), m.group(1)), f) for f in fields]
        if len(fields) != width:
            raise ReconcilerError("unexpected row in the mariadb client's output")
        yield fields
