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
# A table reference, one token of a parameter value: type:name (the name may be a {...} group).
_TYPE_NAME = re.compile(r"([a-z][a-z0-9]*):(.+)\Z", re.DOTALL)
# Postfix's list separators (mystrtokq with CHARS_COMMA_SP), outside {} only.
_SEPARATORS = frozenset(" \t\r\n,")
# Table types whose {...} name is a list of tables; any other type:{...} holds data (inline:,
# static:, randmap:, regexp:/pcre:/cidr: inline rules), not a file.
_LIST_TYPES = frozenset({"unionmap", "pipemap"})
# Parameters naming a cache Postfix writes itself (btree:$data_directory/...), not a table to manage.
_CACHE_PARAMS = re.compile(r"(?:_cache_database|_cache_map|_auth_cache_name|\Aaddress_verify_map)\Z")
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


def split_list(value: str) -> list[str]:
    """A parameter value's items as Postfix splits them (``mystrtokq``).

    Separators are whitespace and commas outside ``{}``; ``{...}`` nests, and a ``}`` with no open
    ``{`` is an ordinary character. ``unionmap:{a, b}`` is one item, as is ``{ text with spaces }``.
    """
    items: list[str] = []
    depth = 0
    start: int | None = None
    for i, ch in enumerate(value):
        if start is None:
            if ch in _SEPARATORS:
                continue
            start = i
        if ch == "{":
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
        elif depth == 0 and ch in _SEPARATORS:
            items.append(value[start:i])
            start = None
    if start is not None:
        items.append(value[start:])
    return items


def brace_body(item: str) -> str | None:
    """The inside of an item that is exactly one ``{...}`` group, stripped (Postfix's ``extpar``); else None."""
    if not (item.startswith("{") and item.endswith("}")):
        return None
    depth = 0
    for i, ch in enumerate(item):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0 and i != len(item) - 1:
                return None  # {a} {b}, {a}b}: not one group
    return item[1:-1].strip() if depth == 0 else None


def _item_refs(item: str, parameter: str) -> Iterator[TableRef]:
    """The table files one list item names: a ``type:name``, or each item of a bare ``{...}`` group."""
    group = brace_body(item)
    if group is not None:  # check_policy_service { inet:host:port, timeout=10s }, a restriction group
        for inner in split_list(group):
            yield from _item_refs(inner, parameter)
        return
    m = _TYPE_NAME.match(item)
    if m is None:
        return
    typ, name = m.group(1), m.group(2)
    if typ == "proxy":  # proxy:hash:/path, proxy:unionmap:{...} -> the inner table
        if _TYPE_NAME.match(name):
            yield from _item_refs(name, parameter)
        return
    if name.startswith("{"):
        body = brace_body(name)
        if typ in _LIST_TYPES and body is not None:
            for inner in split_list(body):
                if brace_body(inner) is None:  # a bare group inside unionmap: is not a table
                    yield from _item_refs(inner, parameter)
        return  # inline:{...}, static:{...}, randmap:{...}: data, no file
    if name.startswith("/"):
        yield TableRef(typ, name, parameter)


def table_refs(params: dict[str, str]) -> Iterator[TableRef]:
    """Every ``type:path`` with an absolute path in the given (expanded) parameter values.

    Values are split as Postfix splits them (``split_list``): the tables inside ``unionmap:{...}``
    and ``pipemap:{...}`` count, also behind ``proxy:``; ``inline:{...}``, ``static:{...}`` and
    ``randmap:{...}`` hold data and name no file. Caches Postfix writes itself
    (``*_tls_session_cache_database``, ``address_verify_map``, ``postscreen_cache_map``, ...) are
    not tables. Keys are ``name`` for main.cf, ``service/type/name`` for master.cf ``-o``.
    """
    for name, value in params.items():
        if _CACHE_PARAMS.search(name.rsplit("/", 1)[-1]):
            continue
        for item in split_list(value):
            yield from _item_refs(item, name)


def supported_table_types(config_dir: Path) -> frozenset[str]:
    """Table types this Postfix build supports (``postconf -m``)."""
    res = postconf(config_dir, "-m")
    return frozenset(line.strip() for line in res.stdout.splitlines() if line.strip())
