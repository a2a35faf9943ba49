"""The validate stage: Postfix's own tools run on a staged copy of the ``postfix/`` tree.

The repo's files are written into a temporary config directory with every ``${secret:NAME}``
replaced by a dummy of the same shape (one token, no whitespace), then checked by Postfix itself:
``postconf -n``, ``-M`` and ``-P`` (every ``warning:`` line is an error), every table the
configuration names built with ``postmap``/``postalias`` (their warnings on skipped lines are
errors) and every text table parsed with ``postmap -q``. MySQL lookup files are checked against the
keys of mysql_table(5). Nothing live is touched. Called by the CLI (``validate``, ``diff``,
``apply``) and the agent before anything else.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from reconciler.cfparse import parse_main_cf
from reconciler.desired import (
    HOSTS_DIR,
    POSTFIX_DIR,
    DesiredFile,
    HostSpec,
    ParsedRevision,
    build_desired,
    host_tree,
    repo_path,
)
from reconciler.errors import Problem
from reconciler.parsecache import ParseCache
from reconciler.postfix import (
    INDEXED_TYPES,
    TEXT_TYPES,
    TableRef,
    ToolResult,
    backdate,
    parse_parameters,
    postalias,
    postconf,
    postmap,
    supported_table_types,
    table_refs,
)
from reconciler.source import Snapshot
from reconciler.tables import TableDecl, built_suffixes
from reconciler.vocab import SECRET_REF_BYTES

DEFAULT_LIVE_CONFIG_DIR = "/etc/postfix"
DEFAULT_OUTSIDE_PATHS: tuple[str, ...] = ("/etc/aliases",)
OUTSIDE_STAGE = ".rootfs"  # outside tables are staged here (a name no repo file can have)
DUMMY_SECRET = "Dummy-Secret-0"  # noqa: S105 - a placeholder value for staging, not a credential
# "file /x/master.cf: line 12: ..." and "/x/canonical, line 3: ..." and "cidr map /x/a.cidr, line 2: ..."
_LINE_REF = re.compile(r"(?P<path>/[^\s,:]+)(?::|,) line (?P<line>\d+):? ?")
_FILE_REF = re.compile(r"(?P<path>/[^\s,:]+): ")
_QUOTED_LINE = re.compile(r' in "(.+)"$')
_QUOTED_TAIL = re.compile(r': "(.+)"$')
# Postfix expands %s, %u, %d, %S, %U, %D and %1..%9 in a mysql query; unquoted, the lookup key is
# spliced into the SQL as is.
_EXPANSION = re.compile(r"%[sudSUD1-9]")
_UNUSED = re.compile(r"unused parameter: (?P<name>[\w]+)=")
_UNDEFINED = re.compile(r"undefined parameter: (?P<name>[\w]+)")

# Parameters Postfix 3.6+ still accepts but silently ignores (postconf(5)); postconf prints nothing.
IGNORED_SINCE_3_6 = {
    "smtpd_tls_dh512_param_file": "export-grade Diffie-Hellman is gone since Postfix 3.6",
    "tlsproxy_tls_dh512_param_file": "export-grade Diffie-Hellman is gone since Postfix 3.6",
    "smtpd_tls_eecdh_grade": "Postfix 3.6+ ignores it and uses tls_eecdh_auto_curves",
    "tlsproxy_tls_eecdh_grade": "Postfix 3.6+ ignores it and uses tls_eecdh_auto_curves",
}

MYSQL_KEYS = frozenset(
    {
        "hosts", "user", "password", "dbname", "query", "result_format", "domain", "expansion_limit",
        "option_file", "option_group", "require_result_set", "tls_cert_file", "tls_key_file",
        "tls_CAfile", "tls_CApath", "tls_verify_cert", "tls_ciphers", "idle_interval",
        "retry_interval", "table", "select_field", "where_field", "additional_conditions",
    }
)  # fmt: skip


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


def staged_name(name: str) -> str:
    """Where a managed file is staged, relative to the stage: outside tables under ``.rootfs/``.

    Never the absolute path itself: staging writes, and an outside table's live path is real.
    """
    return OUTSIDE_STAGE + name if name.startswith("/") else name


def _file_of_staged(rel: str) -> str:
    """The managed file name of a path relative to the stage (the inverse of ``staged_name``)."""
    return rel[len(OUTSIDE_STAGE) :] if rel.startswith(OUTSIDE_STAGE + "/") else rel


def _check_tree(
    files: Mapping[str, DesiredFile], live_config_dir: str, cache: ParseCache | None, notes: list[Problem]
) -> tuple[list[TableDecl], list[Problem]]:
    """Postfix's checks of one tree of files, or their cached result when the tree passed before.

    The staged check's notes (appended to ``notes``) are not kept with a cached result: only
    ``validate`` prints notes, and it runs uncached.
    """
    key = _stage_key(files, live_config_dir)
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
        param = _param_at(main_lines, p.line) if name == "main.cf" and p.line else None
        if param is not None and param in host.main_cf:
            key_line = next((i for i, t in enumerate(host_text, start=1) if t.strip().startswith(f"{param}:")), None)
            out.append(Problem(host.path, key_line, f"main_cf.{param}: {p.message}"))
            continue
        out.append(Problem(p.path, p.line, f"on host {host.name}: {p.message}"))
    return out


def _param_at(lines: list[str], line: int) -> str | None:
    """The main.cf parameter whose setting covers physical ``line`` (1-based), else None."""
    for number in range(min(line, len(lines)), 0, -1):
        raw = lines[number - 1]
        if raw.strip() and not raw[:1].isspace() and not raw.lstrip().startswith("#"):
            name, sep, _ = raw.partition("=")
            return name.strip() if sep else None
    return None


def _stage_key(files: Mapping[str, DesiredFile], live_config_dir: str) -> str:
    """Identity of a staged check: every postfix/ blob, the live dir and the Postfix binary."""
    h = hashlib.sha256(live_config_dir.encode())
    for name in sorted(files):
        h.update(f"\0{name}\0{files[name].blob_id}".encode())
    try:
        st = Path(shutil.which("postconf") or "postconf").stat()
        h.update(f"\0{st.st_mtime_ns}:{st.st_size}".encode())
    except OSError:
        pass
    return h.hexdigest()


def stage_files(
    files: Mapping[str, DesiredFile],
    stage: Path,
    secrets: Mapping[str, bytes] | None,
    live_config_dir: str = DEFAULT_LIVE_CONFIG_DIR,
) -> None:
    """Write the files into ``stage``, secrets substituted (dummies when ``secrets`` is None).

    References to the live config directory by absolute path point into the stage instead, so
    that Postfix checks the staged mysql-*.cf and tables rather than whatever is live.
    """
    live = _live_prefix(live_config_dir)
    for name, f in files.items():
        data = f.template.replace(live, str(stage).encode() + b"/")
        if f.secrets:
            data = SECRET_REF_BYTES.sub(
                lambda m: _secret_value(m.group(0), secrets),
                data,
            )
        target = stage / staged_name(name)
        if target.parent != stage:
            target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        backdate(target)


def _live_prefix(live_config_dir: str) -> bytes:
    """What ``stage_files`` rewrites to the stage: the live config dir as a path prefix."""
    return live_config_dir.rstrip("/").encode() + b"/"


def _secret_value(ref: bytes, secrets: Mapping[str, bytes] | None) -> bytes:
    name = ref[len(b"${secret:") : -1].decode()
    if secrets is None:
        return DUMMY_SECRET.encode()
    return secrets[name]


def check_postfix_tree(
    files: Mapping[str, DesiredFile],
    live_config_dir: str = DEFAULT_LIVE_CONFIG_DIR,
    built_dir: Path | None = None,
    stage_key: str = "",
    notes: list[Problem] | None = None,
) -> tuple[list[TableDecl], list[Problem]]:
    """Stage the files with dummy secrets and run Postfix's checks; returns tables and problems.

    With ``built_dir``, the tables built cleanly from exactly the repo's bytes (no secret, no live
    path in them) are moved there under their build key, for the applier to reuse.
    """
    with tempfile.TemporaryDirectory(prefix="reconciler-stage-") as tmp:
        stage = Path(tmp)
        stage_files(files, stage, None, live_config_dir)
        tables, problems = _check_stage(stage, files, live_config_dir, notes if notes is not None else [])
        if built_dir is None or problems:
            return tables, problems
        return [_keep_built(stage, files, t, built_dir, stage_key, live_config_dir) for t in tables], problems


def _keep_built(
    stage: Path, files: Mapping[str, DesiredFile], spec: TableDecl, built_dir: Path, key: str, live_config_dir: str
) -> TableDecl:
    source = files.get(spec.name)
    if spec.builder not in ("postmap", "postalias") or source is None or source.secrets:
        return spec
    if _live_prefix(live_config_dir) in source.template:
        return spec  # the staged copy is not what goes live (a live path rewritten): neither is its build
    build_key = hashlib.sha256(f"{key}\0{spec.name}\0{spec.type}\0{spec.builder}".encode()).hexdigest()
    built = [stage / f"{staged_name(spec.name)}{suffix}" for suffix in built_suffixes(spec.type)]
    if not all(p.is_file() for p in built):
        return spec
    target = built_dir / build_key
    shutil.rmtree(target, ignore_errors=True)
    try:
        target.mkdir(mode=0o700, parents=True)
        for path in built:
            shutil.move(path, target / path.name)  # the base name: built_files looks for that
    except OSError:  # a full state dir: not kept, the applier builds the table itself
        shutil.rmtree(target, ignore_errors=True)
        return spec
    return TableDecl(spec.name, spec.type, spec.builder, spec.parameters, build_key)


def _check_stage(
    stage: Path, files: Mapping[str, DesiredFile], live_config_dir: str, notes: list[Problem]
) -> tuple[list[TableDecl], list[Problem]]:
    mapper = _LineMapper(stage, files)
    problems: list[Problem] = []
    results: dict[str, ToolResult] = {}
    for flag in ("-n", "-M", "-P"):
        results[flag] = postconf(stage, flag, "-x")
        problems.extend(mapper.problems(results[flag]))
    if any(r.returncode != 0 for r in results.values()):
        return [], problems
    params = parse_parameters(results["-n"].stdout)
    service_params = parse_parameters(results["-P"].stdout)
    outside: list[TableRef] = []
    tables, missing = discover_tables(stage, files, params, service_params, live_config_dir, outside)
    for ref in missing:
        file = "master.cf" if "/" in ref.parameter else "main.cf"
        rel = _config_relative(ref.path, stage, live_config_dir) or Path(ref.path).name
        problems.append(
            Problem(
                POSTFIX_DIR + file,
                mapper.parameter_line(ref.parameter.rsplit("/", 1)[-1], file),
                f"{ref.parameter} names {ref.type}:{ref.path}, but postfix/{rel} is not in the repo",
            )
        )
    for ref in outside:
        file = "master.cf" if "/" in ref.parameter else "main.cf"
        notes.append(
            Problem(
                POSTFIX_DIR + file,
                mapper.parameter_line(ref.parameter.rsplit("/", 1)[-1], file),
                f"{ref.parameter} names {ref.type}:{ref.path} outside the config directory: left alone "
                f"(to manage it: rootfs{ref.path} in the repo and the path in [postfix].outside_paths)",
            )
        )
    supported = supported_table_types(stage)
    for spec in tables:
        if spec.type not in supported:
            problems.append(
                Problem(
                    POSTFIX_DIR + "main.cf",
                    mapper.parameter_line(spec.parameters[0]),
                    f"table type {spec.type}: is not supported by this Postfix (postconf -m); "
                    f"install Debian's postfix-{spec.type} package",
                )
            )
            continue
        problems.extend(mapper.problems(check_table(stage, spec)))
    problems.extend(_ignored_parameter_problems(files, mapper))
    mysql_tables = _mysql_tables(stage, live_config_dir, params, service_params)
    for name in sorted(files):
        base = name.rsplit("/", 1)[-1]
        if (base.startswith("mysql") and base.endswith(".cf")) or name in mysql_tables:
            problems.extend(mysql_cf_problems(repo_path(name), files[name].template.decode("utf-8")))
    return tables, problems


def _ignored_parameter_problems(files: Mapping[str, DesiredFile], mapper: _LineMapper) -> list[Problem]:
    """Parameters Postfix accepts without a warning but ignores, and SSLv3 in a cipher list."""
    out: list[Problem] = []
    params = parse_main_cf(files["main.cf"].template.decode("utf-8"))
    for name, value in sorted(params.items()):
        if name in IGNORED_SINCE_3_6:
            out.append(
                Problem(
                    POSTFIX_DIR + "main.cf",
                    mapper.parameter_line(name),
                    f"{name} is ignored by Postfix: {IGNORED_SINCE_3_6[name]}; remove it",
                )
            )
        if name.endswith("cipherlist") and "SSLv3" in value:
            out.append(
                Problem(
                    POSTFIX_DIR + "main.cf",
                    mapper.parameter_line(name),
                    f"{name} names SSLv3: in a cipher list OpenSSL reads it as a cipher class, it does not "
                    "turn the protocol off (use smtpd_tls_protocols / smtpd_tls_mandatory_protocols)",
                )
            )
    level = params.get("smtp_tls_security_level", "")
    if level in ("dane", "dane-only") and params.get("smtp_dns_support_level", "").lower() != "dnssec":
        out.append(
            Problem(
                POSTFIX_DIR + "main.cf",
                mapper.parameter_line("smtp_tls_security_level"),
                f"smtp_tls_security_level = {level} needs smtp_dns_support_level = dnssec; "
                "without DNSSEC lookups Postfix silently falls back to opportunistic TLS",
            )
        )
    return out


def _mysql_tables(stage: Path, live_config_dir: str, *param_sets: Mapping[str, str]) -> set[str]:
    """Names (relative to the config dir) of the files main.cf/master.cf use as mysql: tables."""
    out: set[str] = set()
    for ps in param_sets:
        for ref in table_refs(dict(ps)):
            rel = _config_relative(ref.path, stage, live_config_dir)
            if ref.type == "mysql" and rel is not None:
                out.add(rel)
    return out


def _config_relative(path: str, stage: Path, live_config_dir: str) -> str | None:
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
        rel = _config_relative(ref.path, stage, live_config_dir)
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


class _LineMapper:
    """Turns Postfix diagnostics about staged paths into ``postfix/NAME[:line]`` problems."""

    def __init__(self, stage: Path, files: Mapping[str, DesiredFile]) -> None:
        self._stage = str(stage)
        self._files = files
        self._lines: dict[str, list[str]] = {}

    def _text_lines(self, name: str) -> list[str]:
        if name not in self._lines:
            f = self._files.get(name)
            self._lines[name] = f.template.decode("utf-8").split("\n") if f else []
        return self._lines[name]

    def parameter_line(self, name: str, file: str = "main.cf") -> int | None:
        pattern = re.compile(rf"^\s*{re.escape(name)}\s*=") if file == "main.cf" else None
        for number, line in enumerate(self._text_lines(file), start=1):
            if pattern is not None and pattern.match(line):
                return number
            if pattern is None and re.search(rf"(^|\s|-o\s*){re.escape(name)}=", line):
                return number
        return None

    def _reference_line(self, name: str, file: str) -> int | None:
        pat = re.compile(rf"\$(?:{re.escape(name)}\b|\{{{re.escape(name)}\}}|\({re.escape(name)}\))")
        for number, line in enumerate(self._text_lines(file), start=1):
            if not line.lstrip().startswith("#") and pat.search(line):
                return number
        return None

    def _rel(self, path: str) -> str | None:
        if path.startswith(self._stage + "/"):
            return _file_of_staged(path[len(self._stage) + 1 :])
        return None

    def problems(self, result: ToolResult) -> Iterable[Problem]:
        for diag in result.diagnostics:
            text = diag.text
            m = _LINE_REF.search(text)
            if m and self._rel(m["path"]) is not None:
                name = self._rel(m["path"]) or ""
                message = (text[: m.start()] + text[m.end() :]).strip().removeprefix("file ").strip()
                if diag.level == "warning" and "skipping" not in message and "ignoring" not in message:
                    message = f"{message} (Postfix skips or misreads this line)"
                yield Problem(repo_path(name), int(m["line"]), message or text)
                continue
            f = _FILE_REF.search(text)
            rel = self._rel(f["path"]) if f else None
            if f and rel is not None:
                name = rel
                message = text[f.end() :].strip()
                line = None
                if (u := _UNUSED.search(message)) is not None:
                    line = self.parameter_line(u["name"], name)
                    message = f"unused parameter {u['name']}: Postfix ignores it (misspelled or obsolete?)"
                elif (d := _UNDEFINED.search(message)) is not None:
                    line = self._reference_line(d["name"], name)
                    message = f"${d['name']} is used but never defined"
                elif (q := _QUOTED_TAIL.search(message)) is not None:
                    found = self._find_line(q.group(1), (name,))
                    line = found[1] if found else None
                yield Problem(repo_path(name), line, message)
                continue
            quoted = _QUOTED_LINE.search(text)
            found = self._find_line(quoted.group(1)) if quoted else None
            if found:
                yield Problem(POSTFIX_DIR + found[0], found[1], text)
                continue
            yield Problem(
                POSTFIX_DIR + "main.cf", None, f"{diag.level}: {text.replace(self._stage, '$config_directory')}"
            )

    def _find_line(self, quoted: str, names: tuple[str, ...] = ("master.cf", "main.cf")) -> tuple[str, int] | None:
        """The file and line holding a line Postfix quoted (whitespace folded)."""
        want = " ".join(quoted.split())
        for name in names:
            for number, line in enumerate(self._text_lines(name), start=1):
                if " ".join(line.split()) == want:
                    return name, number
        return None
