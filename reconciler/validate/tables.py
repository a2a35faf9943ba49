"""The tables a staged configuration names: found with postconf, built or parsed, mysql files checked.

Called by ``validate.stage`` (and by ``adopt`` through ``discover_tables``'s helpers). MySQL lookup
files are checked against the keys of mysql_table(5), and an unquoted ``%s`` in a query is refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from reconciler.desired.types import DesiredFile
from reconciler.errors import Problem
from reconciler.postfix import (
    INDEXED_TYPES,
    TEXT_TYPES,
    TableRef,
    ToolResult,
    postalias,
    postmap,
    table_refs,
)
from reconciler.tables import TableDecl
from reconciler.validate.lines import staged_name

# Postfix expands %s, %u, %d, %S, %U, %D and %1..%9 in a mysql query; unquoted, the lookup key is
# spliced into the SQL as is.
_EXPANSION = re.compile(r"%[sudSUD1-9]")

MYSQL_KEYS = frozenset(
    {
        "hosts", "user", "password", "dbname", "query", "result_format", "domain", "expansion_limit",
        "option_file", "option_group", "require_result_set", "tls_cert_file", "tls_key_file",
        "tls_CAfile", "tls_CApath", "tls_verify_cert", "tls_ciphers", "idle_interval",
        "retry_interval", "table", "select_field", "where_field", "additional_conditions",
    }
)  # fmt: skip


def mysql_tables(stage: Path, live_config_dir: str, *param_sets: Mapping[str, str]) -> set[str]:
    """Names (relative to the config dir) of the files main.cf/master.cf use as mysql: tables."""
    out: set[str] = set()
    for ps in param_sets:
        for ref in table_refs(dict(ps)):
            rel = config_relative(ref.path, stage, live_config_dir)
            if ref.type == "mysql" and rel is not None:
                out.add(rel)
    return out


def config_relative(path: str, stage: Path, live_config_dir: str) -> str | None:
    """``path`` relative to the staged or live config directory, or None when it is outside both."""
    for base in (str(stage), live_config_dir.rstrip("/")):
        if path.startswith(base + "/") and ".." not in path.split("/"):
            return path[len(base) + 1 :]
    return None


def discover_tables(
    stage: Path,
    files: Mapping[str, DesiredFile],
    params: Mapping[str, str],
    service_params: Mapping[str, str],
    live_config_dir: str,
    outside: list[TableRef] | None = None,
) -> tuple[list[TableDecl], list[TableRef]]:
    """Tables named by main.cf and master.cf that the repo manages, and those missing from the repo.

    A table in the config directory or a subdirectory of it is named relative to it; one outside
    it is managed only when its absolute path is a managed file (an allowed ``rootfs/`` table),
    else it is added to ``outside`` (left alone, noted).
    """
    found: dict[tuple[str, str], set[str]] = {}
    missing: list[TableRef] = []
    alias_params = {"alias_maps", "alias_database"}
    builders: dict[tuple[str, str], str] = {}
    for ref in [*table_refs(dict(params)), *table_refs(dict(service_params))]:
        base_param = ref.parameter.rsplit("/", 1)[-1]
        if ref.type not in INDEXED_TYPES | TEXT_TYPES:
            continue
        rel = config_relative(ref.path, stage, live_config_dir)
        name = rel if rel is not None else ref.path
        if rel is None and ref.path not in files:
            if outside is not None and all(o.path != ref.path for o in outside):
                outside.append(ref)
            continue
        if name not in files:
            missing.append(ref)
            continue
        key = (name, ref.type)
        found.setdefault(key, set()).add(ref.parameter)
        if ref.type in INDEXED_TYPES:
            builder = "postalias" if base_param in alias_params else "postmap"
            if builders.get(key) == "postalias":
                builder = "postalias"
            builders[key] = builder
    specs = [
        TableDecl(name, typ, builders.get((name, typ), ""), tuple(sorted(found[(name, typ)])))
        for name, typ in sorted(found)
    ]
    return specs, missing


def check_table(stage: Path, spec: TableDecl) -> ToolResult:
    """Build an indexed table in the stage, or parse a text table with a probe lookup."""
    target = f"{spec.type}:{stage / staged_name(spec.name)}"
    if spec.builder == "postalias":
        return postalias(stage, target)
    if spec.builder == "postmap":
        return postmap(stage, target)
    probe = "192.0.2.1" if spec.type == "cidr" else "probe@example.invalid"
    res = postmap(stage, "-q", probe, target)
    # postmap -q exits 1 for "not found"; only its diagnostics matter here.
    return ToolResult(res.argv, 0 if res.returncode in (0, 1) else res.returncode, res.stdout, res.stderr)


def mysql_cf_problems(path: str, text: str) -> list[Problem]:
    """Check a mysql_table(5) file: known keys only, hosts/dbname/user/query present and non-empty."""
    problems: list[Problem] = []
    seen: dict[str, tuple[int, str]] = {}
    query_lines: list[tuple[int, str]] = []  # physical lines of the query, for the expansion check
    key = ""
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if raw[:1].isspace():
            if key == "query":  # continuation of the previous value, as in main.cf
                query_lines.append((number, line))
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep:
            problems.append(Problem(path, number, "expected 'name = value'"))
            continue
        if key not in MYSQL_KEYS:
            problems.append(Problem(path, number, f"unknown mysql_table(5) parameter {key!r}"))
        if key in seen:
            problems.append(Problem(path, number, f"{key} is set twice (first at line {seen[key][0]})"))
        seen[key] = (number, value.strip())
        if key == "query":
            query_lines = [(number, value.strip())]
    for key in ("hosts", "user", "dbname"):
        if key not in seen:
            problems.append(Problem(path, None, f"{key} is not set"))
        elif not seen[key][1]:
            problems.append(Problem(path, seen[key][0], f"{key} is empty"))
    if "query" not in seen and "table" not in seen:
        problems.append(Problem(path, None, "query is not set"))
    for number, part in query_lines:
        if _unquoted_expansion(part):
            problems.append(
                Problem(
                    path,
                    number,
                    "query uses a %s-style expansion outside single quotes: every lookup key would be "
                    "spliced into the SQL unquoted; write '%s'",
                )
            )
    if "hosts" in seen:
        for host in seen["hosts"][1].replace(",", " ").split():
            if host.startswith("unix:") or (host.startswith("/") and not host.startswith("inet:")):
                problems.append(
                    Problem(
                        path,
                        seen["hosts"][0],
                        f"hosts {host}: Postfix daemons run chrooted and cannot reach a socket path; "
                        "use inet:HOST:PORT",
                    )
                )
    return problems


def _unquoted_expansion(query: str) -> bool:
    """Whether a mysql_table(5) query has an expansion outside a single-quoted SQL string."""
    outside: list[str] = []
    quoted = False
    i = 0
    while i < len(query):
        ch = query[i]
        if ch == "'":
            if quoted and query[i + 1 : i + 2] == "'":  # '' inside a string
                i += 2
                continue
            quoted = not quoted
        elif not quoted:
            outside.append(ch)
        i += 1
    return bool(_EXPANSION.search("".join(outside).replace("%%", "")))
