"""Private MariaDB and Postfix instances for tests, benchmarks and the local sandbox.

Role: a dev/test helper at the top of the package; nothing in the reconcile pipeline imports it.
Callers: ``tests/conftest.py`` (a session MariaDB and a fresh Postfix instance per test), ``bench/``
and ``deploy/sandbox.sh`` (through ``python -m reconciler.sandbox up|down|status``).

Everything runs on loopback with ports picked at run time, in directories the caller owns, so that
several instances, CI and a system Postfix or MariaDB never collide:

- ``start_mariadb`` initialises a data directory with ``mariadb-install-db`` and runs ``mariadbd``
  with a generated option file (``--defaults-file``: no ``/etc/mysql`` setting leaks in), then creates
  the ``mailserver`` database, the agent's user ``reconciler`` and Postfix's lookup user ``mailuser``.
- ``create_postfix_instance`` writes a minimal ``main.cf``/``master.cf`` with its own queue and data
  directories, logging to a file through ``postlogd`` (no syslog needed); every Postfix command gets
  ``-c config_dir``. Outbound delivery is disabled: a test instance never sends mail off the host.
- ``sandboxize_postfix_tree`` edits a copy of a desired-state repository's ``postfix/`` folder so that
  it runs as such a private instance (loopback ports, private dirs, MariaDB port, no amavis).

Postfix's master must run as root, so must the callers of the Postfix half (CI and the sandbox do).
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pymysql
import pymysql.connections
import pymysql.cursors

from reconciler.errors import ToolError
from reconciler.postfix import run_tool, run_tool_tty_stderr

DATABASE: Final = "mailserver"
AGENT_USER: Final = "reconciler"
LOOKUP_USER: Final = "mailuser"
AGENT_PRIVILEGES: Final = "SELECT, INSERT, UPDATE, DELETE, CREATE, ALTER, INDEX, REFERENCES, TRIGGER"
SANDBOX_HOSTNAME: Final = "sandbox.test"
# Secret that a sandboxed mysql-*.cf reads its password from when the repository wrote it literally.
LOOKUP_PASSWORD_SECRET: Final = "sandbox-mysql-lookup-password"  # noqa: S105 - a secret's name

_SBIN_DIRS: Final = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
_IDENT_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_SECRET_RE: Final = re.compile(r"\$\{secret:([^}\s]+)\}")
# The longest unix socket path the kernel accepts (sun_path is 108 bytes with the NUL).
_MAX_SOCKET_PATH: Final = 107


class SandboxError(RuntimeError):
    """A private service could not be created, started, stopped or queried."""


# --------------------------------------------------------------------------------------------------
# small helpers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def find_tool(name: str) -> str:
    """Absolute path of a Debian tool, also looking in the sbin directories a user PATH may lack."""
    path = os.environ.get("PATH", "")
    found = shutil.which(name, path=os.pathsep.join([path, *_SBIN_DIRS]))
    if found is None:
        raise SandboxError(
            f"{name} not found: install Debian's postfix, postfix-mysql, mariadb-server and "
            "mariadb-client packages (deploy/install-deps.sh does)"
        )
    return found


def _run(
    argv: Sequence[str],
    *,
    timeout: float = 60.0,
    input_text: str | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """``reconciler.postfix.run_tool``; a failure raises ``SandboxError`` with its output."""
    try:
        res = run_tool(argv, timeout=timeout, input_text=input_text)
    except ToolError as exc:
        raise SandboxError(str(exc)) from exc
    proc = subprocess.CompletedProcess(list(res.argv), res.returncode, res.stdout, res.stderr)
    if check and proc.returncode != 0:
        output = (proc.stdout + proc.stderr).strip()
        raise SandboxError(f"{' '.join(argv)} exited with status {proc.returncode}: {output}")
    return proc


def _run_tty_stderr(argv: Sequence[str], *, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """``reconciler.postfix.run_tool_tty_stderr`` with this module's error type (see there why)."""
    try:
        res = run_tool_tty_stderr(argv, timeout=timeout)
    except ToolError as exc:
        raise SandboxError(str(exc)) from exc
    return subprocess.CompletedProcess(list(res.argv), res.returncode, res.stdout, res.stderr)


def _wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds passed; whether it held."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process; reaps it if it is our exited child.

    A zombie counts as dead: on machines whose PID 1 does not reap orphans (this workplace's does
    not), a stopped daemon that was started by an earlier process stays a zombie forever.
    """
    with contextlib.suppress(ChildProcessError):
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The state letter follows the parenthesised command name, which may itself hold spaces.
    state = stat.rpartition(")")[2].split()[0:1]
    return state != ["Z"] and state != ["X"]


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to a file readable by its owner only (created 0600, never world-readable)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def cool_down(*paths: Path) -> None:
    """Backdate the mtime of freshly written Postfix files by 10 s.

    Postfix rereads a main.cf modified within the last second or two in 0.3 s steps until it
    "cools down" (dict_load_file_xt), so every postfix/postconf call right after an edit stalls
    for up to 2 s. Nothing else in this module looks at these mtimes.
    """
    past = time.time() - 10
    for path in paths:
        if path.exists():
            os.utime(path, (past, past))


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"({path} does not exist)"


def _new_password() -> str:
    # Hex only: safe in option files, in URLs and in a Postfix mysql_table "password =" line.
    return secrets.token_hex(16)


# --------------------------------------------------------------------------------------------------
# MariaDB


@dataclass(frozen=True)
class MariaDB:
    """A private MariaDB server: its files under ``base``, loopback ``port`` (persisted as mariadb.json).

    The process itself is found through the pid file, so ``stop`` and ``start`` also work from a
    later process (``python -m reconciler.sandbox down``).
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
        return pid is not None and _pid_alive(pid)

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
        # collected; _pid_alive reaps the child. A new session: the server outlives a terminal's
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
            if not _pid_alive(pid):
                raise SandboxError(f"mariadbd exited during startup; {self.error_log}:\n{_tail(self.error_log)}")
            return self.socket.exists() and self.answers()

        if not _wait_until(ready, timeout):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_until(lambda: not _pid_alive(pid), 5.0)
            raise SandboxError(f"mariadbd did not answer within {timeout:.0f} s:\n{_tail(self.error_log)}")

    def stop(self, timeout: float = 30.0) -> None:
        """Shut the server down cleanly (SIGTERM) and wait until it is gone; no-op if it is down."""
        pid = self.pid()
        if pid is None or not _pid_alive(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not _wait_until(lambda: not _pid_alive(pid), timeout, interval=0.05):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_until(lambda: not _pid_alive(pid), 5.0)
            raise SandboxError(f"mariadbd (pid {pid}) ignored SIGTERM for {timeout:.0f} s; killed it")

    def kill(self) -> None:
        """Kill the server with SIGKILL, as a crash would (InnoDB recovers on the next ``start``)."""
        pid = self.pid()
        if pid is None or not _pid_alive(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_until(lambda: not _pid_alive(pid), 10.0)

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
            _write_private(
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
        _write_private(self.state_file, json.dumps(state, indent=2) + "\n")

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
    if len(str(base / "mysqld.sock")) > _MAX_SOCKET_PATH:
        raise SandboxError(f"{base} is too deep for a unix socket path; use a shorter directory")
    if (base / "data").exists():
        raise SandboxError(f"{base / 'data'} exists already; use MariaDB.load() to reuse it")
    db = MariaDB(
        base=base,
        port=port if port is not None else free_port(),
        passwords={"root": _new_password(), AGENT_USER: _new_password(), LOOKUP_USER: _new_password()},
    )
    db.datadir.mkdir()
    db.defaults_file.write_text(_mariadb_options(base, db.port), encoding="utf-8")
    _run(
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
        _bootstrap(db)
    except Exception:
        db.stop()
        raise
    return db


def _bootstrap(db: MariaDB) -> None:
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


# --------------------------------------------------------------------------------------------------
# Postfix

# Debian's master.cf without chroot (a private queue directory has no etc/ copies to chroot into)
# and with postlogd, which writes maillog_file. "{smtp}" is replaced by the smtpd listener.
_MASTER_CF: Final = """\
# Private Postfix instance written by reconciler.sandbox (tests and sandbox only).
# service type  private unpriv  chroot  wakeup  maxproc command + args
{smtp} inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

# Outbound mail goes to a closed loopback port and waits in the queue (deferred): a private
# instance never sends mail off this host. Not "error:", which smtpd would already apply at RCPT time.
_NOWHERE: Final = "[127.0.0.1]:9"


def sandbox_parameters(
    queue_dir: Path, data_dir: Path, *, maillog: Path, syslog_name: str, mail_spool: Path | None = None
) -> dict[str, str]:
    """The main.cf settings that make any configuration a private, loopback-only instance."""
    return {
        "queue_directory": str(queue_dir),
        "data_directory": str(data_dir),
        "inet_interfaces": "127.0.0.1",
        "inet_protocols": "ipv4",
        "maillog_file": str(maillog),
        # Postfix refuses a maillog_file outside these prefixes (default "/var, /dev/stdout").
        "maillog_file_prefixes": str(maillog.parent),
        "syslog_name": syslog_name,
        "mail_spool_directory": str(mail_spool or maillog.parent / "mail"),
        "default_transport": f"smtp:{_NOWHERE}",
        "relay_transport": f"relay:{_NOWHERE}",
    }


def write_minimal_config(
    config_dir: Path,
    queue_dir: Path,
    data_dir: Path,
    port: int,
    *,
    maillog: Path,
    syslog_name: str,
    myhostname: str = SANDBOX_HOSTNAME,
    extra: Mapping[str, str] | None = None,
) -> None:
    """Write a minimal main.cf and master.cf: smtpd on 127.0.0.1:``port``, mail for localhost only.

    Local mail lands in ``mail/`` beside the maillog; other mail stays deferred in the queue.

    ``mynetworks`` is 127.0.0.1/32 only, so a client connecting from 127.0.0.2 is an untrusted
    stranger (relaying is refused) while 127.0.0.1 is trusted. ``extra`` adds or overrides main.cf
    parameters.
    """
    params = {
        "compatibility_level": "3.6",
        **sandbox_parameters(queue_dir, data_dir, maillog=maillog, syslog_name=syslog_name),
        "myhostname": myhostname,
        "mydomain": myhostname.partition(".")[2] or myhostname,
        "myorigin": "$myhostname",
        "mydestination": "localhost",
        "mynetworks": "127.0.0.1/32",
        # Debian's default "hash:/etc/aliases, nis:mail.aliases" logs an error per lookup here.
        "alias_maps": "",
        "alias_database": "",
        "biff": "no",
        "smtpd_banner": "$myhostname ESMTP",
        **(extra or {}),
    }
    config_dir.mkdir(parents=True, exist_ok=True)
    main_cf = "# Private Postfix instance written by reconciler.sandbox (tests and sandbox only).\n"
    main_cf += "".join(f"{name} = {value}\n" for name, value in params.items())
    (config_dir / "main.cf").write_text(main_cf, encoding="utf-8")
    (config_dir / "master.cf").write_text(_MASTER_CF.format(smtp=f"127.0.0.1:{port}"), encoding="utf-8")
    cool_down(config_dir / "main.cf", config_dir / "master.cf")


@dataclass(frozen=True)
class PostfixInstance:
    """A private Postfix instance: its own config, queue and data directories and a loopback port.

    Every command runs as ``postfix -c config_dir``; ``postfix status`` decides whether it runs.
    """

    base: Path
    config_dir: Path
    queue_dir: Path
    data_dir: Path
    smtp_port: int
    maillog: Path
    syslog_name: str

    def postfix(self, *args: str, timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``postfix -c config_dir ARGS``; its diagnostics are in the result's stderr (see _run_tty_stderr)."""
        argv = [find_tool("postfix"), "-c", str(self.config_dir), *args]
        proc = _run_tty_stderr(argv, timeout=timeout)
        if check and proc.returncode != 0:
            output = (proc.stdout + proc.stderr).strip()
            raise SandboxError(f"{' '.join(argv)} exited with status {proc.returncode}: {output}")
        return proc

    def postconf(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``postconf -c config_dir ARGS`` and return its standard output.

        After an edit (``-e``, ``-X``, ``-M``...) the files are cooled down (see ``cool_down``) so
        that the next Postfix command does not stall.
        """
        out = _run([find_tool("postconf"), "-c", str(self.config_dir), *args], timeout=timeout).stdout
        cool_down(self.config_dir / "main.cf", self.config_dir / "master.cf")
        return out

    def postmap(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``postmap -c config_dir ARGS`` and return its standard output."""
        return _run([find_tool("postmap"), "-c", str(self.config_dir), *args], timeout=timeout).stdout

    def check(self) -> None:
        """``postfix check``: raises when Postfix finds the configuration or the directories broken."""
        self.postfix("check")

    def is_running(self) -> bool:
        """Whether the master process runs (``postfix status`` exits 0)."""
        return self.postfix("status", check=False).returncode == 0

    def start(self) -> None:
        """``postfix start``; returns once the master has bound its listeners. No-op when running."""
        if self.is_running():
            return
        proc = self.postfix("start", check=False)
        if proc.returncode != 0:
            raise SandboxError(
                f"postfix -c {self.config_dir} start failed ({proc.returncode}): "
                f"{(proc.stdout + proc.stderr).strip()}\n{self.maillog}:\n{_tail(self.maillog)}"
            )

    def stop(self, timeout: float = 30.0) -> None:
        """``postfix stop`` and wait until the listener is closed; no-op when not running."""
        if self.is_running():
            self.postfix("stop", check=False)
        if not _wait_until(lambda: not self.is_running(), timeout, interval=0.1):
            self.postfix("abort", check=False)
            raise SandboxError(f"Postfix in {self.config_dir} did not stop within {timeout:.0f} s")
        _wait_until(lambda: not _port_open(self.smtp_port), 5.0)

    def reload(self) -> None:
        """``postfix reload``: the running master rereads main.cf and master.cf."""
        self.postfix("reload")

    def smtp_probe(self, timeout: float = 10.0) -> bytes:
        """Connect to the SMTP port and return the whole 220 greeting (all lines), then QUIT."""
        with socket.create_connection(("127.0.0.1", self.smtp_port), timeout=timeout) as sock:
            banner = b""
            deadline = time.monotonic() + timeout
            while not _reply_complete(banner):
                if time.monotonic() > deadline:
                    raise SandboxError(f"incomplete SMTP greeting after {timeout:.0f} s: {banner!r}")
                chunk = sock.recv(4096)
                if not chunk:
                    break
                banner += chunk
            with contextlib.suppress(OSError):
                sock.sendall(b"QUIT\r\n")
                sock.recv(4096)
        return banner

    def rcpt_to(
        self,
        mail_from: str,
        rcpt: str,
        *,
        client_address: str = "127.0.0.1",
        helo: str = "client.sandbox.test",
        timeout: float = 30.0,
    ) -> tuple[int, str]:
        """The SMTP server's answer to ``RCPT TO:<rcpt>`` (EHLO, MAIL FROM, RCPT TO, RSET, QUIT).

        ``client_address`` is the loopback source address to connect from: 127.0.0.1 is in the
        minimal config's ``mynetworks``, 127.0.0.2 is not and so sees what a stranger sees. When
        MAIL FROM is refused, that answer is returned instead.
        """
        with smtplib.SMTP(timeout=timeout, source_address=(client_address, 0)) as smtp:
            smtp.connect("127.0.0.1", self.smtp_port)
            smtp.ehlo(helo)
            code, text = smtp.mail(mail_from)
            if code < 400:
                code, text = smtp.rcpt(rcpt)
            smtp.rset()
            return code, text.decode("utf-8", errors="replace")

    def maillog_text(self) -> str:
        """Everything this instance logged so far ("" before its first log line)."""
        try:
            return self.maillog.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def save(self) -> None:
        """Record the instance in ``postfix.json`` under ``base`` so a later process can reattach."""
        state = {
            "config_dir": str(self.config_dir),
            "queue_dir": str(self.queue_dir),
            "data_dir": str(self.data_dir),
            "smtp_port": self.smtp_port,
            "maillog": str(self.maillog),
            "syslog_name": self.syslog_name,
        }
        (self.base / "postfix.json").write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, base: Path) -> PostfixInstance:
        """The instance that ``create_postfix_instance`` created under ``base``."""
        state = json.loads((base / "postfix.json").read_text(encoding="utf-8"))
        return cls(
            base=base.resolve(),
            config_dir=Path(state["config_dir"]),
            queue_dir=Path(state["queue_dir"]),
            data_dir=Path(state["data_dir"]),
            smtp_port=int(state["smtp_port"]),
            maillog=Path(state["maillog"]),
            syslog_name=str(state["syslog_name"]),
        )


def _reply_complete(data: bytes) -> bool:
    """Whether ``data`` holds a complete SMTP reply (its last line is "NNN text", not "NNN-text")."""
    if not data.endswith(b"\n"):
        return False
    last = data.rstrip(b"\r\n").rsplit(b"\n", 1)[-1]
    return len(last) >= 3 and last[:3].isdigit() and (len(last) == 3 or last[3:4] == b" ")


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def create_postfix_instance(
    base: Path, smtp_port: int | None = None, *, extra: Mapping[str, str] | None = None
) -> PostfixInstance:
    """Create (not start) a private Postfix instance under ``base`` with a minimal configuration.

    Layout: ``etc/`` (config_directory), ``spool/`` (queue_directory), ``data/`` (data_directory,
    owned by ``postfix`` as Postfix requires) and the log file ``maillog``.
    """
    if os.geteuid() != 0:
        raise SandboxError("a Postfix instance needs root: its master process runs as root")
    base.mkdir(parents=True, exist_ok=True)
    base = base.resolve()
    port = smtp_port if smtp_port is not None else free_port()
    instance = PostfixInstance(
        base=base,
        config_dir=base / "etc",
        queue_dir=base / "spool",
        data_dir=base / "data",
        smtp_port=port,
        maillog=base / "maillog",
        syslog_name=f"postfix-sandbox-{port}",
    )
    # Postfix commands reach postlogd at the absolute $queue_directory/public/postlog; past the
    # kernel's 108-byte socket path limit every command exits 1 without a word (it cannot log).
    if len(str(instance.queue_dir / "public" / "postlog")) > _MAX_SOCKET_PATH - 10:
        raise SandboxError(f"{base} is too long for Postfix's socket paths; use a shorter directory")
    # The master opens data_directory/master.lock as the postfix user, and other daemons open
    # files by absolute path, so every directory above base must be searchable by that user.
    base.chmod(0o755)
    _check_reachable_by_postfix(base)
    instance.queue_dir.mkdir(mode=0o755, exist_ok=True)
    instance.data_dir.mkdir(mode=0o700, exist_ok=True)
    mail_spool = base / "mail"
    mail_spool.mkdir(exist_ok=True)
    mail_spool.chmod(0o1777)  # local(8) creates each mailbox file as its recipient
    _chown_to_postfix(instance.data_dir)
    write_minimal_config(
        instance.config_dir,
        instance.queue_dir,
        instance.data_dir,
        port,
        maillog=instance.maillog,
        syslog_name=instance.syslog_name,
        extra=extra,
    )
    instance.save()
    # "postfix check" creates the queue's subdirectories with the owners and modes Postfix wants.
    instance.check()
    return instance


def _check_reachable_by_postfix(path: Path) -> None:
    """Raise unless the ``postfix`` user may search every directory from / down to ``path``."""
    try:
        user = pwd.getpwnam("postfix")
    except KeyError:
        raise SandboxError("no 'postfix' user: install Debian's postfix package") from None
    groups = {user.pw_gid} | {g.gr_gid for g in grp.getgrall() if "postfix" in g.gr_mem}
    for directory in [*reversed(path.parents), path]:
        st = directory.stat()
        if st.st_uid == user.pw_uid:
            ok = bool(st.st_mode & 0o100)
        elif st.st_gid in groups:
            ok = bool(st.st_mode & 0o010)
        else:
            ok = bool(st.st_mode & 0o001)
        if not ok:
            raise SandboxError(
                f"the postfix user cannot enter {directory} (mode {st.st_mode & 0o7777:o}): put the "
                "Postfix instance under a world-searchable directory (pytest's tmp_path is not)"
            )


def _chown_to_postfix(path: Path) -> None:
    try:
        uid = pwd.getpwnam("postfix").pw_uid
        gid = grp.getgrnam("postfix").gr_gid
    except KeyError:
        raise SandboxError("no 'postfix' user: install Debian's postfix package") from None
    os.chown(path, uid, gid)


# --------------------------------------------------------------------------------------------------
# Turning a desired-state repository's postfix/ folder into a private instance


@dataclass(frozen=True)
class SandboxedTree:
    """What ``sandboxize_postfix_tree`` changed (in-memory result).

    ``ports`` maps each inet service of master.cf (by its original name) to its loopback port;
    ``lookup_secrets`` are the secret names the mysql-*.cf files read their password from;
    ``other_secrets`` every other ``${secret:NAME}`` the tree refers to; ``notes`` says what was
    removed or rewritten, one line each.
    """

    ports: Mapping[str, int]
    lookup_secrets: tuple[str, ...]
    other_secrets: tuple[str, ...]
    notes: tuple[str, ...]


# main.cf parameters that would reach a service this sandbox does not have.
_DROP_PARAMS: Final = (
    "content_filter",  # amavis
    "smtpd_proxy_filter",  # before-queue amavis
    "smtpd_milters",
    "non_smtpd_milters",
    "smtp_bind_address",
    "smtp_bind_address6",
    "proxy_interfaces",  # a host name there is resolved at startup
    # Routes off this host: outbound mail must stay on the loopback nexthop of default_transport.
    "relayhost",
    "sender_dependent_relayhost_maps",
    "sender_dependent_default_transport_maps",
    "smtp_fallback_relay",
)
_SNAKEOIL_PARAMS: Final = ("smtpd_tls_cert_file", "smtpd_tls_key_file")
_DROP_TLS_PARAMS: Final = (
    "smtpd_tls_chain_files",
    "smtpd_tls_eccert_file",
    "smtpd_tls_eckey_file",
    "smtpd_tls_dcert_file",
    "smtpd_tls_dkey_file",
)
_TLS_FILE_RE: Final = re.compile(r"_tls_\w*(?:_file|_files|CAfile|CApath)\Z")
# Postscreen's deep protocol tests make every first connection fail with 450 by design; the
# sandbox turns them off (and shortens the greet wait) so that one SMTP session answers.
_POSTSCREEN_SANDBOX: Final = {
    "postscreen_dnsbl_sites": "",
    "postscreen_pipelining_enable": "no",
    "postscreen_non_smtp_command_enable": "no",
    "postscreen_bare_newline_enable": "no",
    "postscreen_greet_wait": "1s",
}


def _parse_postconf(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(" = ")
        if sep:
            out[name.strip()] = value.strip()
        elif line.endswith(" ="):
            out[line[:-2].strip()] = ""
    return out


def snakeoil_certificate(directory: Path, hostname: str = SANDBOX_HOSTNAME) -> tuple[Path, Path]:
    """A self-signed certificate and its key in ``directory`` (made once with openssl, then reused)."""
    cert, key = directory / "snakeoil.crt", directory / "snakeoil.key"
    if cert.exists() and key.exists():
        return cert, key
    directory.mkdir(parents=True, exist_ok=True)
    _run(
        [
            find_tool("openssl"),
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "3650",
            "-subj",
            f"/CN={hostname}",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ]
    )
    key.chmod(0o600)
    return cert, key


def _is_port_25(service: str) -> bool:
    port = service.rpartition(":")[2]
    return port in ("smtp", "25")


def sandboxize_postfix_tree(
    postfix_dir: Path,
    instance: PostfixInstance,
    mysql_port: int,
    *,
    lookup_user: str = LOOKUP_USER,
    database: str = DATABASE,
    live_config_dir: str = "/etc/postfix",
    postscreen_deep_tests: bool = False,
) -> SandboxedTree:
    """Edit a copy of a repository's ``postfix/`` folder so that it runs as ``instance``.

    main.cf gets the instance's directories, loopback-only listening, logging to its maillog, no
    relayhost, no content filter or milter, a snakeoil certificate and no outbound delivery. Every
    inet service of master.cf moves to a loopback port (the one for port 25 to ``instance.smtp_port``)
    and nothing chroots. mysql-*.cf files point at ``inet:127.0.0.1:mysql_port`` as ``lookup_user``.
    Absolute references to ``live_config_dir`` become references to the instance's config_dir.
    Uses Postfix's own ``postconf -c postfix_dir -e/-X/-Fe/-Pe/-PX`` for every main/master edit.
    """
    main_cf, master_cf = postfix_dir / "main.cf", postfix_dir / "master.cf"
    for required in (main_cf, master_cf):
        if not required.is_file():
            raise SandboxError(f"{required} does not exist")
    postconf_argv = [find_tool("postconf"), "-c", str(postfix_dir)]

    def postconf(*args: str) -> str:
        out = _run([*postconf_argv, *args]).stdout
        cool_down(main_cf, master_cf)
        return out

    notes: list[str] = []

    # Paths first, so that the postconf edits below see and keep the instance's directory.
    live = live_config_dir.rstrip("/") + "/"
    for path in sorted(p for p in postfix_dir.iterdir() if p.is_file()):
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
        if live in text:
            path.write_text(
                text.replace(live, str(instance.config_dir) + "/"), encoding="utf-8", errors="surrogateescape"
            )
            notes.append(f"{path.name}: {live} -> {instance.config_dir}/")
    cool_down(main_cf, master_cf)

    settings = sandbox_parameters(
        instance.queue_dir, instance.data_dir, maillog=instance.maillog, syslog_name=instance.syslog_name
    )
    # Before anything reads the configuration back: postconf -n itself fails ("no local interface
    # found for 192.0.2.40") while inet_interfaces names another host's addresses.
    postconf("-e", *(f"{name}={value}" for name, value in settings.items()))
    postconf("-X", "proxy_interfaces")
    current = _parse_postconf(postconf("-n"))
    cert, key = snakeoil_certificate(instance.base / "tls")
    settings.update({name: str(cert) if name.endswith("cert_file") else str(key) for name in _SNAKEOIL_PARAMS})
    if "myhostname" not in current:
        settings["myhostname"] = SANDBOX_HOSTNAME
    master_fields = _parse_postconf(postconf("-F"))
    uses_postscreen = any(
        key.endswith("/command") and value.split()[:1] == ["postscreen"] for key, value in master_fields.items()
    )
    if uses_postscreen and not postscreen_deep_tests:
        settings.update(_POSTSCREEN_SANDBOX)
        notes.append("main.cf: postscreen without DNSBLs and deep protocol tests, greet wait 1s")
    drop: list[str] = [name for name in (*_DROP_PARAMS, *_DROP_TLS_PARAMS) if name in current]
    # Other TLS files (DH parameters, CA files) are dropped when the sandbox host lacks them.
    drop.extend(
        name
        for name, value in current.items()
        if _TLS_FILE_RE.search(name)
        and name not in _SNAKEOIL_PARAMS
        and name not in drop
        and not _tls_paths_exist(value, postfix_dir, instance.config_dir)
    )
    postconf("-e", *(f"{name}={value}" for name, value in settings.items()))
    if drop:
        postconf("-X", *drop)
        notes.extend(f"main.cf: removed {name} = {current[name]}" for name in drop)

    ports = _sandboxize_master(postconf, instance, cert, key, notes)
    lookup_secrets = _sandboxize_mysql_tables(postfix_dir, mysql_port, lookup_user, database, notes)
    referenced: set[str] = set()
    for path in postfix_dir.rglob("*"):
        if path.is_file():
            referenced.update(_SECRET_RE.findall(path.read_text(encoding="utf-8", errors="replace")))
    return SandboxedTree(
        ports=ports,
        lookup_secrets=tuple(sorted(lookup_secrets)),
        other_secrets=tuple(sorted(referenced - lookup_secrets)),
        notes=tuple(notes),
    )


def _tls_paths_exist(value: str, tree: Path, config_dir: Path) -> bool:
    """Whether every file a TLS parameter names exists (in the tree, for $config_directory paths)."""
    for item in re.split(r"[\s,]+", value):
        if not item:
            continue
        for prefix in ("${config_directory}/", "$config_directory/", "$(config_directory)/"):
            if item.startswith(prefix):
                item = str(tree / item[len(prefix) :])
        if item.startswith(str(config_dir) + "/"):
            item = str(tree / item[len(str(config_dir)) + 1 :])
        if "$" in item or not Path(item).exists():
            return False
    return True


def _sandboxize_master(
    postconf: Callable[..., str], instance: PostfixInstance, cert: Path, key: Path, notes: list[str]
) -> dict[str, int]:
    fields = _parse_postconf(postconf("-F"))
    services = sorted({key_.rsplit("/", 1)[0] for key_ in fields})  # "name/type"
    edits: list[str] = []
    for svc in services:
        chroot = fields.get(f"{svc}/chroot", "-")
        if chroot in ("y", "yes"):
            edits.append(f"{svc}/chroot=n")
    if not any(fields.get(f"{svc}/command", "").split()[:1] == ["postlogd"] for svc in services):
        postconf("-Me", "postlog/unix-dgram=postlog unix-dgram n - n - 1 postlogd")
        notes.append("master.cf: added the postlog service (maillog_file needs postlogd)")

    overrides = _parse_postconf(postconf("-P"))
    remove: list[str] = []
    set_: list[str] = []
    for key_, value in overrides.items():
        name = key_.rsplit("/", 1)[1]
        if name in _DROP_PARAMS and value:
            remove.append(key_)
            notes.append(f"master.cf: removed -o {name}={value} from {key_.rsplit('/', 1)[0]}")
        elif name in _SNAKEOIL_PARAMS:
            set_.append(f"{key_}={cert if name.endswith('cert_file') else key}")
        elif name == "syslog_name" and value.startswith("postfix/"):
            set_.append(f"{key_}={instance.syslog_name}/{value.removeprefix('postfix/')}")
    if remove:
        postconf("-PX", *remove)
    if set_:
        postconf("-Pe", *set_)

    # Renaming goes last: the edits above address services by their original names.
    ports: dict[str, int] = {}
    inet = [svc.rsplit("/", 1)[0] for svc in services if svc.endswith("/inet")]
    taken = {instance.smtp_port}
    for name in inet:
        if _is_port_25(name) and instance.smtp_port not in ports.values():
            port = instance.smtp_port
        else:
            port = free_port()
            while port in taken:
                port = free_port()
        taken.add(port)
        ports[name] = port
        edits.append(f"{name}/inet/service=127.0.0.1:{port}")
    if edits:
        postconf("-Fe", *edits)
    notes.extend(f"master.cf: {name} listens on 127.0.0.1:{port}" for name, port in ports.items())
    return ports


def _sandboxize_mysql_tables(tree: Path, mysql_port: int, user: str, database: str, notes: list[str]) -> set[str]:
    """Point every mysql-*.cf at the private MariaDB; the secrets their passwords come from."""
    secrets_used: set[str] = set()
    for path in sorted(tree.glob("mysql*.cf")):
        lines = path.read_text(encoding="utf-8").splitlines()
        wanted = {"hosts": f"inet:127.0.0.1:{mysql_port}", "user": user, "dbname": database}
        out: list[str] = []
        skipping = False
        for line in lines:
            if skipping and line[:1].isspace() and line.strip():
                continue  # continuation of a value we replaced
            skipping = False
            name, sep, value = line.partition("=")
            name = name.strip()
            if sep and not line[:1].isspace() and not name.startswith("#"):
                if name in wanted:
                    out.append(f"{name} = {wanted.pop(name)}")
                    skipping = True
                    continue
                if name == "password":
                    found = _SECRET_RE.findall(value)
                    if found:
                        secrets_used.update(found)
                    else:
                        out.append(f"password = ${{secret:{LOOKUP_PASSWORD_SECRET}}}")
                        secrets_used.add(LOOKUP_PASSWORD_SECRET)
                        skipping = True
                        continue
            out.append(line)
        out.extend(f"{name} = {value}" for name, value in wanted.items())
        path.write_text("\n".join(out) + "\n", encoding="utf-8")
        notes.append(f"{path.name}: hosts = inet:127.0.0.1:{mysql_port}, user = {user}, dbname = {database}")
    return secrets_used


# --------------------------------------------------------------------------------------------------
# Command line for deploy/sandbox.sh


def _git(repo: Path, *args: str) -> str:
    env_args = ["-c", "user.name=reconciler sandbox", "-c", "user.email=sandbox@sandbox.test"]
    return _run([find_tool("git"), "-C", str(repo), *env_args, *args]).stdout


def _publish_repo(source: Path, sandbox: Path, instance: PostfixInstance, db: MariaDB) -> tuple[Path, SandboxedTree]:
    """Copy ``source`` (a desired-state repo), sandboxize it, and push it to a bare repo in ``sandbox``."""
    work = sandbox / "work"
    bare = sandbox / "mail-config.git"
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(source, work, ignore=shutil.ignore_patterns(".git", "*.db", "*.lmdb", "*.cdb"))
    result = (
        sandboxize_postfix_tree(work / "postfix", instance, db.port)
        if (work / "postfix").is_dir()
        else (SandboxedTree({}, (), (), ("no postfix/ folder in the repository",)))
    )
    if not bare.exists():
        _run([find_tool("git"), "init", "--quiet", "--bare", "--initial-branch=main", str(bare)])
    _run([find_tool("git"), "init", "--quiet", "--initial-branch=main", str(work)])
    _git(work, "add", "-A")
    _git(work, "commit", "--quiet", "--allow-empty", "-m", f"Sandbox copy of {source}")
    _git(work, "push", "--quiet", "--force", str(bare), "main")
    return bare, result


def _write_secrets(secrets_dir: Path, result: SandboxedTree, db: MariaDB) -> None:
    secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name in result.lookup_secrets:
        _write_private(secrets_dir / name, db.mailuser_password + "\n")
    for name in result.other_secrets:
        if not (secrets_dir / name).exists():
            _write_private(secrets_dir / name, f"sandbox-{secrets.token_hex(8)}\n")


def _write_agent_config(sandbox: Path, bare: Path, instance: PostfixInstance, db: MariaDB) -> Path:
    password_file = sandbox / "mysql-password"
    _write_private(password_file, db.reconciler_password + "\n")
    config = sandbox / "config.toml"
    config.write_text(
        "# Agent configuration for the local sandbox, written by python -m reconciler.sandbox up.\n"
        "[source]\n"
        f'url = "{bare}"\n'
        'branch = "main"\n'
        "poll_interval = 5\n"
        "\n[postfix]\n"
        f'config_dir = "{instance.config_dir}"\n'
        "\n[mysql]\n"
        'host = "127.0.0.1"\n'
        f"port = {db.port}\n"
        f'user = "{AGENT_USER}"\n'
        f'password_file = "{password_file}"\n'
        f'database = "{db.database}"\n'
        "\n[secrets]\n"
        f'dir = "{sandbox / "secrets"}"\n'
        "\n[state]\n"
        f'dir = "{sandbox / "state"}"\n'
        "\n[api]\n"
        f'listen = "127.0.0.1:{free_port()}"\n',
        encoding="utf-8",
    )
    return config


def _cmd_up(sandbox: Path, repo: Path | None) -> dict[str, Any]:
    sandbox.mkdir(parents=True, exist_ok=True)
    sandbox = sandbox.resolve()
    t0 = time.monotonic()
    mysql_base = sandbox / "mariadb"
    if (mysql_base / "mariadb.json").exists():
        db = MariaDB.load(mysql_base)
        db.start()
    else:
        db = start_mariadb(mysql_base)
    t_db = time.monotonic() - t0
    postfix_base = sandbox / "postfix"
    if (postfix_base / "postfix.json").exists():
        instance = PostfixInstance.load(postfix_base)
    else:
        instance = create_postfix_instance(postfix_base)
    t1 = time.monotonic()
    instance.start()
    t_pf = time.monotonic() - t1
    summary: dict[str, Any] = {
        "mariadb": {
            "pid": db.pid(),
            "port": db.port,
            "socket": str(db.socket),
            "client": " ".join(db.client_argv(AGENT_USER)),
            "startup_seconds": round(t_db, 2),
        },
        "postfix": {
            "config_dir": str(instance.config_dir),
            "smtp": f"127.0.0.1:{instance.smtp_port}",
            "maillog": str(instance.maillog),
            "running": instance.is_running(),
            "startup_seconds": round(t_pf, 2),
        },
    }
    if repo is not None:
        bare, result = _publish_repo(repo, sandbox, instance, db)
        _write_secrets(sandbox / "secrets", result, db)
        config = _write_agent_config(sandbox, bare, instance, db)
        summary["git"] = {"bare_repo": str(bare), "branch": "main", "head": _git(bare, "rev-parse", "main").strip()}
        summary["agent_config"] = str(config)
        summary["sandboxed"] = {"ports": dict(result.ports), "notes": list(result.notes)}
    return summary


def _cmd_down(sandbox: Path) -> dict[str, Any]:
    stopped: dict[str, Any] = {}
    if (sandbox / "postfix" / "postfix.json").exists():
        PostfixInstance.load(sandbox / "postfix").stop()
        stopped["postfix"] = "stopped"
    if (sandbox / "mariadb" / "mariadb.json").exists():
        MariaDB.load(sandbox / "mariadb").stop()
        stopped["mariadb"] = "stopped"
    return stopped


def _cmd_status(sandbox: Path) -> dict[str, Any]:
    status: dict[str, Any] = {}
    if (sandbox / "postfix" / "postfix.json").exists():
        pf = PostfixInstance.load(sandbox / "postfix")
        status["postfix"] = {"running": pf.is_running(), "smtp": f"127.0.0.1:{pf.smtp_port}"}
    if (sandbox / "mariadb" / "mariadb.json").exists():
        db = MariaDB.load(sandbox / "mariadb")
        status["mariadb"] = {"running": db.is_running() and db.answers(), "port": db.port}
    return status


def _render_text(data: Mapping[str, Any], indent: str = "") -> str:
    lines: list[str] = []
    for key, value in data.items():
        if isinstance(value, Mapping):
            lines.append(f"{indent}{key}:")
            lines.append(_render_text(value, indent + "  "))
        elif isinstance(value, list):
            lines.append(f"{indent}{key}:")
            lines.extend(f"{indent}  - {item}" for item in value)
        else:
            lines.append(f"{indent}{key}: {value}")
    return "\n".join(lines)


def main(argv: Iterable[str] | None = None) -> int:
    """``python -m reconciler.sandbox up|down|status [--dir DIR] [--repo PATH] [--json]``."""
    parser = argparse.ArgumentParser(
        prog="python -m reconciler.sandbox", description="Private MariaDB and Postfix for the local sandbox."
    )
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument("--dir", type=Path, default=Path("/tmp/reconciler-sandbox"), help="sandbox directory")
    parser.add_argument("--repo", type=Path, help="desired-state repository to publish (up only)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        if args.command == "up":
            out = _cmd_up(args.dir, args.repo)
        elif args.command == "down":
            out = _cmd_down(args.dir)
        else:
            out = _cmd_status(args.dir)
    except SandboxError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2) if args.json else _render_text(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
