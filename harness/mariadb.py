"""A private MariaDB server on loopback for tests, benchmarks and the local sandbox.

Callers: ``tests/conftest.py`` (one session MariaDB), ``tests/`` and ``bench/`` helpers,
``harness.galera`` (each node is a ``MariaDB``; ``bootstrap`` makes its users) and ``harness.cli``.

``start_mariadb`` initialises a data directory with ``mariadb-install-db`` and runs ``mariadbd``
with a generated option file (``--defaults-file``: no ``/etc/mysql`` setting leaks in), then creates
the ``mailserver`` database, the agent's user ``reconciler`` and Postfix's lookup user ``mailuser``.
The port and passwords are kept in ``mariadb.json`` so that a later process can reattach.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pymysql
import pymysql.connections
import pymysql.cursors

from harness.common import (
    MAX_SOCKET_PATH,
    SandboxError,
    find_tool,
    free_port,
    pid_alive,
    run,
    tail,
    wait_until,
    write_private,
)

DATABASE: Final = "mailserver"
AGENT_USER: Final = "reconciler"
LOOKUP_USER: Final = "mailuser"
AGENT_PRIVILEGES: Final = "SELECT, INSERT, UPDATE, DELETE, CREATE, ALTER, INDEX, REFERENCES, TRIGGER"

_IDENT_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def new_password() -> str:
    """A random password for a sandbox account."""
    # Hex only: safe in option files, in URLs and in a Postfix mysql_table "password =" line.
    return secrets.token_hex(16)


@dataclass(frozen=True)
class MariaDB:
    """A private MariaDB server: its files under ``base``, loopback ``port`` (persisted as mariadb.json).

    The process itself is found through the pid file, so ``stop`` and ``start`` also work from a
    later process (``python -m harness down``).
    """

    base: Path
    port: int
    passwords: Mapping[str, str] = field(repr=False)
    database: str = DATABASE

    @property
    def datadir(self) -> Path:
        return self.base / "data"

    @property
    def socket(self) -> Path:
        return self.base / "mysqld.sock"

    @property
    def pid_file(self) -> Path:
        return self.base / "mariadbd.pid"

    @property
    def error_log(self) -> Path:
        return self.base / "error.log"

    @property
    def defaults_file(self) -> Path:
        return self.base / "my.cnf"

    @property
    def state_file(self) -> Path:
        return self.base / "mariadb.json"

    def password(self, user: str) -> str:
        """The password of ``root``, ``reconciler`` or ``mailuser``."""
        try:
            return self.passwords[user]
        except KeyError:
            raise SandboxError(f"no such sandbox MariaDB user: {user}") from None

    @property
    def root_password(self) -> str:
        return self.password("root")

    @property
    def reconciler_password(self) -> str:
        return self.password(AGENT_USER)

    @property
    def mailuser_password(self) -> str:
        return self.password(LOOKUP_USER)

    def pid(self) -> int | None:
        """The server's pid from its pid file, or None when there is none."""
        try:
            return int(self.pid_file.read_text(encoding="ascii").split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None

    def is_running(self) -> bool:
        """Whether the server process is alive (it may still be starting up)."""
        pid = self.pid()
        return pid is not None and pid_alive(pid)

    def answers(self) -> bool:
        """Whether the server sends a MySQL protocol greeting on its TCP port."""
        return _mysql_greeting(self.port)

    def start(self, timeout: float = 30.0) -> None:
        """Start ``mariadbd`` on the existing data directory and wait until it answers; no-op if up."""
        if self.is_running() and self.answers():
            return
        mariadbd = find_tool("mariadbd")
        self.pid_file.unlink(missing_ok=True)
        # posix_spawn rather than Popen: no Popen object to warn "still running" when it is
        # collected; pid_alive reaps the child. A new session: the server outlives a terminal's
        # Ctrl-C and the CLI that started it.
        pid = os.posix_spawn(
            mariadbd,
            [mariadbd, f"--defaults-file={self.defaults_file}"],
            os.environ,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, str(self.error_log), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ],
            setsid=True,
        )

        def ready() -> bool:
            if not pid_alive(pid):
                raise SandboxError(f"mariadbd exited during startup; {self.error_log}:\n{tail(self.error_log)}")
            return self.socket.exists() and self.answers()

        if not wait_until(ready, timeout):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            wait_until(lambda: not pid_alive(pid), 5.0)
            raise SandboxError(f"mariadbd did not answer within {timeout:.0f} s:\n{tail(self.error_log)}")

    def stop(self, timeout: float = 30.0) -> None:
        """Shut the server down cleanly (SIGTERM) and wait until it is gone; no-op if it is down."""
        pid = self.pid()
        if pid is None or not pid_alive(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not wait_until(lambda: not pid_alive(pid), timeout, interval=0.05):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            wait_until(lambda: not pid_alive(pid), 5.0)
            raise SandboxError(f"mariadbd (pid {pid}) ignored SIGTERM for {timeout:.0f} s; killed it")

    def kill(self) -> None:
        """Kill the server with SIGKILL, as a crash would (InnoDB recovers on the next ``start``)."""
        pid = self.pid()
        if pid is None or not pid_alive(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(pid), 10.0)

    def connection_args(self, user: str = AGENT_USER, *, unix_socket: bool = False) -> dict[str, Any]:
        """Keyword arguments for ``pymysql.connect`` as ``user`` (TCP on 127.0.0.1 unless ``unix_socket``)."""
        args: dict[str, Any] = {
            "user": user,
            "password": self.password(user),
            "database": self.database,
            "charset": "utf8mb4",
            "connect_timeout": 10,
        }
        if unix_socket:
            args["unix_socket"] = str(self.socket)
        else:
            args["host"] = "127.0.0.1"
            args["port"] = self.port
        return args

    def connect(
        self, user: str = AGENT_USER, *, autocommit: bool = True
    ) -> pymysql.connections.Connection[pymysql.cursors.Cursor]:
        """A new pymysql connection as ``user`` over TCP; the caller closes it."""
        return pymysql.connect(**self.connection_args(user), autocommit=autocommit)

    def root_connect(self) -> pymysql.connections.Connection[pymysql.cursors.Cursor]:
        """A new autocommit pymysql connection as MariaDB's root, over the unix socket."""
        return pymysql.connect(**self.connection_args("root", unix_socket=True), autocommit=True)

    def client_defaults_file(self, user: str = AGENT_USER) -> Path:
        """An option file (mode 0600) holding ``user``'s credentials for MariaDB's client tools."""
        path = self.base / f"client-{user}.cnf"
        if not path.exists():
            write_private(
                path,
                "[client]\n"
                f"user={user}\n"
                f"password={self.password(user)}\n"
                f"socket={self.socket}\n"
                "default-character-set=utf8mb4\n",
            )
        return path

    def client_argv(self, user: str = AGENT_USER, *, database: bool = True) -> list[str]:
        """Argv prefix for the ``mariadb`` client as ``user``; the password is in a 0600 file, not here.

        ``--defaults-file`` (not ``--defaults-extra-file``) so that ``~/.my.cnf`` and ``/etc/mysql``
        cannot change the user, socket or host behind the caller's back.
        """
        argv = [find_tool("mariadb"), f"--defaults-file={self.client_defaults_file(user)}"]
        if database:
            argv.append(f"--database={self.database}")
        return argv

    def save(self) -> None:
        """Record port and passwords in ``mariadb.json`` (0600) so a later process can reattach."""
        state = {"port": self.port, "database": self.database, "passwords": dict(self.passwords)}
        write_private(self.state_file, json.dumps(state, indent=2) + "\n")

    @classmethod
    def load(cls, base: Path) -> MariaDB:
        """The instance that ``start_mariadb`` created under ``base``."""
        state = json.loads((base / "mariadb.json").read_text(encoding="utf-8"))
        return cls(
            base=base.resolve(),
            port=int(state["port"]),
            passwords={str(k): str(v) for k, v in state["passwords"].items()},
            database=str(state["database"]),
        )


def _mysql_greeting(port: int) -> bool:
    """Whether something on 127.0.0.1:port sends a MySQL/MariaDB handshake packet."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            header = sock.recv(5)
    except OSError:
        return False
    # 3-byte length, sequence 0, then protocol version 10 (or 0xff for an error such as "too many").
    return len(header) == 5 and header[3] == 0 and header[4] == 10


def _mariadb_options(base: Path, port: int) -> str:
    lines = [
        "[mariadbd]",
        f"datadir={base / 'data'}",
        f"socket={base / 'mysqld.sock'}",
        f"port={port}",
        "bind-address=127.0.0.1",
        f"pid-file={base / 'mariadbd.pid'}",
        f"log-error={base / 'error.log'}",
        # Grants as an IP address, never a DNS name: no lookups and no 'root@<hostname>' warnings.
        "skip-name-resolve",
        # What Debian's /etc/mysql/mariadb.conf.d/50-server.cnf sets; the built-in default is latin1.
        "character-set-server=utf8mb4",
        "collation-server=utf8mb4_general_ci",
        # Small is fast: a 16 MiB redo log instead of 96 MiB, a small buffer pool.
        "innodb-buffer-pool-size=64M",
        "innodb-log-file-size=16M",
        "max-connections=200",
    ]
    if os.geteuid() == 0:
        # mariadbd refuses to run as root unless told so; running as 'mysql' would need every
        # parent directory (pytest's 0700 /tmp/pytest-of-root) to be searchable by that user.
        lines.append("user=root")
    return "\n".join(lines) + "\n"


def start_mariadb(base: Path, port: int | None = None, *, timeout: float = 60.0) -> MariaDB:
    """Initialise and start a private MariaDB under ``base`` with the ``mailserver`` database.

    Creates ``reconciler``@``127.0.0.1``/``localhost`` (the agent's privileges on ``mailserver.*``)
    and ``mailuser`` (SELECT only), each with a random password, and gives ``root`` one too.
    """
    base.mkdir(parents=True, exist_ok=True)
    base = base.resolve()
    if len(str(base / "mysqld.sock")) > MAX_SOCKET_PATH:
        raise SandboxError(f"{base} is too deep for a unix socket path; use a shorter directory")
    if (base / "data").exists():
        raise SandboxError(f"{base / 'data'} exists already; use MariaDB.load() to reuse it")
    db = MariaDB(
        base=base,
        port=port if port is not None else free_port(),
        passwords={"root": new_password(), AGENT_USER: new_password(), LOOKUP_USER: new_password()},
    )
    db.datadir.mkdir()
    db.defaults_file.write_text(_mariadb_options(base, db.port), encoding="utf-8")
    run(
        [
            find_tool("mariadb-install-db"),
            f"--defaults-file={db.defaults_file}",
            # Root logs in without a password first (we set one below); the 'socket' default would
            # tie root to the OS user running the client.
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--skip-name-resolve",
        ],
        timeout=timeout,
    )
    db.save()
    db.start(timeout=timeout)
    try:
        bootstrap(db)
    except Exception:
        db.stop()
        raise
    return db


def bootstrap(db: MariaDB) -> None:
    """Create the database, the two users and root's password (as root, over the unix socket)."""
    if not _IDENT_RE.match(db.database):
        raise SandboxError(f"invalid database name {db.database!r}")
    conn = pymysql.connect(unix_socket=str(db.socket), user="root", password="", charset="utf8mb4", autocommit=True)
    try:
        with conn.cursor() as cur:
            # Identifiers cannot be parameters; the name was checked against _IDENT_RE above.
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{db.database}`")
            for host in ("127.0.0.1", "localhost"):
                cur.execute("CREATE USER %s@%s IDENTIFIED BY %s", (AGENT_USER, host, db.reconciler_password))
                cur.execute(f"GRANT {AGENT_PRIVILEGES} ON `{db.database}`.* TO %s@%s", (AGENT_USER, host))
                cur.execute("CREATE USER %s@%s IDENTIFIED BY %s", (LOOKUP_USER, host, db.mailuser_password))
                cur.execute(f"GRANT SELECT ON `{db.database}`.* TO %s@%s", (LOOKUP_USER, host))
            # mariadb-install-db also makes root@<hostname>, which skip-name-resolve ignores (and
            # ALTER USER then fails on): only the loopback accounts get the password.
            cur.execute("SELECT Host FROM mysql.user WHERE User = 'root'")
            for (host,) in cur.fetchall():
                if host in ("localhost", "127.0.0.1", "::1"):
                    cur.execute("ALTER USER 'root'@%s IDENTIFIED BY %s", (host, db.root_password))
    finally:
        conn.close()
