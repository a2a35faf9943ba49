"""Adoption of a live host: ``reconciler import --out DIR`` writes the desired-state repository of it.

Called by the CLI only (top layer beside the engine). Reads the live config directory with Postfix's
own tools (``postconf -c DIR -n -x``, ``-P -x``) to find every table main.cf and master.cf use, the
three mail tables through the agent's MySQL connection, and writes DIR as a git repository with one
commit: ``postfix/`` (main.cf and master.cf byte for byte, each table source at its path relative to
the config dir), ``rootfs/`` for outside tables allowed by ``[postfix].outside_paths``,
``domains/<domain>.yaml`` and a README saying what came from where.

Secrets (a lookup config's ``password``/``bind_pw``, the values of SASL password maps) become
``${secret:NAME}``; their values go to ``[secrets].dir`` (0600), never into DIR or the output. A
value already held by a file of ``[secrets].dir`` keeps that file's name. What cannot be represented
(plaintext passwords, rows of no domain, addresses outside their domain, files the repo checks
refuse) is collected as problems and nothing at all is written. The only writes to the live host
are on the way to an empty first diff: a ``NAME.in`` of the guide's Makefile layout is copied to
``NAME`` (the table's source from now on, dated as the ``.in``), and a file holding a secret gets
the mode the agent keeps such files in (0640, group postfix); each is said in a note.
"""

from __future__ import annotations

import grp
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql.cursors
import structlog

from reconciler.db import connect
from reconciler.desired import POSTFIX_DIR, ROOTFS_DIR
from reconciler.errors import PermanentError, Problem, ReconcilerError
from reconciler.models import (
    LOCAL_PART_RE,
    AgentConfig,
    DomainFile,
    address_problem,
    domain_problem,
    password_ok,
    password_problem,
)
from reconciler.plan import SECRET_FILE_GROUP, SECRET_FILE_MODE
from reconciler.postfix import (
    INDEXED_TYPES,
    TEXT_TYPES,
    TableRef,
    built_suffixes,
    parse_parameters,
    postalias,
    postconf,
    postmap,
    table_refs,
)
from reconciler.source import open_snapshot
from reconciler.validate import validate_snapshot

log = structlog.get_logger("reconciler.adopt")

# Lookup table types whose config file is imported (with its password turned into a secret).
CONFIG_TYPES = {"mysql": "password", "pgsql": "password", "ldap": "bind_pw", "sqlite": ""}
SASL_PASSWORD_PARAMS = re.compile(r"(?:^|/)(?:smtp|lmtp)_sasl_password_maps\Z")
ALIAS_PARAMS = frozenset({"alias_maps", "alias_database"})
SCHEMA_MODELINE = "# yaml-language-server: $schema=../schemas/domain.schema.json\n"
_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]*@[A-Za-z0-9.-]+\Z")
_SECRET_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")
_CONFIG_LINE = re.compile(rb"^(?P<head>\s*(?P<key>[A-Za-z_]+)\s*=\s*)(?P<value>.*?)(?P<tail>\s*)$")
_MAP_LINE = re.compile(rb"^(?P<head>\S+\s+)(?P<value>\S.*?)(?P<tail>\s*)$")


class CannotImport(PermanentError):
    """The live state cannot be represented as a repository; nothing was written."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(f"{len(problems)} reason(s) the live state cannot be imported")
        self.problems = sorted(set(problems), key=lambda p: (p.path, p.line or 0, p.message))


@dataclass
class _File:
    """One file going into the repository (in-memory, during an import)."""

    repo_path: str  # postfix/NAME or rootfs/ABS
    data: bytes  # the template: secret values replaced by ${secret:NAME}
    origin: Path  # the live file it was read from
    live: Path  # the live file the agent will manage
    holds_secret: bool = False


@dataclass
class ImportResult:
    """What an import wrote (in-memory result): counts and the notes to print."""

    out: Path
    files: list[str]
    domains: int
    mailboxes: int
    aliases: int
    secrets: list[str]
    notes: list[str]
    commit: str


@dataclass
class _Secrets:
    """Secret names by value: those already in [secrets].dir, then the ones this import adds."""

    directory: Path
    by_value: dict[bytes, str] = field(default_factory=dict)
    taken: set[str] = field(default_factory=set)
    new: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def load(cls, directory: Path) -> _Secrets:
        out = cls(directory)
        if not directory.is_dir():
            return out
        for path in sorted(directory.iterdir()):
            out.taken.add(path.name)
            try:
                if not path.is_file() or path.stat().st_mode & 0o077:
                    continue
                value = path.read_bytes()
            except OSError:
                continue
            value = value[:-1] if value.endswith(b"\n") else value
            if value and b"\n" not in value:
                out.by_value.setdefault(value, path.name)
        return out

    def name_for(self, value: bytes, wanted: str) -> str:
        if value in self.by_value:
            return self.by_value[value]
        base = _SECRET_NAME_CHARS.sub("_", wanted).strip("_.-")[:100] or "secret"
        name, n = base, 1
        while name in self.taken:
            n += 1
            name = f"{base}_{n}"
        self.taken.add(name)
        self.by_value[value] = name
        self.new[name] = value
        return name

    def write(self) -> None:
        if not self.new:
            return
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name, value in sorted(self.new.items()):
            path = self.directory / name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, value + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)


@dataclass
class _Plan:
    """Everything an import found, before anything is written."""

    files: dict[str, _File] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Live sources to write (a NAME.in's copy, a recovered dump): path, content, mtime to give it.
    copies: list[tuple[Path, bytes, int]] = field(default_factory=list)
    tighten: list[Path] = field(default_factory=list)  # live files holding a secret, mode to fix
    # What this import does to the live host once (printed, not in the README: a re-import of the
    # host it left behind does not do it again, and gives the same tree).
    actions: list[str] = field(default_factory=list)


def import_host(cfg: AgentConfig, out: Path) -> ImportResult:
    """Import the live host into ``out`` (a new directory); raises ``CannotImport`` naming every reason."""
    out = out.absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ReconcilerError(f"{out}: already exists and is not empty; import writes a new repository")
    if not out.parent.is_dir():
        raise ReconcilerError(f"{out.parent}: no such directory")
    config_dir = Path(cfg.postfix.config_dir)
    secrets = _Secrets.load(Path(cfg.secrets.dir))
    found = _collect_files(config_dir, cfg.postfix.outside_paths, secrets)
    domains, counts, row_problems = _collect_rows(cfg)
    found.problems.extend(row_problems)
    if found.problems:
        raise CannotImport(found.problems)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.import-", dir=out.parent))
    try:
        for f in found.files.values():
            _write(tmp / f.repo_path, f.data)
        validated = validate_snapshot(open_snapshot(tmp), str(config_dir), None, cfg.postfix.outside_paths)
        if validated.problems:
            raise CannotImport(
                [
                    Problem(p.path, p.line, f"{p.message} (as found live; fix it there first)")
                    for p in validated.problems
                ]
            )
        for name, text in domains.items():
            _write(tmp / "domains" / f"{name}.yaml", text.encode())
        _write(tmp / "schemas" / "domain.schema.json", _domain_schema().encode())
        _write(tmp / "README.md", _readme(cfg, found, counts, secrets).encode())
        commit = _git_commit(tmp, cfg.source.branch, config_dir)
        secrets.write()
        for target, data, stamp_ns in found.copies:
            _write_live_source(target, data, stamp_ns, target in found.tighten)
        for path in found.tighten:
            if path.exists():
                _set_mode(path, SECRET_FILE_GROUP, SECRET_FILE_MODE)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("import.done", out=str(out), files=len(found.files), domains=counts[0])
    return ImportResult(
        out,
        sorted(found.files),
        counts[0],
        counts[1],
        counts[2],
        sorted(secrets.new),
        found.notes + found.actions,
        commit,
    )


# ------------------------------------------------------------------------------------------------
# Files


def _collect_files(config_dir: Path, outside_paths: Iterable[str], secrets: _Secrets) -> _Plan:
    found = _Plan()
    allowed = set(outside_paths)
    for name in ("main.cf", "master.cf"):
        path = config_dir / name
        try:
            found.files[name] = _File(POSTFIX_DIR + name, path.read_bytes(), path, path)
        except OSError as exc:
            raise ReconcilerError(f"{path}: {exc.strerror}") from None
    results = {flag: postconf(config_dir, flag, "-x") for flag in ("-n", "-P")}
    for flag, res in results.items():
        if res.returncode != 0:
            detail = "; ".join(d.text for d in res.diagnostics)
            raise ReconcilerError(f"postconf -c {config_dir} {flag} failed: {detail}")
    params = parse_parameters(results["-n"].stdout)
    service_params = parse_parameters(results["-P"].stdout)
    refs = [*table_refs(params), *table_refs(service_params)]
    by_path: dict[str, list[TableRef]] = {}
    for ref in refs:
        by_path.setdefault(ref.path, []).append(ref)
    root = str(config_dir).rstrip("/") + "/"
    for ref_path, path_refs in sorted(by_path.items()):
        ref = path_refs[0]
        types = {r.type for r in path_refs}
        if not types & (INDEXED_TYPES | TEXT_TYPES | set(CONFIG_TYPES)):
            continue  # unix:, inline:, static:, memcache:, ... have no file to import
        where = ", ".join(sorted({r.parameter for r in path_refs}))
        if ref_path.startswith(root) and ".." not in ref_path.split("/"):
            rel = ref_path[len(root) :]
            repo = POSTFIX_DIR + rel
        elif ref_path in allowed:
            rel = ref_path
            repo = ROOTFS_DIR + ref_path.lstrip("/")
        else:
            found.notes.append(
                f"{ref.type}:{ref_path} ({where}) is outside {config_dir} and not in [postfix].outside_paths: "
                "not imported, left alone"
            )
            continue
        sasl = any(SASL_PASSWORD_PARAMS.search(r.parameter) for r in path_refs)
        alias = any(r.parameter.rsplit("/", 1)[-1] in ALIAS_PARAMS for r in path_refs)
        live = Path(ref_path)
        source = _table_source(live, types & INDEXED_TYPES, alias, config_dir, repo, found)
        if source is None:
            continue
        origin, data = source
        secret_key = next((CONFIG_TYPES[t] for t in types if t in CONFIG_TYPES), "")
        holds = False
        if secret_key:
            data, holds = _secret_config(data, secret_key, next(t for t in types if t in CONFIG_TYPES), live, secrets)
        elif sasl:
            data, holds = _secret_map(data, live, secrets)
        found.files[rel] = _File(repo, data, origin, live, holds)
        if holds:
            if not live.exists() or _mode_of(live) != (SECRET_FILE_MODE, SECRET_FILE_GROUP):
                found.tighten.append(live)
            if live.exists() and _mode_of(live) != (SECRET_FILE_MODE, SECRET_FILE_GROUP):
                found.actions.append(
                    f"{live}: holds a secret; its mode is set to {SECRET_FILE_MODE:04o}, group {SECRET_FILE_GROUP} "
                    "(as the agent keeps such files)"
                )
        elif live.exists() and _mode_of(live) != (0o644, "root"):
            mode, group = _mode_of(live)
            found.notes.append(
                f"{live}: mode {mode:04o} group {group}; the agent keeps it 0644 root, the first apply changes it"
            )
    _note_unused(config_dir, found)
    return found


def _table_source(
    live: Path, indexed: set[str], alias: bool, config_dir: Path, repo: str, found: _Plan
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
    found.problems.append(
        Problem(
            repo, None, f"neither {live} nor {dotin} nor a built {typ}: table exists, but main.cf or master.cf use it"
        )
    )
    return None


def _dotin_note(repo: str, dotin: Path, live: Path) -> str:
    return (
        f"{repo}: from {dotin} (the NAME.in + Makefile layout); the agent builds the table from {live}, "
        "a copy of it written beside it (the Makefile and the .in file are left alone, unused from now on)"
    )


def _set_mode(path: Path, group: str, mode: int) -> None:
    """Group and mode as the applier sets them (owner root when running as root)."""
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        gid = 0
    root = os.geteuid() == 0
    os.chown(path, 0 if root else -1, gid if root else -1)
    os.chmod(path, mode)


def _mode_of(path: Path) -> tuple[int, str]:
    st = path.stat()
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return st.st_mode & 0o7777, group


def _secret_config(data: bytes, key: str, typ: str, live: Path, secrets: _Secrets) -> tuple[bytes, bool]:
    """A lookup config with its ``password``/``bind_pw`` value replaced by a secret placeholder."""
    if not key:
        return data, False
    user = b""
    for line in data.split(b"\n"):
        m = _CONFIG_LINE.match(line)
        if m and m["key"] in (b"user", b"bind_dn"):
            user = m["value"]
    out: list[bytes] = []
    holds = False
    for line in data.split(b"\n"):
        m = _CONFIG_LINE.match(line)
        if m and m["key"] == key.encode() and m["value"] and b"${secret:" not in m["value"]:
            who = user.decode("utf-8", "replace").split(",")[0].split("=")[-1] or live.stem
            name = secrets.name_for(m["value"], f"{typ}_{who}_{key}")
            line = m["head"] + f"${{secret:{name}}}".encode() + m["tail"]
            holds = True
        out.append(line)
    return b"\n".join(out), holds


def _secret_map(data: bytes, live: Path, secrets: _Secrets) -> tuple[bytes, bool]:
    """A SASL password map with each ``user:password`` value's password replaced by a secret."""
    out: list[bytes] = []
    holds = False
    for line in data.split(b"\n"):
        m = _MAP_LINE.match(line)
        if m and not line.lstrip().startswith(b"#") and b"${secret:" not in line:
            value = m["value"]
            user, colon, password = value.partition(b":")
            secret = password if colon else value
            if secret:
                key = m["head"].strip().decode("utf-8", "replace")
                name = secrets.name_for(secret, f"{live.name}_{key}")
                placeholder = f"${{secret:{name}}}".encode()
                value = user + b":" + placeholder if colon else placeholder
                line = m["head"] + value + m["tail"]
                holds = True
        out.append(line)
    return b"\n".join(out), holds


def _note_unused(config_dir: Path, found: _Plan) -> None:
    imported = {str(f.origin) for f in found.files.values()} | {str(f.live) for f in found.files.values()}
    left: list[str] = []
    for path in sorted(config_dir.rglob("*")):
        if path.is_dir() or str(path) in imported or path.name.startswith("."):
            continue
        if any(
            str(path).startswith(str(f.live)) and path.suffix in (".db", ".lmdb", ".cdb") for f in found.files.values()
        ):
            continue  # a built table of an imported source
        left.append(str(path.relative_to(config_dir)))
    if left:
        found.notes.append(
            "not imported (main.cf and master.cf do not use them; they stay as they are, unmanaged): " + ", ".join(left)
        )


def _write_live_source(target: Path, data: bytes, stamp_ns: int, holds_secret: bool) -> None:
    """Write a table's live source (a NAME.in's copy, a recovered dump), dated no later than its table."""
    tmp = target.with_name(f".{target.name}.reconciler-import")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if holds_secret:
        _set_mode(tmp, SECRET_FILE_GROUP, SECRET_FILE_MODE)
    else:
        _set_mode(tmp, "root", 0o644)
    os.utime(tmp, ns=(stamp_ns, stamp_ns))  # exact: a source one ns newer than its table is stale
    os.replace(tmp, target)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


# ------------------------------------------------------------------------------------------------
# Rows

_DOMAINS_SQL = "SELECT id, name FROM virtual_domains"
_USERS_SQL = "SELECT id, domain_id, email, password FROM virtual_users"
_ALIASES_SQL = "SELECT id, domain_id, source, destination FROM virtual_aliases"
_MARK = "--reconciler-import-next-table--"
_UNESCAPE = {"t": "\t", "n": "\n", "0": "\0", "\\": "\\", "r": "\r", "b": "\b", "Z": "\x1a"}
_ESCAPED = re.compile(r"\\(.)")
# Rows as text, as the client prints them (ids are only named in messages and matched as keys).
Tables = tuple[list[tuple[str, str]], list[tuple[str, str, str, str]], list[tuple[str, str, str, str]]]


def read_tables(cfg: AgentConfig) -> Tables:
    """The three mail tables, read in one consistent snapshot.

    With the ``mariadb`` client on PATH (Debian's mariadb-client), through it in batch mode: its C
    row parsing reads a million rows about ten times faster than PyMySQL's. Else with PyMySQL.
    """
    client = shutil.which("mariadb") or shutil.which("mysql")
    if client is not None and isinstance(cfg.mysql.host, str):
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


def read_tables_client(cfg: AgentConfig, client: str) -> Tables:
    """``read_tables`` through the ``mariadb`` client: tab-separated, escaped, one snapshot.

    Its credentials go in a defaults file (mode 0600, in a private temporary directory removed
    right after), never on the command line.
    """
    from reconciler.db import read_password

    m = cfg.mysql
    options = [
        "[client]",
        f"user={m.user}",
        f"password={read_password(m.password_file)}",
        "default-character-set=utf8mb4",
    ]
    options += [f"socket={m.unix_socket}"] if m.unix_socket else [f"host={m.host}", f"port={m.port}", "protocol=tcp"]
    script = (
        "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ; START TRANSACTION WITH CONSISTENT SNAPSHOT; "
        f"{_DOMAINS_SQL}; SELECT '{_MARK}'; {_USERS_SQL}; SELECT '{_MARK}'; {_ALIASES_SQL}; COMMIT;"
    )
    with tempfile.TemporaryDirectory(prefix="reconciler-import-") as tmp:
        defaults = Path(tmp) / "client.cnf"
        fd = os.open(defaults, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("\n".join(options) + "\n")
        res = subprocess.run(
            [client, f"--defaults-file={defaults}", "--batch", "--skip-column-names", "--quick", m.database],
            input=script.encode(),
            capture_output=True,
            check=False,
            timeout=3600,
        )
    if res.returncode != 0:
        from reconciler.errors import TemporaryError

        detail = res.stderr.decode("utf-8", "replace").strip()
        password = read_password(m.password_file)
        if password:
            detail = detail.replace(password, "********")
        raise TemporaryError(f"cannot read the mail tables as {m.user}: {detail}")
    parts = res.stdout.decode("utf-8", "replace").split(f"{_MARK}\n")
    if len(parts) != 3:
        raise ReconcilerError("unexpected output of the mariadb client while reading the mail tables")
    domains: list[tuple[str, str]] = [(f[0], f[1]) for f in _fields(parts[0], 2)]
    users: list[tuple[str, str, str, str]] = [(f[0], f[1], f[2], f[3]) for f in _fields(parts[1], 4)]
    aliases: list[tuple[str, str, str, str]] = [(f[0], f[1], f[2], f[3]) for f in _fields(parts[2], 4)]
    return domains, users, aliases


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


def _address_in(address: str, domain: str, *, catch_all: bool = False) -> str | None:
    """Why ``address`` cannot be a row of ``domain`` (an already valid domain name), else None.

    The common case costs one split and one regex match; anything unusual gets the full check.
    """
    local, at, part = address.rpartition("@")
    if at and part == domain and len(address) <= 254 and len(local) <= 64 and local and LOCAL_PART_RE.match(local):
        return None
    bad = address_problem(address, allow_catch_all=catch_all)
    if bad is None and part.lower() != domain:
        bad = f"not in its domain {domain}"
    return bad


def _collect_rows(cfg: AgentConfig) -> tuple[dict[str, str], tuple[int, int, int], list[Problem]]:
    """Domain file texts by domain, (domains, mailboxes, aliases) and the rows that cannot be represented."""
    problems: list[Problem] = []
    domain_rows, user_rows, alias_rows = read_tables(cfg)
    names: dict[str, str] = dict(domain_rows)
    users: dict[str, list[tuple[str, str]]] = {i: [] for i in names}
    aliases: dict[str, list[tuple[str, str]]] = {i: [] for i in names}
    for ident, name in sorted(names.items(), key=lambda item: int(item[0])):
        bad = domain_problem(name)
        if bad:
            problems.append(Problem(f"virtual_domains id={ident}", None, f"name {name!r}: {bad}"))
    for ident, domain_id, email, password in user_rows:
        domain = names.get(domain_id)
        if domain is not None and _address_in(email, domain) is None and password_ok(password):
            users[domain_id].append((email, password))  # the common case: nothing to report
            continue
        where = f"virtual_users id={ident}"
        if domain is None:
            problems.append(Problem(where, None, f"{email!r}: domain_id {domain_id} does not exist"))
            continue
        bad = _address_in(email, domain)
        if bad:
            problems.append(Problem(where, None, f"{email!r}: {bad}"))
            continue
        if password_problem(password):
            problems.append(
                Problem(
                    where,
                    None,
                    f"{email}: the password is not a hash (plaintext or an unknown scheme); "
                    "rehash it (reconciler passwd) before importing",
                )
            )
            continue
        users[domain_id].append((email, password))
    valid_domains: dict[str, bool] = {}  # destination domains checked once each
    for ident, domain_id, source, destination in alias_rows:
        where = f"virtual_aliases id={ident}"
        domain = names.get(domain_id)
        if domain is None:
            problems.append(
                Problem(where, None, f"{source!r} -> {destination!r}: domain_id {domain_id} does not exist")
            )
            continue
        bad = _address_in(source, domain, catch_all=True)
        if bad is not None and bad.startswith("not in its domain"):
            bad = "source " + bad
        if bad is None:
            part = destination.rpartition("@")[2]
            if part not in valid_domains:
                valid_domains[part] = domain_problem(part) is None
            dest_bad = _address_in(destination, part) if valid_domains[part] else address_problem(destination)
            bad = f"destination {dest_bad} (one row per destination)" if dest_bad else None
        if bad:
            problems.append(Problem(where, None, f"{source!r} -> {destination!r}: {bad}"))
            continue
        aliases[domain_id].append((source, destination))
    texts = {names[i]: domain_yaml(names[i], users[i], aliases[i]) for i in names}
    counts = (len(names), sum(len(u) for u in users.values()), sum(len(a) for a in aliases.values()))
    return texts, counts, problems


def _stream(conn: Any, sql: str) -> Iterator[tuple[str, str, str, str]]:
    with conn.cursor(pymysql.cursors.SSCursor) as cur:
        cur.execute(sql)
        for ident, domain_id, a, b in cur:
            yield str(ident), str(domain_id), str(a), "NULL" if b is None else str(b)


def _quoted(value: str) -> str:
    """A YAML double-quoted scalar (ASCII: addresses and hashes are); JSON's escapes are YAML's."""
    return f'"{value}"' if '"' not in value and "\\" not in value else json.dumps(value)


def _address(value: str) -> str:
    return value if _PLAIN_ADDRESS.match(value) else _quoted(value)


def domain_yaml(domain: str, users: list[tuple[str, str]], aliases: list[tuple[str, str]]) -> str:
    """A domain file's text: the modeline, then mailboxes and aliases in a stable order."""
    parts = [SCHEMA_MODELINE, f"domain: {domain}\n"]
    if users:
        parts.append("mailboxes:\n")
        users = sorted(users, key=lambda u: (u[0].casefold(), u[0]))
        parts += [f"  - address: {_address(e)}\n    password: {_quoted(p)}\n" for e, p in users]
    else:
        parts.append("mailboxes: []\n")
    if aliases:
        parts.append("aliases:\n")
        aliases = sorted(aliases, key=lambda a: (a[0].casefold(), a[1].casefold(), a))
        parts += [f"  - source: {_address(s)}\n    destination: {_address(d)}\n" for s, d in aliases]
    else:
        parts.append("aliases: []\n")
    return "".join(parts)


def _domain_schema() -> str:
    schema = DomainFile.model_json_schema(mode="validation")
    return json.dumps({"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}, indent=2) + "\n"


# ------------------------------------------------------------------------------------------------
# README and git


def _readme(cfg: AgentConfig, found: _Plan, counts: tuple[int, int, int], secrets: _Secrets) -> str:
    lines = [
        f"# Mail configuration of {socket.gethostname()}",
        "",
        "Imported by `reconciler import` from the live host; `reconciler diff` against this repository",
        "shows no change. From here on, change the mail setup by committing here (see docs/adopting.md).",
        "",
        "## What came from where",
        "",
        "| repository | live |",
        "| --- | --- |",
    ]
    for f in sorted(found.files.values(), key=lambda f: f.repo_path):
        origin = f"{f.origin}" if f.origin == f.live else f"{f.origin} (managed as {f.live})"
        lines.append(f"| `{f.repo_path}` | `{origin}` |")
    lines.append(
        f"| `domains/*.yaml` | MySQL `{cfg.mysql.database}`: {counts[0]} domain(s), {counts[1]} mailbox(es), "
        f"{counts[2]} alias row(s) |"
    )
    names = sorted(
        {
            m
            for f in found.files.values()
            for m in re.findall(r"\$\{secret:([^}]*)\}", f.data.decode("utf-8", "replace"))
        }
    )
    if names:
        lines += ["", f"## Secrets (values in `{cfg.secrets.dir}` on the host, never in this repository)", ""]
        lines += [f"- `{n}`" for n in names]
    if found.notes:
        lines += ["", "## Notes", ""]
        lines += [f"- {n}" for n in found.notes]
    return "\n".join(lines) + "\n"


def _git_commit(repo: Path, branch: str, config_dir: Path) -> str:
    host = socket.gethostname()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(repo),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "reconciler import",
        "GIT_AUTHOR_EMAIL": f"reconciler@{host}",
        "GIT_COMMITTER_NAME": "reconciler import",
        "GIT_COMMITTER_EMAIL": f"reconciler@{host}",
    }

    def git(*args: str) -> str:
        res = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, env=env, check=False)
        if res.returncode != 0:
            raise ReconcilerError(f"git {args[0]} in {repo}: {res.stderr.strip()}")
        return res.stdout.strip()

    git("init", "-q", "-b", branch)
    # Loose objects stored without compression: adding a million mailboxes' files costs a third of
    # the time (measured: 2.3 s instead of 6.8 s for 118 MB); the first push or `git gc` packs them.
    git("-c", "core.looseCompression=0", "add", "-A")
    git("commit", "-q", "-m", f"Import of {host} ({config_dir} and the mail database)")
    return git("rev-parse", "HEAD")
