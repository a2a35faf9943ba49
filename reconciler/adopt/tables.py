"""Discovering what an import takes from the config dir: main.cf, master.cf and every table they use.

Called by ``import_host`` (``reconciler.adopt``). Asks Postfix's own tools (``postconf -c DIR -n
-x``, ``-P -x``) which tables are in use, finds each one's source (the live file, a ``NAME.in`` of
the guide's Makefile layout, or a dump by ``postmap -s`` / ``postalias -s``), turns the secrets it
holds into placeholders (``reconciler.adopt.secrets``) and collects it all in ``Findings``: files,
problems, notes, and the few live writes an import makes. Nothing is written here.
"""

from __future__ import annotations

import grp
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.adopt.secrets import Secrets, secret_config, secret_map
from reconciler.desired.render import SECRET_FILE_GROUP, SECRET_FILE_MODE
from reconciler.desired.types import POSTFIX_DIR, ROOTFS_DIR
from reconciler.errors import Problem, ReconcilerError
from reconciler.postfix import (
    INDEXED_TYPES,
    TEXT_TYPES,
    TableRef,
    parse_parameters,
    postalias,
    postconf,
    postmap,
    split_list,
    table_refs,
)
from reconciler.tables import built_suffixes

# Lookup table types whose config file is imported (with its password turned into a secret).
CONFIG_TYPES = {"mysql": "password", "pgsql": "password", "ldap": "bind_pw", "sqlite": ""}
SASL_PASSWORD_PARAMS = re.compile(r"(?:^|/)(?:smtp|lmtp)_sasl_password_maps\Z")
ALIAS_PARAMS = frozenset({"alias_maps", "alias_database"})


@dataclass
class LiveFile:
    """One file going into the repository (in-memory, during an import)."""

    repo_path: str  # postfix/NAME or rootfs/ABS
    data: bytes  # the template: secret values replaced by ${secret:NAME}
    origin: Path  # the live file it was read from
    live: Path  # the live file the agent will manage
    holds_secret: bool = False


@dataclass
class Findings:
    """Everything an import found in the config dir (in-memory), before anything is written."""

    files: dict[str, LiveFile] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Live sources to write (a NAME.in's copy, a recovered dump): path, content, mtime to give it.
    copies: list[tuple[Path, bytes, int]] = field(default_factory=list)
    tighten: list[Path] = field(default_factory=list)  # live files holding a secret, mode to fix
    # What this import does to the live host once (printed, not in the README: a re-import of the
    # host it left behind does not do it again, and gives the same tree).
    actions: list[str] = field(default_factory=list)


def collect_files(config_dir: Path, outside_paths: Iterable[str], secrets: Secrets) -> Findings:
    """main.cf, master.cf and the source of every table they use, with what stands in the way."""
    found = Findings()
    allowed = set(outside_paths)
    for name in ("main.cf", "master.cf"):
        path = config_dir / name
        try:
            found.files[name] = LiveFile(POSTFIX_DIR + name, path.read_bytes(), path, path)
        except OSError as exc:
            raise ReconcilerError(f"{path}: {exc.strerror}") from None
    params = _parameters(config_dir)
    by_path: dict[str, list[TableRef]] = {}
    for ref in table_refs(params):
        by_path.setdefault(ref.path, []).append(ref)
    root = str(config_dir).rstrip("/") + "/"
    for ref_path, path_refs in sorted(by_path.items()):
        types = {r.type for r in path_refs}
        if not types & (INDEXED_TYPES | TEXT_TYPES | set(CONFIG_TYPES)):
            continue  # unix:, inline:, static:, memcache:, ... have no file to import
        if ref_path.startswith(root) and ".." not in ref_path.split("/"):
            rel, repo = ref_path[len(root) :], POSTFIX_DIR + ref_path[len(root) :]
        elif ref_path in allowed:
            rel, repo = ref_path, ROOTFS_DIR + ref_path.lstrip("/")
        else:
            where = ", ".join(sorted({r.parameter for r in path_refs}))
            found.notes.append(
                f"{path_refs[0].type}:{ref_path} ({where}) is outside {config_dir} and not in "
                "[postfix].outside_paths: not imported, left alone"
            )
            continue
        _import_table(path_refs, rel, repo, config_dir, secrets, found)
    _note_unused(config_dir, found, params)
    return found


def _parameters(config_dir: Path) -> dict[str, str]:
    """main.cf's parameters (``postconf -n -x``) and master.cf's ``-o`` ones (``-P -x``, as service/type/name)."""
    results = {flag: postconf(config_dir, flag, "-x") for flag in ("-n", "-P")}
    for flag, res in results.items():
        if res.returncode != 0:
            detail = "; ".join(d.text for d in res.diagnostics)
            raise ReconcilerError(f"postconf -c {config_dir} {flag} failed: {detail}")
    return {**parse_parameters(results["-n"].stdout), **parse_parameters(results["-P"].stdout)}


def _import_table(
    path_refs: list[TableRef], rel: str, repo: str, config_dir: Path, secrets: Secrets, found: Findings
) -> None:
    """One table (every reference to one path): its source, its secrets and its mode, into ``found``."""
    types = {r.type for r in path_refs}
    sasl = any(SASL_PASSWORD_PARAMS.search(r.parameter) for r in path_refs)
    alias = any(r.parameter.rsplit("/", 1)[-1] in ALIAS_PARAMS for r in path_refs)
    live = Path(path_refs[0].path)
    source = _table_source(live, types & INDEXED_TYPES, alias, config_dir, repo, found)
    if source is None:
        return
    origin, data = source
    secret_key = next((CONFIG_TYPES[t] for t in types if t in CONFIG_TYPES), "")
    holds = False
    if secret_key:
        data, holds = secret_config(data, secret_key, next(t for t in types if t in CONFIG_TYPES), live, secrets)
    elif sasl:
        data, holds = secret_map(data, live, secrets)
    found.files[rel] = LiveFile(repo, data, origin, live, holds)
    if holds:
        if not live.exists() or mode_of(live) != (SECRET_FILE_MODE, SECRET_FILE_GROUP):
            found.tighten.append(live)
        if live.exists() and mode_of(live) != (SECRET_FILE_MODE, SECRET_FILE_GROUP):
            found.actions.append(
                f"{live}: holds a secret; its mode is set to {SECRET_FILE_MODE:04o}, group {SECRET_FILE_GROUP} "
                "(as the agent keeps such files)"
            )
    elif live.exists() and mode_of(live) != (0o644, "root"):
        mode, group = mode_of(live)
        found.notes.append(
            f"{live}: mode {mode:04o} group {group}; the agent keeps it 0644 root, the first apply changes it"
        )


def _table_source(
    live: Path, indexed: set[str], alias: bool, config_dir: Path, repo: str, found: Findings
) -> tuple[Path, bytes] | None:
    """Where the repo's source comes from and its bytes: the live source, NAME.in, or a table dump."""
    dotin = live.with_name(live.name + ".in")
    if live.is_file():
        data = live.read_bytes()
        if indexed and dotin.is_file() and dotin.read_bytes() == data:
            found.notes.append(_dotin_note(repo, dotin, live))  # adopted before: said the same way again
            return dotin, data
        return live, data
    if not indexed:
        if live.exists():
            found.problems.append(Problem(repo, None, f"{live} is not a regular file"))
        else:
            found.problems.append(Problem(repo, None, f"{live} does not exist, but main.cf or master.cf use it"))
        return None
    typ = sorted(indexed)[0]
    built = [Path(f"{live}{s}") for s in built_suffixes(typ)]
    if dotin.is_file():
        data = dotin.read_bytes()
        if all(b.exists() and b.stat().st_mtime_ns >= dotin.stat().st_mtime_ns for b in built):
            found.copies.append((live, data, dotin.stat().st_mtime_ns))
            found.notes.append(_dotin_note(repo, dotin, live))
        else:
            found.notes.append(
                f"{repo}: from {dotin}, which is newer than its built table: the first apply rebuilds {typ}:{live}"
            )
        return dotin, data
    if all(b.exists() for b in built):
        return _dumped_source(live, typ, built, alias, config_dir, repo, found)
    found.problems.append(
        Problem(
            repo, None, f"neither {live} nor {dotin} nor a built {typ}: table exists, but main.cf or master.cf use it"
        )
    )
    return None


def _dumped_source(
    live: Path, typ: str, built: list[Path], alias: bool, config_dir: Path, repo: str, found: Findings
) -> tuple[Path, bytes] | None:
    """A table with only its built file: the source recovered with ``postmap -s`` / ``postalias -s``."""
    tool = postalias if alias else postmap
    res = tool(config_dir, "-s", f"{typ}:{live}")
    if res.returncode == 0 and not res.diagnostics:
        text = res.stdout if res.stdout.endswith("\n") or not res.stdout else res.stdout + "\n"
        found.copies.append((live, text.encode(), min(b.stat().st_mtime_ns for b in built)))
        found.actions.append(
            f"{repo}: only the built table existed; its source was recovered with "
            f"{'postalias' if alias else 'postmap'} -s (order and comments are lost) and is written to {live}"
        )
        return built[0], text.encode()
    detail = "; ".join(d.text for d in res.diagnostics) or f"exit {res.returncode}"
    found.problems.append(Problem(repo, None, f"{live} has no source and {typ}:{live} cannot be dumped: {detail}"))
    return None


def _dotin_note(repo: str, dotin: Path, live: Path) -> str:
    return (
        f"{repo}: from {dotin} (the NAME.in + Makefile layout); the agent builds the table from {live}, "
        "a copy of it written beside it (the Makefile and the .in file are left alone, unused from now on)"
    )


def mode_of(path: Path) -> tuple[int, str]:
    """A live file's permission bits and group name (the group's id when it has no name)."""
    st = path.stat()
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return st.st_mode & 0o7777, group


def _named_files(config_dir: Path, params: dict[str, str]) -> dict[str, set[str]]:
    """Files of the config dir that parameters name by path, not as ``type:path`` (a domain list such
    as ``virtual_mailbox_domains = /etc/postfix/vhost``, ``smtpd_tls_dh1024_param_file``): rel -> names."""
    root = str(config_dir).rstrip("/") + "/"
    named: dict[str, set[str]] = {}
    for name, value in params.items():
        for item in split_list(value):
            if item.startswith(root) and ".." not in item.split("/"):
                named.setdefault(item[len(root) :], set()).add(name)
    return named


def _note_unused(config_dir: Path, found: Findings, params: dict[str, str]) -> None:
    imported = {str(f.origin) for f in found.files.values()} | {str(f.live) for f in found.files.values()}
    named = _named_files(config_dir, params)
    used: list[str] = []
    left: list[str] = []
    for path in sorted(config_dir.rglob("*")):
        if path.is_dir() or str(path) in imported or path.name.startswith("."):
            continue
        if any(
            str(path).startswith(str(f.live)) and path.suffix in (".db", ".lmdb", ".cdb") for f in found.files.values()
        ):
            continue  # a built table of an imported source
        rel = str(path.relative_to(config_dir))
        if rel in named:
            used.append(f"{rel} ({', '.join(sorted(named[rel]))})")
        else:
            left.append(rel)
    if used:
        found.notes.append(
            "not imported (main.cf or master.cf name them by path, not as a lookup table: Postfix reads them "
            "as they are, the agent does not manage them): " + ", ".join(used)
        )
    if left:
        found.notes.append(
            "not imported (main.cf and master.cf do not use them; they stay as they are, unmanaged): " + ", ".join(left)
        )
