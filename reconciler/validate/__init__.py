"""The validate stage: Postfix's own tools run on a staged copy of the ``postfix/`` tree.

The repo's files are written into a temporary config directory with every ``${secret:NAME}``
replaced by a dummy of the same shape (one token, no whitespace), then checked by Postfix itself:
``postconf -n``, ``-M`` and ``-P`` (every ``warning:`` line is an error), every table the
configuration names built with ``postmap``/``postalias`` (their warnings on skipped lines are
errors) and every text table parsed with ``postmap -q``. MySQL lookup files are checked against the
keys of mysql_table(5). Nothing live is touched. Called by the CLI (``validate``, ``diff``,
``apply``) and the agent before anything else. ``stage`` stages and runs the checks, ``tables``
finds and checks the tables, ``lines`` maps Postfix's diagnostics back to repository lines.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from reconciler.desired.build import build_desired
from reconciler.desired.hosts import host_tree
from reconciler.desired.types import HOSTS_DIR, POSTFIX_DIR, DesiredFile, HostSpec, ParsedRevision
from reconciler.errors import Problem
from reconciler.parsecache import ParseCache
from reconciler.source import Snapshot
from reconciler.tables import TableDecl
from reconciler.validate.lines import staged_name
from reconciler.validate.stage import (
    DEFAULT_LIVE_CONFIG_DIR,
    DEFAULT_OUTSIDE_PATHS,
    check_postfix_tree,
    param_at,
    stage_key,
)

__all__ = ["DEFAULT_LIVE_CONFIG_DIR", "DEFAULT_OUTSIDE_PATHS", "Validated", "staged_name", "validate_snapshot"]


@dataclass(frozen=True)
class Validated:
    """A revision after every check (in-memory result): its state, its tables and its problems."""

    desired: ParsedRevision
    tables: tuple[TableDecl, ...]
    problems: tuple[Problem, ...]
    # Not problems: what is left alone (outside tables this host does not manage), said once.
    notes: tuple[Problem, ...] = ()


def validate_snapshot(
    snapshot: Snapshot,
    live_config_dir: str = DEFAULT_LIVE_CONFIG_DIR,
    cache: ParseCache | None = None,
    outside_paths: Iterable[str] = DEFAULT_OUTSIDE_PATHS,
    *,
    host: str | None = None,
    every_host: bool = False,
) -> Validated:
    """Every check of a revision; problems sorted by file and line.

    With a cache, domain files and a ``postfix/`` tree that passed before (same blob ids, same
    Postfix, same package version) are not checked again. ``outside_paths`` are the absolute paths
    outside the config dir that ``rootfs/`` may manage on this host (``[postfix].outside_paths``).
    With ``host``, the tree checked (and returned) is that host's; with ``every_host``, the shared
    tree and each host's tree are all checked (``validate``, ``pre-receive``), and a problem of a
    host's tree names the host.
    """
    desired, problems = build_desired(snapshot, cache, outside_paths, host)
    notes: list[Problem] = list(desired.notes)
    tables: list[TableDecl] = []
    if all(name in desired.files for name in ("main.cf", "master.cf")):
        tables, tree_problems = _check_tree(desired.files, live_config_dir, cache, notes)
        problems.extend(_host_problems(tree_problems, desired.host, desired.files, snapshot))
        if every_host:
            for spec in desired.hosts.values():
                if desired.host is not None and spec.name == desired.host.name:
                    continue
                files = host_tree(desired.shared_files, spec)
                _, tree_problems = _check_tree(files, live_config_dir, cache, notes)
                problems.extend(_host_problems(tree_problems, spec, files, snapshot))
    ordered = sorted(set(problems), key=lambda p: (p.path, p.line or 0, p.message))
    return Validated(desired, tuple(tables), tuple(ordered), tuple(sorted(set(notes), key=_problem_order)))


def _problem_order(p: Problem) -> tuple[str, int, str]:
    return (p.path, p.line or 0, p.message)


def _check_tree(
    files: Mapping[str, DesiredFile], live_config_dir: str, cache: ParseCache | None, notes: list[Problem]
) -> tuple[list[TableDecl], list[Problem]]:
    """Postfix's checks of one tree of files, or their cached result when the tree passed before.

    The staged check's notes (appended to ``notes``) are not kept with a cached result: only
    ``validate`` prints notes, and it runs uncached.
    """
    key = stage_key(files, live_config_dir)
    cached = cache.stage_result(key) if cache is not None else None
    if cached is not None:
        return [TableDecl(str(n), str(t), str(b), tuple(p), str(k)) for n, t, b, p, k in cached], []
    built_dir = cache.built_dir() if cache is not None else None
    tables, stage_problems = check_postfix_tree(files, live_config_dir, built_dir, key, notes)
    if cache is not None and not stage_problems:
        cache.put_stage_result(key, [[t.name, t.type, t.builder, list(t.parameters), t.build_key] for t in tables])
    return tables, stage_problems


def _host_problems(
    problems: Iterable[Problem], host: HostSpec | None, files: Mapping[str, DesiredFile], snapshot: Snapshot
) -> list[Problem]:
    """Problems of a host's tree, located where the host's own files cause them.

    A replaced file's problem names ``hosts/<name>/postfix/FILE``; a problem on a main.cf line
    that the host file sets names that host file (at the parameter's key); any other problem of a
    host's tree says which host's tree it was found in.
    """
    if host is None:
        return list(problems)
    out: list[Problem] = []
    main_lines = files["main.cf"].template.decode("utf-8").split("\n") if "main.cf" in files else []
    host_text = snapshot.read(host.path).decode("utf-8").split("\n")
    for p in problems:
        name = p.path.removeprefix(POSTFIX_DIR)
        if name in host.files:
            out.append(Problem(f"{HOSTS_DIR}{host.name}/{POSTFIX_DIR}{name}", p.line, p.message))
            continue
        param = param_at(main_lines, p.line) if name == "main.cf" and p.line else None
        if param is not None and param in host.main_cf:
            key_line = next((i for i, t in enumerate(host_text, start=1) if t.strip().startswith(f"{param}:")), None)
            out.append(Problem(host.path, key_line, f"main_cf.{param}: {p.message}"))
            continue
        out.append(Problem(p.path, p.line, f"on host {host.name}: {p.message}"))
    return out
