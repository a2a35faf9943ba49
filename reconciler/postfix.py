"""Thin, typed wrappers around Postfix's own tools: postconf, postmap, postalias, postfix.

Called by ``validate`` (on a staged copy), ``observed`` and ``apply``/``verify`` (on the live config
directory). Every call passes ``-c config_dir`` and an argument list, never a shell string. Postfix
tools exit 0 while printing ``warning:`` lines; ``ToolResult.diagnostics`` returns them so callers
can count them as errors.
"""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from reconciler.errors import ToolError

# Table types whose source file is compiled into an indexed file by postmap/postalias.
INDEXED_TYPES = frozenset({"hash", "btree", "lmdb", "cdb", "dbm", "sdbm"})
# Table types Postfix reads straight from the source file.
TEXT_TYPES = frozenset({"cidr", "pcre", "regexp", "texthash"})
# Postfix table-reference syntax inside a parameter value: type:name.
_TABLE_REF = re.compile(r"(?<![\w$])([a-z][a-z0-9]*):(\S+?)(?=[\s,]|$)")
_DIAG = re.compile(r"^(?P<prog>[\w/.-]+): (?P<level>warning|fatal|error|panic): (?P<text>.*)$")


@dataclass(frozen=True)
class Diagnostic:
    """One ``warning:``/``fatal:`` line a Postfix tool printed (in-memory result)."""

    level: str
    text: str


@dataclass(frozen=True)
class ToolResult:
    """Exit status and output of one tool run (in-memory result)."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def diagnostics(self) -> list[Diagnostic]:
        """Every warning/fatal/error line; any stderr line that is not one becomes an error too."""
        out: list[Diagnostic] = []
        for line in self.stderr.splitlines():
            if not line.strip():
                continue
            m = _DIAG.match(line)
            if m:
                out.append(Diagnostic(m["level"], m["text"]))
            else:
                out.append(Diagnostic("error", line.strip()))
        if self.returncode != 0 and not any(d.level in ("fatal", "error", "panic") for d in out):
            out.append(Diagnostic("fatal", f"{self.argv[0]} exited with status {self.returncode}"))
        return out


def run_tool(argv: Sequence[str], *, timeout: float = 120.0, input_text: str | None = None) -> ToolResult:
    """Run one Postfix tool; raises ``ToolError`` only if it cannot be started at all."""
    try:
        proc = subprocess.run(
            list(argv),
            input=input_text,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
            # Ctrl-C in a terminal must stop the agent, which then rolls back, not kill a postmap
            # or postfix child half-way: the tools run in their own session.
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        raise ToolError(f"{argv[0]} not found on PATH (Postfix tools: Debian package postfix)") from exc
    except subprocess.TimeoutExpired as exc:
        raise ToolError(f"{argv[0]} did not finish within {timeout:.0f} s") from exc
    return ToolResult(tuple(argv), proc.returncode, proc.stdout, proc.stderr)


def run_tool_tty_stderr(argv: Sequence[str], *, timeout: float = 120.0) -> ToolResult:
    """Run a command with its stderr on a pseudo-terminal and its stdout on a pipe; both captured.

    postfix(1) writes its diagnostics to stderr only when stderr is a terminal (else to syslog or
    maillog_file), so without this a fatal error of ``postfix check`` or ``reload`` reaches the
    agent as a bare exit status. Raises ``ToolError`` if the command cannot start or times out.
    """
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=secondary, start_new_session=True
        )
    except FileNotFoundError as exc:
        os.close(primary)
        raise ToolError(f"{argv[0]} not found on PATH (Postfix tools: Debian package postfix)") from exc
    finally:
        os.close(secondary)
    assert proc.stdout is not None  # noqa: S101 - stdout=PIPE above
    out_fd = proc.stdout.fileno()
    chunks: dict[int, list[bytes]] = {out_fd: [], primary: []}
    open_fds = set(chunks)
    deadline = time.monotonic() + timeout
    try:
        while open_fds:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                proc.kill()
                raise ToolError(f"{argv[0]} did not finish within {timeout:.0f} s")
            ready, _, _ = select.select(sorted(open_fds), [], [], remaining)
            for fd in ready:
                try:
                    data = os.read(fd, 65536)
                except OSError:  # EIO: every writer closed the terminal
                    data = b""
                if data:
                    chunks[fd].append(data)
                else:
                    open_fds.discard(fd)
        returncode = proc.wait(timeout=max(deadline - time.monotonic(), 1.0))
    finally:
        os.close(primary)
        proc.stdout.close()
    stdout = b"".join(chunks[out_fd]).decode("utf-8", errors="replace")
    stderr = b"".join(chunks[primary]).decode("utf-8", errors="replace").replace("\r\n", "\n")
    return ToolResult(tuple(argv), returncode, stdout, stderr)


def live_path(config_dir: Path, name: str) -> Path:
    """Where a managed file lives: ``name`` inside the config dir, or an outside table's absolute path.

    Managed files are named relative to the config directory (``main.cf``, ``sql/mysql-x.cf``);
    an outside table (``rootfs/etc/aliases`` in the repo, allowed by ``[postfix].outside_paths``)
    is named by its absolute path. Spelled out rather than left to ``Path.__truediv__``, which
    silently drops ``config_dir`` for an absolute name.
    """
    if name.startswith("/"):
        return Path(name)
    return config_dir / name


def beside(path: Path, tag: str) -> Path:
    """A hidden sibling of ``path`` in the same directory: ``.NAME<tag>`` (temps, backups)."""
    return path.with_name(f".{path.name}{tag}")


def postconf(config_dir: Path, *args: str) -> ToolResult:
    """``postconf -c config_dir ARGS``."""
    return run_tool(["postconf", "-c", str(config_dir), *args])


def postmap(config_dir: Path, *args: str) -> ToolResult:
    """``postmap -c config_dir ARGS``."""
    return run_tool(["postmap", "-c", str(config_dir), *args])


def postalias(config_dir: Path, *args: str) -> ToolResult:
    """``postalias -c config_dir ARGS``."""
    return run_tool(["postalias", "-c", str(config_dir), *args])


def postfix_cmd(config_dir: Path, *args: str, timeout: float = 120.0) -> ToolResult:
    """``postfix -c config_dir ARGS`` (start, stop, reload, status, check), diagnostics captured."""
    return run_tool_tty_stderr(["postfix", "-c", str(config_dir), *args], timeout=timeout)


def backdate(path: Path, seconds: float = 10.0) -> None:
    """Set a freshly written config file's mtime into the past.

    Postfix re-reads a main.cf modified within the last second or two in 0.3 s steps until it
    "cools down" (dict_load_file_xt), so any postconf/postfix call right after a write stalls for up
    to 2 s. Nothing the agent decides depends on these mtimes but table staleness, which compares
    a source with the table built after it, so an older source is always safe.
    """
    past = time.time() - seconds
    os.utime(path, (past, past))


def parse_parameters(text: str) -> dict[str, str]:
    """Parse ``name = value`` lines as ``postconf -n``/``-P`` print them (one per line)."""
    params: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(" = ")
        if sep:
            params[name.strip()] = value.strip()
        elif line.endswith(" ="):
            params[line[:-2].strip()] = ""
    return params


@dataclass(frozen=True)
class TableRef:
    """A ``type:path`` table reference found in a parameter value (in-memory result)."""

    type: str
    path: str
    parameter: str


def table_refs(params: dict[str, str]) -> Iterator[TableRef]:
    """Every ``type:path`` with an absolute path in the given (expanded) parameter values."""
    for name, value in params.items():
        for m in _TABLE_REF.finditer(value):
            typ, path = m.group(1), m.group(2)
            if typ == "proxy":  # proxy:hash:/path -> the inner table
                inner = _TABLE_REF.match(path)
                if inner:
                    typ, path = inner.group(1), inner.group(2)
            path = path.rstrip(",")
            if path.startswith("/"):
                yield TableRef(typ, path, name)


def supported_table_types(config_dir: Path) -> frozenset[str]:
    """Table types this Postfix build supports (``postconf -m``)."""
    res = postconf(config_dir, "-m")
    return frozenset(line.strip() for line in res.stdout.splitlines() if line.strip())
