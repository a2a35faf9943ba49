"""Reading the three mail tables for an import, in one consistent snapshot, as text rows.

Called by ``reconciler.adopt.domains`` (which checks the rows and writes the domain files) and by
tests that compare the readers. With the ``mariadb`` client on PATH, the rows come through it in
batch mode; else through PyMySQL. Either way they are strings, as the client prints them: ids are
only named in messages and matched as keys. A ``LineReader`` is the fast path's reader: the
client's lines as they are, without row ids, each chunk checked while the client is still sending
the next.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pymysql.cursors

from reconciler.db import MAIL_TABLES, Connection, connect, missing_mail_tables, read_password
from reconciler.errors import ReconcilerError, TemporaryError
from reconciler.models import AgentConfig
from reconciler.vocab import MASK

_DOMAINS_SQL = "SELECT id, name FROM virtual_domains"
_USERS_SQL = "SELECT id, domain_id, email, password FROM virtual_users"
_ALIASES_SQL = "SELECT id, domain_id, source, destination FROM virtual_aliases"
# The fast path's, printed raw: no row ids (a row with a problem is named by the row-by-row path,
# which reads again) and no escaping, the fields of a row joined by tabs. A value holding a tab or a
# newline would change the lines, which the checks or the row counts (FOUND_ROWS() after each
# table) catch; a NULL prints as NULL, which no address or hash is. A domain's line is one CONCAT
# column, so that a NULL name makes it one field. Three columns cost the server less than one
# CONCAT of them (0.82-0.94 against 0.92-1.08 CPU-s for a million users).
# The tab is CHAR(9 ...), not '\t': the server may run with NO_BACKSLASH_ESCAPES.
_DOMAIN_LINES_SQL = "SELECT CONCAT(id, CHAR(9 USING utf8mb4), name) FROM virtual_domains"
_USER_LINES_SQL = "SELECT domain_id, email, password FROM virtual_users"
_ALIAS_LINES_SQL = "SELECT domain_id, source, destination FROM virtual_aliases"
# Whether virtual_users has a unique key on email alone (the guide's and ours): then no address can
# be there twice, and the fast path need not look for one.
_UNIQUE_EMAIL_SQL = (
    "SELECT COUNT(*) FROM (SELECT INDEX_NAME FROM information_schema.STATISTICS "
    "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'virtual_users' AND NON_UNIQUE = 0 "
    "GROUP BY INDEX_NAME HAVING COUNT(*) = 1 AND MAX(COLUMN_NAME) = 'email' AND MAX(SUB_PART) IS NULL) AS u"
)
_MARK = "--reconciler-import-next-table--"
# The mark after each table, with the row count of the table just sent.
_MARK_SQL = "SELECT CONCAT('--reconciler-import-next-table--', CHAR(9 USING utf8mb4), FOUND_ROWS())"
_CHUNK = 1 << 20
_UNESCAPE = {"t": "\t", "n": "\n", "0": "\0", "\\": "\\", "r": "\r", "b": "\b", "Z": "\x1a"}
_ESCAPED = re.compile(r"\\(.)")
# Rows as text: (id, name) of the domains, (id, domain_id, email, password) of the users and
# (id, domain_id, source, destination) of the aliases.
Tables = tuple[list[tuple[str, str]], list[tuple[str, str, str, str]], list[tuple[str, str, str, str]]]


@dataclass
class Lines:
    """The mail tables as the client printed them (in-memory, the fast path's input)."""

    domains: list[tuple[str, str]]  # (id, name); the users' and aliases' lines went to the callers' takers
    emails_unique: bool  # the database keeps every email unique (a unique key on it alone)


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


class LineReader:
    """The fast path's client, started and sending the tables as lines (in-memory handle, during an import).

    ``domains.start_reading`` starts it as early as the import can, so that the server and the
    client are already sending while the import collects the files; ``lines`` then takes what they
    sent.
    ``close`` stops a client whose lines were never taken (the import failed before) and removes
    its credentials.
    """

    def __init__(self, cfg: AgentConfig, client: str) -> None:
        self.cfg = cfg
        script = (
            "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ; START TRANSACTION WITH CONSISTENT SNAPSHOT; "
            f"{_DOMAIN_LINES_SQL}; {_MARK_SQL}; {_USER_LINES_SQL}; {_MARK_SQL}; {_ALIAS_LINES_SQL}; {_MARK_SQL}; "
            f"{_UNIQUE_EMAIL_SQL}; COMMIT;"
        )
        self._tmp = tempfile.TemporaryDirectory(prefix="reconciler-import-")
        try:
            tmp = Path(self._tmp.name)
            argv = [client, f"--defaults-file={_defaults_file(cfg, tmp)}", "--batch", "--skip-column-names"]
            self._err = (tmp / "stderr").open("w+b")
            self._proc = subprocess.Popen(
                [*argv, "--quick", "--raw", cfg.mysql.database],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._err,
            )
        except BaseException:
            self._tmp.cleanup()
            raise
        stdin, stdout = self._proc.stdin, self._proc.stdout
        if stdin is None or stdout is None:  # cannot happen: both are pipes
            raise ReconcilerError("the mariadb client started without its pipes")
        self._stdout = stdout
        self._arrived, self._drainer = _drain(stdout.fileno())
        self._done = False
        try:
            stdin.write(script.encode())
            stdin.close()
        except BrokenPipeError:  # the client stopped at once (a refused login): ``lines`` finds no rows
            with contextlib.suppress(BrokenPipeError):
                stdin.close()

    def lines(self, users: LineTaker, aliases: LineTaker) -> Lines | None:
        """The tables' lines, each chunk of users and aliases handed on arrival; once.

        None (the client stopped) as soon as a taker refuses a chunk or the output is not as
        expected (a line count that is not the table's row count included): the caller then reads
        again row by row. A client that fails is a ``TemporaryError``, as in ``read_tables``.
        """
        if self._done:
            raise ReconcilerError("the client's lines were already taken")
        sections = None
        try:
            sections = _sections(self._arrived, (users, aliases))
        finally:
            self._finish(kill=sections is None)
        if sections is None:
            return None
        if self._proc.returncode != 0:
            self._err.seek(0)
            raise _client_failed(self.cfg, self._err.read().decode("utf-8", "replace").strip())
        domain_fields = [line.split("\t") for line in "".join(sections[0]).split("\n")[:-1]]
        if any(len(f) != 2 for f in domain_fields):
            return None
        return Lines([(f[0], f[1]) for f in domain_fields], _count(sections[3]) > 0)

    def close(self) -> None:
        """Stop the client if its lines were not taken, and remove its credentials; safe to call twice."""
        self._finish(kill=True)
        self._err.close()
        self._tmp.cleanup()

    def _finish(self, *, kill: bool) -> None:
        if self._done:
            return
        self._done = True
        if kill:
            self._proc.kill()  # the drainer then reads the end
        self._drainer.join()
        self._stdout.close()
        self._proc.wait()


def _count(pieces: list[str]) -> int:
    """The number a section of one ``COUNT(*)`` line holds (in pieces when a chunk ended inside it); 0 if none."""
    text = "".join(pieces).strip()
    return int(text) if text.isdigit() else 0


# Takes a chunk of whole lines of one table (each ending with a newline), given as text and split
# (without the newlines): False when the fast path cannot, else it keeps them.
LineTaker = Callable[[str, list[str]], bool]


def _sections(arrived: queue.SimpleQueue[bytes], takers: tuple[LineTaker, LineTaker]) -> list[list[str]] | None:
    """The client's output split at the marks: the domains' text, [], [] (the lines went to ``takers``), the rest.

    None when a taker refuses, or a table's line count is not the row count its mark gives (a value
    held a newline).
    """
    sections: list[list[str]] = [[]]  # the domains' text, [], [], the unique count
    counts: list[int] = []  # the row counts the marks give
    taken = [0, 0]  # lines handed to each taker
    carry = b""
    while True:
        chunk = arrived.get()
        end = chunk.rfind(b"\n") + 1 if chunk else len(carry) + len(chunk)
        if chunk and not end:
            carry += chunk
            continue
        text = (carry + chunk[:end]).decode("utf-8", "replace")
        carry = chunk[end:]
        for i, piece in enumerate(text.split(f"{_MARK}\t")):
            if i:
                count, newline, piece = piece.partition("\n")
                if not newline or not count.isdigit() or len(sections) == 4:
                    return None
                counts.append(int(count))
                sections.append([])
            table = len(sections) - 1
            if table not in (1, 2):
                sections[-1].append(piece)
                continue
            lines = piece.split("\n")
            lines.pop()  # after the last newline: empty (the takers want whole lines)
            taken[table - 1] += len(lines)
            if not takers[table - 1](piece, lines):
                return None
        if not chunk:
            break
    if len(sections) != 4 or counts[1:] != taken:
        return None
    if "".join(sections[0]).count("\n") != counts[0]:
        return None
    return sections


def _drain(fd: int) -> tuple[queue.SimpleQueue[bytes], threading.Thread]:
    """The chunks read from ``fd`` by a thread as they come, then b"" (the end, or a read error); the thread.

    The client never waits for a chunk to be checked (a pipe holds 1 MiB at most): the server and
    the client keep the other core busy meanwhile. The caller joins the thread before closing ``fd``.
    """
    with contextlib.suppress(OSError):  # fewer, larger reads
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _CHUNK)
    arrived: queue.SimpleQueue[bytes] = queue.SimpleQueue()

    def drain() -> None:
        chunk = b"-"
        while chunk:
            try:
                chunk = os.read(fd, _CHUNK)
            except OSError:
                chunk = b""
            arrived.put(chunk)

    drainer = threading.Thread(target=drain, name="import-read", daemon=True)
    drainer.start()
    return arrived, drainer


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
