"""Pure parsers for Postfix's own file formats: main.cf parameters and master.cf services.

Used by ``desired`` (a host's main.cf overrides: ``set_parameters``), ``plan`` (parameter-level
and per-service summaries, restart decisions) and ``verify`` (which inet listeners to probe).
Follows postconf(5) and master(5): a line starting with whitespace continues the previous logical
line; empty lines and lines whose first non-blank character is ``#`` are ignored, also between
continuation lines.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class LogicalLine:
    """One logical line with continuation lines folded (in-memory)."""

    text: str
    line: int  # 1-based number of the first physical line


def logical_lines(text: str) -> list[LogicalLine]:
    """Fold continuation lines; skip comments and blank lines."""
    out: list[LogicalLine] = []
    current: list[str] = []
    start = 0
    for number, raw in enumerate(text.split("\n"), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if raw[0].isspace() and current:
            current.append(stripped)
            continue
        if current:
            out.append(LogicalLine(" ".join(current), start))
        current, start = [stripped], number
    if current:
        out.append(LogicalLine(" ".join(current), start))
    return out


def parse_main_cf(text: str) -> dict[str, str]:
    """Parameter name -> value (whitespace folded) as main.cf sets it; the last setting wins."""
    params: dict[str, str] = {}
    for ll in logical_lines(text):
        name, sep, value = ll.text.partition("=")
        if sep:
            params[name.strip()] = " ".join(value.split())
    return params


def parse_master_cf(text: str) -> dict[str, str]:
    """``service/type`` -> the whole entry (fields and -o options, whitespace folded)."""
    services: dict[str, str] = {}
    for ll in logical_lines(text):
        fields = ll.text.split()
        if len(fields) >= 2:
            services[f"{fields[0]}/{fields[1]}"] = " ".join(fields)
    return services


@dataclass(frozen=True)
class InetListener:
    """An inet service of master.cf and where it listens (in-memory)."""

    service: str
    host: str | None  # None: every address of inet_interfaces
    port: str


def inet_listeners(master_cf: str) -> list[InetListener]:
    """Every inet service of master.cf that is not commented out."""
    out: list[InetListener] = []
    for ll in logical_lines(master_cf):
        fields = ll.text.split()
        if len(fields) < 8 or fields[1] != "inet":
            continue
        name = fields[0]
        host: str | None
        if name.startswith("[") and "]:" in name:
            host, port = name[1:].split("]:", 1)
        elif ":" in name:
            host, port = name.rsplit(":", 1)
        else:
            host, port = None, name
        out.append(InetListener(name, host, port))
    return out


def diff_parameters(before: dict[str, str], after: dict[str, str]) -> list[tuple[str, str | None, str | None]]:
    """(name, old, new) for every added, changed or removed parameter, sorted by name."""
    names = sorted(set(before) | set(after))
    return [(n, before.get(n), after.get(n)) for n in names if before.get(n) != after.get(n)]


def set_parameters(text: str, params: Mapping[str, str], *, comment: str = "") -> str:
    """main.cf ``text`` with each of ``params`` set: every setting of it replaced, else appended.

    A replaced setting keeps its place (and the comments around it); its continuation lines go.
    Parameters main.cf does not set are appended after ``comment`` (one ``#`` line), in order.
    """
    lines = text.split("\n")
    out: list[str] = []
    seen: set[str] = set()
    skipping = False
    for raw in lines:
        stripped = raw.strip()
        if skipping and raw[:1].isspace() and stripped and not stripped.startswith("#"):
            continue  # a continuation line of a replaced setting
        skipping = False
        if stripped and not raw[:1].isspace() and not stripped.startswith("#"):
            name, sep, _ = stripped.partition("=")
            name = name.strip()
            if sep and name in params:
                out.append(f"{name} = {params[name]}")
                seen.add(name)
                skipping = True
                continue
        out.append(raw)
    missing = [n for n in params if n not in seen]
    if missing:
        while out and out[-1] == "":
            out.pop()
        if comment:
            out.append(f"# {comment}")
        out.extend(f"{n} = {params[n]}" for n in missing)
        out.append("")
    return "\n".join(out)
