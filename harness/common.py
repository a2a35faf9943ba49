"""Processes, ports and files for the harness: its error, tool lookup, running tools, waiting.

Callers: every other ``harness`` module (``mariadb``, ``postfix``, ``repo``, ``galera``, ``cli``) and
tests that need a free loopback port (``free_port``). Tools run through the product's
``reconciler.postfix.run_tool`` (an argument list, never a shell); a failure is a ``SandboxError``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from reconciler.errors import ToolError
from reconciler.postfix import run_tool, run_tool_tty_stderr

_SBIN_DIRS: Final = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
# The longest unix socket path the kernel accepts (sun_path is 108 bytes with the NUL).
MAX_SOCKET_PATH: Final = 107


class SandboxError(RuntimeError):
    """A private service could not be created, started, stopped or queried."""


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


def run(
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


def run_tty_stderr(argv: Sequence[str], *, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """``reconciler.postfix.run_tool_tty_stderr`` with the harness's error type (see there why)."""
    try:
        res = run_tool_tty_stderr(argv, timeout=timeout)
    except ToolError as exc:
        raise SandboxError(str(exc)) from exc
    return subprocess.CompletedProcess(list(res.argv), res.returncode, res.stdout, res.stderr)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds passed; whether it held."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
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


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to a file readable by its owner only (created 0600, never world-readable)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"({path} does not exist)"


def port_open(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0
